"""Forge's "VAE / Text Encoder" choice: VAE, CLIP-L and T5 files of the models folder (ae.safetensors, clip_l,
t5xxl_fp16 or _fp8, a GGUF T5) picked by name, each used instead of the model's own component of its kind, for any
FLUX.1 model (a diffusers folder, a single transformer file, an all-in-one checkpoint).

A request names them as listed here (their path in the models folder), by file name, or by file name without its
extension (Forge's infotext writes "Module 1: t5xxl_fp16"); the command line may also give a path. A file of
another width than the model's own of its kind is refused before anything loads.
"""

from dataclasses import replace
from pathlib import Path

from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.weights.component_folder import component_config
from mflux_core.weights.resolve import ModelSource
from mflux_core.weights.split_base import split_files_by_place
from mflux_core.weights.split_files import split_file_kind

KIND_NAMES = {"vae": "VAE", "text_encoder": "CLIP-L text encoder", "text_encoder_2": "T5 text encoder"}


def module_files(models_dir: Path | None) -> dict[str, tuple[str, Path]]:
    """name -> (kind, file) of every VAE and text encoder file of the models folder; the name is its place there."""
    return split_files_by_place(models_dir) if models_dir is not None and Path(models_dir).is_dir() else {}


def _file_named(name: str, listed: dict[str, tuple[str, Path]], models_dir: Path | None) -> tuple[str, Path]:
    """(kind, file) that a request's module name stands for, among the `listed` files (or a path's)."""
    if name in listed:
        return listed[name]
    same = [key for key in listed if name in (Path(key).name, Path(key).stem)]
    if len(same) == 1:
        return listed[same[0]]
    candidate = Path(name).expanduser()
    kind = split_file_kind(candidate) if not same and candidate.is_file() else None
    if kind is not None:
        return kind, candidate
    if same:
        raise InvalidRequest(f"Several VAE / text encoder files are called {name}: {', '.join(same)}; pick one of "
                             "them.")
    where = f"in the models folder ({models_dir})" if models_dir is not None else "there"
    raise InvalidRequest(f"The VAE / text encoder file {name} is not {where}"
                         + (f"; it has {', '.join(listed)}." if listed else
                            "; put ae, clip_l or t5xxl files into it (or its vae/, clip/, text_encoders/ folders)."))


def listed_name(name: str, models_dir: Path | None) -> str | None:
    """The models-folder name of the listed file that a name from elsewhere stands for (a place, file name or stem
    here; a path, Forge's, of a file of that name), or None."""
    listed = module_files(models_dir)
    for candidate in (name, Path(name).name):
        try:
            _, path = _file_named(candidate, listed, models_dir)
        except InvalidRequest:
            continue
        found = next((key for key, (_, file) in listed.items() if file == path), None)
        if found is not None:
            return found
    return None


def chosen_modules(names: tuple[str, ...], models_dir: Path | None) -> dict[str, Path]:
    """kind -> file of the named modules, at most one of each kind."""
    listed = module_files(models_dir)
    chosen: dict[str, tuple[str, Path]] = {}
    for name in names:
        kind, path = _file_named(name, listed, models_dir)
        if kind in chosen:
            raise InvalidRequest(f"{chosen[kind][0]} and {name} are both a {KIND_NAMES[kind]}: pick one of each kind.")
        chosen[kind] = (name, path)
    return {kind: path for kind, (_, path) in chosen.items()}


def with_modules(source: ModelSource, names: tuple[str, ...], models_dir: Path | None) -> ModelSource:
    """The source with the named files in place of its own VAE and text encoders of their kinds."""
    if not names:
        return source
    chosen = chosen_modules(names, models_dir)
    check_fit(source, chosen)
    return replace(source, base_files=(*chosen.items(), *((kind, path) for kind, path in source.base_files
                                                            if kind not in chosen)))


WIDTHS = {"vae": ("latent_channels", "latent channels"), "text_encoder": ("hidden_size", "wide pooled vectors"),
          "text_encoder_2": ("d_model", "wide tokens")}


def check_fit(source: ModelSource, chosen: dict[str, Path]) -> None:
    """Each file is as wide as the model's own component of its kind, which its transformer was made with (the
    transformer's own shapes need decoding in a quantized file; its components' configs are plain)."""
    for kind, path in chosen.items():
        try:
            own = source.component(kind)
        except ModelLoadError:  # nothing to replace: the file is the model's only one of its kind
            continue
        key, what = WIDTHS[kind]
        has, wanted = component_config(path).get(key), component_config(own, kind).get(key)
        if has != wanted:
            raise InvalidRequest(f"{path.name} does not fit this model: the {KIND_NAMES[kind]} gives {has} {what} "
                                 f"where the model's own gives {wanted}; pick a file made for it.")
