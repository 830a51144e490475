"""Extract a LoRA from a tuned FLUX.1 transformer and its base (sd-scripts' flux_extract_lora.py, ComfyUI's
"Extract and Save Lora"): each linear layer's weight change, tuned - base, cut to its best rank-r approximation
and written as a diffusers / PEFT LoRA file (`transformer.<layer>.lora_A/B.weight`, every layer at the one rank,
with its `.alpha` that rank, so scale 1 whichever way a loader reads alphas) that the studio, diffusers and ComfyUI
load. A finetune of
24 GB becomes a file of tens of MB that makes nearly the same images on the base.

Layers whose weights are equal are left out; a change outside the linear layers (a bias, a norm) cannot be a LoRA
and is counted in the report, beside how much of the change the rank keeps.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mflux_core.errors import InvalidRequest
from mflux_core.lora.layers import linear_shapes
from mflux_core.weights.merge import lazy_transformers
from mflux_core.weights.resolve import ModelSource

MAX_RANK = 1024
POWER_ITERATIONS = 2  # the randomized SVD's passes (Halko et al. 2011); its sketch has twice the rank's columns,
# which on a finetune-like change keeps as much as the full SVD (bench/lora_extract.py; 8 extra columns lost 2.5 points)


@dataclass(frozen=True)
class ExtractReport:
    layers: int  # linear layers in the LoRA
    unchanged: int  # linear layers whose weights are equal, left out
    not_linear: int  # other tensors that differ (biases, norms): not representable as a LoRA
    kept: float  # of the change's squared norm over the extracted layers, the share the rank keeps

    def summary(self, rank: int) -> str:
        text = (f"{self.layers} layers at rank {rank}, keeping {100 * self.kept:.1f}% of the change "
                f"({self.unchanged} unchanged layers left out)")
        if self.not_linear:
            text += (f"; {self.not_linear} other tensors differ (biases or norms), which a LoRA cannot carry: the "
                     "LoRA's images will differ from the tuned model's there")
        return text


def low_rank(change: np.ndarray, rank: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(up (out, r), down (r, in), the squared norm kept) of the best rank-r approximation of `change`.

    A full SVD of FLUX.1's 3072 x 12288 layers, hundreds of them, takes long on a CPU and numpy has no truncated
    one, so below a quarter of the layer's rank this is the randomized SVD of Halko et al. (a Gaussian sketch of
    2r columns, refined by power iterations): exact when the change's rank is at most 2r.
    """
    rank = min(rank, *change.shape)
    if 4 * rank >= min(change.shape):
        u, s, vt = np.linalg.svd(change, full_matrices=False)
    else:
        sketch = change @ rng.standard_normal((change.shape[1], 2 * rank)).astype(np.float32)
        for _ in range(POWER_ITERATIONS):
            sketch = change @ (change.T @ np.linalg.qr(sketch)[0])
        basis = np.linalg.qr(sketch)[0]
        u_small, s, vt = np.linalg.svd(basis.T @ change, full_matrices=False)
        u = basis @ u_small
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank], float(np.sum(s[:rank] ** 2))


def padded_to_rank(up: np.ndarray, down: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer narrower than the rank (FLUX.1's 64-wide x_embedder at rank 128) padded with zero rows to it: every
    layer at one rank and alpha, which diffusers reads exactly (its per-layer alphas go by the module's short name,
    so the top-level proj_out's would reach every single block's proj_out)."""
    missing = rank - down.shape[0]
    return np.pad(up, ((0, 0), (0, missing))), np.pad(down, ((0, missing), (0, 0)))


def extract_lora(sources: list[tuple[str, ModelSource]], rank: int, dtype: mx.Dtype,
                 on_progress: Callable[[int, int, str], None] | None = None) -> tuple[dict, ExtractReport]:
    """(tensors, report) of the LoRA that takes the base (sources[1]) to the tuned model (sources[0]). Both are
    read one layer at a time (lazily), so it holds little beside the LoRA."""
    if not 1 <= rank <= MAX_RANK:
        raise InvalidRequest(f"The LoRA's rank must be a whole number from 1 to {MAX_RANK}, not {rank}.")
    on_progress = on_progress or (lambda done, total, what: None)
    tuned, base = lazy_transformers(sources, dtype, on_progress)
    layers = list(linear_shapes(tuned))
    tuned_tensors, base_tensors = dict(tree_flatten(tuned.parameters())), dict(tree_flatten(base.parameters()))
    del tuned, base  # the tensors live in the dicts only: each is read, compared, and let go
    different = sorted(tuned_tensors.keys() ^ base_tensors.keys())
    if different:
        raise InvalidRequest(f"{sources[0][0]} and {sources[1][0]} are different architectures: only one has "
                             f"{different[0]}.")
    rng, tensors, kept, total = np.random.default_rng(0), {}, 0.0, 0.0
    extracted = unchanged = 0
    for done, path in enumerate(layers, start=1):
        tuned_weight, base_weight = tuned_tensors.pop(f"{path}.weight"), base_tensors.pop(f"{path}.weight")
        if tuned_weight.shape != base_weight.shape:
            raise InvalidRequest(f"{sources[0][0]} and {sources[1][0]} are different architectures: their "
                                 f"{path} is {'x'.join(map(str, tuned_weight.shape))} against "
                                 f"{'x'.join(map(str, base_weight.shape))}.")
        change = np.asarray((tuned_weight.astype(mx.float32) - base_weight.astype(mx.float32)))
        if not change.any():
            unchanged += 1
            continue
        up, down, layer_kept = low_rank(change, rank, rng)
        up, down = padded_to_rank(up, down, rank)
        tensors[f"transformer.{path}.lora_A.weight"] = mx.array(down).astype(dtype)
        tensors[f"transformer.{path}.lora_B.weight"] = mx.array(up).astype(dtype)
        tensors[f"transformer.{path}.alpha"] = mx.array(float(down.shape[0]))
        kept, total = kept + layer_kept, total + float(np.sum(change.astype(np.float64) ** 2))
        extracted += 1
        on_progress(done, len(layers), "layers extracted")
    if not extracted:
        raise InvalidRequest(f"{sources[0][0]} and {sources[1][0]} have the same linear layers: there is no change "
                             "to extract.")
    not_linear = sum(1 for key, value in tuned_tensors.items()  # what is left: biases, norms, embeddings
                     if not mx.array_equal(value, base_tensors[key]).item())
    return tensors, ExtractReport(extracted, unchanged, not_linear, kept / total)


def new_lora_path(path: Path) -> Path:
    """`path` (user's home expanded) when a LoRA can be written there: a new .safetensors file."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise InvalidRequest(f"Give the LoRA a .safetensors file name, not {path.name}.")
    if path.exists():
        raise InvalidRequest(f"{path} already exists: choose another name.")
    return path


def save_lora(path: Path, tensors: dict) -> Path:
    """The LoRA written to `path` (checked again by new_lora_path: the extraction may have taken long)."""
    path = new_lora_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path), tensors, metadata={"format": "pt"})
    return path
