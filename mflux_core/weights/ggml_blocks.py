"""ggml's quantized blocks as MLX's affine quantization, exactly.

In Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q5_K every run of 32 values along a row is scale * code + bias: a block's
float16 d (and m or offset), or a K-quant super-block's d and dmin times its sub-block's 6-bit scale and min. MLX's
QuantizedLinear holds exactly that with groups of 32 (codes packed little-endian, bit after bit, into uint32 words),
so such a layer keeps the file's values and about its size. The other types (Q6_K, Q3_K and Q2_K use groups of 16,
the IQ types a codebook) are dequantized by the `gguf` package into floats. The decoding follows ggml's block
layouts as the `gguf` package's dequantizers read them; tests check it against them value for value.
"""

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import GGMLQuantizationType as T
from gguf.quants import Q4_K

GROUP_SIZE = 32
EXACT_BITS = {T.Q8_0: 8, T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q4_K: 4, T.Q5_K: 5}


def _halves(blocks: np.ndarray, at: int) -> tuple[np.ndarray, np.ndarray]:
    return blocks[:, :at], blocks[:, at:]


def _float16(column: np.ndarray) -> np.ndarray:
    return column.copy().view(np.float16).astype(np.float32)  # (n, 1)


def _nibbles(packed: np.ndarray, chunk: int) -> np.ndarray:
    """ggml's 4-bit codes: each `chunk` bytes hold 2 * chunk values, the low nibbles first, then the high ones."""
    n = packed.shape[0]
    packed = packed.reshape(n, -1, 1, chunk) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (packed & np.uint8(0x0F)).reshape(n, -1)


def _fifth_bits(high: np.ndarray, count: int) -> np.ndarray:
    """Q5_0 / Q5_1: bit i of the block's little-endian uint32 is value i's fifth bit."""
    words = high.copy().view(np.uint32)  # (n, 1)
    return ((words >> np.arange(count, dtype=np.uint32)) & 1).astype(np.uint8)


def affine_groups(blocks: np.ndarray, kind: GGMLQuantizationType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (groups, 32) uint8, scales (groups,), biases (groups,)) of `blocks` (n, the type's block bytes)."""
    if kind == T.Q8_0:
        d, values = _halves(blocks, 2)
        d = _float16(d)
        return values ^ np.uint8(0x80), d[:, 0], -128 * d[:, 0]  # int8 -> int8 + 128: the sign bit flipped
    if kind in (T.Q4_0, T.Q4_1):
        d, rest = _halves(blocks, 2)
        d = _float16(d)
        if kind == T.Q4_0:
            return _nibbles(rest, 16), d[:, 0], -8 * d[:, 0]
        m, codes = _halves(rest, 2)
        return _nibbles(codes, 16), d[:, 0], _float16(m)[:, 0]
    if kind in (T.Q5_0, T.Q5_1):
        d, rest = _halves(blocks, 2)
        d = _float16(d)
        m, rest = _halves(rest, 2) if kind == T.Q5_1 else (None, rest)
        high, low = _halves(rest, 4)
        codes = _nibbles(low, 16) | (_fifth_bits(high, 32) << np.uint8(4))
        return codes, d[:, 0], (-16 * d[:, 0]) if m is None else _float16(m)[:, 0]
    if kind in (T.Q4_K, T.Q5_K):
        n = blocks.shape[0]
        d, rest = _halves(blocks, 2)
        dmin, rest = _halves(rest, 2)
        packed_scales, rest = _halves(rest, Q4_K.K_SCALE_SIZE)
        scale, minimum = Q4_K.get_scale_min(packed_scales.copy())  # (n, 8) each: the 8 sub-blocks of 32
        if kind == T.Q4_K:
            codes = _nibbles(rest, 32)
        else:
            high, low = _halves(rest, 32)
            fifth = (high.reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & np.uint8(1)
            codes = _nibbles(low, 32) | (fifth.reshape(n, -1) << np.uint8(4))
        scales = _float16(d) * scale.astype(np.float32)
        biases = -_float16(dmin) * minimum.astype(np.float32)
        return codes.reshape(-1, GROUP_SIZE), scales.reshape(-1), biases.reshape(-1)
    raise ValueError(f"{kind.name} is not one of ggml's affine block types")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, columns) codes of `bits` each -> MLX's packing: a little-endian bit stream per row, in uint32 words:
    8-bit codes are their bytes, 4-bit ones two to a byte, and for 5 bits every 8 codes fill exactly 5 bytes, so each
    run of 8 is assembled in a uint64 and its low bytes kept."""
    rows, columns = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes).view("<u4")
    if bits == 4:
        return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << np.uint8(4))).view("<u4")
    runs = codes.reshape(rows, columns // 8, 8).astype("<u8") << (np.arange(8, dtype="<u8") * np.uint64(bits))
    words = np.bitwise_or.reduce(runs, axis=-1)
    packed = words.view(np.uint8).reshape(rows, columns // 8, 8)[..., :bits]
    return np.ascontiguousarray(packed).reshape(rows, -1).view("<u4")


def affine_matrix(data: np.ndarray, kind: GGMLQuantizationType, shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tensor's raw blocks (the file's bytes) as MLX's (packed weight, scales, biases), each (rows, ...)."""
    rows, columns = shape
    block_values, block_bytes = GGML_QUANT_SIZES[kind]
    if columns % block_values or np.asarray(data).size != rows * columns // block_values * block_bytes:
        raise ValueError(f"a {kind.name} tensor of {rows}x{columns} does not hold whole blocks")
    codes, scales, biases = affine_groups(np.ascontiguousarray(data).reshape(-1, block_bytes), kind)
    groups = columns // GROUP_SIZE
    return (pack_codes(codes.reshape(rows, columns), EXACT_BITS[kind]), scales.reshape(rows, groups),
            biases.reshape(rows, groups))
