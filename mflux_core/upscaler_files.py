"""Where upscaler models (ESRGAN, Real-ESRGAN, 4x-UltraSharp, ...) are found by name: in the models folder's
`upscalers/`, or in the folders A1111 (`ESRGAN/`, `RealESRGAN/`) and ComfyUI (`upscale_models/`) keep them in, so a
models folder of theirs works as it is. A name is a file's name without its suffix; A1111 clients name Real-ESRGAN's
models by A1111's labels ("R-ESRGAN 4x+"), and those find the files A1111 downloads for them. Reading and running
them: upscaler_models.py.
"""

from pathlib import Path

from mflux_core.errors import InvalidRequest

FOLDERS = ("upscalers", "ESRGAN", "RealESRGAN", "upscale_models")
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
A1111_LABELS = {  # A1111's names for the Real-ESRGAN models it downloads -> their files' names
    "R-ESRGAN 4x+": "RealESRGAN_x4plus", "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B",
    "R-ESRGAN 2x+": "RealESRGAN_x2plus", "R-ESRGAN General 4xV3": "realesr-general-x4v3",
    "R-ESRGAN General WDN 4xV3": "realesr-general-wdn-x4v3", "R-ESRGAN AnimeVideo": "realesr-animevideov3",
}


def upscaler_files(models_dir: Path | None) -> dict[str, Path]:
    """Name -> file of every upscaler model in the models folder (the first folder of FOLDERS wins a name)."""
    found: dict[str, Path] = {}
    for folder in FOLDERS:
        root = Path(models_dir or ".") / folder
        if root.is_dir():
            for path in sorted(root.iterdir()):
                if path.suffix.lower() in SUFFIXES and path.is_file():
                    found.setdefault(path.stem, path)
    return found


def upscaler_file(models_dir: Path | None, name: str) -> Path | None:
    files = upscaler_files(models_dir)
    return files.get(name) or files.get(A1111_LABELS.get(name, ""))


def unknown_upscaler(name: str, built_in: tuple[str, ...], models_dir: Path | None) -> InvalidRequest:
    models = sorted(upscaler_files(models_dir))
    there = f" ({', '.join(models)})" if models else ""
    return InvalidRequest(f"The upscaler {name!r} is not one the studio has: use {', '.join(built_in)}, or an "
                          f"upscaler model in the models folder's upscalers/{there}.")


def has_upscaler(name: str, models_dir: Path | None) -> bool:
    """Whether the studio can run the upscaler `name` (built in, or a model of the models folder)."""
    from mflux_core.settings_schema import HIRES_UPSCALERS

    return name in HIRES_UPSCALERS or upscaler_file(models_dir, name) is not None


def missing_upscaler_note(name: str) -> str:
    """A restored image's upscaler the studio lacks is left out, as its missing LoRAs are (Lanczos runs)."""
    return f"The upscaler {name!r} is not in the models folder's upscalers/; Lanczos takes its place."

