"""Guidance distillation, as FLUX.1-dev was made: the base learns the unconditional velocity too (the
teacher), then a copy of it learns to give in one pass the teacher's classifier-free guided velocity
for the guidance value in its embedding. Unguided, the demo base hedged between neighbouring
colours and painted shapes part of the way towards the background's colour."""

from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np

from mflux_core.demo import family
from mflux_core.demo.family import NATIVE_SIZE
from mflux_core.demo.flow_stages import TOOL_GUIDANCE_RANGE, base_transformer, flow_batches, stage_data, step_rows
from mflux_core.demo.pools import Size
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.demo.text_encoders import ENCODER_STAGE, encode_captions
from mflux_core.training import train
from mflux_core.training.flow_matching import flow_matching_loss, predicted_velocity, velocity_loss

CAPTION_DROPOUT = 0.15  # share of the teacher's examples shown with the empty caption
GUIDANCE_RANGE = (1.0, 10.0)  # the guidance values the base is distilled for


def guidance_scale(guidance: mx.array) -> mx.array:
    """The classifier-free guidance scale a distilled guidance value stands for: 1 is unguided, and the
    generate tool's default 3.5 is 1.625 (the teacher's colours were truest at scales 1.5-2)."""
    return 1 + (guidance - 1) / 4


def empty_caption(run: Path, batch: int) -> tuple[mx.array, mx.array]:
    """The empty caption's T5 states and CLIP pooled output, repeated `batch` times."""
    t5, pooled = encode_captions(run, np.array([""]))
    return (mx.broadcast_to(mx.array(t5), (batch, *t5.shape[1:])),
            mx.broadcast_to(mx.array(pooled), (batch, pooled.shape[1])))


def train_teacher(run: Path, settings: StageSettings, base_settings: StageSettings, vae, workers: int,
                  max_seconds: float | None, compile: bool = False, sizes: tuple[Size, ...] = (NATIVE_SIZE,),
                  start: str = ENCODER_STAGE, checkpoint: str = "teacher",
                  guidance_range: tuple[float, float] = TOOL_GUIDANCE_RANGE) -> bool:
    """The base (the checkpoint of `start`), tuned on the examples of `base_settings` at `sizes` with some
    captions left empty, its guidance input drawn from `guidance_range`."""
    flows = flow_batches(stage_data(run, "base", base_settings, vae, workers, sizes), settings,
                         family.SCHEDULER_CONFIG, guidance_range=guidance_range)
    empty_text, empty_pooled = empty_caption(run, settings.batch)

    def batch_for_step(step: int):
        flow = flows(step)
        keep = mx.array(np.random.default_rng([settings.seed, step, 1]).random(settings.batch) >= CAPTION_DROPOUT)
        flow.text = mx.where(keep[:, None, None], flow.text, empty_text)
        flow.pooled = mx.where(keep[:, None], flow.pooled, empty_pooled)
        return flow

    result = train(base_transformer(run, start), flow_matching_loss, batch_for_step, optimizer_for(settings),
                   settings.steps, checkpoint_dir=run / checkpoint, max_seconds=max_seconds, compile=compile)
    return result.finished


def distillation_loss(student, batch) -> mx.array:
    flow, target = batch
    return velocity_loss(predicted_velocity(student, flow), flow, target)


def train_guidance(run: Path, settings: StageSettings, base_settings: StageSettings, vae, workers: int,
                   max_seconds: float | None, compile: bool = False, sizes: tuple[Size, ...] = (NATIVE_SIZE,),
                   teacher_stage: str = "teacher", checkpoint: str = "guidance",
                   teacher_guidance: float | None = None, anchor: str | None = None) -> bool:
    """The shipped base: the teacher, taught its own guided velocity at each guidance value in GUIDANCE_RANGE
    on the examples of `base_settings` at `sizes`; `teacher_guidance`: the guidance input of the teacher's
    own passes (None: the batch's); `anchor`: a distilled checkpoint whose own velocity it is taught instead at
    NATIVE_SIZE (the shipped base, so that a retuning at more sizes keeps what the base does at 64x64)."""
    data = stage_data(run, "base", base_settings, vae, workers, sizes)
    counts = {size: len(pool["target"]) for size, pool in data.items()}
    flows = flow_batches(data, settings, family.SCHEDULER_CONFIG, guidance_range=GUIDANCE_RANGE)
    teacher = base_transformer(run, teacher_stage)
    teacher.freeze()
    kept = None if anchor is None else base_transformer(run, anchor)
    if kept is not None:
        kept.freeze()
    empty_text, empty_pooled = empty_caption(run, settings.batch)

    def batch_for_step(step: int):
        flow = flows(step)
        if kept is not None and step_rows(settings, step, counts)[1] == NATIVE_SIZE:
            target = predicted_velocity(kept, flow)
        else:
            asked = flow if teacher_guidance is None else replace(flow, guidance=mx.full(flow.guidance.shape,
                                                                                         teacher_guidance))
            conditional = predicted_velocity(teacher, asked)
            unconditional = predicted_velocity(teacher, asked, empty_text, empty_pooled)
            scale = guidance_scale(flow.guidance)[:, None, None]
            target = unconditional + scale * (conditional - unconditional)
        mx.eval(target)  # the teacher's passes stay out of the student's compiled step
        return flow, target

    result = train(base_transformer(run, teacher_stage), distillation_loss, batch_for_step, optimizer_for(settings),
                   settings.steps, checkpoint_dir=run / checkpoint, max_seconds=max_seconds, compile=compile)
    return result.finished
