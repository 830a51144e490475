"""The demo's flow-matching stages: the base transformer (trained with the text encoders), then
Fill, Depth and Kontext fine-tuned from it, each on latents computed once per run."""

from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mflux_core.demo import family
from mflux_core.demo.family import NATIVE_SIZE
from mflux_core.demo.loss_weights import token_weights
from mflux_core.demo.pools import Size, cached_pool, size_suffix
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


def stage_examples(run: Path, stage: str, settings: StageSettings, vae, workers: int,
                   size: Size = NATIVE_SIZE) -> dict[str, np.ndarray]:
    """Latents and conditioning of every example of the stage's pool at `size` (width, height), with its captions
    (the unique strings, and each example's index into them); cached in RUN_DIR."""
    path = run / f"examples-{stage}-{settings.seed}-{settings.pool}{size_suffix(size)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    kind = {"base": "text_to_image"}.get(stage, stage)
    pool = cached_pool(run, kind, settings.seed, settings.pool, workers, size=size)
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


def stage_data(run: Path, stage: str, settings: StageSettings, vae, workers: int,
               sizes: tuple[Size, ...] = (NATIVE_SIZE,)) -> dict[Size, dict[str, np.ndarray]]:
    """The stage's examples at each size with each caption's T5 states ("t5") and CLIP pooled output ("pooled"),
    encoded once by the trained (from here on frozen) encoders."""
    by_size = {}
    for size in sizes:
        data = by_size[size] = stage_examples(run, stage, settings, vae, workers, size)
        data["t5"], data["pooled"] = encode_captions(run, data["captions"])
    return by_size


def step_rows(settings: StageSettings, step: int, counts: dict[Size, int]) -> tuple[np.random.Generator, Size,
                                                                                    np.ndarray]:
    """The step's generator, its size (one per step, so a batch stacks; settings.native_share of the steps at
    NATIVE_SIZE) and the pool rows it draws first."""
    rng = np.random.default_rng([settings.seed, step])
    sizes = list(counts)
    if len(sizes) == 1:  # no draw: the 64 px recipe draws as before
        size = sizes[0]
    elif settings.native_share is not None and NATIVE_SIZE in sizes and rng.random() < settings.native_share:
        size = NATIVE_SIZE
    else:
        others = [size for size in sizes if settings.native_share is None or size != NATIVE_SIZE]
        size = others[int(rng.integers(len(others)))]
    return rng, size, rng.integers(0, counts[size], settings.batch)


TOOL_GUIDANCE_RANGE = (1.0, 35.0)  # the undistilled transformers learn to ignore their guidance input at every
# tool default (Kontext's 2.5 to Fill's 30); only the distilled base (guidance_stages.py) reads its own


def flow_batches(data: dict[Size, dict[str, np.ndarray]], settings: StageSettings, scheduler: dict,
                 guidance_range: tuple[float, float] = TOOL_GUIDANCE_RANGE, text_tokens: int = T5_MAX_LENGTH):
    """batch_for_step(step) -> FlowBatch of the rows step_rows draws from the pool of the size it draws;
    `text_tokens`: the transformer's text sequence (more than the T5 tokens when the loss appends tokens of
    its own, as Redux does)."""
    layouts = {size: _token_layout(size, "reference" in pool, text_tokens) for size, pool in data.items()}

    def batch_for_step(step: int):
        rng, size, rows = step_rows(settings, step, {size: len(pool["target"]) for size, pool in data.items()})
        pool, (image_ids, reference_ids, rope) = data[size], layouts[size]
        captions = pool["caption_index"][rows]
        flow = FlowBatch(
            latents=mx.array(pool["target"][rows]),
            noise=mx.array(rng.standard_normal(pool["target"][rows].shape).astype(np.float32)),
            sigmas=mx.array(shifted_sigmas(rng, settings.batch, len(image_ids), scheduler)),
            text=mx.array(pool["t5"][captions]), pooled=mx.array(pool["pooled"][captions]), image_ids=image_ids,
            guidance=mx.array(rng.uniform(*guidance_range, settings.batch).astype(np.float32)),
            rope=rope, token_weights=mx.array(pool["token_weights"][rows]),
        )
        if "extra" in pool:
            flow.extra_channels = mx.array(pool["extra"][rows])
        if "reference" in pool:
            flow.reference_tokens = mx.array(pool["reference"][rows])
            flow.reference_ids = reference_ids
        return flow

    return batch_for_step


def _token_layout(size: Size, with_reference: bool, text_tokens: int) -> tuple[mx.array, mx.array, tuple]:
    """A size's image ids, reference ids (Kontext's, beside the image) and RoPE tables (built outside
    mx.compile) for [text; image (; reference)]."""
    latent_height, latent_width = size[1] // family.VAE_SCALE, size[0] // family.VAE_SCALE
    image_ids = image_position_ids(latent_height, latent_width)
    reference_ids = image_position_ids(latent_height, latent_width, first=1.0)
    all_ids = np.concatenate([np.zeros((text_tokens, 3)), np.array(image_ids)]
                             + ([np.array(reference_ids)] if with_reference else []))
    return image_ids, reference_ids, rope_tables(all_ids, tuple(family.transformer_config()["axes_dims_rope"]))


def base_transformer(run: Path, stage: str = ENCODER_STAGE):
    """A trained base transformer from its stage's checkpoint (the encoder stage's, or a later stage that tuned it)."""
    transformer = family.build_transformer(family.transformer_config("base"))
    checkpoint = run / stage / MODEL_FILE
    transformer.load_weights(component_weights(checkpoint, "transformer") if stage == ENCODER_STAGE
                             else str(checkpoint))
    return transformer


def tool_transformer(run: Path, tool: str, stage: str):
    """A trained Fill, Depth or Kontext transformer from a stage's checkpoint."""
    transformer = family.build_transformer(family.transformer_config(tool))
    transformer.load_weights(str(run / stage / MODEL_FILE))
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
    batches = flow_batches({NATIVE_SIZE: data}, settings, family.SCHEDULER_CONFIG)
    result = train(model, captioned_flow_loss, batches, optimizer_for(settings), settings.steps,
                   checkpoint_dir=run / ENCODER_STAGE, max_seconds=max_seconds, compile=compile)
    return result.finished


def train_flow_stage(run: Path, stage: str, settings: StageSettings, vae, workers: int, max_seconds: float | None,
                     compile: bool = False, sizes: tuple[Size, ...] = (NATIVE_SIZE,), start: str | None = None,
                     checkpoint: str | None = None) -> bool:
    """Fill, Depth or Kontext, fine-tuned with the encoders frozen: from the base, or from the checkpoint of
    `start` (its sizes stage tunes it at every size in `sizes`); written to RUN/`checkpoint` (default: the stage)."""
    data = stage_data(run, stage, settings, vae, workers, sizes)
    transformer = widened(base_transformer(run), stage) if start is None else tool_transformer(run, stage, start)
    batches = flow_batches(data, settings, family.SCHEDULER_CONFIG)
    result = train(transformer, flow_matching_loss, batches, optimizer_for(settings), settings.steps,
                   checkpoint_dir=run / (checkpoint or stage), max_seconds=max_seconds, compile=compile)
    return result.finished
