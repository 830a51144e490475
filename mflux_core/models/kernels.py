"""Fused elementwise functions and attention for the models, fast on MLX's CPU and GPU backends.

MLX's CPU backend runs each elementwise op as a scalar loop on one thread, and its tanh, exp and
softmax are scalar polynomial code: at FLUX.1's sizes these, not the matmuls (OpenBLAS), took
most of a block's time. Three things help there, and cost nothing on the GPU:
- `mx.compile` fuses a chain of elementwise ops into one loop that the C++ compiler vectorises
  when it holds only arithmetic (so GELU's tanh is a rational function here, not `mx.tanh`);
- attention runs a few heads at a time, its softmax normalised after the product with V (the
  row sums come out of the same matmul as an extra column of ones in V), alternating two CPU
  streams so that the single-threaded elementwise work of one group overlaps the next;
- the GPU keeps `mx.fast.scaled_dot_product_attention`, which is fused there.
"""

import math
import shutil
from functools import cache, wraps

import mlx.core as mx

# A rational tanh on [-7.9, 7.9] (odd numerator, even denominator: the minimax coefficients of
# Eigen's fast float tanh); past that range tanh is 1 in float32. GELU from it is within 4e-6 of
# MLX's gelu_approx for |x| <= 15.
TANH_CLAMP = 7.90531110763549805
TANH_NUMERATOR = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                  -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_DENOMINATOR = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
GELU_K = 0.7978845608028654  # sqrt(2 / pi)
ATTENTION_HEAD_GROUP = 4  # heads per CPU attention chunk: (4, S, S) float32 scores stay ~100s of MB at 1024x1024


def can_fuse() -> bool:
    """mx.compile works on Metal and CUDA; on the CPU it needs a C++ compiler (it JIT-builds kernels)."""
    return mx.default_device().type == mx.DeviceType.gpu or _have_cxx()


@cache
def _have_cxx() -> bool:
    return shutil.which("g++") is not None


def fused(fn):
    """`fn` under mx.compile where that works, else `fn` itself (same results either way)."""
    compiled = mx.compile(fn)

    @wraps(fn)
    def call(*args):
        return compiled(*args) if can_fuse() else fn(*args)

    return call


@fused
def _gelu_tanh_argument(x: mx.array) -> mx.array:
    y = x.astype(mx.float32)
    return mx.clip(GELU_K * (y + 0.044715 * y * y * y), -TANH_CLAMP, TANH_CLAMP)


@fused
def _gelu_from_argument(x: mx.array, u: mx.array) -> mx.array:
    """0.5 x (1 + tanh(u)), tanh as a rational function; polynomials in Estrin form to stay shallow."""
    a, b = TANH_NUMERATOR, TANH_DENOMINATOR
    z = u * u
    z2 = z * z
    z4 = z2 * z2
    numerator = u * (((a[0] + a[1] * z) + z2 * (a[2] + a[3] * z)) + z4 * ((a[4] + a[5] * z) + z2 * a[6]))
    denominator = (b[0] + b[1] * z) + z2 * (b[2] + b[3] * z)
    return (0.5 * x.astype(mx.float32) * (1 + numerator / denominator)).astype(x.dtype)


def gelu_tanh(x: mx.array) -> mx.array:
    """GELU, tanh approximation (diffusers' gelu-approximate), computed in float32 in two fused passes."""
    return _gelu_from_argument(x, _gelu_tanh_argument(x))


@fused
def gated_residual(x: mx.array, gate: mx.array, update: mx.array) -> mx.array:
    """x + gate * update, the gate (B, dim) broadcast over the tokens of x (B, S, dim)."""
    return x + gate[:, None] * update


# exp(x) for x <= 0 as ((P(y) / P(-y))^8, y = x / 8: the [7/7] Pade approximant of exp at y in
# [-3.2, 0] (x >= -25.6; below that the weight is < 1e-11 of the row's largest and is clamped).
# Relative error <= 2.2e-6 for x in [-5, 0], 1e-5 down to -20 (mx.exp: 3e-7, 1e-6).
EXP_CLAMP = -25.6
EXP_SQUARINGS = 3
EXP_PADE = tuple(math.factorial(14 - j) * math.factorial(7) / (math.factorial(14) * math.factorial(j) * math.factorial(7 - j))
                 for j in range(8))


@fused
def _exp_root(shifted: mx.array, scale: float) -> mx.array:
    """exp(shifted * scale / 8) for shifted <= 0; its own kernel: MLX fuses at most 11 ops deep."""
    c = EXP_PADE
    y = mx.maximum(shifted * scale, EXP_CLAMP) * (0.5**EXP_SQUARINGS)
    z = y * y
    z2 = z * z
    even = (c[0] + c[2] * z) + z2 * (c[4] + c[6] * z)
    odd = y * ((c[1] + c[3] * z) + z2 * (c[5] + c[7] * z))
    return (even + odd) / (even - odd)


@fused
def _eighth_power(x: mx.array) -> mx.array:
    x = x * x
    x = x * x
    return x * x


def _softmax_numerator(scores: mx.array, scale: float) -> mx.array:
    """exp((scores - row max) * scale) in three vectorised passes (MLX's own exp is scalar on the CPU)."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return _eighth_power(_exp_root(shifted, scale))


@cache
def _second_cpu_stream() -> mx.Stream:
    return mx.new_stream(mx.cpu)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale) v over (B, heads, S, d) -> (B, S, heads * d)."""
    if mx.default_device().type == mx.DeviceType.gpu:
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
        batch, heads, tokens, head_dim = out.shape
        return out.transpose(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)
    return _cpu_attention(q, k, v, scale)


CPU_BUFFER_CACHE = 4 << 30  # bytes of freed buffers MLX may keep for reuse on the CPU (its default: 32 MiB)


@cache
def _keep_freed_cpu_buffers() -> None:
    """Let MLX reuse freed buffers: at 1024x1024 the attention groups cycle through ~4 GiB of
    score buffers per block, and fresh pages cost ~1 s of page faults per block (measured: attention
    3.9 -> 3.2 s). Only ever raises the limit, to at most a quarter of MLX's memory limit."""
    wanted = min(CPU_BUFFER_CACHE, mx.get_memory_limit() // 4)
    previous = mx.set_cache_limit(wanted)
    if previous > wanted:
        mx.set_cache_limit(previous)


def _cpu_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    _keep_freed_cpu_buffers()
    batch, heads, tokens, head_dim = q.shape
    streams = (mx.default_stream(mx.cpu), _second_cpu_stream())
    ones = mx.ones((batch, 1, k.shape[2], 1), dtype=v.dtype)
    outputs = []
    for i, first in enumerate(range(0, heads, ATTENTION_HEAD_GROUP)):
        group = slice(first, first + ATTENTION_HEAD_GROUP)
        with mx.stream(streams[i % 2]):
            scores = q[:, group] @ k[:, group].swapaxes(-1, -2)
            weights = _softmax_numerator(scores, scale)
            values = v[:, group]
            values = mx.concatenate([values, mx.broadcast_to(ones, (*values.shape[:-1], 1))], axis=-1)
            out = (weights @ values).transpose(0, 2, 1, 3)  # (B, S, group, d + 1)
            normalised = out[..., :head_dim] / out[..., head_dim:]
            outputs.append(normalised.reshape(batch, tokens, -1))
    return mx.concatenate(outputs, axis=-1)
