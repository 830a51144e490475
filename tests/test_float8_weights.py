"""FP8 files stay FP8 once loaded (weights/float8.py): a model whose transformer and T5 are stored in float8_e4m3fn
holds a byte per linear weight, and makes the very images of its dense twin (a folder holding the same values in
float32), with LoRAs, with -q 8, through the engine and the CLI; the memory plan reads what it holds from the
headers."""

import shutil

import mlx.core as mx
import mlx.nn as nn
import pytest
import torch
from safetensors.torch import load_file, save_file

from mflux_core.loader import load_running_transformer
from mflux_core.manager import ModelManager
from mflux_core.models.text_encoders import TextEncoders
from mflux_core.request import GenerationRequest
from mflux_core.weights.float8 import Float8Linear
from mflux_core.weights.quantize import parameter_bytes, t5_encoder
from mflux_core.weights.resolve import ModelSource, resident_bytes_of
from mflux_core.weights.safetensors_io import weight_files
from tests.fixtures.lora_files import Dims, write_diffusers_lora
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux
from tests.parity import max_uint8_diff, run_cli

SPEC = TinyFluxSpec(heads=2, head_dim=32, axes_dims_rope=(8, 12, 12), seed=7)
FP8_COMPONENTS = ("transformer", "text_encoder_2")
REQUEST = dict(prompt="a red house by the sea", seed=4, steps=2, width=64, height=48)


def rewrite_matrices(folder, to_fp8: bool) -> None:
    """Every matrix of the transformer and T5 rounded to E4M3: stored as float8_e4m3fn, or as those values in float32
    (the dense twin)."""
    for component in FP8_COMPONENTS:
        for path in sorted((folder / component).glob("*.safetensors")):
            state = {name: value.to(torch.float8_e4m3fn) if value.ndim == 2 else value
                     for name, value in load_file(path).items()}
            save_file(state if to_fp8 else {name: value.float() for name, value in state.items()}, path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("float8")
    tiny = build_tiny_flux(root / "tiny", SPEC)
    fp8, dense = root / "tiny-fp8", root / "tiny-dense"
    for folder, to_fp8 in ((fp8, True), (dense, False)):
        shutil.copytree(tiny, folder)
        rewrite_matrices(folder, to_fp8)
    return fp8, dense


def linear_types(module: nn.Module) -> set[str]:
    return {type(layer).__name__ for _, layer in module.named_modules()
            if isinstance(layer, (nn.Linear, nn.QuantizedLinear, Float8Linear))}


def test_an_fp8_model_holds_a_byte_per_linear_weight_as_its_plan_says(folders):
    fp8, dense = folders
    held = load_running_transformer(ModelSource(folder=fp8), dtype=mx.float32)
    twin = load_running_transformer(ModelSource(folder=dense), dtype=mx.float32)
    assert linear_types(held) == {"Float8Linear"} and linear_types(twin) == {"Linear"}
    linear_weights = sum(layer.weight.size for _, layer in held.named_modules() if isinstance(layer, Float8Linear))
    assert parameter_bytes(twin) - parameter_bytes(held) == 3 * linear_weights  # float32's four bytes, FP8's one
    assert resident_bytes_of(weight_files(fp8 / "transformer"), 4, "transformer") == parameter_bytes(held)
    encoders = TextEncoders.from_folder(fp8)
    assert linear_types(t5_encoder(encoders)) == {"Float8Linear"}
    assert resident_bytes_of(weight_files(fp8 / "text_encoder_2"), 4) == parameter_bytes(t5_encoder(encoders))


@pytest.mark.parametrize("options", [{}, {"quantize": 8}, {"lora": True}], ids=["plain", "q8", "lora"])
def test_an_fp8_model_makes_its_dense_twins_images(folders, tmp_path, options):
    """The same pixels as the same values held in float32: plain, quantized (from the FP8 values) and under a LoRA
    (an adapter on the FP8 layer)."""
    fp8, dense = folders
    loras = {}
    if options.get("lora"):
        path, _ = write_diffusers_lora(tmp_path / "style.safetensors", Dims.of(dense), magnitude=1.0)
        loras = {"lora_paths": (str(path),), "lora_scales": (0.8,)}
    quantize = options.get("quantize")
    images = [ModelManager().generate(GenerationRequest(model=str(folder), quantize=quantize, **loras, **REQUEST)).image
              for folder in (fp8, dense)]
    assert max_uint8_diff(images[0].convert("RGB"), images[1]) == 0
    plain = ModelManager().generate(GenerationRequest(model=str(dense), **REQUEST)).image
    if options:  # the option changed the image, so the equality above says something about it
        assert max_uint8_diff(images[1].convert("RGB"), plain) > 0


def test_the_cli_runs_an_fp8_model_as_its_dense_twin(folders, tmp_path):
    fp8, dense = folders
    args = ["--prompt", REQUEST["prompt"], "--seed", 4, "--steps", 2, "--width", 64, "--height", 48]
    ours = run_cli("generate", "--path", fp8, *args, "--output", tmp_path / "fp8.png")
    twin = run_cli("generate", "--path", dense, *args, "--output", tmp_path / "dense.png")
    assert max_uint8_diff(ours, twin) == 0


def test_a_lora_trains_on_an_fp8_base(folders, tmp_path):
    """The base stays held in FP8 while its adapters learn (the codes are frozen weights, never trained)."""
    import numpy as np

    from mflux_core.training.lora_training import load_base_model, train_lora
    from tests.test_lora_training import write_config

    config = write_config(tmp_path, folders[0], training_loop={"steps": 3, "batch_size": 1})
    assert type(load_base_model(config, tmp_path).transformer.transformer_blocks[0].ff.net[2]) is Float8Linear
    outcome = train_lora(config)
    assert all(np.isfinite(outcome.losses))
    adapter = {name: np.array(value) for name, value in mx.load(str(outcome.adapter)).items()}
    assert all(np.abs(value).max() > 0 for name, value in adapter.items() if name.endswith("lora_B.weight"))


def scaled_fp8_files(tiny, folder) -> tuple:
    """The tiny model's transformer and T5 as ComfyUI's scaled FP8 files (flux1-*_fp8_scaled, t5xxl_fp8_e4m3fn_scaled)."""
    from tests.test_quantized_single_files import comfy_scaled_fp8
    from tests.test_transformer import diffusers_to_bfl

    folder.mkdir()
    paths = []
    for component, name, to_bfl in (("transformer", "flux1-tiny_fp8_scaled", diffusers_to_bfl),
                                    ("text_encoder_2", "t5xxl_fp8_e4m3fn_scaled", dict)):
        state = {}
        for path in sorted((tiny / component).glob("*.safetensors")):
            state.update(load_file(path))
        stored, metadata, _ = comfy_scaled_fp8(to_bfl(state), "tensors")
        save_file({key: value.contiguous() for key, value in stored.items()}, folder / f"{name}.safetensors", metadata)
        paths.append(folder / f"{name}.safetensors")
    return tuple(paths)


def dense_weights_equal(held: nn.Module, dense: nn.Module) -> int:
    """How many layers `held` keeps in FP8 with a scale, each checked to decode to `dense`'s weights exactly."""
    from mflux_core.lora.layers import dense_weight

    layers = dict(dense.named_modules())
    scaled = 0
    for path, layer in held.named_modules():
        if isinstance(layer, Float8Linear):
            assert "fp8_scale" in layer
            assert mx.array_equal(dense_weight(layer), layers[path].weight).item(), path
            scaled += 1
    return scaled


def test_scaled_fp8_files_are_held_in_fp8_with_their_scales_and_decode_to_comfyuis_weights(tmp_path):
    """ComfyUI's scaled FP8 files: a byte per weight and a scale per row, the weights exactly what the file gave
    before (its values times its scale in float32, then the compute dtype), for the transformer and T5."""
    from mflux_core.loader import load_source_transformer
    from mflux_core.models.t5 import load_t5_encoder

    tiny = build_tiny_flux(tmp_path / "tiny", TinyFluxSpec(heads=1, head_dim=128, axes_dims_rope=(16, 56, 56),
                                                         num_layers=1, num_single_layers=1, seed=8))  # FLUX.1's head
    transformer_file, t5_file = scaled_fp8_files(tiny, tmp_path / "scaled")
    source = ModelSource(folder=None, transformer_file=transformer_file, base_folder=tiny)
    for dtype in (mx.float32, mx.bfloat16):
        held, dense = load_running_transformer(source, dtype), load_source_transformer(source, dtype)
        assert dense_weights_equal(held, dense) == sum(isinstance(m, nn.Linear) for _, m in dense.named_modules())
        # a byte per weight and four per row for the scale (this tiny model's rows are short: 128 weights)
        assert parameter_bytes(held) < parameter_bytes(dense) * (0.55 if dtype == mx.bfloat16 else 0.3)
    encoders = TextEncoders.from_paths(tiny / "text_encoder", t5_file, tiny / "tokenizer", tiny / "tokenizer_2")
    assert dense_weights_equal(t5_encoder(encoders), load_t5_encoder(t5_file)) > 0
