"""Train: a LoRA from a training config on this machine, with the loss curve and validation images live.

The config is a path (its example images are found relative to it); a checkpoint zip resumes a run
exactly. Stop ends the run after the current step and writes a checkpoint there. Training loads its
own copy of the model and holds the studio's queue until it ends.
"""

import time
from pathlib import Path

import gradio as gr
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.events import TrainingStep
from mflux_core.training.lora_config import TrainingConfig
from mflux_core.training.lora_checkpoint import read_checkpoint
from mflux_core.training.lora_training import resolve_training_config, train_lora
from mflux_core.training.plot import save_loss_curve
from webui.jobs import ENGINE_QUEUE, follow, page_job, progress_html
from webui.panels import Panel

TOOL = "train"
CURVE_FILE = "loss_live.png"
CURVE_EVERY_SECONDS = 1.0  # the live loss curve is redrawn at most this often, and whenever a step wrote files


def training_inputs(config_path: str | None, checkpoint_path: str | None) -> tuple[TrainingConfig | None, Path | None]:
    config_path, checkpoint_path = (config_path or "").strip(), (checkpoint_path or "").strip()
    if not config_path and not checkpoint_path:
        raise InvalidRequest("Give the path of a training config, or of a checkpoint zip to resume.")
    config = TrainingConfig.from_file(Path(config_path)) if config_path else None
    return config, Path(checkpoint_path).expanduser() if checkpoint_path else None


def check_inside_studio_folders(studio, path: str | Path | None, what: str = "Training files") -> None:
    """The page (possibly served to the network) may read and write only the folders the studio was started with."""
    if not str(path or "").strip():
        return
    resolved = Path(str(path).strip()).expanduser().resolve()
    roots = [studio.folders.outputs, studio.folders.user_presets, *studio.folders.loras]
    if studio.manager.models_dir is not None:
        roots.append(Path(studio.manager.models_dir).resolve())
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
        raise InvalidRequest(f"{what} must be inside the studio's outputs, presets, models or LoRA folders.")


def check_config_paths(studio, config: TrainingConfig | None, checkpoint: Path | None) -> None:
    """What the config names (its output folder, example images and masks, a model given as a path) is held to the
    studio's folders too: a config there could otherwise read or write anywhere."""
    config = resolve_training_config(config, read_checkpoint(checkpoint) if checkpoint is not None else None)
    check_inside_studio_folders(studio, config.output_path, "The config's save.output_path")
    for example in config.examples:
        for path in (example.image, example.mask):
            check_inside_studio_folders(studio, path, "The config's example images and masks")
    for model in (config.model, config.base_model):
        if model and model not in studio.model_names():
            check_inside_studio_folders(studio, model, "A model the config names by path")


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def progress_text(progress: TrainingStep) -> str:
    parts = [f"step {progress.step} of {progress.total}",
             f"loss {progress.loss:.4f} (smoothed {progress.smoothed_loss:.4f})"]
    if progress.seconds_per_step is not None:
        parts.append(f"{progress.seconds_per_step:.2f} s/step, about {duration(progress.eta_seconds)} left")
    return " · ".join(parts)


def loss_curve_image(losses: list[float], folder: Path) -> Image.Image:
    path = folder / CURVE_FILE
    save_loss_curve(losses, path)
    with Image.open(path) as image:
        return image.convert("RGB")


def training_progress(outputs: dict, folder: Path):
    """Changes for each TrainingStep: the status line, the validation images so far and the loss curve."""
    images: list[tuple[str, str]] = []
    drawn = 0.0

    def changes(progress: TrainingStep) -> dict:
        nonlocal drawn
        update = {outputs["status"]: progress_html(progress_text(progress), progress.step, progress.total)}
        if progress.validation_image is not None:
            images.append((str(progress.validation_image), f"step {progress.step}"))
            update[outputs["validation"]] = list(images)
        wrote = progress.checkpoint is not None or progress.validation_image is not None
        if wrote or time.monotonic() - drawn >= CURVE_EVERY_SECONDS:
            update[outputs["curve"]] = loss_curve_image(progress.losses, folder)
            drawn = time.monotonic()
        return update

    return changes


def run_training(studio, outputs: dict, values: dict, session: str):
    """Train on a worker thread; stream status, loss curve and validation images until it ends."""
    folder = studio.folders.outputs / "training"

    def work(cancel):
        for key in ("config_path", "checkpoint_path"):
            check_inside_studio_folders(studio, values.get(key))
        config, checkpoint = training_inputs(values.get("config_path"), values.get("checkpoint_path"))
        check_config_paths(studio, config, checkpoint)
        outcome = yield from follow(lambda report: train_lora(config, checkpoint, report, cancel.is_set,
                                                              models_dir=studio.manager.models_dir,
                                                              budget=studio.manager.budget),
                                    cancel, training_progress(outputs, folder))
        images = [(str(p), f"step {p.stem.lstrip('0') or '0'}") for p in outcome.validation_images]
        yield {outputs["curve"]: loss_curve_image(outcome.losses, folder), outputs["validation"]: images}
        return (f"{'Finished' if outcome.finished else 'Stopped'} at step {outcome.step} of {outcome.total}. "
                f"Adapter: {outcome.adapter} (use it as a LoRA); checkpoint: {outcome.checkpoint}. "
                f"{' '.join(outcome.notes)}")

    yield from page_job(studio, session, outputs["status"], work,
                        preparing="Loading the model and encoding the examples…", scope=TOOL)


def render(studio) -> Panel:
    with gr.Tab("Train", id=TOOL, elem_id="tab-train"):
        with gr.Row():
            with gr.Column(scale=4):
                config_path = gr.Textbox(label="Training config (path of a train.json on this machine)",
                                         placeholder="/path/to/train.json", elem_id="train-config")
                checkpoint_path = gr.Textbox(label="Resume from a checkpoint zip (optional; alone, it uses the "
                                             "config inside it)", elem_id="train-checkpoint")
                gr.Markdown("The config format is described in `mflux_core/training/lora_config.py` and the README. "
                            "Stop ends the run after the current step and writes a checkpoint there.")
                with gr.Row():
                    run = gr.Button("Train", variant="primary", elem_id="train-run", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop", scale=1)
                status = gr.HTML("", show_label=False, elem_id="train-status", elem_classes=["studio-status-box"])
            with gr.Column(scale=5):
                curve = gr.Image(label="Loss", type="pil", interactive=False, format="png", elem_id="train-loss")
                validation = gr.Gallery(label="Validation images", columns=4, height=260, format="png",
                                        interactive=False, elem_id="train-validation")
    outputs = {"status": status, "curve": curve, "validation": validation}

    def handler(request: gr.Request, **values):
        yield from run_training(studio, outputs, values, request.session_hash if request else "")

    run.click(handler, inputs_kwargs={"config_path": config_path, "checkpoint_path": checkpoint_path},
              outputs=list(outputs.values()), api_name="train", concurrency_id=ENGINE_QUEUE, concurrency_limit=1,
              show_progress="minimal", show_progress_on=[validation])
    studio.wire_stop(stop, scope=TOOL)  # another tab's Stop leaves a training running
    return Panel(TOOL, (), {}, lambda values: {}, lambda settings: {})
