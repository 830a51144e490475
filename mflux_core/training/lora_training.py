"""LoRA (DreamBooth) training of a FLUX.1 transformer, run by the generic loop (training/loop.py), or of a
FLUX.1-Fill transformer on in-context diptychs (examples.in_context: the right half generated, as IC-Edit's and
the In-Context LoRAs were trained).

The examples are encoded once (VAE latents, T5 and CLIP embeddings) and the text encoders freed;
each step draws its examples, noise and timesteps from the seed and the step index alone, and the
flow-matching loss (training/flow_matching.py) trains only the adapters (training/lora_adapters.py),
with AdamW. Checkpoints are zips (training/lora_checkpoint.py); resuming from one continues
exactly where the uninterrupted run would have been. Validation images come from the shared
generate path with the adapters live.
"""

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from PIL import Image

from mflux_core.backend import resolve_dtype
from mflux_core.errors import InvalidRequest
from mflux_core.events import Report, TrainingStep, result_of
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs, run_tool
from mflux_core.images.io import load_image, load_mask, pil_to_pixels, save_png_atomic
from mflux_core.loader import load_flux_model
from mflux_core.memory import MemoryBudget, MemoryPlan, training_step_bytes
from mflux_core.models import kernels
from mflux_core.models.vae_memory import vae_peak_bytes
from mflux_core.native_sizes import check_whole_tokens
from mflux_core.request import GenerationRequest
from mflux_core.resident import parameter_bytes
from mflux_core.sampling.latents import image_position_ids, latent_grid
from mflux_core.tools.common import (
    check_in_channels, default_sequence_length, encode_pixels, packed_channels, resolved_request, tool_inputs,
)
from mflux_core.tools.fill import fill_channels, fill_conditioning
from mflux_core.tools.in_context import diptych_mask, in_context_inputs
from mflux_core.training.flow_matching import FlowBatch, flow_matching_loss, shifted_sigmas
from mflux_core.training.lora_adapters import attach_lora
from mflux_core.training.lora_checkpoint import (
    CHECKPOINTS_FOLDER, Checkpoint, checkpoint_name, differing_settings, read_checkpoint, write_checkpoint,
)
from mflux_core.training.lora_config import Example, TrainingConfig
from mflux_core.training.loop import STATE_FILE, train
from mflux_core.training.plot import save_loss_curve
from mflux_core.weights.quantize import quantize_model
from mflux_core.weights.resolve import resolve_model

ADAPTER_FILE = "adapter.safetensors"
LOSS_CURVE_FILE = "loss.png"
SHOWN_NAMES = 5

log = logging.getLogger(__name__)


@dataclass
class EncodedExamples:
    latents: mx.array  # (n, N, C) packed VAE latents, float32
    text: mx.array  # (n, L, joint_dim) T5 states
    pooled: mx.array  # (n, pooled_dim) CLIP pooled outputs
    fingerprint: str  # of the image files' bytes and the prompts
    notes: list[str]  # what was done to the images (resizing)
    extra: mx.array | None = None  # (n, N, C') Fill's channels of in-context diptychs (right half masked)


@dataclass
class TrainingOutcome:
    step: int
    total: int
    finished: bool  # False when stopped early
    losses: list[float]
    adapter: Path
    checkpoint: Path
    loss_curve: Path
    validation_images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- examples ------------------------------------------------------------------------------------


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover (width, height) keeping the aspect ratio, then cut out the centre."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def training_images(config: TrainingConfig) -> tuple[list[Image.Image], list[str]]:
    """The example images at the training size; missing files, or wrong sizes when resizing is off, are errors."""
    missing = [str(e.image) for e in config.examples if not e.image.is_file()]
    if missing:
        raise InvalidRequest(f"{len(missing)} training image(s) do not exist: {', '.join(missing[:SHOWN_NAMES])}.")
    size = (config.width, config.height)
    images = [load_image(example.image) for example in config.examples]
    wrong = [(e.image.name, image.size) for e, image in zip(config.examples, images) if image.size != size]
    if wrong and not config.resize_images:
        listed = ", ".join(f"{name} ({w}x{h})" for name, (w, h) in wrong[:SHOWN_NAMES])
        raise InvalidRequest(f"{len(wrong)} training image(s) are not {size[0]}x{size[1]}: {listed}. Resize them, "
                             "or set examples.resize to true to scale and centre-crop them.")
    notes = [f"Resized {name} from {w}x{h} to {size[0]}x{size[1]} (scaled to cover, centre-cropped)."
             for name, (w, h) in wrong]
    for note in notes:
        log.warning(note)
    return [at_training_size(image, config) for image in images], notes


def at_training_size(image: Image.Image, config: TrainingConfig) -> Image.Image:
    size = (config.width, config.height)
    return image if image.size == size else cover_crop(image, *size)


def in_context_mask(config: TrainingConfig, example: Example) -> np.ndarray:
    """Where in the diptych the Fill model paints: the right half, or the part of it the example's mask whitens;
    the left half is the context it keeps."""
    right = load_mask(example.mask) if example.mask is not None else None
    return diptych_mask(right, config.width // 2, config.height)


def examples_fingerprint(config: TrainingConfig) -> str:
    digest = hashlib.sha256()
    for example in config.examples:
        digest.update(example.image.read_bytes())
        digest.update(example.prompt.encode())
        if example.mask is not None:
            digest.update(example.mask.read_bytes())
    return digest.hexdigest()


def encode_examples(model: FluxModel, config: TrainingConfig) -> EncodedExamples:
    check_whole_tokens(model.token_side, (config.width, config.height), "The training size")
    images, notes = training_images(config)
    pixels = [pil_to_pixels(image, config.width, config.height) for image in images]
    prompts = [model.text_encoders.encode(e.prompt, config.max_sequence_length) for e in config.examples]
    extra = None
    if config.in_context:
        extra = mx.concatenate([fill_conditioning(model, p, in_context_mask(config, e))
                                for p, e in zip(pixels, config.examples)]).astype(model.dtype)
    encoded = EncodedExamples(
        latents=mx.concatenate([encode_pixels(model, p) for p in pixels]),
        text=mx.concatenate([p.t5 for p in prompts]).astype(model.dtype),
        pooled=mx.concatenate([p.pooled for p in prompts]).astype(model.dtype),
        fingerprint=examples_fingerprint(config), notes=notes, extra=extra)
    mx.eval(encoded.latents, encoded.text, encoded.pooled, encoded.extra)
    return encoded


# --- batches -------------------------------------------------------------------------------------


def example_indices(config: TrainingConfig, step: int, count: int) -> np.ndarray:
    """The examples of a step: each epoch visits them all in an order drawn from the seed and the epoch."""
    per_epoch = -(-count // config.batch_size)
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch, 1]).permutation(count)
    return order[(position * config.batch_size + np.arange(config.batch_size)) % count]


def batch_maker(model: FluxModel, config: TrainingConfig, examples: EncodedExamples) -> Callable[[int], FlowBatch]:
    h, w = latent_grid(config.height, config.width, model.vae_scale_factor)
    image_ids = image_position_ids(h, w)
    count, tokens = examples.latents.shape[0], examples.latents.shape[1]
    rope = model.transformer.rope_tables(image_ids, np.zeros((examples.text.shape[1], 3)))

    def batch_for_step(step: int) -> FlowBatch:
        """Everything random comes from (seed, step): the precondition for resuming bit for bit."""
        rng = np.random.default_rng([config.seed, step])
        chosen = mx.array(example_indices(config, step, count))
        latents = examples.latents[chosen]
        size = latents.shape[0]
        return FlowBatch(
            latents=latents, noise=mx.array(rng.standard_normal(latents.shape).astype(np.float32)),
            sigmas=mx.array(shifted_sigmas(rng, size, tokens, model.scheduler_config)),
            text=examples.text[chosen], pooled=examples.pooled[chosen], image_ids=image_ids,
            guidance=mx.full((size,), config.guidance, dtype=mx.float32) if model.has_guidance else None,
            extra_channels=None if examples.extra is None else examples.extra[chosen], rope=rope,
        )

    return batch_for_step


# --- model, config and checkpoint ------------------------------------------------------------------


def load_base_model(config: TrainingConfig, models_dir: Path) -> FluxModel:
    source = resolve_model(model=config.model_reference(), base_model=config.base_model, models_dir=models_dir)
    model = load_flux_model(source, resolve_dtype(None), name=config.model)
    if config.in_context:
        check_in_channels(model, fill_channels(model), "In-context LoRA training (examples.in_context)",
                          "FLUX.1-Fill")
    elif model.config.in_channels == fill_channels(model):
        raise InvalidRequest(f"The model {config.model} is a FLUX.1-Fill model: train it on diptychs (context "
                             "left, result right) with examples.in_context set to true, or give a base (dev or "
                             "schnell) model.")
    else:
        check_in_channels(model, packed_channels(model), "LoRA training", "base (dev or schnell)")
    quantize_model(model.transformer, config.quantize)
    return model


def resolve_training_config(config: TrainingConfig | None, checkpoint: Checkpoint | None) -> TrainingConfig:
    """The config to train with: the given one, the checkpoint's (writing to the checkpoint's run folder), or both
    when they agree."""
    if checkpoint is None:
        if config is None:
            raise InvalidRequest("Give a training config (--train-config) or a checkpoint to resume "
                                 "(--train-checkpoint).")
        return config
    stored = TrainingConfig.from_dict(checkpoint.config, checkpoint.config_folder)
    if config is None:
        return replace(stored, output_path=checkpoint.run_folder)
    differ = differing_settings(stored.identity(), config.identity())
    if differ:
        raise InvalidRequest(f"The checkpoint {checkpoint.path.name} was made with another training config: "
                             f"{', '.join(differ[:SHOWN_NAMES])} differ. Only the length (steps / num_epochs), "
                             "save and instrumentation settings may change when resuming.")
    return config


def validation_inputs(model: FluxModel, config: TrainingConfig) -> ToolInputs | None:
    """The validation image's inputs: the prompt alone, or for in-context training the right panel painted
    beside the left half of the first example."""
    if not config.validation_prompt:
        return None
    panel = config.width // 2 if config.in_context else config.width
    request = GenerationRequest(tool="in-context" if config.in_context else "generate",
                                prompt=config.validation_prompt, seed=config.validation_seed, width=panel,
                                height=config.height, steps=config.validation_steps,
                                max_sequence_length=config.max_sequence_length).validated()
    if config.in_context:  # the In-Context tool's call, with the first example's left panel as its reference
        first = at_training_size(load_image(config.examples[0].image), config)
        context = first.crop((0, 0, panel, config.height))
        return in_context_inputs(model, resolved_request(model, request), context, None, None,
                                 "In-context LoRA training's validation")
    return tool_inputs(model, request)


# --- the run ---------------------------------------------------------------------------------------


class ProgressMeter:
    """Smoothed loss, time per step and time left, measured over this session's steps."""

    def __init__(self, first_step: int, total: int):
        self.first_step, self.total = first_step, total
        self.started = time.perf_counter()
        self.smoothed: float | None = None

    def measure(self, step: int, loss: float, losses: list[float], **written) -> TrainingStep:
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        done = step - self.first_step
        per_step = (time.perf_counter() - self.started) / done if done > 0 else None
        return TrainingStep(step, self.total, loss, self.smoothed, per_step,
                            per_step * (self.total - step) if per_step is not None else None, losses, **written)


def with_sequence_length(config: TrainingConfig, model: FluxModel) -> TrainingConfig:
    """The config with the T5 length its prompts are encoded at: its own, else the one the tool the adapter is for
    uses on this model (a LoRA trained at 512 tokens on the demo, which generates at 32, barely changed its images)."""
    if config.max_sequence_length is not None:
        return config
    tool = "in-context" if config.in_context else "generate"
    return replace(config, max_sequence_length=default_sequence_length(model.text_encoders, tool))


def training_plan(model: FluxModel, config: TrainingConfig, budget: MemoryBudget) -> MemoryPlan:
    """What a step of this training needs: the transformer and VAE (the text encoders are freed once the prompts
    are encoded) and the step's activations (memory.training_step_bytes)."""
    image_tokens = (config.width // model.token_side) * (config.height // model.token_side)
    step = training_step_bytes(model.transformer.config, image_tokens, config.max_sequence_length, model.dtype.size,
                               config.batch_size)
    pixels = config.width * config.height * 3 * 4  # every example's float pixels are held while each is encoded
    tile = model.vae_tile(config.height, config.width, "encode", 0)
    encoding = len(config.examples) * pixels + vae_peak_bytes(model.vae.config, config.height, config.width,
                                                                model.vae.dtype.size, "encode", tile)
    weights = parameter_bytes(model.transformer) + parameter_bytes(model.vae)
    return MemoryPlan(f"training at {config.width}x{config.height}, {config.batch_size} image(s) a step", weights,
                      (("encoding the examples", encoding), ("a training step", step)), budget.reserved_bytes(weights),
                      remedies="train at a smaller width and height, with a smaller batch_size or "
                               "max_sequence_length, or on a base model quantized to 8 or 4 bits (quantize); in the "
                               "studio, unload its models first")


def train_lora(
    config: TrainingConfig | None = None,
    checkpoint: Path | None = None,
    report: Report | None = None,
    cancelled: Callable[[], bool] | None = None,
    models_dir: Path = Path("models"),
    progress_bar: bool = False,
    budget: MemoryBudget | None = None,
) -> TrainingOutcome:
    """Train (or resume) a LoRA, reporting a TrainingStep after each step; returns where the adapter, last
    checkpoint and loss curve are. With a `budget`, a training that would not fit it is refused before its first
    step, in one sentence."""
    resumed = read_checkpoint(checkpoint) if checkpoint is not None else None
    config = resolve_training_config(config, resumed)
    total = config.total_steps()
    model = load_base_model(config, models_dir)
    config = with_sequence_length(config, model)
    if budget is not None:
        budget.check(training_plan(model, config, budget))
    try:  # before any step: the first checkpoint would find out only after them
        (config.output_path / CHECKPOINTS_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidRequest(f"The output folder {config.output_path} cannot be made or written "
                             f"({error.strerror or error}): choose another save.output_path.") from None
    examples = encode_examples(model, config)
    if resumed is not None and resumed.meta.get("examples_fingerprint") != examples.fingerprint:
        raise InvalidRequest(f"The training images or prompts changed since the checkpoint {resumed.path.name} "
                             "was written; resuming would not continue the same run.")
    validation = validation_inputs(model, config)
    model.text_encoders.release()  # everything they are needed for is encoded
    model.transformer.freeze()  # the checkpointed blocks then differentiate (and hand compile) their adapters only
    adapters = attach_lora(model.transformer, config.layers, config.rank, config.alpha, config.seed)
    model.transformer.recompute_blocks = True  # one block's activations at a time, recomputed for the gradient
    # bias_correction: torch's AdamW (what diffusers, kohya and ai-toolkit train with); MLX's default
    # leaves it out, which stalls small models (the demo VAE stopped learning at 36 levels of error).
    optimizer = optim.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                            bias_correction=True)
    output = config.output_path
    outcome = TrainingOutcome(step=0, total=total, finished=False, losses=[], adapter=output / ADAPTER_FILE,
                              checkpoint=output, loss_curve=output / LOSS_CURVE_FILE,
                              notes=[*config.notes, *examples.notes])

    with tempfile.TemporaryDirectory(prefix="mflux-lora-") as staging:
        staging = Path(staging)
        losses: list[float] = []
        if resumed is not None:
            resumed.extract_loop_state(staging)
            losses = list(_loop_losses(staging))

        def save_checkpoint_zip(step: int) -> Path:
            adapters.save(outcome.adapter)
            save_loss_curve(losses, outcome.loss_curve)
            outcome.checkpoint = write_checkpoint(
                output / CHECKPOINTS_FOLDER / checkpoint_name(step), step=step, total_steps=total, seed=config.seed,
                config_raw=config.raw, config_folder=config.folder, examples_fingerprint=examples.fingerprint,
                adapter_file=outcome.adapter, loop_folder=staging, loss_curve=outcome.loss_curve)
            return outcome.checkpoint

        def validate(step: int) -> Path:
            with kernels.attention_for_gradients(False):  # an image: no gradient, the chunks bound its memory
                image = result_of(run_tool(model, validation))
            path = save_png_atomic(image, output / "validation" / f"{step:07d}.png", overwrite=True)
            outcome.validation_images.append(path)
            return path

        meter = ProgressMeter(len(losses), total)

        def step_done(step: int, loss: float) -> bool:
            losses.append(loss)
            written = {}
            if step % config.checkpoint_frequency == 0:  # the loop has just written its files for this step
                written["checkpoint"] = save_checkpoint_zip(step)
            if validation is not None and config.validation_frequency and step % config.validation_frequency == 0:
                written["validation_image"] = validate(step)
            if report is not None:
                report(meter.measure(step, loss, losses, **written))
            return cancelled is not None and cancelled()

        with kernels.attention_for_gradients():
            result = train(adapters, lambda _adapters, batch: flow_matching_loss(model.transformer, batch),
                           batch_maker(model, config, examples), optimizer, total, checkpoint_dir=staging,
                           checkpoint_every=config.checkpoint_frequency, progress=progress_bar, on_step=step_done,
                           compile=True)
        if outcome.checkpoint.name != checkpoint_name(result.step):
            save_checkpoint_zip(result.step)  # the loop wrote its final files after the last on_step
        if validation is not None and (not config.validation_frequency or result.step % config.validation_frequency):
            validate(result.step)
    return replace(outcome, step=result.step, finished=result.finished, losses=losses)


def _loop_losses(folder: Path) -> list[float]:
    return [float(x) for x in json.loads((folder / STATE_FILE).read_text())["losses"]]
