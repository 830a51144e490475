"""Forge's model strip through the A1111 API, the options in `override_settings` for one call, or POSTed to
/sdapi/v1/options for the calls after it: the VAE / Text Encoder choice (`forge_additional_modules`, `sd_vae`, and
the /sdapi/v1/sd-modules and /sd-vae listings; names are the listings' file names or paths, as Forge sends them; only
files of the models folder are used: mflux_core/weights/module_files.py) and "Diffusion in Low Bits"
(`forge_unet_storage_dtype`, as the studio's quantization)."""

from pathlib import Path

from mflux_core.weights.module_files import listed_name, module_files
from webui.a1111_wire import SdApiError

STORAGE_OPTION = "forge_unet_storage_dtype"
MODULE_OPTIONS = ("forge_additional_modules", "sd_vae", STORAGE_OPTION)
MODULE_DEFAULTS = {"forge_additional_modules": [], "sd_vae": "Automatic", STORAGE_OPTION: "Automatic"}  # /options
NO_VAE = ("", "Automatic", "None")  # A1111's sd_vae values that pick the model's own
# Forge's storage choices (less their " (fp16 LoRA)" twins: LoRAs run beside the weights here, as those do) as the
# -q bits that do their job: NF4 and FP4 as 4-bit weights, float8 as 8-bit ones (as little memory; a scale per 64
# weights rounds less than float8's own); Automatic keeps the file's own (an FP8 file stays FP8).
STORAGE_BITS = {"automatic": None, "float16": None, "bnb-nf4": 4, "bnb-fp4": 4, "float8-e4m3fn": 8, "float8-e5m2": 8}
FP16_LORA = " (fp16 lora)"


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


def model_settings(studio, options: dict) -> dict:
    """The request settings the options ask for (`modules`, `quantize`); 400 for what the studio cannot use."""
    return {"modules": modules_from(studio, options), "quantize": quantize_from(options)}


def chosen_options(fields: dict) -> dict:
    """The module options among the fields."""
    return {key: fields[key] for key in MODULE_OPTIONS if key in fields}


def quantize_from(options: dict) -> int | None:
    """The quantization bits the options' `forge_unet_storage_dtype` asks for (None: the weights as stored); 400
    for a value that is not one of Forge's."""
    value = options.get(STORAGE_OPTION)
    if value is None:
        return None
    key = value.strip().lower().removesuffix(FP16_LORA) if isinstance(value, str) else None
    if key not in STORAGE_BITS:
        raise SdApiError(400, f"forge_unet_storage_dtype {str(value)[:60]!r} is not one of Forge's: Automatic, "
                              "bnb-nf4, bnb-fp4, float8-e4m3fn or float8-e5m2 (each also with ' (fp16 LoRA)').")
    return STORAGE_BITS[key]
