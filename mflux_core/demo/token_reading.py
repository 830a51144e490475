"""The `token-reading` stage: the shipped base taught to read a caption from its T5 tokens alone, as FLUX.1 does,
so that Redux's tokens can carry a picture's place and outline.

FLUX.1's Redux appends image tokens after the T5 tokens of the prompt and leaves the CLIP pooled vector to the
prompt (empty for a variation). The demo base had learned to read much of a caption from the pooled vector: given
a caption's T5 tokens after the empty prompt's, with the empty prompt's pooled vector, it placed the shape in the
caption's region 18% of the time against 100% prompted (README, "Token-reading round"), so no Redux weights could
carry place through it. Here the base is distilled from its own shipped weights (frozen): on half the steps it is
shown the caption that way (Redux's layout: the empty prompt's T5 tokens, then the caption's, the empty pooled
vector) and taught the velocity the shipped base gives for the caption itself; on the others it is shown the
caption as a prompt and taught that same velocity, so what it paints when prompted stays the shipped base's.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from mflux_core.demo import family
from mflux_core.demo.flow_stages import base_transformer, flow_batches, stage_data
from mflux_core.demo.guidance_stages import GUIDANCE_RANGE, distillation_loss, empty_caption
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.demo.size_stages import SIZES_FILE
from mflux_core.demo.tokenizers import T5_MAX_LENGTH
from mflux_core.training import train
from mflux_core.training.flow_matching import predicted_velocity

STAGE = "token-reading"
SHIPPED_BASE = "guidance-sizes"  # the shipped base, as restore.py writes it
REDUX_LAYOUT_SHARE = 0.5  # share of steps that show the caption as Redux's tokens are shown


def shows_redux_layout(settings: StageSettings, step: int) -> bool:
    """Whether the step shows the caption as Redux's tokens are shown (else as a prompt)."""
    return np.random.default_rng([settings.seed, step, 2]).random() < REDUX_LAYOUT_SHARE


def token_reading_batches(run: Path, settings: StageSettings, vae, workers: int):
    """batch_for_step(step) -> (FlowBatch, the shipped base's velocity for the batch's captions as prompts), on
    pictures of every size of `settings` (the shipped base's: a round at 64x64 alone made it lose the others)."""
    data = stage_data(run, "base", settings, vae, workers, settings.sizes)
    prompted = flow_batches(data, settings, family.SCHEDULER_CONFIG, guidance_range=GUIDANCE_RANGE)
    redux_layout = flow_batches(data, settings, family.SCHEDULER_CONFIG, guidance_range=GUIDANCE_RANGE,
                                text_tokens=2 * T5_MAX_LENGTH)
    shipped = base_transformer(run, SHIPPED_BASE)
    shipped.freeze()
    empty_text, empty_pooled = empty_caption(run, settings.batch)

    def batch_for_step(step: int):
        flow = prompted(step)
        target = predicted_velocity(shipped, flow)
        mx.eval(target)  # the shipped base's pass stays out of the compiled step
        if shows_redux_layout(settings, step):  # the same rows and noise (both draw from the step's seed)
            flow = redux_layout(step)
            flow.text = mx.concatenate([empty_text, flow.text], axis=1)
            flow.pooled = empty_pooled
        return flow, target

    return batch_for_step


def train_token_reading(run: Path, settings: StageSettings, vae, workers: int, max_seconds: float | None,
                        compile: bool = False) -> bool:
    """Tune the shipped base (restored into `run`) into RUN/token-reading; True when it finished, and then its
    checkpoint folder lists the sizes it trained at, which export.py ships it with."""
    batches = token_reading_batches(run, settings, vae, workers)
    result = train(base_transformer(run, SHIPPED_BASE), distillation_loss, batches, optimizer_for(settings),
                   settings.steps, checkpoint_dir=run / STAGE, max_seconds=max_seconds, compile=compile)
    if result.finished:
        (run / STAGE / SIZES_FILE).write_text(json.dumps([list(size) for size in settings.sizes]))
    return result.finished
