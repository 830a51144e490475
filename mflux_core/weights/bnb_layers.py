"""bitsandbytes' quantized layers, as Forge's flux1-dev-bnb-nf4 checkpoints and diffusers' / transformers' bnb saves
(`Linear4bit`, `Linear8bitLt` state dicts) store them. A 4-bit layer `X` (NF4 or FP4):
- `X.weight`: uint8, two 4-bit codes a byte (the first in the high nibble), the flattened weight's elements in order;
- `X.weight.quant_map`: the 16 values the codes index (NF4's normal quantiles, or FP4's);
- `X.weight.absmax`: one scale a block of `blocksize` elements (float32), or, "double quantized", the scales as 8-bit
  codes into `X.weight.nested_quant_map`, scaled per block of `nested_blocksize` by `X.weight.nested_absmax`, plus
  `nested_offset`;
- `X.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): JSON bytes with the shape, block sizes and offset.
An 8-bit layer (LLM.int8): `X.weight` int8 in its own shape, `X.SCB` each row's largest magnitude (the row is
`weight * SCB / 127`), `X.weight_format` (0: rows).

MLX has no NF4 kernels, and NF4's 16 levels are not evenly spaced, so MLX's affine groups cannot hold them exactly:
each layer is decoded as bitsandbytes decodes it (in float32) and quantized again into MLX's affine format, one layer
at a time so that no more than one float layer exists at once, in a GGUF file's groups of 32 (one group size for every
quantized single file: weights/bfl.py reads a layer's width from it). At 8 bits the file's values move by 0.6% (RMS,
of a normal weight); at 4 bits (the default: 5 bits a weight with the groups' scales and offsets, against NF4's 4.5)
by 8%, which adds a third to NF4's own error (9% of the weight: 12% in all). An 8-bit layer becomes MLX's 8 bits
(groups of 32 hold a row's int8 values within a level).
"""

import json
import math
import re

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.weights.ggml_blocks import GROUP_SIZE

STATE = re.compile(r"^(.+\.weight)\.quant_state\.bitsandbytes__(nf4|fp4)$")
COMPANIONS = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
INT8_ROW_SCALES, INT8_FORMAT = ".SCB", ".weight_format"
INT8_STEP = 7.874015718698502e-3  # 1 / 127 as bitsandbytes multiplies by it
FILE_BITS = {"4-bit": 4, "8-bit": 8}  # what a layer becomes without -q: about the file's own size


def layer_states(names) -> dict[str, str]:
    """weight name -> its quant_state tensor's name, for each bitsandbytes 4-bit layer."""
    return {match[1]: name for name in names if (match := STATE.match(name))}


def int8_layers(names) -> list[str]:
    """The weight names of the bitsandbytes 8-bit layers."""
    return [name.removesuffix(INT8_ROW_SCALES) + ".weight" for name in names if name.endswith(INT8_ROW_SCALES)]


def has_bnb_layers(names) -> bool:
    names = list(names)
    return bool(layer_states(names) or int8_layers(names))


def is_bnb_name(name: str) -> bool:
    """A bitsandbytes companion tensor (what MLX does not keep once a layer is requantized)."""
    return STATE.match(name) is not None or name.endswith(
        (*(f".weight{suffix}" for suffix in COMPANIONS), INT8_ROW_SCALES, INT8_FORMAT))


def parse_state(raw: bytes, state_name: str) -> dict:
    """A quant_state tensor's JSON (its bytes), the shape as a tuple."""
    try:
        state = json.loads(raw.decode("utf-8"))
        state["shape"] = tuple(int(side) for side in state["shape"])
        return state
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{state_name} is not a readable bitsandbytes quantization state ({error}).") from None


def _state(weights: dict[str, mx.array], state_name: str) -> dict:
    return parse_state(bytes(memoryview(weights[state_name].astype(mx.uint8))), state_name)


def _blockwise(values: mx.array, scales: mx.array, blocksize: int) -> mx.array:
    """values (flat) times their block's scale; the last block may be short."""
    count, short = values.size, scales.size * blocksize - values.size
    padded = (mx.pad(values, (0, short)) if short else values).reshape(scales.size, blocksize)
    return (padded * scales[:, None]).reshape(-1)[:count]


def _block_scales(weights: dict[str, mx.array], weight: str, state: dict) -> mx.array:
    absmax = weights[f"{weight}.absmax"]
    if f"{weight}.nested_absmax" not in weights:
        return absmax.astype(mx.float32)
    codes = weights[f"{weight}.nested_quant_map"].astype(mx.float32)[absmax.astype(mx.uint32)]
    scales = _blockwise(codes, weights[f"{weight}.nested_absmax"].astype(mx.float32), int(state["nested_blocksize"]))
    return scales + float(state["nested_offset"])


def dequantize(weights: dict[str, mx.array], weight: str, state_name: str) -> mx.array:
    """The float32 weight bitsandbytes' dequantize_4bit gives for layer `weight`."""
    state = _state(weights, state_name)
    shape, blocksize = state["shape"], int(state["blocksize"])
    count = math.prod(shape)
    packed = weights[weight].reshape(-1).astype(mx.uint8)
    if packed.size != (count + 1) // 2:
        raise ModelLoadError(f"{weight} holds {packed.size} bytes of 4-bit codes; its shape {shape} needs "
                             f"{(count + 1) // 2}.")
    quant_map, byte = weights[f"{weight}.quant_map"].astype(mx.float32), mx.arange(256)
    pairs = mx.stack([quant_map[byte >> 4], quant_map[byte & 15]], axis=-1)  # each byte's two values: one gather
    values = pairs[packed.astype(mx.uint32)].reshape(-1)[:count]
    return _blockwise(values, _block_scales(weights, weight, state), blocksize).reshape(shape)


def dequantize_int8(weights: dict[str, mx.array], weight: str) -> mx.array:
    """The float32 weight bitsandbytes' int8_vectorwise_dequant gives for 8-bit layer `weight`."""
    row_scales = weights[weight.removesuffix(".weight") + INT8_ROW_SCALES].astype(mx.float32)
    return weights[weight].astype(mx.float32) * row_scales[:, None] * INT8_STEP


def _decoders(weights: dict[str, mx.array]) -> dict[str, tuple]:
    """weight -> (its float32 weight, computed when called; its FILE_BITS; its companions' names) of each layer."""
    decoders = {weight: (lambda w=weight, s=state: dequantize(weights, w, s), FILE_BITS["4-bit"],
                         (state, *(weight + suffix for suffix in COMPANIONS)))
                for weight, state in layer_states(weights).items()}
    for weight in int8_layers(weights):
        layer = weight.removesuffix(".weight")
        decoders[weight] = (lambda w=weight: dequantize_int8(weights, w), FILE_BITS["8-bit"],
                            (layer + INT8_ROW_SCALES, layer + INT8_FORMAT))
    return decoders


def requantized(weights: dict[str, mx.array], bits: int | None, dtype: mx.Dtype) -> dict[str, mx.array]:
    """`weights` with each bitsandbytes layer as MLX keeps a QuantizedLinear (`.weight` codes, `.scales`, `.biases`
    in `dtype`, groups of GROUP_SIZE at `bits`, by default the layer's own FILE_BITS; one whose width MLX cannot group
    stays a float weight) and its companions gone; `weights` itself is emptied as it goes, so that the file's codes
    are freed layer by layer."""
    out = {}
    for weight, (decode, file_bits, companions) in _decoders(weights).items():
        float_weight = decode()
        layer = {weight: float_weight.astype(dtype)}
        if requantizable(float_weight.shape):
            packed, scales, biases = mx.quantize(float_weight, group_size=GROUP_SIZE, bits=bits or file_bits)
            name = weight.removesuffix(".weight")
            layer = {weight: packed, f"{name}.scales": scales.astype(dtype), f"{name}.biases": biases.astype(dtype)}
        mx.eval(layer)
        out.update(layer)
        for name in (weight, *companions):
            weights.pop(name, None)
    out.update({name: value for name, value in weights.items() if not is_bnb_name(name)})
    return out


def requantizable(shape) -> bool:
    return len(shape) == 2 and shape[1] % GROUP_SIZE == 0


def layer_shapes(shapes: dict[str, tuple[int, ...]], state_bytes) -> dict[str, tuple[tuple[int, ...], int]]:
    """weight -> (logical shape, FILE_BITS) of each bitsandbytes layer among a header's tensor shapes; `state_bytes`
    reads a 4-bit layer's quantization state (a few bytes) by its name."""
    four_bit = {weight: (parse_state(state_bytes(state), state)["shape"], FILE_BITS["4-bit"])
                for weight, state in layer_states(shapes).items()}
    return {**four_bit, **{weight: (tuple(shapes[weight]), FILE_BITS["8-bit"]) for weight in int8_layers(shapes)}}


def resident_bytes(layers: dict[str, tuple[tuple[int, ...], int]], bits: int | None, float_bytes: float) -> int:
    """Memory bitsandbytes layers (weight -> (logical shape, FILE_BITS)) take once requantized: `bits` (else the
    layer's own) a weight plus a scale and an offset per group in the compute dtype (at least 2 bytes each), or
    floats where MLX cannot group them."""
    total = 0.0
    for shape, file_bits in layers.values():
        count = math.prod(shape)
        total += count * (bits or file_bits) / 8 + count / GROUP_SIZE * 2 * max(float_bytes, 2) \
            if requantizable(shape) else count * float_bytes
    return int(total)
