"""The demo depth estimator: Depth Anything V2's architecture (transformers' DepthAnythingForDepthEstimation,
DINOv2 backbone + DPT neck and head) at tiny width, taught the shapes world's depth maps from its pictures.

`python -m mflux_core.demo.depth_estimator RUN_DIR demo_models/demo-depth-estimator` trains it with the
project's training loop (resumable from RUN_DIR) and writes the folder in the published repo's layout
(config.json, model.safetensors with the hub's DINOv2 names, preprocessor_config.json), which both
transformers and mflux_core.models.depth load. The studio's Depth tool uses it when the real estimator
(depth-anything/Depth-Anything-V2-Small-hf) is not on disk.
"""

import argparse
import json
import time
from pathlib import Path

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.export import save_arrays, write_json
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.models.depth import (
    DepthAnything, DepthAnythingConfig, DepthEstimator, DepthPreprocessConfig, depth_to_image, preprocess,
)
from mflux_core.training import train

SIZE = 64  # the shapes world's pictures; a multiple of the patch, so the estimator sees them unresized
PATCH = 8
SETTINGS = StageSettings(steps=500, batch=8, learning_rate=2e-3, pool=0, seed=11)
NEAR_THRESHOLD = 0.5  # of the min-max scaled map: the shapes stand at >= 0.6 of it, the floor at 0

CONFIG = {
    "architectures": ["DepthAnythingForDepthEstimation"], "model_type": "depth_anything",
    "backbone_config": {
        "model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
        "patch_size": PATCH, "image_size": SIZE, "out_features": ["stage1", "stage2", "stage3", "stage4"],
        "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False,
    },
    "patch_size": PATCH, "reassemble_hidden_size": 32, "reassemble_factors": [4, 2, 1, 0.5],
    "neck_hidden_sizes": [8, 16, 24, 32], "fusion_hidden_size": 8, "head_in_index": -1, "head_hidden_size": 8,
    "depth_estimation_type": "relative", "max_depth": 1, "torch_dtype": "float32",
}
PREPROCESSOR_CONFIG = {  # the published repo's fields, with the demo's size
    "do_normalize": True, "do_pad": False, "do_rescale": True, "do_resize": True, "ensure_multiple_of": PATCH,
    "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225], "keep_aspect_ratio": True, "resample": 3,
    "rescale_factor": 1 / 255, "size": {"height": SIZE, "width": SIZE}, "size_divisor": None,
}


def training_batch(step: int) -> tuple[mx.array, mx.array]:
    """Pictures (B, 64, 64, 3) as the estimator's preprocessing hands them over, and their depth in [0, 1]."""
    preprocess_config = DepthPreprocessConfig.from_dict(PREPROCESSOR_CONFIG)
    pictures, depths = [], []
    for row in range(SETTINGS.batch):
        example = dataset.depth_example(SETTINGS.seed, step * SETTINGS.batch + row, SIZE)
        pictures.append(preprocess(Image.fromarray(example.image), preprocess_config)[0])
        depths.append(example.control[..., 0].astype(np.float32) / 255)
    return mx.array(np.stack(pictures)), mx.array(np.stack(depths))


def depth_loss(model: DepthAnything, batch) -> mx.array:
    pictures, depths = batch
    return mx.mean((model(pictures) - depths) ** 2)


def train_estimator(run: Path, max_seconds: float | None = None) -> DepthAnything:
    mx.random.seed(SETTINGS.seed)
    model = DepthAnything(DepthAnythingConfig.from_dict(CONFIG))
    train(model, depth_loss, training_batch, optimizer_for(SETTINGS), SETTINGS.steps, checkpoint_dir=run,
          max_seconds=max_seconds)
    return model


def checkpoint_arrays(model: DepthAnything) -> dict[str, mx.array]:
    """Our parameters under the hub's names and torch layouts (the inverse of models.depth.sanitize)."""
    config = model.config
    transposed = {f"neck.reassemble_stage.layers.{i}.resize.weight"
                  for i, factor in enumerate(config.reassemble_factors) if factor > 1}
    arrays = {"backbone.embeddings.mask_token": mx.zeros((1, config.backbone.hidden_size))}
    for key, value in tree_flatten(model.parameters()):
        if key in transposed:
            value = value.transpose(3, 0, 1, 2)  # (out, kh, kw, in) -> (in, out, kh, kw)
        elif value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)  # (out, kh, kw, in) -> (out, in, kh, kw)
        if ".attention.output." in key:
            key = key.replace(".attention.output.", ".attention.output.dense.")
        elif ".attention." in key:
            key = key.replace(".attention.", ".attention.attention.")
        arrays[key] = value.astype(mx.float32)
    return arrays


def write_estimator(folder: Path, model: DepthAnything) -> None:
    write_json(folder / "config.json", CONFIG)
    write_json(folder / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    save_arrays(folder / "model.safetensors", checkpoint_arrays(model))


def near_mask(depth_image: np.ndarray) -> np.ndarray:
    """The raised shapes of a depth image (near = bright): above NEAR_THRESHOLD of its range."""
    gray = depth_image[..., 0].astype(np.float32) if depth_image.ndim == 3 else depth_image.astype(np.float32)
    low, high = gray.min(), gray.max()
    return (gray - low) > NEAR_THRESHOLD * max(high - low, 1e-6)


def mean_iou(estimate, count: int = 50, seed: int = 100) -> float:
    """Mean IoU of the shapes in `estimate(picture) -> depth image` against the true depth maps of `count`
    held-out scenes."""
    scores = []
    for index in range(count):
        example = dataset.depth_example(seed, index, SIZE, held_out=True)
        predicted, truth = near_mask(np.asarray(estimate(Image.fromarray(example.image)))), near_mask(example.control)
        scores.append((predicted & truth).sum() / max((predicted | truth).sum(), 1))
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the demo depth estimator and write its folder.")
    parser.add_argument("run", type=Path, help="checkpoint folder (a run cut short resumes from it)")
    parser.add_argument("out", type=Path, help="the estimator's folder, e.g. demo_models/demo-depth-estimator")
    parser.add_argument("--max-minutes", type=float, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    model = train_estimator(args.run, args.max_minutes * 60 if args.max_minutes else None)
    write_estimator(args.out, model)
    estimator = DepthEstimator.from_folder(args.out)
    score = mean_iou(lambda picture: depth_to_image(estimator.estimate(picture)))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "held_out_mean_iou": round(score, 3)}))


if __name__ == "__main__":
    main()
