"""LyCORIS LoKr and LoHa modules rewritten exactly as a (down, up) pair, so they travel the LoRA path.

Key names (Kohya / LyCORIS, no `.weight` suffix), per module, with the weight change each defines:

- LoKr: `lokr_w1` or `lokr_w1_a` @ `lokr_w1_b`; `lokr_w2` or `lokr_w2_a` @ `lokr_w2_b`.
  delta = kron(w1, w2) * alpha / rank, rank being the factorised side's inner size; with both sides
  full LyCORIS applies no alpha (scale 1).
- LoHa: delta = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) (elementwise) * alpha / rank.

Both are products of factors, so both are low rank: with w1 = P1 @ Q1 and w2 = P2 @ Q2,
kron(w1, w2) = kron(P1, P2) @ kron(Q1, Q2) (rank r1 * r2), and a Hadamard product of two rank-r
matrices is the row-wise Khatri-Rao product of the ups times the column-wise one of the downs
(rank r * r). A pair whose rank would pass the layer's own size is stored densely instead.
"""

import mlx.core as mx

from mflux_core.errors import ModelLoadError

LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LYCORIS_PARTS = LOKR_PARTS + LOHA_PARTS
TUCKER_PARTS = ("lokr_t1", "lokr_t2", "hada_t1", "hada_t2")


def lycoris_pair(parts: dict[str, mx.array], alpha: float | None, module: str
                 ) -> tuple[mx.array, mx.array, float] | None:
    """(down, up, scale) with scale * up @ down the module's weight change; None when a factor is missing."""
    convolution = next((key for key, value in parts.items() if key in TUCKER_PARTS or value.ndim != 2), None)
    if convolution is not None:
        raise ModelLoadError(
            f"The LyCORIS module {module} holds convolution factors ({convolution}, {parts[convolution].ndim}-D); "
            "FLUX.1's transformer has only linear layers, so it was made for another model.")
    kinds = {"lokr" if key.startswith("lokr_") else "loha" for key in parts}
    if len(kinds) != 1:
        return None
    try:
        return _lokr(parts, alpha) if kinds == {"lokr"} else _loha(parts, alpha)
    except KeyError:
        return None
    except ValueError as error:  # factors whose sizes do not chain
        raise ModelLoadError(f"The LyCORIS module {module} is damaged: its factors do not fit together ({error}).")


def _side(parts: dict[str, mx.array], name: str) -> tuple[mx.array, mx.array, int | None]:
    """(P, Q, rank) with P @ Q the side's matrix; rank None for a side stored full."""
    if name in parts:
        full = parts[name]
        rows, columns = full.shape
        if rows <= columns:
            return mx.eye(rows, dtype=full.dtype), full, None
        return full, mx.eye(columns, dtype=full.dtype), None
    a, b = parts[f"{name}_a"], parts[f"{name}_b"]
    _check_inner(a, b)
    return a, b, b.shape[0]


def _lokr(parts, alpha):
    p1, q1, rank1 = _side(parts, "lokr_w1")
    p2, q2, rank2 = _side(parts, "lokr_w2")
    rank = rank2 if rank2 is not None else rank1
    scale = alpha / rank if rank is not None and alpha is not None else 1.0
    return _compact(_kron(q1, q2), _kron(p1, p2), scale)


def _loha(parts, alpha):
    up1, down1, up2, down2 = (parts[f"hada_{key}"] for key in ("w1_a", "w1_b", "w2_a", "w2_b"))
    for up, down in ((up1, down1), (up2, down2)):
        _check_inner(up, down)
    if up1.shape[0] != up2.shape[0] or down1.shape[1] != down2.shape[1]:
        raise ValueError(f"{up1.shape[0]}x{down1.shape[1]} and {up2.shape[0]}x{down2.shape[1]} halves")
    rank = down1.shape[0]
    scale = alpha / rank if alpha is not None else 1.0
    up = (up1[:, :, None] * up2[:, None, :]).reshape(up1.shape[0], -1)
    down = (down1[:, None, :] * down2[None, :, :]).reshape(-1, down1.shape[1])
    return _compact(down, up, scale)


def _check_inner(up: mx.array, down: mx.array) -> None:
    if up.shape[1] != down.shape[0]:
        raise ValueError(f"{tuple(up.shape)} @ {tuple(down.shape)}")


def _kron(a: mx.array, b: mx.array) -> mx.array:
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def _compact(down: mx.array, up: mx.array, scale: float) -> tuple[mx.array, mx.array, float]:
    """The pair as given, or the dense change beside an identity when its rank passes the layer's size."""
    out_features, in_features = up.shape[0], down.shape[1]
    if down.shape[0] <= min(out_features, in_features):
        return down, up, scale
    dense = (up.astype(mx.float32) @ down.astype(mx.float32)).astype(up.dtype)
    if out_features <= in_features:
        return dense, mx.eye(out_features, dtype=up.dtype), scale
    return mx.eye(in_features, dtype=up.dtype), dense, scale
