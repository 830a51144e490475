"""The pre-norm transformer encoder layer that CLIP's text model and SigLIP's vision tower share.

Submodule names follow both checkpoints: layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
mlp.fc1, mlp.fc2.
"""

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

# Activations by the names checkpoints' config.json files use.
ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "quick_gelu": nn.gelu_fast_approx,  # x * sigmoid(1.702 x): CLIP
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,  # tanh approximation
    "gelu_pytorch_tanh": nn.gelu_approx,  # SigLIP
}


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.causal = causal
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        batch, length, dim = x.shape

        def heads(projected: mx.array) -> mx.array:
            return projected.reshape(batch, length, self.num_heads, -1).transpose(0, 2, 1, 3)

        out = mx.fast.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), scale=self.scale,
            mask="causal" if self.causal else None,
        )
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation = ACTIVATIONS[activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.activation(self.fc1(x)))


class PreNormEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, activation: str, eps: float, causal: bool):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads, causal)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, activation)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))
