"""Depth Anything (transformers' DepthAnythingForDepthEstimation) in MLX: photo -> relative depth.

DINOv2 backbone -> DPT neck (reassemble each chosen hidden state into a feature map at 4x, 2x, 1x
and 1/2x the patch grid, then fuse from coarse to fine) -> head (upsample to the input size).
The output is relative inverse depth: larger means nearer. The preprocessing and the resize back
to the photo's size reproduce transformers' DPTImageProcessor (PIL backend).
"""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from PIL import Image

from mflux_core.errors import ModelLoadError
from mflux_core.models.dinov2 import Dinov2Backbone, Dinov2Config, resize_bicubic, resize_bilinear_align_corners
from mflux_core.models.vae import inference, settle
from mflux_core.request import check_image_size
from mflux_core.weights.loading import load_component
from mflux_core.weights.safetensors_io import read_json

# transformers' DepthAnythingConfig default backbone, used when config.json has no backbone_config
DEFAULT_BACKBONE = {"image_size": 518, "hidden_size": 384, "num_attention_heads": 6, "out_indices": [9, 10, 11, 12]}


@dataclass(frozen=True)
class DepthAnythingConfig:
    backbone: Dinov2Config
    patch_size: int
    reassemble_hidden_size: int
    reassemble_factors: tuple[float, ...]
    neck_hidden_sizes: tuple[int, ...]
    fusion_hidden_size: int
    head_in_index: int
    head_hidden_size: int
    max_depth: float

    @classmethod
    def from_dict(cls, config: dict) -> "DepthAnythingConfig":
        """Missing keys take transformers' DepthAnythingConfig defaults."""
        if config.get("depth_estimation_type", "relative") != "relative":
            raise ModelLoadError("Only relative Depth Anything models are supported, not metric ones.")
        backbone = config.get("backbone_config") or DEFAULT_BACKBONE
        if backbone.get("model_type", "dinov2") != "dinov2":
            raise ModelLoadError(f"Unsupported Depth Anything backbone {backbone['model_type']!r} (expected dinov2).")
        neck_hidden_sizes = tuple(config.get("neck_hidden_sizes", (48, 96, 192, 384)))
        reassemble_factors = tuple(config.get("reassemble_factors", (4, 2, 1, 0.5)))
        backbone_config = Dinov2Config.from_dict(backbone)
        if not len(neck_hidden_sizes) == len(reassemble_factors) == len(backbone_config.out_indices):
            raise ModelLoadError(
                "Depth Anything config: neck sizes, reassemble factors and backbone outputs differ in number."
            )
        return cls(
            backbone=backbone_config,
            patch_size=config.get("patch_size", 14),
            reassemble_hidden_size=config.get("reassemble_hidden_size", 384),
            reassemble_factors=reassemble_factors,
            neck_hidden_sizes=neck_hidden_sizes,
            fusion_hidden_size=config.get("fusion_hidden_size", 64),
            head_in_index=config.get("head_in_index", -1),
            head_hidden_size=config.get("head_hidden_size", 32),
            max_depth=config.get("max_depth") or 1,
        )


class ReassembleLayer(nn.Module):
    """1x1 projection, then resize by `factor`: transposed conv up, identity, or strided 3x3 conv down."""

    def __init__(self, in_channels: int, channels: int, factor: float):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, channels, kernel_size=1)
        if factor > 1:
            self.resize = nn.ConvTranspose2d(channels, channels, kernel_size=int(factor), stride=int(factor))
        elif factor < 1:
            self.resize = nn.Conv2d(channels, channels, kernel_size=3, stride=int(1 / factor), padding=1)
        else:
            self.resize = nn.Identity()

    def __call__(self, x: mx.array) -> mx.array:
        return settle(self.resize(settle(self.projection(x))))


class ReassembleStage(nn.Module):
    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.layers = [
            ReassembleLayer(config.reassemble_hidden_size, channels, factor)
            for channels, factor in zip(config.neck_hidden_sizes, config.reassemble_factors)
        ]

    def __call__(self, hidden_states: list[mx.array], grid: tuple[int, int]) -> list[mx.array]:
        maps = []
        for layer, hidden in zip(self.layers, hidden_states):
            patches = hidden[:, 1:]  # drop the CLS token
            maps.append(layer(patches.reshape(patches.shape[0], *grid, patches.shape[-1])))
        return maps


class PreActResidualLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.convolution1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.convolution2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return settle(x + self.convolution2(nn.relu(settle(self.convolution1(nn.relu(x))))))


class FeatureFusionLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.projection = nn.Conv2d(channels, channels, kernel_size=1)
        self.residual_layer1 = PreActResidualLayer(channels)
        self.residual_layer2 = PreActResidualLayer(channels)

    def __call__(self, x: mx.array, skip: mx.array | None, size: tuple[int, int]) -> mx.array:
        if skip is not None:
            x = x + self.residual_layer1(skip)
        x = settle(resize_bilinear_align_corners(self.residual_layer2(x), size))
        return settle(self.projection(x))


class FeatureFusionStage(nn.Module):
    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.layers = [FeatureFusionLayer(config.fusion_hidden_size) for _ in config.neck_hidden_sizes]

    def __call__(self, features: list[mx.array]) -> list[mx.array]:
        """Coarsest first; each step upsamples to the next map's size (the last one doubles)."""
        features = features[::-1]
        fused, outputs = None, []
        for index, (feature, layer) in enumerate(zip(features, self.layers)):
            if index + 1 < len(features):
                size = features[index + 1].shape[1:3]
            else:
                size = (2 * feature.shape[1], 2 * feature.shape[2])
            fused = layer(feature, None, size) if fused is None else layer(fused, feature, size)
            outputs.append(fused)
        return outputs


class DepthAnythingNeck(nn.Module):
    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.reassemble_stage = ReassembleStage(config)
        self.convs = [
            nn.Conv2d(channels, config.fusion_hidden_size, kernel_size=3, padding=1, bias=False)
            for channels in config.neck_hidden_sizes
        ]
        self.fusion_stage = FeatureFusionStage(config)

    def __call__(self, hidden_states: list[mx.array], grid: tuple[int, int]) -> list[mx.array]:
        maps = self.reassemble_stage(hidden_states, grid)  # each freed once its projection is made
        return self.fusion_stage([settle(conv(maps.pop(0))) for conv in self.convs])


class DepthAnythingHead(nn.Module):
    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        features = config.fusion_hidden_size
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, config.head_hidden_size, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(config.head_hidden_size, 1, kernel_size=1)

    def __call__(self, x: mx.array, size: tuple[int, int]) -> mx.array:
        x = settle(resize_bilinear_align_corners(settle(self.conv1(x)), size))
        return settle(nn.relu(self.conv3(settle(nn.relu(self.conv2(x))))))[..., 0]


class DepthAnything(nn.Module):
    """pixels (B, H, W, 3), normalised -> relative inverse depth (B, H', W'), H' = H rounded down to the patch."""

    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.config = config
        self.backbone = Dinov2Backbone(config.backbone)
        self.neck = DepthAnythingNeck(config)
        self.head = DepthAnythingHead(config)

    def __call__(self, pixels: mx.array) -> mx.array:
        p = self.config.patch_size
        grid = (pixels.shape[1] // p, pixels.shape[2] // p)
        fused = self.neck(self.backbone(pixels), grid)[self.config.head_in_index]  # the other maps freed
        return self.head(fused, (grid[0] * p, grid[1] * p)) * self.config.max_depth


def sanitize(weights: dict[str, mx.array], config: DepthAnythingConfig) -> dict[str, mx.array]:
    """Checkpoint names and layouts -> ours: torch conv weights to MLX's, DINOv2's nested attention
    names flattened, the pre-training mask token dropped."""
    transposed = {
        f"neck.reassemble_stage.layers.{i}.resize.weight" for i, f in enumerate(config.reassemble_factors) if f > 1
    }
    out = {}
    for key, value in weights.items():
        if key == "backbone.embeddings.mask_token":
            continue
        if key in transposed:
            value = value.transpose(1, 2, 3, 0)  # (in, out, kh, kw) -> (out, kh, kw, in)
        elif value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)  # (out, in, kh, kw) -> (out, kh, kw, in)
        key = key.replace(".attention.attention.", ".attention.")
        key = key.replace(".attention.output.dense.", ".attention.output.")
        out[key] = value
    return out


@dataclass(frozen=True)
class DepthPreprocessConfig:
    """The fields of preprocessor_config.json that DPTImageProcessor uses (defaults: its own)."""

    height: int
    width: int
    keep_aspect_ratio: bool
    ensure_multiple_of: int
    resample: int
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, config: dict) -> "DepthPreprocessConfig":
        size = config.get("size", {"height": 384, "width": 384})
        if "height" not in size or "width" not in size:
            raise ModelLoadError(f"preprocessor_config.json: size needs height and width, got {size}.")
        return cls(
            height=size["height"],
            width=size["width"],
            keep_aspect_ratio=config.get("keep_aspect_ratio", False),
            ensure_multiple_of=config.get("ensure_multiple_of", 1),
            resample=config.get("resample", Image.Resampling.BICUBIC),
            rescale_factor=config.get("rescale_factor", 1 / 255),
            image_mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(config.get("image_std", (0.5, 0.5, 0.5))),
        )


def model_input_size(height: int, width: int, config: DepthPreprocessConfig) -> tuple[int, int]:
    """DPT's resize target: scale toward config's size (with keep_aspect_ratio, by the factor that
    changes the image least), then round each side to a multiple of ensure_multiple_of."""
    scale_height, scale_width = config.height / height, config.width / width
    if config.keep_aspect_ratio:
        if abs(1 - scale_width) < abs(1 - scale_height):
            scale_height = scale_width
        else:
            scale_width = scale_height
    multiple = config.ensure_multiple_of
    # never 0 (where transformers would fail): a side shorter than half a multiple gets one multiple
    return (
        max(round(scale_height * height / multiple) * multiple, multiple),
        max(round(scale_width * width / multiple) * multiple, multiple),
    )


def preprocess(image: Image.Image, config: DepthPreprocessConfig) -> np.ndarray:
    """PIL image -> (1, h, w, 3) float32 model input: resize, rescale, normalise (DPTImageProcessor)."""
    rgb = image.convert("RGB")
    height, width = model_input_size(rgb.height, rgb.width, config)
    resized = rgb.resize((width, height), resample=Image.Resampling(config.resample))
    pixels = (np.asarray(resized, dtype=np.float64) * config.rescale_factor).astype(np.float32)
    pixels = (pixels - np.array(config.image_mean, np.float32)) / np.array(config.image_std, np.float32)
    return pixels[None]


def check_photo_size(image: Image.Image) -> None:
    """The size limits every image input has (request.check_image_size), for the photo a depth map is made from."""
    check_image_size(*image.size, "The photo to estimate depth from")


class DepthEstimator:
    """A Depth Anything folder (config.json, model.safetensors, preprocessor_config.json) ready to run."""

    def __init__(self, model: DepthAnything, preprocess_config: DepthPreprocessConfig):
        self.model = model
        self.preprocess_config = preprocess_config

    @classmethod
    def from_folder(cls, folder: Path, dtype: mx.Dtype = mx.float32) -> "DepthEstimator":
        folder = Path(folder)
        if (folder / "model_index.json").is_file() or not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder.name} is not a depth estimator (a Depth Anything folder, with config.json "
                                 "and preprocessor_config.json): name one, or leave the choice to the studio.")
        config = DepthAnythingConfig.from_dict(read_json(folder / "config.json"))
        preprocess_config = DepthPreprocessConfig.from_dict(read_json(folder / "preprocessor_config.json"))
        model = load_component(
            folder, build=lambda _: DepthAnything(config), sanitize=lambda w: sanitize(w, config), dtype=dtype
        )
        return cls(model, preprocess_config)

    def estimate(self, image: Image.Image) -> np.ndarray:
        """Relative inverse depth (larger = nearer), float32 (H, W) at the image's own size."""
        check_photo_size(image)
        dtype = self.model.head.conv3.weight.dtype
        pixels = mx.array(preprocess(image, self.preprocess_config)).astype(dtype)
        with inference():  # each layer evaluated before the next: the peak depth_memory plans for
            depth = settle(self.model(pixels).astype(mx.float32))
        depth = resize_bicubic(depth[..., None], (image.height, image.width))
        return np.array(depth[0, :, :, 0])


def depth_to_image(depth: np.ndarray) -> Image.Image:
    """Depth map -> RGB control image for FLUX.1-Depth-dev: min-max scaled to 0-255, near = white."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    gray = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
