"""Quantized single-file FLUX.1 transformers. GGUF (city96's layout: BFL's names, ggml types) runs with `--path
file.gguf --base-model ...`: its Q8_0, Q4_0 and Q4_1 layers stay quantized as MLX holds them, and the image equals
diffusers' on the weights llama.cpp's own `gguf` package dequantizes (float32, uint8 max |diff| <= 2); files of types
MLX cannot read are refused by name, before anything loads; the memory plan reads the file's header. ComfyUI's FP8
files (E4M3) equal diffusers on the same weights rounded to FP8 by torch."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from mflux_core import cli
from mflux_core.weights.resolve import resident_bytes_of
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux, load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli
from tests.test_transformer import (
    MEANINGFUL_CHANGE, RELATIVE_TOLERANCE, diffusers_to_bfl, random_inputs, relative_error, run_ours, run_reference,
)

Q8_0, Q4_0, Q4_1, F16, Q5_0 = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1,
                               GGMLQuantizationType.F16, GGMLQuantizationType.Q5_0)
HEIGHT, WIDTH, STEPS = 48, 64, 3
# FLUX.1's head dim (a single file's RoPE axes are FLUX.1's), one head: every matrix's input width is a multiple of
# ggml's block of 32 but the image input's (16 channels) and the time embedding's (256)
SPEC = TinyFluxSpec(heads=1, head_dim=128, axes_dims_rope=(16, 56, 56), num_layers=1, num_single_layers=1, seed=4)
SPEC_CONFIG = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=128,
                   num_attention_heads=1, joint_attention_dim=SPEC.text_dim, pooled_projection_dim=SPEC.pooled_dim,
                   guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def ggml_type(name: str, value: torch.Tensor, types: dict[str, GGMLQuantizationType]) -> GGMLQuantizationType:
    """What a converter like city96's would choose: vectors and matrices that do not block by 32 stay F32, the rest
    by block kind."""
    if value.ndim != 2 or value.shape[1] % 32:
        return GGMLQuantizationType.F32
    return next((kind for prefix, kind in types.items() if name.startswith(prefix)), F16)


def write_gguf(path, state: dict[str, torch.Tensor], types: dict[str, GGMLQuantizationType]) -> dict[str, np.ndarray]:
    """`state` (BFL names) as a GGUF file; returns what each tensor reads back as, dequantized by gguf."""
    writer = GGUFWriter(str(path), arch="flux")
    read_back = {}
    for name, value in state.items():
        data, kind = value.numpy().astype(np.float32), ggml_type(name, value, types)
        if kind == GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
            read_back[name] = data
        elif kind == F16:
            writer.add_tensor(name, data.astype(np.float16))
            read_back[name] = data.astype(np.float16).astype(np.float32)
        else:
            packed = quantize(data, kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
            read_back[name] = dequantize(packed, kind).reshape(data.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return read_back


def dequantized_diffusers_state(state: dict[str, torch.Tensor], types) -> dict[str, torch.Tensor]:
    """The diffusers tensors as a GGUF consumer reads them: ggml quantizes each row's blocks of 32 on their own,
    so quantizing diffusers' q, k and v apart equals quantizing BFL's fused qkv."""
    out = {}
    for name, value in state.items():
        kind, data = ggml_type(bfl_prefix(name), value, types), value.numpy().astype(np.float32)
        if kind == F16:
            data = data.astype(np.float16).astype(np.float32)
        elif kind != GGMLQuantizationType.F32:
            data = dequantize(quantize(data, kind), kind).reshape(data.shape)
        out[name] = torch.from_numpy(np.ascontiguousarray(data))
    return out


def bfl_prefix(diffusers_name: str) -> str:
    """The BFL name a diffusers tensor comes from, as far as TYPES tells kinds apart."""
    for theirs, bfl in (("transformer_blocks.", "double_blocks."), ("single_transformer_blocks.", "single_blocks."),
                        ("context_embedder.", "txt_in."), ("time_text_embed.text_embedder.", "vector_in.")):
        if diffusers_name.startswith(theirs):
            return bfl
    return diffusers_name


TYPES = {"double_blocks": Q4_0, "single_blocks": Q4_1, "txt_in": Q8_0, "vector_in": Q4_0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("gguf-base"), SPEC)


@pytest.fixture(scope="module")
def gguf_file(tiny, tmp_path_factory):
    from diffusers import FluxTransformer2DModel

    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    path = tmp_path_factory.mktemp("gguf") / "flux1-tiny-Q8_0-Q4_0.gguf"
    write_gguf(path, diffusers_to_bfl(state), TYPES)
    return path, state


def test_a_gguf_transformer_makes_diffusers_image_from_the_dequantized_weights(tiny, gguf_file, tmp_path):
    path, state = gguf_file
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=2)
    ours = run_cli("generate", "--path", path, "--base-model", tiny, "--prompt", "a red house", "--steps", STEPS,
                   "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)

    def reference(weights: dict[str, torch.Tensor]):
        pipe.transformer.load_state_dict(weights)
        return pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.5,
                    latents=pack(np.load(noise)), output_type="pil").images[0]

    assert max_uint8_diff(ours, reference(dequantized_diffusers_state(state, TYPES))) <= UINT8_TOLERANCE


def test_the_transformer_computes_with_the_files_quantized_values(gguf_file):
    """One forward pass against diffusers' transformer holding the dequantized weights, and far from its float
    weights' (the tiny model's image hides most of the difference)."""
    from diffusers import FluxTransformer2DModel
    from mflux_core.weights.bfl import load_bfl_transformer

    path, state = gguf_file
    reference = FluxTransformer2DModel(**{key: value for key, value in SPEC_CONFIG.items()}).eval()
    reference.load_state_dict(dequantized_diffusers_state(state, TYPES))
    inputs = random_inputs(reference)
    ours = run_ours(load_bfl_transformer(path), inputs)
    assert relative_error(ours, run_reference(reference, inputs)) <= RELATIVE_TOLERANCE
    reference.load_state_dict(state)
    assert relative_error(ours, run_reference(reference, inputs)) > MEANINGFUL_CHANGE


def test_its_layers_stay_quantized_and_the_plan_reads_the_header(tiny, gguf_file):
    import mlx.nn as nn
    from mflux_core.weights.bfl import load_bfl_transformer
    from mflux_core.weights.quantize import parameter_bytes

    path, _ = gguf_file
    model = load_bfl_transformer(path)
    layers = dict(model.named_modules())
    kinds = {name: (module.bits, module.group_size) for name, module in layers.items()
             if isinstance(module, nn.QuantizedLinear)}
    assert kinds["transformer_blocks.0.attn.to_q"] == (4, 32) and kinds["transformer_blocks.0.ff.net.2"] == (4, 32)
    assert kinds["single_transformer_blocks.0.proj_mlp"] == (4, 32) and kinds["context_embedder"] == (8, 32)
    assert isinstance(layers["x_embedder"], nn.Linear)  # 16 input channels: not in ggml's blocks, kept F32
    assert resident_bytes_of([path], 4) == parameter_bytes(model)


def test_a_gguf_file_of_types_mlx_cannot_read_is_refused_by_name(tiny, gguf_file, tmp_path, capsys):
    _, state = gguf_file
    path = tmp_path / "flux1-tiny-Q5_0.gguf"
    write_gguf(path, diffusers_to_bfl(state), {"double_blocks": Q5_0})
    code = cli.main(["generate", "--path", str(path), "--base-model", str(tiny), "--prompt", "x", "--steps", "1",
                     "--height", "32", "--width", "32", "--output", str(tmp_path / "o.png")])
    assert code == 1
    assert ("flux1-tiny-Q5_0.gguf has Q5_0 tensors, which MLX cannot read: the studio reads GGUF files of Q8_0, "
            "Q4_0 or Q4_1") in capsys.readouterr().err
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(20))
    code = cli.main(["generate", "--path", str(tmp_path / "broken.gguf"), "--base-model", str(tiny), "--prompt", "x",
                     "--output", str(tmp_path / "o.png")])
    assert code == 1 and "broken.gguf is not a readable GGUF file" in capsys.readouterr().err


def test_saving_or_merging_a_gguf_file_is_refused_in_a_sentence(tiny, gguf_file, tmp_path, capsys):
    path, _ = gguf_file
    code = cli.main(["save", "--model-path", str(path), "--base-model", str(tiny), "--path", str(tmp_path / "saved")])
    assert code == 1
    assert f"{path.name} is a GGUF file, whose layers are quantized in ggml's groups of 32: saving a model folder " \
           "needs float weights" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()
    code = cli.main(["merge", "--model-a", str(tiny), "--model-b", str(path), "--path", str(tmp_path / "merged")])
    assert code == 1
    assert f"{path.name} is a GGUF file, whose layers are quantized in ggml's groups of 32: a merge or a LoRA " \
           "extraction needs float weights" in capsys.readouterr().err


@pytest.mark.parametrize("base_name", ["dev", "my-flux-dev"])
def test_a_single_file_picked_by_name_takes_its_base_from_flux1_on_disk(tiny, gguf_file, tmp_path, base_name,
                                                                        monkeypatch):
    """As the page and the APIs name a models-folder file (no base): a file with a guidance embedding runs on
    FLUX.1-dev's VAE, text encoders and scheduler when dev is on disk (or another FLUX.1 folder with a guidance
    embedding), as `--base-model` does; without one, a sentence says what to get, in the page's words."""
    import shutil

    from huggingface_hub import constants

    from mflux_core.errors import WordedTwice
    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # this machine's FLUX.1 downloads aside
    path, _ = gguf_file
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(path, models / path.name)
    request = GenerationRequest(model=path.name, prompt="a red house", seed=3, steps=2, width=WIDTH, height=HEIGHT,
                                guidance=3.5)
    with pytest.raises(WordedTwice, match=f"^{path.name} holds only a transformer: its VAE, text encoders and "
                                          "scheduler come from FLUX.1-dev, which is not on disk: download it from the "
                                          r"Models tab, or put a FLUX.1-dev folder \(diffusers layout\) into the "
                                          "models folder.$"):
        ModelManager(models_dir=models).generate(request)
    (models / base_name).symlink_to(tiny, target_is_directory=True)
    picked = ModelManager(models_dir=models).generate(request).image
    explicit = run_cli("generate", "--path", path, "--base-model", tiny, "--prompt", "a red house", "--seed", 3,
                       "--steps", 2, "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5,
                       "--output", tmp_path / "explicit.png")
    assert max_uint8_diff(picked.convert("RGB"), explicit) == 0


def test_a_comfyui_fp8_single_file_makes_diffusers_image_from_its_fp8_weights(tiny, gguf_file, tmp_path):
    """flux1-dev-fp8.safetensors as ComfyUI ships it: matrices in float8_e4m3fn, the rest in bfloat16 (MLX hands
    E4M3 over as raw bytes; an FP8 file failed with a traceback before)."""
    from safetensors.torch import save_file

    _, state = gguf_file
    rounded = {name: (value.to(torch.float8_e4m3fn) if value.ndim == 2 else value.to(torch.bfloat16)).float()
               for name, value in state.items()}
    path = tmp_path / "flux1-tiny-fp8.safetensors"
    save_file({name: (value.to(torch.float8_e4m3fn) if value.ndim == 2 else value.to(torch.bfloat16))
               for name, value in diffusers_to_bfl(state).items()}, path)
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=5)
    ours = run_cli("generate", "--path", path, "--base-model", tiny, "--prompt", "a red house", "--steps", STEPS,
                   "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)
    pipe.transformer.load_state_dict(rounded)
    expected = pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.5,
                    latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE


def test_an_e5m2_file_is_refused_in_a_sentence(tmp_path):
    from safetensors.torch import save_file

    from mflux_core.errors import ModelLoadError
    from mflux_core.weights.safetensors_io import load_safetensors

    save_file({"img_in.weight": torch.randn(4, 64).to(torch.float8_e5m2)}, tmp_path / "flux1-dev-fp8-e5m2.safetensors")
    with pytest.raises(ModelLoadError, match="^flux1-dev-fp8-e5m2.safetensors stores FP8 tensors as E5M2, which MLX "
                                             "cannot read: use its E4M3"):
        load_safetensors(tmp_path / "flux1-dev-fp8-e5m2.safetensors")
