"""Regional prompting in the transformer's joint attention: which tokens may attend to which.

The text sequence is [base prompt; region 1; ...; region R] (each prompt's T5 tokens), then the image
tokens. At strength 1 the attention weights are multiplied (before the softmax renormalises) by:
- image -> image: 1, everywhere;
- image -> region r's text: w_r / n for an image token inside r (n: how many regions hold it), 0 outside r;
- image -> base text: 1 outside every region, 1 - (sum of the holding regions' w_r) / n (at least 0) inside;
- base text -> base text and every image token: 1; region r's text -> its own text and r's image tokens: 1;
  text -> another prompt's text, region text -> image tokens outside its region: 0.
So a region's prompt is what its image tokens read in place of the base prompt (weight 1: wholly; 0.5: half
and half), and nothing else reads it. A region with the base prompt as its prompt changes nothing: its
tokens equal the base prompt's, and the image reads w of one copy and 1 - w of the other.

Strength s in [0, 1] interpolates every multiplier between 1 (plain joint attention over the whole
sequence) and the strict one above: m = (1 - s) + s * m_strict, added to the logits as log m. We chose a
bias that holds at every step over applying the mask for the first fraction of the steps: one setting,
the same meaning at any step count, and strength 1 keeps regions apart to the end.
"""

import mlx.core as mx
import numpy as np

TOKEN_PATCH = 2  # image tokens are 2x2 patches of the latent grid


def token_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A (H, W) bool pixel mask -> (h/2 * w/2,) bool over the packed image tokens (row-major, as
    pack_latents orders them), for a latent grid (h, w): a token is in when at least half its pixels are."""
    rows, cols = grid[0] // TOKEN_PATCH, grid[1] // TOKEN_PATCH
    height, width = mask.shape
    cell_h, cell_w = height // rows, width // cols
    cells = mask[: rows * cell_h, : cols * cell_w].reshape(rows, cell_h, cols, cell_w)
    return (cells.mean(axis=(1, 3)) >= 0.5).reshape(-1)


def attention_multipliers(text_tokens: int, regions: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The strict (strength 1) multipliers (S, S), S = text_tokens * (1 + R) + N, for R region token masks (N,)."""
    image_tokens = len(regions[0])
    prompts = 1 + len(regions)
    size = text_tokens * prompts + image_tokens
    image = slice(text_tokens * prompts, size)
    inside = np.stack(regions).astype(np.float64)  # (R, N)
    held_by = inside.sum(axis=0)  # (N,)
    share = np.divide(inside * np.asarray(weights, np.float64)[:, None], held_by, out=np.zeros_like(inside),
                      where=held_by > 0)  # (R, N): w_r / n inside r
    m = np.zeros((size, size), np.float32)  # (S, S): 177 MB at 1024 px with four regions; float64 would double it
    m[image, image] = 1
    m[:text_tokens, :text_tokens] = 1  # the base prompt reads itself and every image token
    m[:text_tokens, image] = 1
    m[image, :text_tokens] = np.maximum(0.0, 1 - share.sum(axis=0))[:, None]
    for r in range(len(regions)):
        text = slice(text_tokens * (r + 1), text_tokens * (r + 2))
        m[text, text] = 1
        m[text, image] = inside[r][None, :]
        m[image, text] = share[r][:, None]
    return m


def regional_attention_bias(text_tokens: int, regions: list[np.ndarray], weights: list[float],
                            strength: float) -> mx.array:
    """The additive attention bias (S, S), float32: log of the multipliers at `strength` (-inf where 0)."""
    multipliers = attention_multipliers(text_tokens, regions, weights)
    multipliers *= np.float32(strength)
    multipliers += np.float32(1 - strength)
    with np.errstate(divide="ignore"):
        return mx.array(np.log(multipliers, out=multipliers))


def attention_bias_bytes(sequence: int, itemsize: int) -> int:
    """The memory a regional bias over `sequence` tokens adds to a denoise step: the float32 bias, held
    through every step, and the copy each attention call scales into the model's dtype (itemsize bytes)."""
    return sequence * sequence * (4 + itemsize)
