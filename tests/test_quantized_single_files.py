"""Quantized single-file FLUX.1 transformers. GGUF (city96's layout: BFL's names, ggml types) runs with `--path
file.gguf --base-model ...`: its Q8_0, Q4_0 and Q4_1 layers stay quantized as MLX holds them, and the image equals
diffusers' on the weights llama.cpp's own `gguf` package dequantizes (float32, uint8 max |diff| <= 2); files of types
MLX cannot read are refused by name, before anything loads; the memory plan reads the file's header. ComfyUI's FP8
files (E4M3) equal diffusers on the same weights rounded to FP8 by torch, and its scaled FP8 files (each matrix divided
by a scale kept beside it, in its three layouts) on the stored values times the scales, as ComfyUI computes them."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from mflux_core import cli
from mflux_core.weights.ggml_blocks import EXACT_BITS, affine_matrix
from mflux_core.weights.loading import cast_floats
from mflux_core.weights.resolve import resident_bytes_of
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux, load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli
from tests.test_transformer import (
    MEANINGFUL_CHANGE, RELATIVE_TOLERANCE, diffusers_to_bfl, random_inputs, relative_error, run_ours, run_reference,
)

Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16 = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1,
                                     GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1, GGMLQuantizationType.F16)
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
                        ("context_embedder.", "txt_in."), ("time_text_embed.text_embedder.", "vector_in."),
                        ("time_text_embed.timestep_embedder.", "time_in."),
                        ("time_text_embed.guidance_embedder.", "guidance_in."), ("x_embedder.", "img_in."),
                        ("proj_out.", "final_layer."), ("norm_out.", "final_layer.")):
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


def single_file_and_diffusers_images(tiny, path, weights: dict[str, torch.Tensor], tmp_path, seed: int, *options):
    """The image of the transformer file `path` on `tiny`'s VAE and text encoders (CLI, `options` added), and
    diffusers' with the transformer holding `weights`, from the same noise."""
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=seed)
    ours = run_cli("generate", "--path", path, "--base-model", tiny, "--prompt", "a red house", "--steps", STEPS,
                   "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise, *options,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)
    pipe.transformer.load_state_dict(weights)
    return ours, pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.5,
                      latents=pack(np.load(noise)), output_type="pil").images[0]


def test_a_gguf_transformer_makes_diffusers_image_from_the_dequantized_weights(tiny, gguf_file, tmp_path):
    path, state = gguf_file
    ours, reference = single_file_and_diffusers_images(tiny, path, dequantized_diffusers_state(state, TYPES),
                                                       tmp_path, 2)
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


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


def random_blocks(kind: GGMLQuantizationType, rows: int, columns: int, generator: np.random.Generator) -> np.ndarray:
    """Random bytes in `kind`'s block layout, (rows, the row's bytes), with finite float16 scales small enough that the
    values stay near a model's (the other bytes are codes, sub-block scales and signs: any value is valid)."""
    values, size = GGML_QUANT_SIZES[kind]
    blocks = generator.integers(0, 256, size=(rows * columns // values, size), dtype=np.uint8)
    magnitude = 2e-5 if values == 256 else 4e-3  # a K-quant's d multiplies a 6- or 8-bit sub-block scale
    for offset in SCALE_OFFSETS[kind]:
        scales = generator.uniform(0.2, 1.0, len(blocks)) * magnitude
        blocks[:, offset:offset + 2] = np.frombuffer(scales.astype(np.float16).tobytes(), np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


# where each block keeps its float16 d (and m or dmin); Q6_K keeps its d last
SCALE_OFFSETS = {Q8_0: (0,), Q4_0: (0,), Q4_1: (0, 2), Q5_0: (0,), Q5_1: (0, 2), GGMLQuantizationType.Q4_K: (0, 2),
                 GGMLQuantizationType.Q5_K: (0, 2), GGMLQuantizationType.Q6_K: (208,)}


@pytest.mark.parametrize("kind", list(EXACT_BITS))
def test_ggml_blocks_decode_each_affine_type_as_the_gguf_package_dequantizes_it(kind):
    """The studio's own decoder (which a file with any type but MLX's own three goes through), value for value."""
    blocks = random_blocks(kind, 3, 512, np.random.default_rng(3))
    packed, scales, biases = (mx.array(part) for part in affine_matrix(blocks, kind, (3, 512)))
    ours = mx.dequantize(packed, scales, biases, group_size=32, bits=EXACT_BITS[kind])
    np.testing.assert_array_equal(np.array(ours), dequantize(blocks, kind).reshape(3, 512))


@pytest.mark.parametrize("kind", list(SCALE_OFFSETS))
def test_each_ggml_type_reads_as_the_gguf_package_dequantizes_it(kind, tmp_path):
    """A file of one type: exactly for the types MLX holds in groups of 32 (Q8_0, Q4_0 and Q4_1 through MLX's own
    reader), Q6_K (groups of 16) as float16."""
    from mflux_core.weights.gguf_mlx import load_gguf

    blocks = random_blocks(kind, 3, 512, np.random.default_rng(1))
    writer = GGUFWriter(str(tmp_path / "t.gguf"), arch="flux")
    writer.add_tensor("layer.weight", blocks, raw_shape=blocks.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = dequantize(blocks, kind).reshape(3, 512)
    weights = cast_floats(load_gguf(tmp_path / "t.gguf"), mx.float32)  # as the transformer's loader casts them
    if kind in EXACT_BITS:
        ours = mx.dequantize(weights["layer.weight"], weights["layer.scales"], weights["layer.biases"],
                             group_size=32, bits=EXACT_BITS[kind])
        np.testing.assert_array_equal(np.array(ours), expected)
    else:
        np.testing.assert_array_equal(np.array(weights["layer.weight"]), expected.astype(np.float16))
    assert resident_bytes_of([tmp_path / "t.gguf"], 4) == sum(value.nbytes for value in weights.values())


K_SPEC = TinyFluxSpec(heads=2, head_dim=128, axes_dims_rope=(16, 56, 56), num_layers=1, num_single_layers=1, seed=6)
K_TYPES = {"double_blocks": GGMLQuantizationType.Q4_K, "single_blocks": GGMLQuantizationType.Q5_K,
           "vector_in": Q5_1, "final_layer": GGMLQuantizationType.Q6_K, "txt_in": Q8_0, "time_in": Q4_0,
           "guidance_in": Q4_1}


def test_a_k_quant_file_makes_diffusers_image_from_the_dequantized_weights(tmp_path):
    """city96's Q4_K_S / Q5_K_S kind of file (2 heads of 128: matrices 256 wide, a K-quant super-block): random
    blocks in each type, the reference holding what the gguf package dequantizes them to (Q6_K as float16)."""
    from diffusers import FluxTransformer2DModel

    tiny = build_tiny_flux(tmp_path / "base", K_SPEC)
    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    generator, raw, reference = np.random.default_rng(2), {}, {}
    for name, value in state.items():
        kind = ggml_type(bfl_prefix(name), value, K_TYPES)
        if kind in (F16, GGMLQuantizationType.F32) or value.shape[1] % GGML_QUANT_SIZES[kind][0]:
            raw[name], reference[name] = value, value
            continue
        blocks = random_blocks(kind, *value.shape, generator)
        raw[name] = torch.from_numpy(blocks)  # rows of blocks concatenate into BFL's fused tensors as rows of values
        values = dequantize(blocks, kind).reshape(value.shape)
        reference[name] = torch.from_numpy(values.astype(np.float16).astype(np.float32)
                                           if kind == GGMLQuantizationType.Q6_K else values)
    path = tmp_path / "flux1-tiny-Q4_K_S.gguf"
    writer = GGUFWriter(str(path), arch="flux")
    for name, value in diffusers_to_bfl(raw).items():
        if value.dtype == torch.uint8:
            kind = next(kind for prefix, kind in K_TYPES.items() if name.startswith(prefix))
            writer.add_tensor(name, value.numpy(), raw_shape=tuple(value.shape), raw_dtype=kind)
        else:
            writer.add_tensor(name, value.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=7)
    ours = run_cli("generate", "--path", path, "--base-model", tiny, "--prompt", "a red house", "--steps", STEPS,
                   "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)

    def image(weights):
        pipe.transformer.load_state_dict(weights)
        return pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.5,
                    latents=pack(np.load(noise)), output_type="pil").images[0]

    expected = image(reference)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, image(state)) > 3 * UINT8_TOLERANCE  # the file's blocks make this image


def test_a_gguf_file_the_studio_cannot_read_is_refused_in_a_sentence(tiny, tmp_path, capsys):
    writer = GGUFWriter(str(tmp_path / "flux1-q8_1.gguf"), arch="flux")
    blocks = np.zeros((4, GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1][1] * 8), np.uint8)
    writer.add_tensor("img_in.weight", blocks, raw_shape=blocks.shape, raw_dtype=GGMLQuantizationType.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code = cli.main(["generate", "--path", str(tmp_path / "flux1-q8_1.gguf"), "--base-model", str(tiny), "--prompt",
                     "x", "--output", str(tmp_path / "o.png")])
    assert code == 1 and "flux1-q8_1.gguf has Q8_1 tensors, which the studio cannot read yet" in \
        capsys.readouterr().err
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(20))
    code = cli.main(["generate", "--path", str(tmp_path / "broken.gguf"), "--base-model", str(tiny), "--prompt", "x",
                     "--output", str(tmp_path / "o.png")])
    assert code == 1 and "broken.gguf is not a readable GGUF file" in capsys.readouterr().err


def test_saving_or_merging_a_gguf_file_is_refused_in_a_sentence(tiny, gguf_file, tmp_path, capsys):
    path, _ = gguf_file
    code = cli.main(["save", "--model-path", str(path), "--base-model", str(tiny), "--path", str(tmp_path / "saved")])
    assert code == 1
    assert f"{path.name} is a GGUF file, whose layers are quantized in ggml's blocks: saving a model folder " \
           "needs float weights" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()
    code = cli.main(["merge", "--model-a", str(tiny), "--model-b", str(path), "--path", str(tmp_path / "merged")])
    assert code == 1
    assert f"{path.name} is a GGUF file, whose layers are quantized in ggml's blocks: a merge or a LoRA " \
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
                                          r"Models tab, or put a FLUX.1-dev folder \(diffusers layout\) or "
                                          "ComfyUI's ae, clip_l and t5xxl files into the models folder.$"):
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
    ours, expected = single_file_and_diffusers_images(tiny, path, rounded, tmp_path, 5)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE


def comfy_scaled_fp8(state: dict[str, torch.Tensor], layout: str) -> tuple[dict, dict, dict]:
    """`state`'s matrices as ComfyUI's scaled FP8 files store them (each divided by its scale, in E4M3, the scale
    beside it): `layout` "legacy" (`scale_weight`, a `scaled_fp8` marker), "tensors" (`weight_scale`, the layer's
    format in its `comfy_quant`) or "header" (`weight_scale`, the formats in the header's metadata). Returns the
    tensors, the header's metadata, and what ComfyUI computes from them (stored values times scale)."""
    legacy = layout == "legacy"
    stored, used, formats = {}, {}, {}
    for name, value in state.items():
        if value.ndim != 2:
            stored[name] = used[name] = value
            continue
        scale = value.abs().max().float() / 448  # E4M3's largest value
        fp8 = (value / scale).to(torch.float8_e4m3fn)
        layer = name.removesuffix(".weight")
        stored.update({name: fp8, f"{layer}.{'scale_weight' if legacy else 'weight_scale'}": scale.reshape(()),
                       f"{layer}.{'scale_input' if legacy else 'input_scale'}": torch.tensor(1.0)})
        formats[layer] = {"format": "float8_e4m3fn"}
        if layout == "tensors":
            stored[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps(formats[layer]).encode()), dtype=torch.uint8)
        used[name] = fp8.float() * scale
    if legacy:
        stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    metadata = {"_quantization_metadata": json.dumps({"layers": formats})} if layout == "header" else None
    return stored, metadata, used


@pytest.mark.parametrize("layout", ["legacy", "tensors", "header"])
def test_a_comfyui_scaled_fp8_file_makes_diffusers_image_from_its_scaled_weights(tiny, gguf_file, tmp_path, layout):
    from safetensors.torch import save_file

    from mflux_core.weights.bfl import bfl_to_diffusers

    _, state = gguf_file
    stored, metadata, used = comfy_scaled_fp8(diffusers_to_bfl(state), layout)
    path = tmp_path / "flux1-tiny-fp8_scaled.safetensors"
    save_file({name: value.contiguous() for name, value in stored.items()}, path, metadata=metadata)
    # diffusers' names for the BFL tensors ComfyUI computes (a fused qkv has one scale for its three parts), by the
    # renaming test_transformer checks against diffusers' own converter
    renamed = bfl_to_diffusers({name: mx.array(value.numpy()) for name, value in used.items()})
    ours, expected = single_file_and_diffusers_images(
        tiny, path, {name: torch.from_numpy(np.array(value)) for name, value in renamed.items()}, tmp_path, 6)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE


def test_a_scaled_file_of_another_format_is_refused_in_a_sentence(tmp_path):
    from safetensors.torch import save_file

    from mflux_core.errors import ModelLoadError
    from mflux_core.weights.safetensors_io import load_safetensors

    save_file({"img_in.weight": torch.randn(4, 64).to(torch.float8_e4m3fn), "img_in.weight_scale": torch.tensor(1.0),
               "img_in.comfy_quant": torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)},
              tmp_path / "flux1-dev-nvfp4.safetensors")
    with pytest.raises(ModelLoadError, match="^flux1-dev-nvfp4.safetensors stores layers as nvfp4, which the studio "
                                             "cannot read: use its FP8"):
        load_safetensors(tmp_path / "flux1-dev-nvfp4.safetensors")


def test_an_e5m2_file_is_refused_in_a_sentence(tmp_path):
    from safetensors.torch import save_file

    from mflux_core.errors import ModelLoadError
    from mflux_core.weights.safetensors_io import load_safetensors

    save_file({"img_in.weight": torch.randn(4, 64).to(torch.float8_e5m2)}, tmp_path / "flux1-dev-fp8-e5m2.safetensors")
    with pytest.raises(ModelLoadError, match="^flux1-dev-fp8-e5m2.safetensors stores FP8 tensors as E5M2, which MLX "
                                             "cannot read: use its E4M3"):
        load_safetensors(tmp_path / "flux1-dev-fp8-e5m2.safetensors")
