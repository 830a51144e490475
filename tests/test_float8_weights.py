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
