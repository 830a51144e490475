"""The demo Redux: FLUX.1-Redux-dev's three parts at tiny width (a SigLIP vision tower, its
SiglipImageProcessor settings and diffusers' ReduxImageEncoder), taught on the shapes world to carry a
reference picture's shape, colour and place into what the shipped `demo` transformer paints.

Training runs the Redux tool's own path: the picture's image tokens are appended after the T5 tokens of
its caption (left empty for most examples, so the tokens must carry the picture on their own), and the tower
and the embedder are taught to make the frozen `demo` transformer give, through them, the velocity it gives for
the picture's caption (distillation: the caption's velocity on the noisy picture is a steadier target than the
flow loss's noise - picture; README, "Offline on the demo models", has what each carries).

`python -m mflux_core.demo.redux_encoder RUN_DIR demo_models/demo-redux` trains with the project's training
loop (resumable from RUN_DIR, `--max-minutes` for chunks) and writes the folder in the published repo's
layout, which transformers (SiglipVisionModel), diffusers (ReduxImageEncoder) and models.redux all load.
The Redux tool uses it on the demo models (tools/redux.py).
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from PIL import Image

from mflux_core.demo import family
from mflux_core.demo.export import save_arrays, write_json
from mflux_core.demo.family import NATIVE_SIZE
from mflux_core.demo.flow_stages import encode_images, flow_batches, step_rows
from mflux_core.demo.loss_weights import token_weights
from mflux_core.demo.pools import cached_pool
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.demo.tokenizers import T5_MAX_LENGTH
from mflux_core.loader import load_flux_model
from mflux_core.models import siglip
from mflux_core.models.redux import ReduxEmbedderConfig, ReduxEncoder, ReduxImageEmbedder
from mflux_core.training import train
from mflux_core.training.flow_matching import predicted_velocity, velocity_loss
from mflux_core.weights.resolve import ModelSource, demo_folder

SIZE = 64  # the shapes world's pictures, seen unresized
PATCH = 8
SETTINGS = StageSettings(steps=24000, batch=16, learning_rate=1e-3, pool=4000, seed=12)
CAPTION_KEPT = 0.2  # share of examples shown with their caption; the others get the empty prompt
GUIDANCE_RANGE = (1.0, 4.0)  # the distilled demo's guidance values around the Redux tool's default 2.5

SIGLIP_CONFIG = {  # the published image_encoder/config.json's fields at the demo's width; no pooling head
    "architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model", "hidden_size": 64,
    "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_channels": 3,
    "image_size": SIZE, "patch_size": PATCH, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0, "vision_use_head": False, "torch_dtype": "float32",
}
EMBEDDER_CONFIG = {"_class_name": "ReduxImageEncoder", "_diffusers_version": family.DIFFUSERS_VERSION,
                   "redux_dim": SIGLIP_CONFIG["hidden_size"], "txt_in_features": family.TEXT_DIM}
PREPROCESSOR_CONFIG = {  # the published feature_extractor/preprocessor_config.json, at the demo's size
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
    "rescale_factor": 1 / 255, "size": {"height": SIZE, "width": SIZE},
}
MODEL_INDEX = {
    "_class_name": "FluxPriorReduxPipeline", "_diffusers_version": family.DIFFUSERS_VERSION,
    "feature_extractor": ["transformers", "SiglipImageProcessor"],
    "image_embedder": ["diffusers", "ReduxImageEncoder"],
    "image_encoder": ["transformers", "SiglipVisionModel"],
}
IMAGE_TOKENS = (SIZE // PATCH) ** 2


def seeded_encoder() -> ReduxEncoder:
    mx.random.seed(SETTINGS.seed)
    return ReduxEncoder(siglip.SiglipVisionTower(siglip.SiglipVisionConfig.from_dict(SIGLIP_CONFIG)),
                        ReduxImageEmbedder(ReduxEmbedderConfig.from_dict(EMBEDDER_CONFIG)),
                        siglip.SiglipPreprocessConfig.from_dict(PREPROCESSOR_CONFIG))


class ReduxOnDemo(nn.Module):
    """The Redux parts being taught, beside the frozen demo transformer they feed."""

    def __init__(self, redux: ReduxEncoder, transformer: nn.Module):
        super().__init__()
        self.redux = redux
        self.transformer = transformer


def redux_distillation_loss(model: ReduxOnDemo, batch) -> mx.array:
    """How far the velocity with the picture's Redux tokens after the (mostly empty) prompt's T5 tokens, as the
    Redux tool joins them, is from the velocity for the picture's caption."""
    flow, pixels, target = batch
    tokens = model.redux.image_embedder(model.redux.image_encoder(pixels))
    velocity = predicted_velocity(model.transformer, flow, text=mx.concatenate([flow.text, tokens], axis=1))
    return velocity_loss(velocity, flow, target)


def training_data(run: Path, demo, workers: int) -> dict[str, np.ndarray]:
    """The stage's pictures as latents, SigLIP pixels and loss weights, with the prompt each example is shown
    with (`caption_index`: the empty one for most) and its caption (`described_index`) as rows of the shipped
    text encoders' `t5` and `pooled`; cached in RUN_DIR."""
    path = run / f"examples-redux-described-{SETTINGS.seed}-{SETTINGS.pool}.npz"  # earlier runs' files lack captions
    if path.is_file():
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    pool = cached_pool(run, "text_to_image", SETTINGS.seed, SETTINGS.pool, workers)
    config = siglip.SiglipPreprocessConfig.from_dict(PREPROCESSOR_CONFIG)
    captions, index = np.unique(pool["caption"], return_inverse=True)
    kept = np.random.default_rng(SETTINGS.seed).random(len(index)) < CAPTION_KEPT
    captions = np.concatenate([[""], captions])
    encoded = [demo.text_encoders.encode(str(caption), T5_MAX_LENGTH) for caption in captions]
    data = {
        "target": encode_images(demo.vae, pool["image"]),
        "pixels": np.concatenate([np.array(siglip.siglip_preprocess(Image.fromarray(p), config))
                                  for p in pool["image"]]),
        "token_weights": token_weights(pool["image"]),
        "caption_index": np.where(kept, index + 1, 0),
        "described_index": index + 1,
        "t5": np.concatenate([np.array(e.t5) for e in encoded]),
        "pooled": np.concatenate([np.array(e.pooled) for e in encoded]),
    }
    np.savez(path, **data)
    return data


def train_redux(run: Path, workers: int = 2, max_seconds: float | None = None, compile: bool = False):
    """(ReduxEncoder, finished): the Redux parts trained against the shipped demo transformer."""
    run.mkdir(parents=True, exist_ok=True)
    demo = load_flux_model(ModelSource(demo_folder("demo")), mx.float32, "demo")
    data = training_data(run, demo, workers)
    flows = flow_batches({NATIVE_SIZE: data}, SETTINGS, demo.scheduler_config, GUIDANCE_RANGE,
                         text_tokens=T5_MAX_LENGTH + IMAGE_TOKENS)

    described = {name: mx.array(data[name]) for name in ("t5", "pooled")}

    def batch_for_step(step: int):
        _, _, rows = step_rows(SETTINGS, step, {NATIVE_SIZE: len(data["target"])})
        flow = flows(step)
        captions = mx.array(data["described_index"][rows])
        caption_only = replace(flow, rope=None)  # its own RoPE tables: no Redux tokens in its text
        target = predicted_velocity(demo.transformer, caption_only, described["t5"][captions],
                                    described["pooled"][captions])
        mx.eval(target)  # the caption's pass stays out of the compiled step
        return flow, mx.array(data["pixels"][rows]), target

    model = ReduxOnDemo(seeded_encoder(), demo.transformer)
    result = train(model, redux_distillation_loss, batch_for_step, optimizer_for(SETTINGS), SETTINGS.steps,
                   trainable=lambda name: name.startswith("redux."), checkpoint_dir=run / "redux",
                   max_seconds=max_seconds, compile=compile)
    return model.redux, result.finished


def write_redux(folder: Path, redux: ReduxEncoder) -> Path:
    """The published layout: image_encoder/ (transformers' names, `vision_model.` prefixed, conv OIHW),
    feature_extractor/, image_embedder/ (diffusers' names) and model_index.json; float32 (under 1 MB)."""
    folder = Path(folder)
    tower = {}
    for name, value in tree_flatten(redux.image_encoder.parameters()):
        tower[f"vision_model.{name}"] = value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
    write_json(folder / "image_encoder" / "config.json", SIGLIP_CONFIG)
    save_arrays(folder / "image_encoder" / "model.safetensors", {k: v.astype(mx.float32) for k, v in tower.items()})
    write_json(folder / "feature_extractor" / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    write_json(folder / "image_embedder" / "config.json", EMBEDDER_CONFIG)
    save_arrays(folder / "image_embedder" / "diffusion_pytorch_model.safetensors",
                {k: v.astype(mx.float32) for k, v in tree_flatten(redux.image_embedder.parameters())})
    write_json(folder / "model_index.json", MODEL_INDEX)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the demo Redux and write its folder.")
    parser.add_argument("run", type=Path, help="checkpoint folder (a run cut short resumes from it)")
    parser.add_argument("out", type=Path, help="the Redux folder, e.g. demo_models/demo-redux")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2, help="processes that render the example pool")
    parser.add_argument("--compile", action="store_true", help="mx.compile each step")
    args = parser.parse_args()
    started = time.perf_counter()
    redux, finished = train_redux(args.run, args.workers, args.max_minutes * 60 if args.max_minutes else None,
                                  args.compile)
    if finished:
        write_redux(args.out, redux)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "finished": finished}))


if __name__ == "__main__":
    main()
