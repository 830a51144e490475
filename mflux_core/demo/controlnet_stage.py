"""The demo's ControlNet stages: a ControlNet trained beside a frozen base transformer, one stage per
kind of control image (canny edges; a low-resolution picture for the upscaler)."""

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core.demo import family
from mflux_core.demo.family import NATIVE_SIZE
from mflux_core.demo.flow_stages import base_transformer, flow_batches, stage_data, step_rows
from mflux_core.demo.pools import Size
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.demo.text_encoders import ENCODER_STAGE
from mflux_core.training import train
from mflux_core.training.loop import MODEL_FILE
from mflux_core.training.flow_matching import noisy_latents, velocity_loss


@dataclass(frozen=True)
class ControlNetStage:
    strength: float  # the tool's default strength: the ControlNet trains at it
    base_stage: str  # the checkpoint of the base transformer it trains beside


CONTROLNET_STAGES = {
    # beside the undistilled base: beside the distilled one the edges were followed less well (IoU 0.59 vs 0.64)
    "canny": ControlNetStage(family.CONTROLNET_STRENGTH, ENCODER_STAGE),
    # beside the shipped (distilled) base, the one a run restored from demo_models/ has (restore.py)
    "upscale": ControlNetStage(family.UPSCALER_STRENGTH, "guidance"),
}


class ControlledFlux(nn.Module):
    """The frozen base transformer steered by a ControlNet."""

    def __init__(self, transformer, controlnet):
        super().__init__()
        self.transformer = transformer
        self.controlnet = controlnet


def controlled_loss(model: ControlledFlux, batch, strength: float) -> mx.array:
    """Flow matching through the base transformer, with the ControlNet's residuals at `strength`."""
    flow, control = batch
    x = noisy_latents(flow.latents, flow.noise, flow.sigmas)
    text_ids = mx.zeros((flow.text.shape[1], 3), dtype=mx.float32)
    blocks, singles = model.controlnet(x, control, flow.text, flow.pooled, flow.sigmas, flow.image_ids, text_ids,
                                       guidance=flow.guidance, conditioning_scale=strength,
                                       rope=flow.rope)
    velocity = model.transformer(x, flow.text, flow.pooled, flow.sigmas, flow.image_ids, text_ids,
                                 guidance=flow.guidance, controlnet_block_samples=blocks,
                                 controlnet_single_block_samples=singles, rope=flow.rope)
    return velocity_loss(velocity, flow)


def controlled_model(run: Path, stage: str, beside: str | None = None) -> ControlledFlux:
    """The stage's base (or the checkpoint `beside`) with a ControlNet whose shared parts start as copies of the
    base's and whose input and output projections start at zero (it changes nothing until trained)."""
    base = base_transformer(run, beside or CONTROLNET_STAGES[stage].base_stage)
    controlnet = family.build_controlnet(family.controlnet_config())
    own = dict(tree_flatten(controlnet.parameters()))
    copied = {name: value for name, value in tree_flatten(base.parameters()) if name in own}
    zeros = {name: mx.zeros_like(value) for name, value in own.items()
             if name.startswith(("controlnet_x_embedder.", "controlnet_blocks."))}
    controlnet.load_weights(list({**own, **copied, **zeros}.items()))
    return ControlledFlux(base, controlnet)


def train_controlnet(run: Path, stage: str, settings: StageSettings, vae, workers: int, max_seconds: float | None,
                     compile: bool = False, sizes: tuple[Size, ...] = (NATIVE_SIZE,), start: str | None = None,
                     beside: str | None = None, checkpoint: str | None = None) -> bool:
    """The stage's ControlNet: new, or the ControlNet of the checkpoint `start` (its sizes stage tunes it at every
    size in `sizes` beside the base `beside`); written to RUN/`checkpoint` (default: the stage)."""
    data = stage_data(run, stage, settings, vae, workers, sizes)
    model = controlled_model(run, stage, beside)
    if start is not None:
        trained = mx.load(str(run / start / MODEL_FILE))
        model.load_weights([(name, value) for name, value in trained.items() if name.startswith("controlnet.")],
                           strict=False)
    flows = flow_batches({size: {k: v for k, v in pool.items() if k != "extra"} for size, pool in data.items()},
                         settings, family.SCHEDULER_CONFIG)

    def batch_for_step(step: int):
        _, size, rows = step_rows(settings, step, {size: len(pool["target"]) for size, pool in data.items()})
        return flows(step), mx.array(data[size]["extra"][rows])

    loss = partial(controlled_loss, strength=CONTROLNET_STAGES[stage].strength)
    result = train(model, loss, batch_for_step, optimizer_for(settings), settings.steps,
                   trainable=lambda name: name.startswith("controlnet."), checkpoint_dir=run / (checkpoint or stage),
                   max_seconds=max_seconds, compile=compile)
    return result.finished
