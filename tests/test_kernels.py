"""The fused elementwise kernels and the CPU attention against torch in float64, over the ranges the
models feed them (large magnitudes, masked keys)."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from mflux_core.models import kernels


def wide_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(-40, 40, 80001), rng.standard_normal(20000) * 3]).astype(np.float32)


def test_gelu_tanh_matches_torch():
    x = wide_values()
    reference = torch.nn.functional.gelu(torch.tensor(x, dtype=torch.float64), approximate="tanh").numpy()
    assert np.abs(np.asarray(kernels.gelu_tanh(mx.array(x))) - reference).max() <= 1e-5


def test_scaled_silu_matches_torch():
    x = wide_values()
    scale, shift = 1.3, -0.2
    ours = np.asarray(kernels.scaled_silu(mx.array(x[:, None]), mx.array([scale]), mx.array([shift])))[:, 0]
    y = torch.tensor(x, dtype=torch.float64) * scale + shift
    reference = torch.nn.functional.silu(y).numpy()
    within = np.abs(y.numpy()) <= 46
    assert np.abs(ours - reference)[within].max() <= 1e-5


def test_softmax_numerator_matches_exp():
    rng = np.random.default_rng(1)
    scores = (rng.standard_normal((4, 64, 300)) * 6).astype(np.float64)
    scores[:, :, :7] = -np.inf  # masked keys
    ours = np.asarray(kernels._softmax_numerator(mx.array((scores / kernels.EXP_ROOT).astype(np.float32))))
    shifted = scores - scores.max(axis=-1, keepdims=True)
    reference = np.exp(shifted)
    relative = np.abs(ours - reference) / np.maximum(reference, 1e-30)
    assert relative[shifted >= -5].max() <= 3e-6
    assert relative[shifted >= -20].max() <= 1.5e-5
    assert np.abs(ours - reference)[shifted < -20].max() <= 1e-11


@pytest.mark.parametrize("magnitude", [1, 6])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_attention_matches_torch(magnitude, masked):
    rng = np.random.default_rng(2)
    heads, tokens, head_dim = 3, 300, 64
    q, k = (rng.standard_normal((1, heads, tokens, head_dim)).astype(np.float32) * magnitude for _ in range(2))
    v = rng.standard_normal((1, heads, tokens, head_dim)).astype(np.float32)
    mask = None
    if masked:
        mask = np.where(rng.random((tokens, tokens)) < 0.2, -np.inf, rng.standard_normal((tokens, tokens)))
        mask = mask.astype(np.float32)
    ours = kernels.attention(*(mx.array(a) for a in (q, k, v)), head_dim**-0.5, None if mask is None else mx.array(mask))
    reference = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a, dtype=torch.float64) for a in (q, k, v)),
        attn_mask=None if mask is None else torch.tensor(mask, dtype=torch.float64), scale=head_dim**-0.5)
    reference = reference.transpose(1, 2).reshape(1, tokens, heads * head_dim).numpy()
    assert np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max() <= 2e-5


def test_cpu_attention_in_float16_past_its_range():
    """The CPU attention normalises after the product with V: over 4,608 keys (1024 px) of flat attention and
    values near 20, those sums pass float16's 65,504. It computes float16 in float32 now (it returned infinities)."""
    rng = np.random.default_rng(3)
    heads, tokens, head_dim = 2, 4608, 16
    q, k = (rng.standard_normal((1, heads, tokens, head_dim)).astype(np.float32) * 0.1 for _ in range(2))
    v = (20 + rng.standard_normal((1, heads, tokens, head_dim))).astype(np.float32)
    ours = kernels.attention(*(mx.array(a).astype(mx.float16) for a in (q, k, v)), head_dim**-0.5)
    reference = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a, dtype=torch.float16).double() for a in (q, k, v)), scale=head_dim**-0.5)
    reference = reference.transpose(1, 2).reshape(1, tokens, heads * head_dim).numpy()
    assert ours.dtype == mx.float16
    assert np.abs(np.asarray(ours.astype(mx.float32)) - reference).max() / np.abs(reference).max() <= 1e-3
