"""bitsandbytes' 4-bit layers (NF4 and FP4), as Forge's flux1-dev-bnb-nf4 checkpoints and bitsandbytes' own
`Linear4bit` state dicts store them: for a layer `X`,
- `X.weight`: uint8, two 4-bit codes a byte (the first in the high nibble), the flattened weight's elements in order;
- `X.weight.quant_map`: the 16 values the codes index (NF4's normal quantiles, or FP4's);
- `X.weight.absmax`: one scale a block of `blocksize` elements (float32), or, "double quantized", the scales as 8-bit
  codes into `X.weight.nested_quant_map`, scaled per block of `nested_blocksize` by `X.weight.nested_absmax`, plus
  `nested_offset`;
- `X.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): JSON bytes with the shape, block sizes and offset.

MLX has no NF4 kernels, and NF4's 16 levels are not evenly spaced, so MLX's affine groups cannot hold them exactly:
each layer is decoded as bitsandbytes decodes it (in float32) and quantized again into MLX's affine format, one layer
at a time so that no more than one float layer exists at once, in a GGUF file's groups of 32 (one group size for every
quantized single file: weights/bfl.py reads a layer's width from it). At 8 bits the file's values move by 0.6% (RMS,
of a normal weight); at 4 bits (the default: 5 bits a weight with the groups' scales and offsets, against NF4's 4.5)
by 8%, which adds a third to NF4's own error (9% of the weight: 12% in all).
"""

import json
import math
import re

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.weights.ggml_blocks import GROUP_SIZE

STATE = re.compile(r"^(.+\.weight)\.quant_state\.bitsandbytes__(nf4|fp4)$")
COMPANIONS = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
DEFAULT_BITS = 4  # about the file's own size


def layer_states(names) -> dict[str, str]:
    """weight name -> its quant_state tensor's name, for each bitsandbytes 4-bit layer."""
    return {match[1]: name for name in names if (match := STATE.match(name))}


def is_bnb_name(name: str) -> bool:
    """A bitsandbytes companion tensor (what MLX does not keep once a layer is requantized)."""
    return STATE.match(name) is not None or name.endswith(tuple(f".weight{suffix}" for suffix in COMPANIONS))


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


def requantized(weights: dict[str, mx.array], bits: int) -> dict[str, mx.array]:
    """`weights` with each bitsandbytes 4-bit layer as MLX keeps a QuantizedLinear (`.weight` codes, `.scales`,
    `.biases`, groups of GROUP_SIZE at `bits`; one whose width MLX cannot group stays float32) and its companions
    gone; `weights` itself is emptied as it goes, so that the file's codes are freed layer by layer."""
    out = {}
    for weight, state_name in layer_states(weights).items():
        float_weight = dequantize(weights, weight, state_name)
        layer = {weight: float_weight}
        if requantizable(float_weight.shape):
            packed, scales, biases = mx.quantize(float_weight, group_size=GROUP_SIZE, bits=bits)
            name = weight.removesuffix(".weight")
            layer = {weight: packed, f"{name}.scales": scales, f"{name}.biases": biases}
        mx.eval(layer)
        out.update(layer)
        for name in (weight, state_name, *(weight + suffix for suffix in COMPANIONS)):
            weights.pop(name, None)
    out.update({name: value for name, value in weights.items() if not is_bnb_name(name)})
    return out


def requantizable(shape) -> bool:
    return len(shape) == 2 and shape[1] % GROUP_SIZE == 0


def resident_bytes(states: dict[str, tuple[int, ...]], bits: int, float_bytes: float) -> int:
    """Memory the 4-bit layers (weight name -> logical shape) take once requantized: `bits` a weight plus a scale and
    an offset per group in the compute dtype (at least 2 bytes each), or floats where MLX cannot group them."""
    total = 0.0
    for shape in states.values():
        count = math.prod(shape)
        total += count * bits / 8 + count / GROUP_SIZE * 2 * max(float_bytes, 2) if requantizable(shape) \
            else count * float_bytes
    return int(total)
