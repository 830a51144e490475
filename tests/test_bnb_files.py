"""Forge's NF4 checkpoints (lllyasviel's flux1-dev-bnb-nf4: BFL's names under `model.diffusion_model.`, each linear
weight a bitsandbytes Linear4bit state) run with `--path file --base-model ...`: the layers are decoded exactly as
bitsandbytes decodes them (NF4 and FP4, with and without double quantization), then held as MLX's affine groups of 32.
At `-q 8` the image equals diffusers' on the weights bitsandbytes dequantizes (float32, uint8 max |diff| <= 2); at the
default 4 bits the transformer's output stays within 10% of that reference (measured 8%; NF4's own values move it by
12% from the float weights'), and the memory plan reads the file's header. A diffusers folder saved with a bnb config
(transformer and T5 in NF4, or in LLM.int8, which decodes exactly as bitsandbytes' int8_vectorwise_dequant and stays
at 8 bits) does the same.

The reference decoder is bitsandbytes' own torch implementation (`_dequantize_4bit_compute`, which its CUDA kernel
matches), not its AVX-512 CPU kernel: in bitsandbytes 0.50.2 that one decodes a layer narrower than a block (64)
wrongly (a 64x32 NF4 weight comes back 0.19 off where NF4 is 0.04 off)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import bitsandbytes.functional as bnb
import torch
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import save_file

from mflux_core.weights import bnb_layers
from mflux_core.weights.bfl import COMFY_PREFIX, load_bfl_transformer
from mflux_core.weights.quantize import parameter_bytes
from mflux_core.weights.resolve import resident_bytes_of
from tests.fixtures.tiny_flux import build_tiny_flux
from tests.parity import UINT8_TOLERANCE, max_uint8_diff
from tests.test_quantized_single_files import SPEC, SPEC_CONFIG, single_file_and_diffusers_images
from tests.test_transformer import MEANINGFUL_CHANGE, diffusers_to_bfl, random_inputs, relative_error, run_ours, \
    run_reference


REQUANTIZED_4_BIT_TOLERANCE = 0.1  # the forward pass's relative error at MLX's 4 bits against NF4's own values
BLOCKSIZE = 64  # bitsandbytes' default, and Forge's


def is_linear_weight(name: str, value: torch.Tensor) -> bool:
    return name.endswith(".weight") and value.ndim == 2


def nf4_state(name: str, value: torch.Tensor, quant_type: str = "nf4", nested: bool = False) -> dict:
    """One Linear4bit's tensors as bitsandbytes serializes them (`as_dict(packed=True)`, the weight's codes)."""
    codes, state = bnb.quantize_4bit(value.float(), blocksize=BLOCKSIZE, quant_type=quant_type,
                                     compress_statistics=nested)
    return {name: codes, **{f"{name}.{key}": tensor for key, tensor in state.as_dict(packed=True).items()}}


def bnb_dequantized(codes: torch.Tensor, state) -> torch.Tensor:
    absmax = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
    decode = _dequantize_4bit_compute.__wrapped__  # bitsandbytes' torch code, without its torch.compile wrapper
    return decode(codes.reshape(-1), absmax.float(), state.code, state.blocksize, state.shape, torch.float32)


def nf4_roundtrip(value: torch.Tensor) -> torch.Tensor:
    return bnb_dequantized(*bnb.quantize_4bit(value.float(), blocksize=BLOCKSIZE, quant_type="nf4"))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("shape", [(64, 256), (64, 32), (3, 100), (5, 7)])
def test_layers_decode_as_bitsandbytes_decodes_them(quant_type, nested, shape):
    value = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    stored = nf4_state("layer.weight", value, quant_type, nested)
    expected = bnb_dequantized(stored["layer.weight"], bnb.QuantState.from_dict(
        {key.removeprefix("layer.weight."): tensor for key, tensor in stored.items() if key != "layer.weight"},
        device=torch.device("cpu"))).numpy()
    weights = {name: mx.array(tensor.numpy()) for name, tensor in stored.items()}
    state_name = bnb_layers.layer_states(weights)["layer.weight"]
    assert np.array_equal(np.array(bnb_layers.dequantize(weights, "layer.weight", state_name)), expected)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("nf4-base"), SPEC)


@pytest.fixture(scope="module")
def nf4_file(tiny, tmp_path_factory):
    """A Forge-style NF4 file of the tiny transformer, and the diffusers state as bitsandbytes reads it back (each
    tensor blocks by 64 on its own, as BFL's fused ones do: every part holds whole blocks)."""
    from diffusers import FluxTransformer2DModel

    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    stored = {}
    for name, value in diffusers_to_bfl(state).items():
        stored.update(nf4_state(COMFY_PREFIX + name, value) if is_linear_weight(name, value)
                      else {COMFY_PREFIX + name: value.contiguous()})
    path = tmp_path_factory.mktemp("nf4") / "flux1-tiny-bnb-nf4.safetensors"
    save_file(stored, str(path))
    read_back = {name: nf4_roundtrip(value) if is_linear_weight(name, value) else value
                 for name, value in state.items()}
    return path, state, read_back


def test_at_8_bits_the_image_equals_diffusers_on_the_dequantized_weights(tiny, nf4_file, tmp_path):
    path, _, read_back = nf4_file
    ours, reference = single_file_and_diffusers_images(tiny, path, read_back, tmp_path, 3, "-q", 8)
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_by_default_the_layers_are_mlx_4_bit_near_the_files_values(nf4_file):
    from diffusers import FluxTransformer2DModel

    path, state, read_back = nf4_file
    model = load_bfl_transformer(path)
    layers = dict(model.named_modules())
    to_q = layers["transformer_blocks.0.attn.to_q"]
    assert (to_q.bits, to_q.group_size) == (4, 32)
    assert isinstance(layers["single_transformer_blocks.0.proj_mlp"], nn.QuantizedLinear)
    assert type(layers["x_embedder"]) is nn.Linear  # 16 input channels: no groups of 32, kept as float
    assert resident_bytes_of([path], 4) == parameter_bytes(model)

    reference = FluxTransformer2DModel(**SPEC_CONFIG).eval()
    reference.load_state_dict(read_back)
    inputs = random_inputs(reference)
    ours = run_ours(model, inputs)
    assert relative_error(ours, run_reference(reference, inputs)) <= REQUANTIZED_4_BIT_TOLERANCE
    reference.load_state_dict(state)
    assert relative_error(ours, run_reference(reference, inputs)) > MEANINGFUL_CHANGE


def test_an_unreadable_quantization_state_is_a_sentence(tmp_path):
    from mflux_core.errors import ModelLoadError

    stored = nf4_state("img_in.weight", torch.randn(8, 64))
    stored["img_in.weight.quant_state.bitsandbytes__nf4"] = torch.tensor(list(b"{not json"), dtype=torch.uint8)
    weights = {name: mx.array(tensor.numpy()) for name, tensor in stored.items()}
    with pytest.raises(ModelLoadError, match="not a readable bitsandbytes quantization state"):
        bnb_layers.requantized(weights, 4, mx.float32)


T5_KEPT = ("shared.", "embed_tokens.", "relative_attention_bias.", ".wo.")  # embeddings, and transformers' fp32 `wo`


def quantized_by_bitsandbytes(component: str, name: str, value: torch.Tensor) -> bool:
    """What diffusers and transformers quantize when they save a bnb model: the linear layers (T5's `wo` kept in
    float32, as transformers keeps it)."""
    return is_linear_weight(name, value) and not (component == "text_encoder_2" and any(k in name for k in T5_KEPT))


def int8_state(name: str, value: torch.Tensor) -> dict:
    """One Linear8bitLt's tensors as bitsandbytes saves them: int8 rows, each row's scale, the row format (0)."""
    codes, row_scales, _ = bnb.int8_vectorwise_quant(value.float())
    layer = name.removesuffix(".weight")
    return {name: codes, f"{layer}.SCB": row_scales, f"{layer}.weight_format": torch.tensor(0, dtype=torch.uint8)}


def test_8_bit_layers_decode_as_bitsandbytes_decodes_them():
    value = torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    stored = int8_state("layer.weight", value)
    expected = bnb.int8_vectorwise_dequant(stored["layer.weight"], stored["layer.SCB"]).numpy()
    weights = {name: mx.array(tensor.numpy()) for name, tensor in stored.items()}
    assert bnb_layers.int8_layers(weights) == ["layer.weight"]
    assert np.array_equal(np.array(bnb_layers.dequantize_int8(weights, "layer.weight")), expected)


def bnb_stored(kind: str, name: str, value: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """A layer as a bnb save of `kind` stores it, and the weight bitsandbytes reads back from that."""
    if kind == "int8":
        stored = int8_state(name, value)
        return stored, bnb.int8_vectorwise_dequant(stored[name], stored[name.removesuffix(".weight") + ".SCB"])
    codes, quant_state = bnb.quantize_4bit(value.float(), blocksize=BLOCKSIZE, quant_type="nf4",
                                           compress_statistics=True)
    stored = {name: codes, **{f"{name}.{key}": tensor for key, tensor in quant_state.as_dict(packed=True).items()}}
    return stored, bnb_dequantized(codes, quant_state)


@pytest.fixture(scope="module", params=["nf4", "int8"])
def bnb_folder(tiny, tmp_path_factory, request):
    """The tiny FLUX.1 as diffusers saves one with a bnb config (diffusers/FLUX.1-dev-bnb-4bit, -8bit): transformer
    and T5 in NF4 (double quantized) or LLM.int8, config.json with its quantization_config. Returns the kind, the
    folder and the transformer and T5 states bitsandbytes reads back."""
    import json
    import shutil

    from safetensors.torch import load_file

    kind = request.param
    folder = tmp_path_factory.mktemp("bnb") / f"FLUX.1-tiny-bnb-{kind}"
    shutil.copytree(tiny, folder)
    read_back = {}
    for component in ("transformer", "text_encoder_2"):
        files = sorted((folder / component).glob("*.safetensors"))
        state = {name: value for path in files for name, value in load_file(path).items()}
        for path in (*files, *(folder / component).glob("*.index.json")):
            path.unlink()
        stored, read_back[component] = {}, {}
        for name, value in state.items():
            if quantized_by_bitsandbytes(component, name, value):
                layer, read_back[component][name] = bnb_stored(kind, name, value)
                stored.update(layer)
            else:
                stored[name] = read_back[component][name] = value.contiguous()
        save_file(stored, str(folder / component / "model.safetensors"))
        config = json.loads((folder / component / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": kind == "nf4",
                                         "load_in_8bit": kind == "int8", "bnb_4bit_quant_type": "nf4",
                                         "bnb_4bit_use_double_quant": True}
        (folder / component / "config.json").write_text(json.dumps(config))
    return kind, folder, read_back


def test_a_diffusers_bnb_folder_at_8_bits_makes_diffusers_image_from_the_dequantized_weights(tiny, bnb_folder,
                                                                                            tmp_path):
    """NF4 asked for at 8 bits; LLM.int8 is 8 bits by default."""
    from tests.fixtures.tiny_flux import load_diffusers_pipeline
    from tests.parity import make_noise, pack, run_cli
    from tests.test_quantized_single_files import HEIGHT, STEPS, WIDTH

    kind, folder, read_back = bnb_folder
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=7)
    ours = run_cli("generate", "--path", folder, "--prompt", "a red house", "--steps", STEPS, "--height", HEIGHT,
                   "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise, *(["-q", 8] if kind == "nf4" else []),
                   "--output", tmp_path / "o.png")
    pipe = load_diffusers_pipeline(tiny)
    pipe.transformer.load_state_dict(read_back["transformer"])
    loaded = pipe.text_encoder_2.load_state_dict(read_back["text_encoder_2"], strict=False)
    assert not loaded.unexpected_keys and set(loaded.missing_keys) <= {"encoder.embed_tokens.weight"}  # tied
    reference = pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.5,
                     latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_a_diffusers_bnb_folder_loads_at_its_own_bits_and_the_plan_reads_its_headers(bnb_folder):
    from mflux_core import loader
    from mflux_core.resident import model_weight_bytes
    from mflux_core.weights.quantize import quantized_bits, t5_encoder, text_encoder_bytes
    from mflux_core.weights.resolve import resolve_model

    kind, folder, _ = bnb_folder
    source = resolve_model(path=str(folder))
    transformer = loader.load_source_transformer(source, mx.float32)
    encoders = loader.load_source_text_encoders(source, mx.float32)
    bits = {"nf4": 4, "int8": 8}[kind]
    assert quantized_bits(transformer) == bits and quantized_bits(t5_encoder(encoders)) == bits
    loaded = (parameter_bytes(transformer) + parameter_bytes(loader.load_source_vae(source, mx.float32))
              + text_encoder_bytes(encoders))
    assert model_weight_bytes(source, mx.float32, None) == loaded
