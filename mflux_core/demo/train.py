"""Train the demo family: `python -m mflux_core.demo.train RUN_DIR [--stages vae,decoder,base,fill,depth,kontext,canny]`.

Stages run in order and each one resumes from its checkpoint in RUN_DIR/<stage>/ (a stage that
is done is skipped), so a run cut short by --max-minutes continues where it stopped. The VAE is
trained first (pixels only), then the base transformer, then Fill, Depth, Kontext and the canny
ControlNet fine-tuned from it. The CLIP and T5 encoders stay at their seeded random
initialisation throughout (the family shares one VAE and one pair of text encoders, as FLUX.1's
does), so every caption is encoded once per run.
`python -m mflux_core.demo.export RUN_DIR demo_models` writes the model folders.
"""

import argparse
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from mflux_core.demo import dataset, family
from mflux_core.demo.pools import cached_pool
from mflux_core.demo.tokenizers import T5_MAX_LENGTH, write_tokenizers
from mflux_core.models.rope import rope_tables
from mflux_core.sampling.latents import image_position_ids, pack_latents
from mflux_core.tools.fill import packed_mask
from mflux_core.training import train
from mflux_core.training.flow_matching import (FlowBatch, flow_matching_loss, noisy_latents, shifted_sigmas,
                                               velocity_loss)
from mflux_core.training.loop import MODEL_FILE, STATE_FILE

TEXT_ENCODER_SEED = 2
LOGVAR_BIAS = -30.0  # the posterior's log-variance after training: std ~3e-7, so sampling == the mean


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch: int
    learning_rate: float
    pool: int  # examples rendered for the stage
    seed: int


STAGES = {  # sized for a 2-core CPU: about 115 minutes in all (README's demo section has the timings)
    "vae": StageSettings(steps=4000, batch=8, learning_rate=1e-3, pool=6000, seed=1),
    "decoder": StageSettings(steps=2500, batch=8, learning_rate=5e-4, pool=0, seed=6),
    "base": StageSettings(steps=3500, batch=64, learning_rate=1e-3, pool=15000, seed=2),
    "fill": StageSettings(steps=600, batch=64, learning_rate=5e-4, pool=6000, seed=3),
    "depth": StageSettings(steps=1400, batch=64, learning_rate=5e-4, pool=6000, seed=4),
    "kontext": StageSettings(steps=1000, batch=64, learning_rate=5e-4, pool=6000, seed=5),
    "canny": StageSettings(steps=2000, batch=64, learning_rate=5e-4, pool=6000, seed=7),
}


def optimizer_for(settings: StageSettings) -> optim.Optimizer:
    """AdamW with a short linear warm-up into a cosine decay to a tenth of the rate."""
    warmup = max(1, min(200, settings.steps // 10))
    schedule = optim.join_schedules(
        [optim.linear_schedule(settings.learning_rate * 0.01, settings.learning_rate, warmup),
         optim.cosine_decay(settings.learning_rate, max(1, settings.steps - warmup), settings.learning_rate * 0.1)],
        [warmup],
    )
    return optim.AdamW(learning_rate=schedule, weight_decay=0.01, bias_correction=True)


def to_pixels(images: np.ndarray) -> mx.array:
    return mx.array(images.astype(np.float32) / 127.5 - 1.0)


# --- VAE ----------------------------------------------------------------------------------------


def vae_pool(run: Path, settings: StageSettings, workers: int) -> np.ndarray:
    """Everything the VAE will see: scenes, Fill's grey-boxed sources, depth maps, canny edges."""
    third = settings.pool // 3
    scenes = cached_pool(run, "text_to_image", settings.seed, settings.pool - 2 * third, workers)["image"]
    fill = cached_pool(run, "fill", settings.seed, third, workers)
    masked = np.where(fill["mask"][..., None], np.uint8(128), fill["source"])
    depth = cached_pool(run, "depth", settings.seed, third // 2, workers)["control"]
    canny = cached_pool(run, "canny", settings.seed, third - third // 2, workers)["control"]
    return np.concatenate([scenes, masked, fill["target"][: third // 2], depth, canny])


def vae_posterior_mean(vae, pixels: mx.array) -> mx.array:
    """Unnormalised latents, NHWC."""
    return vae.encoder(pixels)[..., : vae.config.latent_channels]


def vae_loss(vae, batch) -> mx.array:
    """Shape-weighted L1 + L2 reconstruction through slightly noised latents (the decoder must forgive
    the sampler's small errors), plus a light pull of the latents towards the origin so their scale
    stays tame. Unweighted, the big flat backgrounds drown the shapes: the first run's VAE came out
    with muddy shape colours."""
    pixels, noise, weights = batch
    latents = vae_posterior_mean(vae, pixels)
    spread = mx.stop_gradient(mx.sqrt(mx.mean(mx.square(latents)) + 1e-6))
    error = vae.decoder(latents + 0.1 * spread * noise) - pixels
    reconstruction = mx.sum(weights * (mx.abs(error) + mx.square(error))) / (3 * mx.sum(weights))
    return reconstruction + 1e-4 * mx.mean(mx.square(latents))


def train_vae(run: Path, settings: StageSettings, workers: int, max_seconds: float | None,
              compile: bool = False) -> bool:
    images = vae_pool(run, settings, workers)
    vae = family.seeded(settings.seed, family.build_vae, family.vae_config())
    latent_shape = (settings.batch, images.shape[1] // family.VAE_SCALE, images.shape[2] // family.VAE_SCALE,
                    family.LATENT_CHANNELS)

    def batch_for_step(step: int):
        rng = np.random.default_rng([settings.seed, step])
        chosen = images[rng.integers(0, len(images), settings.batch)]
        flips = rng.random(settings.batch) < 0.5  # mirrored copies: more layouts for free
        chosen = np.where(flips[:, None, None, None], chosen[:, :, ::-1], chosen)
        noise = rng.standard_normal(latent_shape).astype(np.float32)
        return to_pixels(chosen), mx.array(noise), mx.array(shape_weights(chosen))

    result = train(vae, vae_loss, batch_for_step, optimizer_for(settings), settings.steps,
                   checkpoint_dir=run / "vae", max_seconds=max_seconds, compile=compile)
    held_out = np.stack([dataset.text_to_image_example(100, i, held_out=True).image for i in range(256)])
    print(f"VAE shape pixels kept within 20 levels: {shape_fidelity(vae, held_out):.1%}", flush=True)
    return result.finished


def shape_pixels(images: np.ndarray) -> np.ndarray:
    """(B, H, W) bool: pixels that differ from the background (the top-left pixel), and their neighbours."""
    differs = np.abs(images.astype(np.int16) - images[:, :1, :1].astype(np.int16)).max(axis=-1) > 30
    grown = differs.copy()
    grown[:, 1:] |= differs[:, :-1]
    grown[:, :-1] |= differs[:, 1:]
    grown[:, :, 1:] |= differs[:, :, :-1]
    grown[:, :, :-1] |= differs[:, :, 1:]
    return grown


def shape_weights(images: np.ndarray, weight: float = 10.0) -> np.ndarray:
    """(B, H, W, 1) loss weights: `weight` on shape pixels, 1 elsewhere, so small shapes count as much
    as the big background."""
    return np.where(shape_pixels(images), np.float32(weight), np.float32(1.0))[..., None]


def token_weights(*images: np.ndarray, extra: np.ndarray | None = None, weight: float = 10.0) -> np.ndarray:
    """(N, tokens) flow-loss weights: 1 + (weight - 1) x the share of a token's pixels that belong to a
    shape (in any of `images`, or `extra`'s True pixels). Unweighted, the transformers learnt the
    backgrounds and left the small shapes faint and of the wrong colour."""
    salient = np.zeros(images[0].shape[:3], bool) if extra is None else extra.astype(bool)
    for pictures in images:
        salient |= shape_pixels(pictures)
    patch = 2 * family.VAE_SCALE  # the pixels of one packed token
    count, height, width = salient.shape
    share = salient.reshape(count, height // patch, patch, width // patch, patch).mean(axis=(2, 4))
    return (1 + (weight - 1) * share).reshape(count, -1).astype(np.float32)


def decoder_loss(vae, batch) -> mx.array:
    """Shape-weighted reconstruction from the frozen encoder's (slightly noised) latents."""
    latents, noise, pixels, weights = batch
    spread = mx.sqrt(mx.mean(mx.square(latents)) + 1e-6)
    error = vae.decoder(latents + 0.1 * spread * noise) - pixels
    return mx.sum(weights * (mx.abs(error) + mx.square(error))) / (3 * mx.sum(weights))


def train_decoder(run: Path, settings: StageSettings, workers: int, max_seconds: float | None,
                  compile: bool = False) -> bool:
    """Sharpen the decoder with the encoder (and so every latent the transformers know) unchanged.

    Latents are encoded once, so a step is one decoder pass. (Crops would be cheaper but the
    decoder's group norms and mid-block attention see the whole image: crop-trained decoders
    get the backgrounds of whole images wrong.)"""
    images = vae_pool(run, STAGES["vae"], workers)
    vae = family.build_vae(family.vae_config())
    vae.load_weights(str(run / "vae" / MODEL_FILE))
    cache = run / "decoder-latents.npy"
    if not cache.is_file():
        parts = [np.array(vae_posterior_mean(vae, to_pixels(images[i : i + 64]))) for i in range(0, len(images), 64)]
        np.save(cache, np.concatenate(parts))
    latents = np.load(cache)

    def batch_for_step(step: int):
        rng = np.random.default_rng([settings.seed, step])
        rows = rng.integers(0, len(images), settings.batch)
        noise = rng.standard_normal(latents[rows].shape).astype(np.float32)
        return mx.array(latents[rows]), mx.array(noise), to_pixels(images[rows]), mx.array(shape_weights(images[rows]))

    result = train(vae, decoder_loss, batch_for_step, optimizer_for(settings), settings.steps,
                   trainable=lambda name: name.startswith("decoder."), checkpoint_dir=run / "decoder",
                   max_seconds=max_seconds, compile=compile)
    return result.finished


def shape_fidelity(vae, images: np.ndarray) -> float:
    """Fraction of shape pixels (and their rims) a VAE round trip keeps within 20 levels: the first
    run's VAE kept backgrounds well but shapes' colours poorly, and everything downstream inherits it."""
    decoded = [np.array(vae.decoder(vae_posterior_mean(vae, to_pixels(images[i : i + 64]))))
               for i in range(0, len(images), 64)]
    pixels = np.clip(np.round((np.concatenate(decoded) + 1) * 127.5), 0, 255)
    error = np.abs(pixels - images.astype(np.float32)).max(axis=-1)
    return float((error[shape_pixels(images)] <= 20).mean())


def trained_vae(run: Path, sample: np.ndarray):
    """The trained VAE with its latent statistics in the config and the log-variance pinned low."""
    raw = family.build_vae(family.vae_config())
    raw.load_weights(str(run / "vae" / MODEL_FILE))
    stats = [vae_posterior_mean(raw, to_pixels(sample[i : i + 256])) for i in range(0, len(sample), 256)]
    latents = np.concatenate([np.array(s) for s in stats])
    config = family.vae_config(scaling_factor=float(1.0 / latents.std()), shift_factor=float(latents.mean()))
    vae = family.build_vae(config)
    decoder = run / "decoder" / MODEL_FILE
    vae.load_weights(str(decoder if decoder.is_file() else run / "vae" / MODEL_FILE))
    conv = vae.encoder.conv_out
    half = vae.config.latent_channels
    conv.weight = mx.concatenate([conv.weight[:half], mx.zeros_like(conv.weight[half:])])
    conv.bias = mx.concatenate([conv.bias[:half], mx.full((half,), LOGVAR_BIAS)])
    mx.eval(vae.parameters())
    return vae, config


# --- text ---------------------------------------------------------------------------------------


def shared_folder(run: Path) -> Path:
    return run / "shared"


def text_encoders(run: Path):
    """CLIP and T5 frozen at their seeded random initialisation: the transformers learn to read
    them (random embeddings keep every token distinct), and a frozen encoder lets each caption be
    encoded once per run instead of once per step."""
    vocab = json.loads((shared_folder(run) / "vocab_sizes.json").read_text())
    clip = family.seeded(TEXT_ENCODER_SEED, family.build_clip, family.clip_config(vocab["clip"]))
    t5 = family.seeded(TEXT_ENCODER_SEED + 1000, family.build_t5, family.t5_config(vocab["t5"]))
    return clip, t5


def encode_captions(run: Path, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T5 states (N, T5_MAX_LENGTH, 64), CLIP pooled (N, 64)), tokenized as the pipelines tokenize."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tokenizer = CLIPTokenizer.from_pretrained(shared_folder(run) / "tokenizer")
    t5_tokenizer = T5TokenizerFast.from_pretrained(shared_folder(run) / "tokenizer_2")
    clip, t5 = text_encoders(run)
    states, pooled = [], []
    for start in range(0, len(captions), 256):
        chunk = list(captions[start : start + 256])
        clip_ids = clip_tokenizer(chunk, padding="max_length", max_length=77, truncation=True, return_tensors="np")
        t5_ids = t5_tokenizer(chunk, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                              return_tensors="np")
        states.append(np.array(t5(mx.array(t5_ids.input_ids.astype(np.int32)))))
        pooled.append(np.array(clip(mx.array(clip_ids.input_ids.astype(np.int32)))[1]))
    return np.concatenate(states), np.concatenate(pooled)


# --- flow stages --------------------------------------------------------------------------------


def encode_images(vae, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8, or float pixels in [-1, 1] -> (N, tokens, 64) packed normalised latents."""
    pixels = images if images.dtype == np.float32 else images.astype(np.float32) / 127.5 - 1.0
    parts = [np.array(pack_latents(vae.encode(mx.array(pixels[i : i + 256])))) for i in range(0, len(pixels), 256)]
    return np.concatenate(parts)


def stage_data(run: Path, stage: str, settings: StageSettings, vae, workers: int) -> dict[str, np.ndarray]:
    """Latents, conditioning and caption embeddings of every example of the stage's pool (cached in RUN_DIR)."""
    path = run / f"data-{stage}-{settings.seed}-{settings.pool}.npz"
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
    elif stage in ("depth", "canny"):  # the control image's latents: Depth's extra channels, the ControlNet's input
        data = {"target": encode_images(vae, pool["image"]), "extra": encode_images(vae, pool["control"]),
                "text": pool["caption"], "token_weights": token_weights(pool["image"])}
    else:
        data = {"target": encode_images(vae, pool["after"]), "reference": encode_images(vae, pool["before"]),
                "text": pool["instruction"], "token_weights": token_weights(pool["after"], pool["before"])}
    captions, data["caption_index"] = np.unique(data.pop("text"), return_inverse=True)
    data["t5"], data["pooled"] = encode_captions(run, captions)
    np.savez(path, **data)
    return data


def step_rows(settings: StageSettings, step: int, count: int) -> tuple[np.random.Generator, np.ndarray]:
    """The step's generator and the pool rows it draws first (a stage adds its own inputs for the same rows)."""
    rng = np.random.default_rng([settings.seed, step])
    return rng, rng.integers(0, count, settings.batch)


def flow_batches(data: dict[str, np.ndarray], settings: StageSettings, scheduler: dict):
    """batch_for_step(step) -> FlowBatch of the rows step_rows draws."""
    tokens = data["target"].shape[1]
    side = int(math.isqrt(tokens))
    image_ids = image_position_ids(2 * side, 2 * side)
    reference_ids = image_position_ids(2 * side, 2 * side, first=1.0)
    all_ids = np.concatenate([np.zeros((T5_MAX_LENGTH, 3)), np.array(image_ids)]
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
            guidance=mx.array(rng.uniform(1.0, 35.0, settings.batch).astype(np.float32)),
            rope=rope, token_weights=mx.array(data["token_weights"][rows]),
        )
        if "extra" in data:
            flow.extra_channels = mx.array(data["extra"][rows])
        if "reference" in data:
            flow.reference_tokens = mx.array(data["reference"][rows])
            flow.reference_ids = reference_ids
        return flow

    return batch_for_step


def base_transformer(run: Path):
    """The trained base transformer from its checkpoint."""
    transformer = family.build_transformer(family.transformer_config("base"))
    transformer.load_weights(str(run / "base" / MODEL_FILE))
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


class ControlledFlux(nn.Module):
    """The frozen base transformer steered by a ControlNet."""

    def __init__(self, transformer, controlnet):
        super().__init__()
        self.transformer = transformer
        self.controlnet = controlnet


def controlled_loss(model: ControlledFlux, batch) -> mx.array:
    """Flow matching through the base transformer, with the ControlNet's residuals at the tool's default strength."""
    flow, control = batch
    x = noisy_latents(flow.latents, flow.noise, flow.sigmas)
    text_ids = mx.zeros((flow.text.shape[1], 3), dtype=mx.float32)
    blocks, singles = model.controlnet(x, control, flow.text, flow.pooled, flow.sigmas, flow.image_ids, text_ids,
                                       guidance=flow.guidance, conditioning_scale=family.CONTROLNET_STRENGTH,
                                       rope=flow.rope)
    velocity = model.transformer(x, flow.text, flow.pooled, flow.sigmas, flow.image_ids, text_ids,
                                 guidance=flow.guidance, controlnet_block_samples=blocks,
                                 controlnet_single_block_samples=singles, rope=flow.rope)
    return velocity_loss(velocity, flow)


def controlled_model(run: Path) -> ControlledFlux:
    """The base with a ControlNet whose shared parts start as copies of the base's and whose
    input and output projections start at zero (it changes nothing until trained)."""
    base = base_transformer(run)
    controlnet = family.build_controlnet(family.controlnet_config())
    own = dict(tree_flatten(controlnet.parameters()))
    copied = {name: value for name, value in tree_flatten(base.parameters()) if name in own}
    zeros = {name: mx.zeros_like(value) for name, value in own.items()
             if name.startswith(("controlnet_x_embedder.", "controlnet_blocks."))}
    controlnet.load_weights(list({**own, **copied, **zeros}.items()))
    return ControlledFlux(base, controlnet)


def train_controlnet(run: Path, vae, workers: int, max_seconds: float | None, compile: bool = False) -> bool:
    settings = STAGES["canny"]
    data = stage_data(run, "canny", settings, vae, workers)
    model = controlled_model(run)
    flows = flow_batches({k: v for k, v in data.items() if k != "extra"}, settings, family.SCHEDULER_CONFIG)

    def batch_for_step(step: int):
        _, rows = step_rows(settings, step, len(data["target"]))
        return flows(step), mx.array(data["extra"][rows])

    result = train(model, controlled_loss, batch_for_step, optimizer_for(settings), settings.steps,
                   trainable=lambda name: name.startswith("controlnet."), checkpoint_dir=run / "canny",
                   max_seconds=max_seconds, compile=compile)
    return result.finished


def train_flow_stage(run: Path, stage: str, vae, workers: int, max_seconds: float | None,
                     compile: bool = False) -> bool:
    settings = STAGES[stage]
    data = stage_data(run, stage, settings, vae, workers)
    if stage == "base":
        transformer = family.seeded(settings.seed, family.build_transformer, family.transformer_config("base"))
    else:
        transformer = widened(base_transformer(run), stage)
    batches = flow_batches(data, settings, family.SCHEDULER_CONFIG)
    result = train(transformer, flow_matching_loss, batches, optimizer_for(settings), settings.steps,
                   checkpoint_dir=run / stage, max_seconds=max_seconds, compile=compile)
    return result.finished


# --- driver -------------------------------------------------------------------------------------


def prepare_shared(run: Path) -> None:
    """Tokenizers (deterministic) and their vocab sizes, once per run."""
    sizes = shared_folder(run) / "vocab_sizes.json"
    if not sizes.is_file():
        clip_vocab, t5_vocab = write_tokenizers(shared_folder(run))
        sizes.write_text(json.dumps({"clip": clip_vocab, "t5": t5_vocab}))


def stage_done(run: Path, stage: str) -> bool:
    state = run / stage / STATE_FILE
    return state.is_file() and json.loads(state.read_text())["step"] >= STAGES[stage].steps


def vae_sample(run: Path, workers: int) -> np.ndarray:
    """Up to 1024 scenes of the VAE stage's pool (already in the run folder once the VAE trained)."""
    settings = STAGES["vae"]
    existing = sorted(run.glob(f"pool-text_to_image-{settings.seed}-*.npz"))
    if existing:
        with np.load(existing[0]) as data:
            return data["image"][:1024]
    count = settings.pool - 2 * (settings.pool // 3)  # the scenes of vae_pool
    return cached_pool(run, "text_to_image", settings.seed, count, workers)["image"][:1024]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder for pools, checkpoints and loss curves")
    parser.add_argument("--stages", default="vae,decoder,base,fill,depth,kontext,canny")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--workers", type=int, default=2, help="processes that render the example pools")
    parser.add_argument("--scale-steps", type=float, default=1.0,
                        help="multiply every stage's steps and pool (quick tries, not the shipped recipe)")
    parser.add_argument("--batch", type=int, default=None, help="override every stage's batch (quick tries)")
    parser.add_argument("--compile", action="store_true", help="mx.compile each step (much faster on a GPU)")
    args = parser.parse_args(argv)
    for name, s in STAGES.items():
        STAGES[name] = StageSettings(max(1, int(s.steps * args.scale_steps)), args.batch or s.batch,
                                     s.learning_rate, max(8, int(s.pool * args.scale_steps)), s.seed)
    started = time.perf_counter()
    run = args.run
    run.mkdir(parents=True, exist_ok=True)
    prepare_shared(run)
    for stage in args.stages.split(","):
        if stage_done(run, stage):
            continue
        left = None if args.max_minutes is None else args.max_minutes * 60 - (time.perf_counter() - started)
        if left is not None and left <= 0:
            break
        print(f"stage {stage}", flush=True)
        if stage == "vae":
            finished = train_vae(run, STAGES["vae"], args.workers, left, args.compile)
        elif stage == "decoder":
            finished = train_decoder(run, STAGES["decoder"], args.workers, left, args.compile)
        else:
            vae, _ = trained_vae(run, vae_sample(run, args.workers))
            train_stage = train_controlnet if stage == "canny" else partial(train_flow_stage, stage=stage)
            finished = train_stage(run, vae=vae, workers=args.workers, max_seconds=left, compile=args.compile)
        if not finished:
            break
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
