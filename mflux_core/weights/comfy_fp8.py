"""ComfyUI's scaled FP8 files (`flux1-krea-dev_fp8_scaled.safetensors`, `t5xxl_fp8_e4m3fn_scaled.safetensors`):
each FP8 (E4M3) weight is stored divided by a per-tensor scale kept beside it, `X.scale_weight` in the older files
(which hold a `scaled_fp8` marker tensor) or `X.weight_scale` in the newer ones (the layer's format in a
`X.comfy_quant` tensor, or in the header's `_quantization_metadata`). The weight is the stored values times the scale,
as ComfyUI computes it whenever it does not multiply in FP8; the input scales (`X.scale_input`, `X.input_scale`) serve
only FP8 matrix products, which the studio does not do.
"""

import json

import mlx.core as mx

from mflux_core.errors import ModelLoadError

WEIGHT_SCALES = (".scale_weight", ".weight_scale")
INPUT_SCALES = (".scale_input", ".input_scale")
FORMAT = ".comfy_quant"
MARKER = "scaled_fp8"
READABLE_FORMATS = ("float8_e4m3fn",)
METADATA_KEY = "_quantization_metadata"
FP8_SCALE = ".fp8_scale"  # a kept scale's name beside its layer's weight (weights/float8.py's Float8Linear)


def is_scaled(weights: dict[str, mx.array], metadata: dict[str, str]) -> bool:
    return METADATA_KEY in metadata or any(name.endswith(WEIGHT_SCALES + (FORMAT,)) for name in weights)


def _layer_formats(weights: dict[str, mx.array], metadata: dict[str, str]) -> dict[str, str]:
    try:
        layers = json.loads(metadata[METADATA_KEY])["layers"] if METADATA_KEY in metadata else {}
        formats = {layer: conf["format"] if isinstance(conf, dict) else conf for layer, conf in layers.items()}
        for name in weights:
            if name.endswith(FORMAT):
                conf = json.loads(bytes(memoryview(weights[name].astype(mx.uint8))).decode("utf-8"))
                formats[name.removesuffix(FORMAT)] = conf["format"]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"The file's ComfyUI quantization settings cannot be read ({error}).") from None
    return formats


def unscaled(weights: dict[str, mx.array], metadata: dict[str, str], file_name: str,
             keep_scales: bool = False) -> dict[str, mx.array]:
    """The weights as the model uses them: each scaled one times its scale, the scales and markers gone. With
    `keep_scales`, a scaled matrix stays its FP8 values with its scale beside it, one per row
    (`<layer>.fp8_scale`: weights/float8.py holds such a layer in FP8), which renaming and row splits carry along."""
    formats = _layer_formats(weights, metadata)
    unreadable = sorted({kind for kind in formats.values() if kind not in READABLE_FORMATS})
    if unreadable:
        raise ModelLoadError(f"{file_name} stores layers as {', '.join(unreadable)}, which the studio cannot read: use "
                             "its FP8 (e4m3fn), GGUF or BF16 version.")
    out = {}
    for name, value in weights.items():
        if name.endswith(WEIGHT_SCALES + INPUT_SCALES + (FORMAT,)) or name.split(".")[-1] == MARKER:
            continue
        layer = name.removesuffix(".weight")
        scale = next((weights[layer + suffix] for suffix in WEIGHT_SCALES if layer + suffix in weights), None)
        if scale is None or name == layer:
            out[name] = value
        elif keep_scales and value.ndim == 2 and scale.size == 1:
            out[name] = value
            out[layer + FP8_SCALE] = mx.full((value.shape[0], 1), scale.reshape(()).astype(mx.float32))
        else:
            out[name] = value.astype(mx.float32) * scale.astype(mx.float32)
    return out
