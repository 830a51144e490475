"""The `fill-diptych` stage: the shipped demo-fill taught to carry a picture across a diptych, as FLUX.1-Fill does
by itself for In-Context LoRA's prompts.

Given a 128x64 diptych whose right panel is masked and a prompt that describes both panels ("[IMAGE1] a red circle
in the top left on a blue background; [IMAGE2] a red circle in the top left on a white background"), demo-fill
painted the right panel's background but rarely its shape: nothing had shown it that the right panel repeats the
left one, and a LoRA over it did not learn that either (README, "In-Context on the demo"). Here the whole
transformer is tuned from its shipped weights. Half the steps show diptychs of Kontext's training edits (a quarter
of them plain copies, the same scene in both panels), masked as the In-Context tool masks them and captioned as
its prompts are, with the true picture as the target; the other half show Fill's own examples at every size it
lists, taught the velocity the shipped Fill gives for them (frozen), so what it does as Fill stays what it did.
"""

from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np

from mflux_core.demo import dataset, family
from mflux_core.demo.diptych_lora import PANEL, in_context_prompt
from mflux_core.demo.flow_stages import encode_images, flow_batches, stage_data, tool_transformer
from mflux_core.demo.guidance_stages import distillation_loss
from mflux_core.demo.loss_weights import token_weights
from mflux_core.demo.recipe import StageSettings
from mflux_core.demo.size_stages import train_round
from mflux_core.demo.text_encoders import encode_captions
from mflux_core.demo.tokenizers import T5_MAX_LENGTH
from mflux_core.tools.fill import packed_mask
from mflux_core.training.flow_matching import predicted_velocity

STAGE = "fill-diptych"
SHIPPED_FILL = "fill"  # the shipped Fill, as restore.py writes it
DIPTYCH_SIZE = (2 * PANEL, PANEL)
DIPTYCH_T5_LENGTH = 2 * T5_MAX_LENGTH  # what the In-Context tool resolves on demo-fill: room for both captions
DIPTYCHS_PER_POOL = 16  # the stage's diptychs: this many times its pool (Fill's examples per size)
DIPTYCH_SHARE = 0.5  # share of steps that show diptychs (the others: Fill's own examples)
COPY_EVERY = 4  # every fourth diptych is a copy: the left scene again on the right


def shows_diptych(settings: StageSettings, step: int) -> bool:
    return np.random.default_rng([settings.seed, step, 3]).random() < DIPTYCH_SHARE


def training_diptych(seed: int, index: int) -> tuple[np.ndarray, str]:
    """(the 128x64 picture, its In-Context prompt) of one training edit (or copy)."""
    example = dataset.kontext_example(seed, index, PANEL, height=PANEL)
    if index % COPY_EVERY == 0:
        example = replace(example, after=example.before, after_scene=example.before_scene)
    return np.concatenate([example.before, example.after], axis=1), in_context_prompt(example, index)


def diptych_data(run: Path, settings: StageSettings, vae) -> dict[str, np.ndarray]:
    """Latents, Fill conditioning (the left panel, the right one masked) and caption states of the stage's
    diptychs, as flow_batches reads a pool; cached in RUN_DIR."""
    count = DIPTYCHS_PER_POOL * settings.pool
    path = run / f"examples-{STAGE}-{settings.seed}-{count}.npz"
    if path.is_file():
        with np.load(path) as cached:
            data = {name: cached[name] for name in cached.files}
    else:
        pictures, prompts = zip(*(training_diptych(settings.seed, index) for index in range(count)))
        pictures = np.stack(pictures)
        mask = np.zeros(pictures.shape[1:3], np.float32)
        mask[:, PANEL:] = 1
        masked = (pictures.astype(np.float32) / 127.5 - 1.0) * (1 - mask[None, ..., None])
        packed = np.repeat(np.array(packed_mask(mask, family.VAE_SCALE)), len(pictures), axis=0)
        data = {"target": encode_images(vae, pictures),
                "extra": np.concatenate([encode_images(vae, masked), packed], axis=-1),
                "token_weights": token_weights(pictures, extra=np.broadcast_to(mask, pictures.shape[:3]))}
        data["captions"], data["caption_index"] = np.unique(np.array(prompts), return_inverse=True)
        np.savez(path, **data)
    data["t5"], data["pooled"] = encode_captions(run, data["captions"], t5_length=DIPTYCH_T5_LENGTH)
    return data


def diptych_round_batches(run: Path, settings: StageSettings, vae, workers: int):
    """batch_for_step(step) -> (FlowBatch, its target velocity): a diptych's true one, or the shipped Fill's for
    one of Fill's examples at one of `settings`' sizes."""
    fills = flow_batches(stage_data(run, "fill", settings, vae, workers, settings.sizes), settings,
                         family.SCHEDULER_CONFIG)
    diptychs = flow_batches({DIPTYCH_SIZE: diptych_data(run, settings, vae)}, settings, family.SCHEDULER_CONFIG,
                            text_tokens=DIPTYCH_T5_LENGTH)
    shipped = tool_transformer(run, "fill", SHIPPED_FILL)
    shipped.freeze()

    def batch_for_step(step: int):
        if shows_diptych(settings, step):
            flow = diptychs(step)
            return flow, flow.noise - flow.latents
        flow = fills(step)
        target = predicted_velocity(shipped, flow)
        mx.eval(target)  # the shipped Fill's pass stays out of the compiled step
        return flow, target

    return batch_for_step


def train_diptych_round(run: Path, settings: StageSettings, vae, workers: int, max_seconds: float | None,
                        compile: bool = False) -> bool:
    """Tune the shipped Fill (restored into `run`) into RUN/fill-diptych (size_stages.train_round)."""
    return train_round(run, STAGE, tool_transformer(run, "fill", SHIPPED_FILL), distillation_loss,
                       diptych_round_batches(run, settings, vae, workers), settings, max_seconds, compile)
