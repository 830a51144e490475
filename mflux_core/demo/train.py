"""Train the demo family: `python -m mflux_core.demo.train RUN_DIR [--stages vae,base,fill,depth,kontext]`.

Stages run in order and each one resumes from its checkpoint in RUN_DIR/<stage>/ (a stage that
is done is skipped), so a run cut short by --max-minutes continues where it stopped. The VAE is
trained first (pixels only), then the base model with its CLIP and T5 text encoders from
scratch, then Fill, Depth and Kontext fine-tuned from the base transformer with the text
encoders frozen (the family shares one VAE and one pair of text encoders, as FLUX.1's does).
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
from mflux_core.demo.tokenizers import write_tokenizers
from mflux_core.models.rope import rope_tables
from mflux_core.sampling.latents import image_position_ids, pack_latents
from mflux_core.tools.fill import packed_mask
from mflux_core.training import train
from mflux_core.training.flow_matching import FlowBatch, flow_matching_loss, noisy_latents, shifted_sigmas
from mflux_core.training.loop import MODEL_FILE, STATE_FILE

MAX_TEXT_TOKENS = 512
LOGVAR_BIAS = -30.0  # the posterior's log-variance after training: std ~3e-7, so sampling == the mean


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch: int
    learning_rate: float
    pool: int  # examples rendered for the stage
    seed: int


STAGES = {
    "vae": StageSettings(steps=6000, batch=64, learning_rate=1e-3, pool=6000, seed=1),
    "decoder": StageSettings(steps=800, batch=8, learning_rate=3e-4, pool=0, seed=6),
    "base": StageSettings(steps=8000, batch=128, learning_rate=5e-4, pool=30000, seed=2),
    "fill": StageSettings(steps=2000, batch=128, learning_rate=3e-4, pool=12000, seed=3),
    "depth": StageSettings(steps=2000, batch=128, learning_rate=3e-4, pool=12000, seed=4),
    "kontext": StageSettings(steps=2000, batch=128, learning_rate=3e-4, pool=12000, seed=5),
    "canny": StageSettings(steps=2000, batch=128, learning_rate=3e-4, pool=12000, seed=7),
}


def optimizer_for(settings: StageSettings) -> optim.Optimizer:
    """AdamW with a short linear warm-up into a cosine decay to a tenth of the rate."""
    warmup = max(1, min(200, settings.steps // 10))
    schedule = optim.join_schedules(
        [optim.linear_schedule(settings.learning_rate * 0.01, settings.learning_rate, warmup),
         optim.cosine_decay(settings.learning_rate, max(1, settings.steps - warmup), settings.learning_rate * 0.1)],
        [warmup],
    )
    return optim.AdamW(learning_rate=schedule, weight_decay=0.01)


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


def shape_weights(images: np.ndarray, weight: float = 10.0) -> np.ndarray:
    """(B, H, W, 1) loss weights: `weight` on pixels that differ from the background (the top-left
    pixel) and their neighbours, 1 elsewhere, so small shapes count as much as the big background."""
    differs = np.abs(images.astype(np.int16) - images[:, :1, :1].astype(np.int16)).max(axis=-1) > 30
    grown = differs.copy()
    grown[:, 1:] |= differs[:, :-1]
    grown[:, :-1] |= differs[:, 1:]
    grown[:, :, 1:] |= differs[:, :, :-1]
    grown[:, :, :-1] |= differs[:, :, 1:]
    return np.where(grown, np.float32(weight), np.float32(1.0))[..., None]


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
    return float((error[shape_weights(images)[..., 0] > 1] <= 20).mean())


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


def tokenize(run: Path, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP ids (N, 77), T5 ids (N, 512)), padded as the pipelines pad them."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip = CLIPTokenizer.from_pretrained(shared_folder(run) / "tokenizer")
    t5 = T5TokenizerFast.from_pretrained(shared_folder(run) / "tokenizer_2")
    unique, inverse = np.unique(texts, return_inverse=True)
    clip_ids = clip(list(unique), padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    t5_ids = t5(list(unique), padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True,
                return_tensors="np").input_ids
    return clip_ids[inverse].astype(np.int32), t5_ids[inverse].astype(np.int32)


class TextConditionedFlux(nn.Module):
    """The transformer with the two text encoders whose outputs condition it."""

    def __init__(self, transformer, clip, t5):
        super().__init__()
        self.transformer = transformer
        self.clip = clip
        self.t5 = t5

    def encode(self, clip_ids: mx.array, t5_ids: mx.array) -> tuple[mx.array, mx.array]:
        return self.t5(t5_ids), self.clip(clip_ids)[1]


def flux_loss(model: TextConditionedFlux, batch) -> mx.array:
    flow, clip_ids, t5_ids = batch
    text, pooled = model.encode(clip_ids, t5_ids)
    return flow_matching_loss(model.transformer, flow, text, pooled)


SHORTER_TEXT_LENGTHS = (32, 64, 128, 256)


def text_length(rng: np.random.Generator) -> int:
    """Half the steps see the pipelines' default 512 tokens, half a shorter padding, so the models
    work at any --max-sequence-length; few distinct lengths keep compiled steps few."""
    return MAX_TEXT_TOKENS if rng.random() < 0.5 else int(rng.choice(SHORTER_TEXT_LENGTHS))


# --- flow stages --------------------------------------------------------------------------------


def encode_images(vae, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8, or float pixels in [-1, 1] -> (N, tokens, 64) packed normalised latents."""
    pixels = images if images.dtype == np.float32 else images.astype(np.float32) / 127.5 - 1.0
    parts = [np.array(pack_latents(vae.encode(mx.array(pixels[i : i + 256])))) for i in range(0, len(pixels), 256)]
    return np.concatenate(parts)


def stage_data(run: Path, stage: str, settings: StageSettings, vae, workers: int) -> dict[str, np.ndarray]:
    """Latents, conditioning and token ids of every example of the stage's pool (cached in RUN_DIR)."""
    path = run / f"data-{stage}-{settings.seed}-{settings.pool}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    kind = {"base": "text_to_image"}.get(stage, stage)
    pool = cached_pool(run, kind, settings.seed, settings.pool, workers)
    if stage == "base":
        data = {"target": encode_images(vae, pool["image"]), "text": pool["caption"]}
    elif stage == "fill":
        # As the Fill pipeline builds it: pixels in [-1, 1] times (1 - mask), so the hole is 0 (grey).
        masked_pixels = (pool["source"].astype(np.float32) / 127.5 - 1.0) * (1 - pool["mask"][..., None])
        masks = np.concatenate([np.array(packed_mask(m, family.VAE_SCALE)) for m in pool["mask"]])
        data = {"target": encode_images(vae, pool["target"]),
                "extra": np.concatenate([encode_images(vae, masked_pixels), masks], axis=-1), "text": pool["caption"]}
    elif stage in ("depth", "canny"):  # the control image's latents: Depth's extra channels, the ControlNet's input
        data = {"target": encode_images(vae, pool["image"]), "extra": encode_images(vae, pool["control"]),
                "text": pool["caption"]}
    else:
        data = {"target": encode_images(vae, pool["after"]), "reference": encode_images(vae, pool["before"]),
                "text": pool["instruction"]}
    data["clip_ids"], data["t5_ids"] = tokenize(run, data.pop("text"))
    np.savez(path, **data)
    return data


def flow_batches(data: dict[str, np.ndarray], settings: StageSettings, scheduler: dict):
    tokens = data["target"].shape[1]
    side = int(math.isqrt(tokens))
    image_ids = image_position_ids(2 * side, 2 * side)
    reference_ids = image_position_ids(2 * side, 2 * side, first=1.0)
    all_ids = np.concatenate([np.array(image_ids)] + ([np.array(reference_ids)] if "reference" in data else []))
    axes = tuple(family.transformer_config()["axes_dims_rope"])
    ropes = {}  # per text length: [text; image (; reference)] tables, computed once (and outside mx.compile)

    def rope_for(length: int):
        if length not in ropes:
            ropes[length] = rope_tables(np.concatenate([np.zeros((length, 3)), all_ids]), axes)
        return ropes[length]

    def batch_for_step(step: int):
        rng = np.random.default_rng([settings.seed, step])
        rows = rng.integers(0, len(data["target"]), settings.batch)
        length = text_length(rng)
        flow = FlowBatch(
            latents=mx.array(data["target"][rows]),
            noise=mx.array(rng.standard_normal(data["target"][rows].shape).astype(np.float32)),
            sigmas=mx.array(shifted_sigmas(rng, settings.batch, tokens, scheduler)),
            text=None, pooled=None, image_ids=image_ids,
            guidance=mx.array(rng.uniform(1.0, 35.0, settings.batch).astype(np.float32)),
            rope=rope_for(length),
        )
        if "extra" in data:
            flow.extra_channels = mx.array(data["extra"][rows])
        if "reference" in data:
            flow.reference_tokens = mx.array(data["reference"][rows])
            flow.reference_ids = reference_ids
        return flow, mx.array(data["clip_ids"][rows]), mx.array(data["t5_ids"][rows, :length])

    return batch_for_step


def text_encoders(run: Path, seed: int):
    vocab = json.loads((shared_folder(run) / "vocab_sizes.json").read_text())
    clip = family.seeded(seed, family.build_clip, family.clip_config(vocab["clip"]))
    t5 = family.seeded(seed + 1000, family.build_t5, family.t5_config(vocab["t5"]))
    return clip, t5


def base_transformer(run: Path):
    """The trained base model (transformer and text encoders) from its checkpoint."""
    clip, t5 = text_encoders(run, STAGES["base"].seed)
    model = TextConditionedFlux(family.build_transformer(family.transformer_config("base")), clip, t5)
    model.load_weights(str(run / "base" / MODEL_FILE))
    return model


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
    """The frozen base (transformer and text encoders) steered by a ControlNet."""

    def __init__(self, transformer, controlnet, clip, t5):
        super().__init__()
        self.transformer = transformer
        self.controlnet = controlnet
        self.clip = clip
        self.t5 = t5


def controlled_loss(model: ControlledFlux, batch) -> mx.array:
    """Flow matching through the base transformer, with the ControlNet's residuals at the tool's default strength."""
    flow, clip_ids, t5_ids, control = batch
    text, pooled = model.t5(t5_ids), model.clip(clip_ids)[1]
    x = noisy_latents(flow.latents, flow.noise, flow.sigmas)
    text_ids = mx.zeros((text.shape[1], 3), dtype=mx.float32)
    blocks, singles = model.controlnet(x, control, text, pooled, flow.sigmas, flow.image_ids, text_ids,
                                       guidance=flow.guidance, conditioning_scale=family.CONTROLNET_STRENGTH,
                                       rope=flow.rope)
    velocity = model.transformer(x, text, pooled, flow.sigmas, flow.image_ids, text_ids, guidance=flow.guidance,
                                 controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                                 rope=flow.rope)
    return mx.mean(mx.square(velocity - (flow.noise - flow.latents)))


def controlled_model(run: Path) -> ControlledFlux:
    """The base with a ControlNet whose shared parts start as copies of the base's and whose
    input and output projections start at zero (it changes nothing until trained)."""
    base = base_transformer(run)
    controlnet = family.build_controlnet(family.controlnet_config())
    own = dict(tree_flatten(controlnet.parameters()))
    copied = {name: value for name, value in tree_flatten(base.transformer.parameters()) if name in own}
    zeros = {name: mx.zeros_like(value) for name, value in own.items()
             if name.startswith(("controlnet_x_embedder.", "controlnet_blocks."))}
    controlnet.load_weights(list({**own, **copied, **zeros}.items()))
    return ControlledFlux(base.transformer, controlnet, base.clip, base.t5)


def train_controlnet(run: Path, vae, workers: int, max_seconds: float | None, compile: bool = False) -> bool:
    settings = STAGES["canny"]
    data = stage_data(run, "canny", settings, vae, workers)
    model = controlled_model(run)
    flows = flow_batches({k: v for k, v in data.items() if k != "extra"}, settings, family.SCHEDULER_CONFIG)

    def batch_for_step(step: int):
        flow, clip_ids, t5_ids = flows(step)
        rows = np.random.default_rng([settings.seed, step]).integers(0, len(data["target"]), settings.batch)
        return flow, clip_ids, t5_ids, mx.array(data["extra"][rows])

    result = train(model, controlled_loss, batch_for_step, optimizer_for(settings), settings.steps,
                   trainable=lambda name: name.startswith("controlnet."), checkpoint_dir=run / "canny",
                   max_seconds=max_seconds, compile=compile)
    return result.finished


def train_flow_stage(run: Path, stage: str, vae, workers: int, max_seconds: float | None,
                     compile: bool = False) -> bool:
    settings = STAGES[stage]
    data = stage_data(run, stage, settings, vae, workers)
    if stage == "base":
        clip, t5 = text_encoders(run, settings.seed)
        model = TextConditionedFlux(family.seeded(settings.seed, family.build_transformer,
                                                  family.transformer_config("base")), clip, t5)
        trainable = None
    else:
        base = base_transformer(run)
        model = TextConditionedFlux(widened(base.transformer, stage), base.clip, base.t5)
        trainable = lambda name: name.startswith("transformer.")  # noqa: E731
    batches = flow_batches(data, settings, family.SCHEDULER_CONFIG)
    result = train(model, flux_loss, batches, optimizer_for(settings), settings.steps, trainable=trainable,
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
    parser.add_argument("--stages", default="vae,base,fill,depth,kontext,canny")
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
