"""Fused elementwise functions and attention for the models, fast on MLX's CPU and GPU backends.

MLX's CPU backend runs each elementwise op as a scalar loop on one thread, and its tanh, exp and
softmax are scalar polynomial code: at FLUX.1's sizes these, not the matmuls (OpenBLAS), took
most of a block's time. Three things help there, and cost nothing on the GPU:
- `mx.compile` fuses a chain of elementwise ops into one loop that the C++ compiler vectorises
  when it holds only arithmetic (so GELU's tanh is a rational function here, not `mx.tanh`);
- attention runs a few heads (or one head's block of query rows) at a time, its softmax normalised
  after the product with V (the row sums come out of the same matmul as an extra column of ones in
  V); its exp is a vectorised rational function;
- the GPU keeps `mx.fast.scaled_dot_product_attention`, which is fused there.
"""

import math
import shutil
import threading
from contextlib import contextmanager
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
ATTENTION_HEAD_GROUP = 4  # heads per CPU attention chunk where their scores fit (see _Chunks)


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


def _symmetric_clip(u: mx.array, bound: float) -> mx.array:
    """clip(u, -bound, bound) in arithmetic only (to be traced inside a fused function): MLX's CPU
    maximum and minimum test for NaN, a branch that stops the C++ compiler vectorising the fused loop
    (GELU 2.25 -> 1.41 ns a value). Within an ulp of `bound` of mx.clip."""
    return 0.5 * (mx.abs(u + bound) - mx.abs(u - bound))


@fused
def _gelu_tanh_argument(x: mx.array) -> mx.array:
    y = x.astype(mx.float32)
    return _symmetric_clip(GELU_K * (y + 0.044715 * y * y * y), TANH_CLAMP)


def _rational_tanh(u: mx.array) -> mx.array:
    """tanh(u) for u in [-TANH_CLAMP, TANH_CLAMP], arithmetic only (to be traced inside a fused function);
    polynomials in Estrin form to stay shallow."""
    a, b = TANH_NUMERATOR, TANH_DENOMINATOR
    z = u * u
    z2 = z * z
    z4 = z2 * z2
    numerator = u * (((a[0] + a[1] * z) + z2 * (a[2] + a[3] * z)) + z4 * ((a[4] + a[5] * z) + z2 * a[6]))
    denominator = (b[0] + b[1] * z) + z2 * (b[2] + b[3] * z)
    return numerator / denominator


@fused
def _tanh_gate(x: mx.array, u: mx.array) -> mx.array:
    """0.5 x (1 + tanh(u)): the last pass of GELU and of the scaled SiLU. In float32: the polynomials' powers of u
    (u^8 reaches 4e7) overflow float16, whose infinities made every half-precision image NaN."""
    return (0.5 * x.astype(mx.float32) * (1 + _rational_tanh(u.astype(mx.float32)))).astype(x.dtype)


def gelu_tanh(x: mx.array) -> mx.array:
    """GELU, tanh approximation (diffusers' gelu-approximate), computed in float32 in two fused passes."""
    return _tanh_gate(x, _gelu_tanh_argument(x))


@fused
def _affine_and_half(x: mx.array, scale: mx.array, shift: mx.array) -> tuple[mx.array, mx.array]:
    """y = x * scale + shift and y / 2 clipped to tanh's range: the pass that reads the broadcast factors."""
    y = x * scale + shift
    return y, _symmetric_clip(0.5 * y, TANH_CLAMP)


def scaled_silu(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    """silu(x * scale + shift) (a GroupNorm's affine form, then the VAE's activation), with
    sigmoid(y) = (1 + tanh(y / 2)) / 2: on the CPU ~3x faster than nn.silu (whose exp is scalar code),
    within 8e-6 of it for outputs up to 46. Two fused passes, cut where the second is contiguous: as one
    function MLX's fusion depth limit (11) split it into four (1.7 -> 1.3 ns a value, bench/RESULTS.md)."""
    return _tanh_gate(*_affine_and_half(x, scale, shift))


@fused
def gated_residual(x: mx.array, gate: mx.array, update: mx.array) -> mx.array:
    """x + gate * update, the gate (B, dim) broadcast over the tokens of x (B, S, dim)."""
    return x + gate[:, None] * update


# exp(x) for x <= 0 as (P(y) / P(-y))^8, y = x / 8: the [7/7] Pade approximant of exp at y in
# [-3.2, 0] (x >= -25.6; below that the weight is < 1e-11 of the row's largest and is clamped).
# Relative error <= 2.2e-6 for x in [-5, 0], 1e-5 down to -20 (mx.exp: 3e-7, 1e-6).
EXP_CLAMP = -25.6
EXP_ROOT = 8  # exp(x) = exp(x / 8)^8; attention's scores come out of the matmul divided by 8 (q is scaled first)
EXP_PADE = tuple(math.factorial(14 - j) * math.factorial(7) / (math.factorial(14) * math.factorial(j) * math.factorial(7 - j))
                 for j in range(8))


@fused
def _exp_from_root(y: mx.array) -> mx.array:
    """exp(8 y) for y in [EXP_CLAMP / 8, 0]: Pade then three squarings, eleven ops deep, which is as
    deep as MLX fuses, so one pass."""
    c = EXP_PADE
    z = y * y
    z2 = z * z
    even = (c[0] + c[2] * z) + z2 * (c[4] + c[6] * z)
    odd = y * ((c[1] + c[3] * z) + z2 * (c[5] + c[7] * z))
    root = (even + odd) / (even - odd)
    root = root * root
    root = root * root
    return root * root


def _softmax_numerator(root_scores: mx.array) -> mx.array:
    """exp(8 (s - row max)) for scores s already scaled by 1/8 (of the attention's scale), in three
    vectorised passes. The row max is subtracted and the result clamped by MLX's own broadcasting ops:
    fused with the exp they would make a strided loop, and a fused loop with maximum (whose NaN test
    is a branch) is not vectorised by the C++ compiler either (the exp of a 1024 px attention's scores:
    2.1 s in such a loop, 0.9 s in these three passes)."""
    shifted = mx.maximum(root_scores - root_scores.max(axis=-1, keepdims=True), EXP_CLAMP / EXP_ROOT)
    return _exp_from_root(shifted)


# --- memory-bounded attention ---------------------------------------------------------------------
# Attention runs in chunks of heads or query rows, at most CHUNKS_IN_FLIGHT dispatched at once, so
# that the score buffers alive at any time stay within a byte limit: memory grows linearly with the
# tokens. MLX allocates an op's output when it dispatches the op, not when it runs it, so one eval of
# all chunks would allocate all their scores at once: the chunks are evaluated in turn instead.

DEFAULT_ATTENTION_MEMORY = 256 << 20  # bytes of attention scores alive at once (1024 px: as fast as before, see bench)
MAX_ARRAY_ELEMENTS = 2**31 - 1  # libmlx indexes with int32: a 2^32-entry score matrix died of SIGFPE
CHUNKS_IN_FLIGHT = 2  # the next chunk queues while one runs
# Score-sized buffers per chunk: on the CPU the scores and the row max's subtraction from them (each
# pass after it takes its input's buffer), on the GPU the fallback kernel's scores and softmax (the
# fused kernels need none).
SCORE_BUFFERS_PER_CHUNK = 2
CACHE_CHUNK_SCORES = 8  # chunk score buffers MLX keeps for reuse on the CPU: fresh pages cost ~1 s per block

_attention_memory = DEFAULT_ATTENTION_MEMORY


def set_attention_memory(limit_bytes: int) -> None:
    """Bound the bytes of attention scores alive at once (the memory planner derives it from its budget)."""
    global _attention_memory
    _attention_memory = max(1, int(limit_bytes))


def attention_memory() -> int:
    return _attention_memory


def cpu_buffer_cache_bytes() -> int:
    """Bytes of freed buffers MLX keeps for reuse once CPU attention has run, derived from the
    attention limit and at most a quarter of MLX's memory limit; held between steps, on top of the peak."""
    return min(CACHE_CHUNK_SCORES * _chunk_score_limit(), mx.get_memory_limit() // 4)


def _chunk_score_limit() -> int:
    return _attention_memory // (CHUNKS_IN_FLIGHT * SCORE_BUFFERS_PER_CHUNK)


def _on_gpu(gpu: bool | None) -> bool:
    return mx.default_device().type == mx.DeviceType.gpu if gpu is None else gpu


class AttentionChunks:
    """How attention over (batch, heads, q_tokens) x kv_tokens is cut under the current limit, into
    blocks of query rows split evenly. On the CPU: groups of ATTENTION_HEAD_GROUP heads over all query
    rows where such a group's scores fit a chunk, else one head over as many rows as fit (a 1024 px
    attention's matmuls: 1.9 s on 768 rows or more a head, 2.4 s on 149 rows of all 24 heads). On the
    GPU: all heads whole where they fit, else as many heads as fit (all, unless the tokens are in the
    millions)."""

    def __init__(self, batch: int, heads: int, q_tokens: int, kv_tokens: int, itemsize: int, gpu: bool | None = None):
        most = min(_chunk_score_limit() // itemsize, MAX_ARRAY_ELEMENTS)
        row = batch * kv_tokens
        if _on_gpu(gpu):
            self.heads = heads if heads * q_tokens * row <= most else max(1, min(heads, most // row))
        else:
            group = min(ATTENTION_HEAD_GROUP, heads)
            self.heads = group if group * q_tokens * row <= most else 1
        fitting_rows = max(1, min(q_tokens, most // (row * self.heads)))
        self.row_chunks = -(-q_tokens // fitting_rows)
        self.rows = -(-q_tokens // self.row_chunks)
        self.head_chunks = -(-heads // self.heads)
        self.count = self.row_chunks * self.head_chunks
        self.score_elements = batch * self.heads * self.rows * kv_tokens
        self.score_bytes = self.score_elements * itemsize
        self.total_heads, self.q_tokens = heads, q_tokens

    def grid(self) -> list[list[tuple[slice, slice]]]:
        """(head slice, row slice) of every chunk, grouped by rows: the order the output is assembled in."""
        return [[(slice(h, h + self.heads), slice(r, r + self.rows)) for h in range(0, self.total_heads, self.heads)]
                for r in range(0, self.q_tokens, self.rows)]


_gradients = threading.local()


@contextmanager
def attention_for_gradients(enabled: bool = True):
    """In this thread, attention for backward passes (training): MLX's own, whose gradient keeps about one score
    matrix per head where the chunked CPU path's kept ~37 (one training step at 1,056 tokens on the demo model: 0.094
    GiB against 0.47; at 2,336: 0.33 against 2.21). It must hold over the whole gradient computation: a checkpointed
    block's forward runs again during the backward pass. `enabled=False` inside it: the chunked kind again."""
    before = getattr(_gradients, "on", False)
    _gradients.on = enabled
    try:
        yield
    finally:
        _gradients.on = before


def _attention_with_gradients(q: mx.array, k: mx.array, v: mx.array, scale: float,
                              mask: mx.array | None = None) -> mx.array:
    """mx.fast.scaled_dot_product_attention over groups of heads (and of query rows, past one head) whose scores
    stay within libmlx's int32 indexing."""
    batch, heads, rows, keys = *q.shape[:3], k.shape[2]
    heads_at_once = max(1, min(heads, MAX_ARRAY_ELEMENTS // (batch * rows * keys)))
    rows_at_once = rows if heads_at_once * batch * rows * keys <= MAX_ARRAY_ELEMENTS else \
        max(1, MAX_ARRAY_ELEMENTS // (batch * keys))
    mask = None if mask is None else mask.astype(q.dtype)
    grid = [[_token_major(mx.fast.scaled_dot_product_attention(
        q[:, h:h + heads_at_once, r:r + rows_at_once], k[:, h:h + heads_at_once], v[:, h:h + heads_at_once],
        scale=scale, mask=None if mask is None else mask[r:r + rows_at_once]))
        for h in range(0, heads, heads_at_once)] for r in range(0, rows, rows_at_once)]
    row_blocks = [_concatenate([p.reshape(*p.shape[:2], -1) for p in row], axis=-1) for row in grid]
    return _concatenate(row_blocks, axis=1)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """softmax(q k^T * scale + mask) v over (B, heads, S, d) -> (B, S, heads * d), in memory-bounded chunks.
    `mask`: an additive bias (S_q, S_k) on the scaled scores, shared by every head (-inf: never attended)."""
    if getattr(_gradients, "on", False):
        return _attention_with_gradients(q, k, v, scale, mask)
    if _on_gpu(None):
        return _fused_attention(q, k, v, scale, mask)
    return _cpu_attention(q, k, v, scale, mask)


def _chunks_for(q: mx.array, k: mx.array, gpu: bool) -> AttentionChunks:
    batch, heads, tokens, _ = q.shape
    itemsize = q.dtype.size if gpu else _cpu_compute_dtype(q.dtype).size
    return AttentionChunks(batch, heads, tokens, k.shape[2], itemsize, gpu=gpu)


def _cpu_compute_dtype(dtype: mx.Dtype) -> mx.Dtype:
    """float32 for float16: the softmax is normalised after the product with V, whose sums over thousands of keys
    pass float16's 65,504 (4,608 keys of values above 14 do at 1024 px)."""
    return mx.float32 if dtype == mx.float16 else dtype


def _fused_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """mx.fast.scaled_dot_product_attention, whole when its scores would fit a chunk (the fused kernel
    may need none), else over chunks of query rows."""
    mask = None if mask is None else mask.astype(q.dtype)

    def chunk(head: slice, rows: slice) -> mx.array:
        out = mx.fast.scaled_dot_product_attention(q[:, head, rows], k[:, head], v[:, head], scale=scale,
                                                   mask=None if mask is None else mask[rows])
        return _token_major(out)

    return _assemble([[chunk(*where) for where in row] for row in _chunks_for(q, k, gpu=True).grid()])


def _cpu_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """The softmax is normalised after the product with V (the row sums come out of the same matmul as
    an extra column of ones in V). One stream: a second one, to overlap a chunk's single-threaded
    elementwise work with the next chunk's matmuls, measured 7-10% slower at 1024 px once the exp was
    vectorised (two threads of BLAS and one of elementwise work on two cores)."""
    mx.set_cache_limit(cpu_buffer_cache_bytes())
    head_dim, compute = q.shape[-1], _cpu_compute_dtype(q.dtype)
    values = mx.concatenate([v, mx.ones((*v.shape[:-1], 1), dtype=v.dtype)], axis=-1).astype(compute)
    bias = None if mask is None else (mask / EXP_ROOT).astype(compute)

    def chunk(head: slice, rows: slice) -> mx.array:
        scores = (q[:, head, rows].astype(compute) * (scale / EXP_ROOT)) @ k[:, head].astype(compute).swapaxes(-1, -2)
        if bias is not None:
            scores = scores + bias[rows]
        out = _token_major(_softmax_numerator(scores) @ values[:, head])
        return (out[..., :head_dim] / out[..., head_dim:]).astype(q.dtype)

    return _assemble([[chunk(*where) for where in row] for row in _chunks_for(q, k, gpu=False).grid()])


def _token_major(out: mx.array) -> mx.array:
    """(B, heads, S, d) -> (B, S, heads, d)."""
    return out.transpose(0, 2, 1, 3)


def _assemble(grid: list[list[mx.array]]) -> mx.array:
    """Chunk outputs (B, rows, heads, d), grouped by rows, evaluated in turn, into (B, S, all heads * d)."""
    _evaluate_in_turn([piece for row in grid for piece in row])
    row_blocks = [_concatenate([p.reshape(*p.shape[:2], -1) for p in row], axis=-1) for row in grid]
    return _concatenate(row_blocks, axis=1)


def _evaluate_in_turn(pieces: list[mx.array]) -> None:
    """Dispatch each piece once the one CHUNKS_IN_FLIGHT places before it is done. Under mx.compile or
    grad MLX cannot evaluate: the pieces then stay one lazy graph (bounded elements, not bytes)."""
    if len(pieces) <= CHUNKS_IN_FLIGHT:
        return
    for i, piece in enumerate(pieces):
        if i >= CHUNKS_IN_FLIGHT:
            mx.eval(pieces[i - CHUNKS_IN_FLIGHT])
        try:
            mx.async_eval(piece)
        except ValueError:  # "[async_eval] Not allowed inside a graph transformation."
            return


def _concatenate(arrays: list[mx.array], axis: int) -> mx.array:
    return arrays[0] if len(arrays) == 1 else mx.concatenate(arrays, axis=axis)


def attention_peak_bytes(batch: int, heads: int, q_tokens: int, kv_tokens: int, head_dim: int, itemsize: int,
                         gpu: bool | None = None) -> int:
    """Bytes attention allocates beyond q, k, v and its output under the current limit (on the default
    device unless `gpu` says): the score buffers of the chunks in flight and their products with the
    values, the chunk outputs (and row blocks) awaiting assembly, and on the CPU the values with their
    ones column. On the GPU an upper bound: it counts the fallback kernel's scores."""
    chunks = AttentionChunks(batch, heads, q_tokens, kv_tokens, itemsize, gpu=gpu)
    in_flight = min(chunks.count, CHUNKS_IN_FLIGHT)
    output = batch * q_tokens * heads * head_dim * itemsize
    product = batch * chunks.heads * chunks.rows * (head_dim + 1) * itemsize
    awaiting = output * ((chunks.count > 1) + (chunks.row_chunks > 1 and chunks.head_chunks > 1))
    values = 0 if _on_gpu(gpu) else batch * heads * kv_tokens * (head_dim + 2) * itemsize
    return in_flight * (SCORE_BUFFERS_PER_CHUNK * chunks.score_bytes + product) + awaiting + values
