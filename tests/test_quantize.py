"""Quantization (3-8 bits, MLX affine, groups of 64) at load (transformer, T5, ControlNet) and in saved folders.

The shared tiny models are 32 wide, so almost none of their layers divide into groups of 64: these
tests build their own tiny FLUX.1 that is 64 wide (transformer, T5 and CLIP), where most do.
PSNR of the quantized image against the float32 image (same noise, 64x64, 3 steps), measured:
8 bits 58.4 dB, 6 bits 51.5, 5 bits 47.9, 4 bits 42.2, 3 bits 34.3.
"""

import json
import struct

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from PIL import Image

from mflux_core.cli import main as cli_main
from mflux_core.lora.formats import LoraWeights
from mflux_core.lora.layers import LoRALinear
from mflux_core.manager import ModelManager
from mflux_core.models.t5 import load_t5_encoder
from mflux_core.models.transformer import load_transformer
from mflux_core.request import GenerationRequest
from mflux_core.weights.quantize import GROUP_SIZE, parameter_bytes, quantize_model
from tests.fixtures import lora_files as lf
from tests.fixtures.tiny_controlnet import build_tiny_controlnet
from tests.fixtures.tiny_controlnet import load_transformer as load_reference_transformer
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux, load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

HEIGHT, WIDTH, STEPS, GUIDANCE = 64, 64, 3, 3.5
PROMPT = "a blue boat on a calm sea"
MIN_PSNR = {8: 45.0, 6: 40.0, 5: 38.0, 4: 32.0, 3: 26.0}  # dB; the brief asks >= 30 at 8 bits


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny FLUX.1 64 wide, so that group-of-64 quantization reaches most layers."""
    spec = TinyFluxSpec(heads=2, head_dim=32, axes_dims_rope=(8, 12, 12), text_dim=64, pooled_dim=64, seed=3)
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-64"), spec)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("noise"), (1, 4, HEIGHT // 8, WIDTH // 8), seed=5)


def image(folder, out, noise, *extra):
    return run_cli("generate", "--path", folder, "--prompt", PROMPT, "--steps", STEPS, "--height", HEIGHT,
                   "--width", WIDTH, "--guidance", GUIDANCE, "--init-noise", noise, "--dtype", "float32",
                   "--output", out, *extra)


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def float_image(wide, noise, tmp_path_factory):
    return image(wide, tmp_path_factory.mktemp("float") / "float.png", noise)


@pytest.mark.parametrize("bits", [8, 6, 5, 4, 3])
def test_quantized_image_is_close_to_float(bits, wide, noise, float_image, tmp_path):
    quantized = image(wide, tmp_path / "q.png", noise, "-q", bits)
    print(f"{bits} bits: PSNR {psnr(quantized, float_image):.1f} dB")
    assert psnr(quantized, float_image) >= MIN_PSNR[bits]


def test_exactly_the_linear_layers_with_inputs_divisible_by_64_are_quantized(wide):
    for model in (load_transformer(wide / "transformer"), load_t5_encoder(wide / "text_encoder_2")):
        float_bytes = parameter_bytes(model)
        linears = {path: m.weight.shape[1] for path, m in model.named_modules() if isinstance(m, nn.Linear)}
        quantize_model(model, 4)
        kinds = dict(model.named_modules())
        quantized = {path for path in linears if isinstance(kinds[path], nn.QuantizedLinear)}
        assert quantized == {path for path, width in linears.items() if width % GROUP_SIZE == 0}
        assert len(quantized) >= len(linears) / 2
        assert parameter_bytes(model) < 0.7 * float_bytes


def safetensors_header(path) -> tuple[dict, int]:
    """(header JSON, payload bytes) of a .safetensors file."""
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(length))
    return header, path.stat().st_size - 8 - length


def test_save_then_load_gives_the_identical_image_and_records_the_settings(wide, noise, tmp_path):
    for bits in (8, 3):
        in_memory = image(wide, tmp_path / f"memory{bits}.png", noise, "-q", bits)
        saved = tmp_path / f"saved{bits}"
        assert cli_main(["save", "--model-path", str(wide), "--path", str(saved), "-q", str(bits)]) == 0
        loaded = image(saved, tmp_path / f"loaded{bits}.png", noise)
        assert max_uint8_diff(loaded, in_memory) == 0

        for component, file in (("transformer", "diffusion_pytorch_model.safetensors"),
                                ("text_encoder_2", "model.safetensors")):
            config = json.loads((saved / component / "config.json").read_text())
            assert config["quantization"] == {"bits": bits, "group_size": 64}
            header, _ = safetensors_header(saved / component / file)
            assert header["__metadata__"]["quantization_bits"] == str(bits)
        for name in ("vae", "text_encoder", "tokenizer", "tokenizer_2", "scheduler", "model_index.json"):
            assert (saved / name).exists()


def expected_transformer_bytes(d: lf.Dims, float_payload: int, bits: int | None) -> int:
    """Worked out from the layer shapes: a quantized (out, in) weight becomes out*in*bits/8 bytes of
    packed integers plus a float32 scale and offset per group of 64 inputs per output."""
    if bits is None:
        return float_payload
    total = float_payload
    for out_dim, in_dim in lf.diffusers_linears(d).values():
        if in_dim % 64 == 0:
            total += out_dim * in_dim * bits // 8 + 2 * out_dim * (in_dim // 64) * 4 - out_dim * in_dim * 4
    return total


def test_saved_files_shrink_as_expected(wide, tmp_path):
    dims = lf.Dims.of(wide)
    payloads = {}
    for bits in (None, 8, 4):
        out = tmp_path / f"saved{bits}"
        assert cli_main(["save", "--model-path", str(wide), "--path", str(out)] + (["-q", str(bits)] if bits else [])) == 0
        _, payloads[bits] = safetensors_header(out / "transformer" / "diffusion_pytorch_model.safetensors")
    for bits in (8, 4):
        assert payloads[bits] == expected_transformer_bytes(dims, payloads[None], bits)
    print(f"transformer bytes: float32 {payloads[None]}, 8-bit {payloads[8]} ({payloads[8] / payloads[None]:.3f}x), "
          f"4-bit {payloads[4]} ({payloads[4] / payloads[None]:.3f}x)")
    assert payloads[4] < payloads[8] < 0.35 * payloads[None]


def test_lora_on_a_quantized_layer_adds_exactly_its_delta():
    rng = np.random.default_rng(0)
    linear = nn.Linear(128, 96)
    quantized = nn.QuantizedLinear.from_linear(linear, group_size=64, bits=4)
    down = mx.array(rng.standard_normal((4, 128)).astype(np.float32))
    up = mx.array(rng.standard_normal((96, 4)).astype(np.float32))
    layer = LoRALinear(quantized)
    layer.add("a", LoraWeights(down, up, 0.5), scale=0.8)
    x = mx.array(rng.standard_normal((2, 7, 128)).astype(np.float32))
    expected = np.array(quantized(x)) + 0.4 * np.array(x) @ np.array(down).T @ np.array(up).T
    assert np.abs(np.array(layer(x)) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_lora_on_a_quantized_model_is_close_to_lora_on_float(wide, noise, float_image, tmp_path):
    lora, _ = lf.write_bfl_lora(tmp_path / "k.safetensors", lf.Dims.of(wide), "kohya", seed=1, alpha=2.0,
                                magnitude=1.0)
    float_lora = image(wide, tmp_path / "f.png", noise, "--lora-paths", lora)
    quantized_lora = image(wide, tmp_path / "q.png", noise, "--lora-paths", lora, "-q", 8)
    assert max_uint8_diff(float_lora, float_image) > 20
    assert psnr(quantized_lora, float_lora) >= MIN_PSNR[8]


def test_save_bakes_loras_into_a_folder_diffusers_loads(wide, noise, tmp_path):
    dims = lf.Dims.of(wide)
    kohya, kohya_deltas = lf.write_bfl_lora(tmp_path / "k.safetensors", dims, "kohya", seed=2, alpha=2.0, magnitude=1.0)
    xlabs, xlabs_deltas = lf.write_xlabs_lora(tmp_path / "x.safetensors", dims, seed=3)
    saved = tmp_path / "baked"
    assert cli_main(["save", "--model-path", str(wide), "--path", str(saved), "--lora-paths", str(kohya), str(xlabs),
                     "--lora-scales", "0.8", "-0.5"]) == 0

    ours_runtime = image(wide, tmp_path / "runtime.png", noise, "--lora-paths", kohya, xlabs, "--lora-scales", 0.8, -0.5)
    ours_baked = image(saved, tmp_path / "baked.png", noise)
    pipe = load_diffusers_pipeline(saved)  # our unquantized output is a plain diffusers folder
    diffusers_baked = pipe(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                           latents=pack(np.load(noise)), output_type="pil").images[0]
    reference = load_diffusers_pipeline(wide)
    lf.merge_into(reference.transformer, kohya_deltas, 0.8)
    lf.merge_into(reference.transformer, xlabs_deltas, -0.5)
    merged = reference(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                       latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours_baked, ours_runtime) <= UINT8_TOLERANCE
    assert max_uint8_diff(diffusers_baked, merged) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours_baked, merged) <= UINT8_TOLERANCE


def test_resident_models_are_keyed_by_quantization_and_saved_ones_refuse_other_bits(wide, noise, tmp_path, capsys):
    request = GenerationRequest(model=str(wide), prompt=PROMPT, steps=1, height=32, width=32, dtype="float32")
    manager = ModelManager(max_resident_transformers=2)
    for bits in (None, 4, None):
        manager.generate(request.with_(quantize=bits))
    assert manager.resident.load_counts["transformer"] == 2  # float, then 4-bit; float again from the cache
    saved = tmp_path / "saved8"
    assert cli_main(["save", "--model-path", str(wide), "--path", str(saved), "-q", "8"]) == 0
    args = ["generate", "--path", str(saved), "--prompt", "x", "--steps", "1", "--height", "32", "--width", "32",
            "--output", str(tmp_path / "x.png"), "-q", "4"]
    assert cli_main(args) == 1
    assert ("quantized to 8 bits already (a saved quantized model, a GGUF or bitsandbytes 4-bit file); load it "
            "without quantizing") in capsys.readouterr().err


def test_verbose_cli_reports_model_memory(wide, tmp_path, capsys):
    common = ["generate", "--path", str(wide), "--prompt", "x", "--steps", "1", "--height", "32", "--width", "32",
              "--output", str(tmp_path / "x.png"), "-v"]
    lines = {}
    for bits in (None, 4):
        assert cli_main(common + (["-q", str(bits)] if bits else [])) == 0
        lines[bits] = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("model memory"))
    assert lines[None].startswith("model memory (not quantized): transformer ")
    assert lines[4].startswith("model memory (4-bit): transformer ")

    def transformer_mb(line):
        return float(line.split("transformer ")[1].split(" MB")[0])

    assert transformer_mb(lines[4]) < transformer_mb(lines[None]) / 3


def test_low_ram_reloads_the_text_encoders_quantized(wide, tmp_path):
    """With low_ram the encoders are freed after each prompt; the next prompt must reload them quantized."""
    request = GenerationRequest(model=str(wide), prompt="first", steps=1, height=32, width=32, dtype="float32",
                                quantize=4)
    low_ram = ModelManager(low_ram=True)
    low_ram.generate(request)
    second = low_ram.generate(request.with_(prompt="a second prompt")).image
    assert max_uint8_diff(second, ModelManager().generate(request.with_(prompt="a second prompt")).image) == 0


def test_the_controlnet_is_quantized_with_the_transformer(wide, noise, float_image, tmp_path):
    controlnet = build_tiny_controlnet(tmp_path / "controlnet", load_reference_transformer(wide), num_layers=1,
                                       num_single_layers=1)
    control = tmp_path / "control.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(control)
    request = GenerationRequest(tool="controlnet", model=str(wide), prompt=PROMPT, steps=STEPS, height=HEIGHT,
                                width=WIDTH, guidance=GUIDANCE, dtype="float32", init_noise_path=str(noise),
                                controlnet_image_path=str(control), controlnet_strength=0.8,
                                extra={"controlnet_path": str(controlnet)})
    manager = ModelManager(max_resident_transformers=2)
    images = {bits: manager.generate(request.with_(quantize=bits)).image for bits in (None, 8)}
    float_net, quantized_net = manager.resident.auxiliary.values()
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in float_net.named_modules())
    assert {m.bits for _, m in quantized_net.named_modules() if isinstance(m, nn.QuantizedLinear)} == {8}
    assert parameter_bytes(quantized_net) < 0.7 * parameter_bytes(float_net)
    assert psnr(images[8], images[None]) >= MIN_PSNR[8]
    assert psnr(images[None], float_image) < MIN_PSNR[8]  # the ControlNet does steer the image


def test_save_copies_t5_as_it_is_unless_it_quantizes_or_casts_it(wide, tmp_path):
    """T5 is the largest file a save writes: kept byte for byte when nothing changes it, read only to quantize it or
    write it in another dtype (the written copy then loads back to the same values, cast)."""
    def t5_files(folder):
        return {path.name: path.read_bytes() for path in sorted((folder / "text_encoder_2").glob("*.safetensors"))}

    assert cli_main(["save", "--model-path", str(wide), "--path", str(tmp_path / "same"), "--dtype", "float32"]) == 0
    assert t5_files(tmp_path / "same") == t5_files(wide)
    assert cli_main(["save", "--model-path", str(wide), "--path", str(tmp_path / "half"), "--dtype", "bfloat16"]) == 0
    from mflux_core.weights.resolve import stored_float_dtypes
    from mflux_core.weights.safetensors_io import weight_files

    assert stored_float_dtypes(weight_files(tmp_path / "half" / "text_encoder_2")) == {"BF16"}
    written = load_t5_encoder(tmp_path / "half" / "text_encoder_2", mx.bfloat16)
    original = dict(nn.utils.tree_flatten(load_t5_encoder(wide / "text_encoder_2", mx.bfloat16).parameters()))
    assert all(mx.array_equal(value, original[key]).item()
               for key, value in nn.utils.tree_flatten(written.parameters()))
    assert cli_main(["save", "--model-path", str(wide), "--path", str(tmp_path / "q8"), "-q", "8"]) == 0
    assert t5_files(tmp_path / "q8") != t5_files(wide)
