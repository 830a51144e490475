"""Reading checkpoint folders: single or sharded safetensors (with an index JSON) and config.json."""

import json
from pathlib import Path

import mlx.core as mx
from safetensors import safe_open

from mflux_core.errors import ModelLoadError
from mflux_core.weights import comfy_fp8


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"Missing file {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON ({error}).") from None


def load_safetensors(path: Path, fp8_scales: bool = False) -> dict[str, mx.array]:
    """Load one .safetensors file; a truncated or corrupt file raises ModelLoadError naming it. FP8 (E4M3) tensors,
    as ComfyUI's flux1-dev-fp8 files store them, come back as float16, which holds every E4M3 value exactly; those of
    ComfyUI's scaled FP8 files come back times their scales (weights/comfy_fp8.py), or with `fp8_scales` beside
    them."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Missing weights file {path}.")
    try:
        weights, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
    except Exception as error:  # MLX raises plain RuntimeError/ValueError for bad files
        if "F8_E5M2" in str(error):
            raise ModelLoadError(f"{path.name} stores FP8 tensors as E5M2, which MLX cannot read: use its E4M3 "
                                 "(fp8_e4m3fn), BF16 or F16 version.") from None
        raise ModelLoadError(f"{path} is not a readable safetensors file ({error}).") from None
    if any(value.dtype == mx.uint8 for value in weights.values()):  # MLX hands E4M3 over as its raw bytes
        fp8 = _fp8_names(path)
        weights = {name: mx.from_fp8(value, dtype=mx.float16) if name in fp8 else value
                   for name, value in weights.items()}
        if comfy_fp8.is_scaled(weights, metadata):
            weights = comfy_fp8.unscaled(weights, metadata, path.name, fp8_scales)
    return weights


def _fp8_names(path: Path) -> set[str]:
    with safe_open(str(path), framework="numpy") as weights:
        return {name for name in weights.keys() if weights.get_slice(name).get_dtype() == "F8_E4M3"}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a component folder, following an index JSON when there is one (a component that is
    one file: that file)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = read_json(indexes[0])
        try:
            names = sorted(set(index["weight_map"].values()))
        except (KeyError, AttributeError):
            raise ModelLoadError(f"{indexes[0]} has no weight_map.") from None
        return [folder / name for name in names]
    files = sorted(path for path in folder.glob("*.safetensors") if not path.name.startswith("._"))  # macOS litter
    if not files:
        raise ModelLoadError(f"No .safetensors weights in {folder}.")
    return files


def load_folder_weights(folder: Path, fp8_scales: bool = False) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for path in weight_files(folder):
        weights.update(load_safetensors(path, fp8_scales))
    return weights
