"""Forge's VAE / Text Encoder choice through the A1111 API: the `forge_additional_modules` and `sd_vae` options (in
`override_settings` for one call, or POSTed to /sdapi/v1/options for the calls after it) and the /sdapi/v1/sd-modules
and /sd-vae listings. Names are the listings' file names or paths (Forge sends the paths); only files of the models
folder are used (mflux_core/weights/module_files.py)."""

from pathlib import Path

from mflux_core.weights.module_files import listed_name, module_files
from webui.a1111_wire import SdApiError

MODULE_OPTIONS = ("forge_additional_modules", "sd_vae")
NO_VAE = ("", "Automatic", "None")  # A1111's sd_vae values that pick the model's own


def module_listing(studio, kind: str | None = None) -> list[dict]:
    """A1111's listing shape: file name and path of each file (of one kind: "vae" for /sd-vae)."""
    return [{"model_name": Path(name).name, "filename": str(path)}
            for name, (its_kind, path) in module_files(studio.manager.models_dir).items()
            if kind is None or its_kind == kind]


def api_module_name(studio, name) -> str:
    found = listed_name(name, studio.manager.models_dir) if isinstance(name, str) and name else None
    if found is None:
        raise SdApiError(400, f"The VAE / text encoder file {name!r} is not in the studio: GET /sdapi/v1/sd-modules "
                              "lists them.")
    return found


def modules_from(studio, options: dict) -> list[str]:
    """The models-folder names of the files that the options name; 400 for a file the studio does not have."""
    names = options.get("forge_additional_modules") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list):
        raise SdApiError(400, "forge_additional_modules must be a list of file names or paths (GET "
                              "/sdapi/v1/sd-modules lists them).")
    vae = options.get("sd_vae")
    return [api_module_name(studio, name) for name in [*names, *([vae] if vae not in (None, *NO_VAE) else [])]]


def chosen_options(fields: dict) -> dict:
    """The module options among the fields."""
    return {key: fields[key] for key in MODULE_OPTIONS if key in fields}
