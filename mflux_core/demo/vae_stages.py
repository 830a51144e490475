"""The demo VAE's stages: the whole VAE, then the decoder alone (twice, the second time slower) with the
encoder (and so every latent the transformers learn) fixed; and the trained VAE as the family ships it."""

from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from mflux_core.demo import dataset, family
from mflux_core.demo.loss_weights import shape_pixels, shape_weights
from mflux_core.demo.pools import cached_pool
from mflux_core.demo.recipe import StageSettings, optimizer_for
from mflux_core.training import train
from mflux_core.training.loop import MODEL_FILE

LOGVAR_BIAS = -30.0  # the posterior's log-variance after training: std ~3e-7, so sampling == the mean


def to_pixels(images: np.ndarray) -> mx.array:
    return mx.array(images.astype(np.float32) / 127.5 - 1.0)


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


DECODER_NOISE = 0.1  # latent noise, as a fraction of the latents' spread, the decoder stages learn to forgive


def decoder_loss(vae, batch) -> mx.array:
    """Shape-weighted reconstruction from the frozen encoder's (slightly noised) latents."""
    latents, noise, pixels, weights = batch
    spread = mx.sqrt(mx.mean(mx.square(latents)) + 1e-6)
    error = vae.decoder(latents + DECODER_NOISE * spread * noise) - pixels
    return mx.sum(weights * (mx.abs(error) + mx.square(error))) / (3 * mx.sum(weights))


def _train_decoder_only(run: Path, stage: str, vae, settings: StageSettings, vae_settings: StageSettings,
                        workers: int, max_seconds: float | None, compile: bool) -> bool:
    """Train `vae`'s decoder on the latents its (fixed) encoder gives the VAE stage's pool.

    Latents are encoded once, so a step is one decoder pass. (Crops would be cheaper but the
    decoder's group norms and mid-block attention see the whole image: crop-trained decoders
    get the backgrounds of whole images wrong.)"""
    images = vae_pool(run, vae_settings, workers)
    cache = run / f"{stage}-latents.npy"
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
                   trainable=lambda name: name.startswith("decoder."), checkpoint_dir=run / stage,
                   max_seconds=max_seconds, compile=compile)
    return result.finished


def train_decoder(run: Path, settings: StageSettings, vae_settings: StageSettings, workers: int,
                  max_seconds: float | None, compile: bool = False) -> bool:
    """Train the decoder alone after the VAE stage, the encoder (and so every latent the transformers
    know) unchanged."""
    vae = family.build_vae(family.vae_config())
    vae.load_weights(str(run / "vae" / MODEL_FILE))
    return _train_decoder_only(run, "decoder", vae, settings, vae_settings, workers, max_seconds, compile)


def train_sharpen(run: Path, settings: StageSettings, vae_settings: StageSettings, workers: int,
                  max_seconds: float | None, compile: bool = False) -> bool:
    """Sharpen the decoder further, at a lower learning rate, on the latents of the encoder as it ships.

    It starts from the decoder stage's weights rounded to the shipped dtype, so a run whose VAE and
    decoder stages were restored from the shipped VAE continues exactly as one trained from scratch."""
    vae = family.build_vae(family.vae_config())
    vae.load_weights(str(run / "decoder" / MODEL_FILE))
    vae.update(shipped_precision(vae.parameters()))
    return _train_decoder_only(run, "sharpen", vae, settings, vae_settings, workers, max_seconds, compile)


def shipped_precision(parameters: dict) -> dict:
    """Parameters rounded to the dtype the family ships in (kept in float32)."""
    return tree_map(lambda p: p.astype(family.SHIPPED_DTYPE).astype(mx.float32), parameters)


def shape_fidelity(vae, images: np.ndarray) -> float:
    """Fraction of shape pixels (and their rims) a VAE round trip keeps within 20 levels: the first
    run's VAE kept backgrounds well but shapes' colours poorly, and everything downstream inherits it."""
    decoded = [np.array(vae.decoder(vae_posterior_mean(vae, to_pixels(images[i : i + 64]))))
               for i in range(0, len(images), 64)]
    pixels = np.clip(np.round((np.concatenate(decoded) + 1) * 127.5), 0, 255)
    error = np.abs(pixels - images.astype(np.float32)).max(axis=-1)
    return float((error[shape_pixels(images)] <= 20).mean())


def trained_vae(run: Path, sample: np.ndarray):
    """The VAE as the family ships it: the latest of the sharpen, decoder and VAE stages' weights
    rounded to the shipped dtype, the latent statistics of that encoder in the config, and the
    log-variance pinned low. The transformers learn the very latents the shipped encoder gives
    (the two decoder stages leave the encoder as the VAE stage made it)."""
    trained = family.build_vae(family.vae_config())
    trained.load_weights(str(next(path for stage in ("sharpen", "decoder", "vae")
                                  if (path := run / stage / MODEL_FILE).is_file())))
    shipped = shipped_precision(trained.parameters())
    trained.update(shipped)
    stats = [vae_posterior_mean(trained, to_pixels(sample[i : i + 256])) for i in range(0, len(sample), 256)]
    latents = np.concatenate([np.array(s) for s in stats])
    config = family.vae_config(scaling_factor=float(1.0 / latents.std()), shift_factor=float(latents.mean()))
    vae = family.build_vae(config)
    vae.update(shipped)
    conv = vae.encoder.conv_out
    half = vae.config.latent_channels
    conv.weight = mx.concatenate([conv.weight[:half], mx.zeros_like(conv.weight[half:])])
    conv.bias = mx.concatenate([conv.bias[:half], mx.full((half,), LOGVAR_BIAS)])
    mx.eval(vae.parameters())
    return vae, config


def vae_sample(run: Path, settings: StageSettings, workers: int) -> np.ndarray:
    """Up to 1024 scenes of the VAE stage's pool (already in the run folder once the VAE trained)."""
    existing = sorted(run.glob(f"pool-text_to_image-{settings.seed}-*.npz"))
    if existing:
        with np.load(existing[0]) as data:
            return data["image"][:1024]
    count = settings.pool - 2 * (settings.pool // 3)  # the scenes of vae_pool
    return cached_pool(run, "text_to_image", settings.seed, count, workers)["image"][:1024]
