"""The demo's flow-matching stages: the base transformer (trained with the text encoders), then
Fill, Depth and Kontext fine-tuned from it, each on latents computed once per run."""

import math
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mflux_core.demo import family
from mflux_core.demo.loss_weights import token_weights
from mflux_core.demo.pools import cached_pool
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.demo.text_encoders import (ENCODER_STAGE, CaptionedTransformer, caption_tokens, component_weights,
                                           encode_captions, seeded_text_encoders)
from mflux_core.demo.tokenizers import T5_MAX_LENGTH
from mflux_core.models.rope import rope_tables
from mflux_core.sampling.latents import image_position_ids, pack_latents
from mflux_core.tools.fill import packed_mask
from mflux_core.training import train
from mflux_core.training.flow_matching import FlowBatch, flow_matching_loss, shifted_sigmas
from mflux_core.training.loop import MODEL_FILE


def encode_images(vae, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8, or float pixels in [-1, 1] -> (N, tokens, 64) packed normalised latents."""
    pixels = images if images.dtype == np.float32 else images.astype(np.float32) / 127.5 - 1.0
    parts = [np.array(pack_latents(vae.encode(mx.array(pixels[i : i + 256])))) for i in range(0, len(pixels), 256)]
    return np.concatenate(parts)


def stage_examples(run: Path, stage: str, settings: StageSettings, vae, workers: int) -> dict[str, np.ndarray]:
    """Latents and conditioning of every example of the stage's pool, with its captions (the unique
    strings, and each example's index into them); cached in RUN_DIR."""
    path = run / f"examples-{stage}-{settings.seed}-{settings.pool}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    kind = {"base": "text_to_image"}.get(stage, stage)
    pool = cached_pool(run, kind, settings.seed, settings.pool, workers)
    if stage == "base":
        data = {"target": encode_images(vae, pool["image"]), "text": pool["caption"],
                "token_weights": token_weights(pool["image"])}
    elif stage == "fill":
        # As the Fill pipeline builds it: pixels in [-1, 1] times (1 - mask), so the hole is 0 (grey).
        masked_pixels = (pool["source"].astype(np.float32) / 127.5 - 1.0) * (1 - pool["mask"][..., None])
        masks = np.concatenate([np.array(packed_mask(m, family.VAE_SCALE)) for m in pool["mask"]])
        data = {"target": encode_images(vae, pool["target"]),
                "extra": np.concatenate([encode_images(vae, masked_pixels), masks], axis=-1), "text": pool["caption"],
                "token_weights": token_weights(pool["target"], extra=pool["mask"])}
    elif stage in ("depth", "canny", "upscale"):  # the control image's latents: Depth's extra channels, the ControlNet's input
        data = {"target": encode_images(vae, pool["image"]), "extra": encode_images(vae, pool["control"]),
                "text": pool["caption"], "token_weights": token_weights(pool["image"])}
    else:
        data = {"target": encode_images(vae, pool["after"]), "reference": encode_images(vae, pool["before"]),
                "text": pool["instruction"], "token_weights": token_weights(pool["after"], pool["before"])}
    data["captions"], data["caption_index"] = np.unique(data.pop("text"), return_inverse=True)
    np.savez(path, **data)
    return data


def stage_data(run: Path, stage: str, settings: StageSettings, vae, workers: int) -> dict[str, np.ndarray]:
    """The stage's examples with each caption's T5 states ("t5") and CLIP pooled output ("pooled"),
    encoded once by the trained (from here on frozen) encoders."""
    data = stage_examples(run, stage, settings, vae, workers)
    data["t5"], data["pooled"] = encode_captions(run, data["captions"])
    return data


def step_rows(settings: StageSettings, step: int, count: int) -> tuple[np.random.Generator, np.ndarray]:
    """The step's generator and the pool rows it draws first (a stage adds its own inputs for the same rows)."""
    rng = np.random.default_rng([settings.seed, step])
    return rng, rng.integers(0, count, settings.batch)


TOOL_GUIDANCE_RANGE = (1.0, 35.0)  # the undistilled transformers learn to ignore their guidance input at every
# tool default (Kontext's 2.5 to Fill's 30); only the distilled base (guidance_stages.py) reads its own


def flow_batches(data: dict[str, np.ndarray], settings: StageSettings, scheduler: dict,
                 guidance_range: tuple[float, float] = TOOL_GUIDANCE_RANGE, text_tokens: int = T5_MAX_LENGTH):
    """batch_for_step(step) -> FlowBatch of the rows step_rows draws; `text_tokens`: the transformer's text
    sequence (more than the T5 tokens when the loss appends tokens of its own, as Redux does)."""
    tokens = data["target"].shape[1]
    side = int(math.isqrt(tokens))
    image_ids = image_position_ids(2 * side, 2 * side)
    reference_ids = image_position_ids(2 * side, 2 * side, first=1.0)
    all_ids = np.concatenate([np.zeros((text_tokens, 3)), np.array(image_ids)]
                             + ([np.array(reference_ids)] if "reference" in data else []))
    rope = rope_tables(all_ids, tuple(family.transformer_config()["axes_dims_rope"]))  # outside mx.compile

    def batch_for_step(step: int):
        rng, rows = step_rows(settings, step, len(data["target"]))
        captions = data["caption_index"][rows]
        flow = FlowBatch(
            latents=mx.array(data["target"][rows]),
            noise=mx.array(rng.standard_normal(data["target"][rows].shape).astype(np.float32)),
            sigmas=mx.array(shifted_sigmas(rng, settings.batch, tokens, scheduler)),
            text=mx.array(data["t5"][captions]), pooled=mx.array(data["pooled"][captions]), image_ids=image_ids,
            guidance=mx.array(rng.uniform(*guidance_range, settings.batch).astype(np.float32)),
            rope=rope, token_weights=mx.array(data["token_weights"][rows]),
        )
        if "extra" in data:
            flow.extra_channels = mx.array(data["extra"][rows])
        if "reference" in data:
            flow.reference_tokens = mx.array(data["reference"][rows])
            flow.reference_ids = reference_ids
        return flow

    return batch_for_step


def base_transformer(run: Path, stage: str = ENCODER_STAGE):
    """A trained base transformer from its stage's checkpoint (the encoder stage's, or a later stage that tuned it)."""
    transformer = family.build_transformer(family.transformer_config("base"))
    checkpoint = run / stage / MODEL_FILE
    transformer.load_weights(component_weights(checkpoint, "transformer") if stage == ENCODER_STAGE
                             else str(checkpoint))
    return transformer


def widened(base, tool: str):
    """A tool transformer initialised from the base: extra input channels start at zero."""
    transformer = family.build_transformer(family.transformer_config(tool))
    weights = dict(tree_flatten(base.parameters()))
    old = weights["x_embedder.weight"]
    extra = transformer.x_embedder.weight.shape[1] - old.shape[1]
    weights["x_embedder.weight"] = mx.concatenate([old, mx.zeros((old.shape[0], extra))], axis=1)
    transformer.load_weights(list(weights.items()))
    return transformer


def captioned_flow_loss(model: CaptionedTransformer, flow: FlowBatch) -> mx.array:
    """Flow matching with the captions embedded in the step: the batch's text and pooled hold T5 and CLIP token ids."""
    text, pooled = model.embed(flow.text, flow.pooled)
    return flow_matching_loss(model.transformer, flow, text, pooled)


def train_base(run: Path, settings: StageSettings, vae, workers: int, max_seconds: float | None,
               compile: bool = False) -> bool:
    """The base transformer from its seed, trained together with the CLIP and T5 encoders."""
    data = stage_examples(run, "base", settings, vae, workers)
    data["t5"], data["pooled"] = caption_tokens(run, data["captions"])
    transformer = family.seeded(settings.seed, family.build_transformer, family.transformer_config("base"))
    model = CaptionedTransformer(transformer, *seeded_text_encoders(run))
    batches = flow_batches(data, settings, family.SCHEDULER_CONFIG)
    result = train(model, captioned_flow_loss, batches, optimizer_for(settings), settings.steps,
                   checkpoint_dir=run / ENCODER_STAGE, max_seconds=max_seconds, compile=compile)
    return result.finished


def train_flow_stage(run: Path, stage: str, settings: StageSettings, vae, workers: int, max_seconds: float | None,
                     compile: bool = False) -> bool:
    """Fill, Depth or Kontext, fine-tuned from the base with the encoders frozen."""
    data = stage_data(run, stage, settings, vae, workers)
    transformer = widened(base_transformer(run), stage)
    batches = flow_batches(data, settings, family.SCHEDULER_CONFIG)
    result = train(transformer, flow_matching_loss, batches, optimizer_for(settings), settings.steps,
                   checkpoint_dir=run / stage, max_seconds=max_seconds, compile=compile)
    return result.finished
