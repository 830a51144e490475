"""Models: every model the studio knows with its kind, size on disk, state and residency; download (progress, Stop;
a second Download of the same repo follows the running one), delete from the models folder or the Hugging Face
cache after a confirmation naming the space freed (a resident model is unloaded first), quantize and save as a new
model in the models folder (tensors done; Stop leaves no folder), merge models as A1111's Checkpoint Merger into
the models folder, extract a LoRA from a finetune into the LoRA library, a Hugging Face token, rescan. Offline, the list
works from the cache and downloads are off. Messages here never name CLI flags.
"""

from pathlib import Path

import gradio as gr

from mflux_core import downloads
from mflux_core.backend import resolve_dtype
from mflux_core.downloads import DownloadState, is_offline, repo_id_of
from mflux_core.errors import Cancelled, InvalidRequest, StudioError
from mflux_core.events import Step
from mflux_core.memory import gb_text
from mflux_core.model_catalog import (CatalogRow, bytes_removed, cache_bytes_freed, cached_repo_path, catalog,
                                      checked_models_folder_entry, delete_from_cache, delete_from_models_folder,
                                      models_folder_entry)
from mflux_core.registry import on_disk
from mflux_core.settings_schema import MERGE_METHODS, WEIGHTED_SUM
from mflux_core.weights.resolve import resolve_model
from webui.jobs import ENGINE_QUEUE, error_text, follow, page_job, progress_html, safe_action
from webui.status import size_text
from webui.widgets import refresh_model_pickers

HEADERS = ["Model", "Kind", "Where", "Size on disk", "State", "Resident", "Repository"]
OFFLINE_NOTE = "Downloads are off: the studio runs offline (HF_HUB_OFFLINE=1), so this list shows what is on disk."
QUANTIZE_CHOICES = ["8", "4"]
MODELS_JOBS = "models"  # the scope of this tab's jobs: only its own Stop buttons stop them


MERGEABLE_KINDS = ("base", "Fill", "Depth / Canny", "Kontext", "base (single file)")  # KIND_LABELS of transformers


def merge_choices(studio) -> list[str]:
    """The transformer models on disk, for the merge's pickers."""
    return [row.name for row in catalog(studio.manager.models_dir, list(studio.folders.loras), [])
            if row.state == "complete" and row.kind in MERGEABLE_KINDS]


def table_rows(rows: list[CatalogRow]) -> list[list[str]]:
    return [[row.name, row.kind, row.where, size_text(row.size_bytes) if row.size_bytes else "—", row.state,
             row.resident or "no", row.repo_id or ""] for row in rows]


def studio_rows(studio) -> list[list[str]]:
    return table_rows(catalog(studio.manager.models_dir, list(studio.folders.loras),
                              studio.manager.status().get("resident") or []))


def progress_text(state: DownloadState) -> str:
    parts = [f"Downloading {state.repo_id}: {size_text(state.done_bytes)} of {size_text(state.total_bytes)}"]
    if state.bytes_per_second:
        parts.append(f"{size_text(int(state.bytes_per_second))}/s")
    if state.seconds_left is not None:
        parts.append(f"about {state.seconds_left:,.0f} s left")
    return " · ".join(parts)


def token_note() -> str:
    saved = "A Hugging Face token is saved" if downloads.has_token() else "No Hugging Face token is saved"
    return f"{saved}. Gated repositories (FLUX.1 dev, Fill, Depth, Kontext, Redux) need one, and their licence accepted."


def follow_download(studio, name: str, status, table):
    """Start (or join) the repo's download and stream its progress until it ends; the table refreshes at the end."""
    try:
        job = studio.downloads.start(repo_id_of(name))
    except StudioError as error:
        yield {status: progress_html(str(error), kind="error")}
        return
    shown = None
    while not job.finished.wait(0.5):
        state = job.state()
        if state != shown and state.total_bytes:
            shown = state
            yield {status: progress_html(progress_text(state), state.done_bytes, state.total_bytes)}
    state = job.state()
    kind = {"done": "done", "stopped": "stopped"}.get(state.state, "error")
    yield {status: progress_html(state.message, kind=kind), table: studio_rows(studio)}


def model_on_disk(name: str, models_dir: Path, what: str) -> str:
    """`name` as typed when it names a model on disk by a name the studio lists (never a path: "..", "/x")."""
    model = (name or "").strip()
    if not model or model.startswith(".") or not on_disk(model, models_dir):
        raise InvalidRequest(f"Pick a model that is on disk (download it first) to {what}.")
    return model


def new_model_folder(new_name: str, models_dir: Path, example: str) -> Path:
    target_name = (new_name or "").strip()
    if not target_name or "/" in target_name or target_name.startswith("."):
        raise InvalidRequest(f"Give the new model a folder name (no slashes), e.g. {example}.")
    if (models_dir / target_name).exists():
        raise InvalidRequest(f"The models folder already has {target_name}: choose another name.")
    return models_dir / target_name


def follow_save(cancel, status, lead: str, stopped: str, save):
    """Run `save(on_progress)` (the engine's save path) within a page job, its progress in tensors on the status
    line after `lead`; the tab's Stop raises Cancelled(`stopped`), which leaves no half-written folder."""
    def run(report):
        def on_progress(done: int, total: int, what: str) -> None:
            if cancel.is_set():
                raise Cancelled(stopped)
            report(Step(done, total, stage=what))

        return save(on_progress)

    def changes(step: Step) -> dict:
        done = f": {step.step} of {step.total} ({step.stage})" if step.total else f": {step.stage}"
        return {status: progress_html(lead + done, step.step, step.total)}

    return (yield from follow(run, cancel, changes))


def quantize_and_save(studio, name: str, bits: str, new_name: str, session: str, status):
    """Write `name` quantized to `bits` into the models folder as `new_name` (the engine's save path), its progress
    in tensors on the status line; the tab's Stop ends it and leaves no half-written folder."""
    from mflux_core.weights.save import save_model

    def work(cancel):
        models_dir = Path(studio.manager.models_dir)
        model = model_on_disk(name, models_dir, "quantize and save it")
        target = new_model_folder(new_name, models_dir, "dev-8bit")
        saved = yield from follow_save(
            cancel, status, f"Quantizing {model} to {bits} bits as {target.name}",
            f"Stopped quantizing {model}: nothing was written to the models folder.",
            lambda on_progress: save_model(target, resolve_model(model=model, models_dir=models_dir),
                                           dtype=resolve_dtype(None), bits=int(bits), on_progress=on_progress))
        return (f"Saved {model} as {target.name} in the models folder ({bits}-bit, transformer "
                f"{gb_text(saved.transformer_bytes)}): pick it by that name in any tool.")

    yield from page_job(studio, session, status, work, scope=MODELS_JOBS)


def merge_and_save(studio, names: list[str], method: str, multiplier: float, new_name: str, session: str, status):
    """A1111's Checkpoint Merger: models A, B (and C for add difference) merged into the models folder as
    `new_name`, its progress on the status line; Stop leaves no folder."""
    from mflux_core.weights.merge import check_merge, model_sources, merge_transformers
    from mflux_core.weights.save import save_model

    def work(cancel):
        models_dir = Path(studio.manager.models_dir)
        models = [model_on_disk(name, models_dir, "merge it") for name in names if (name or "").strip()]
        target = new_model_folder(new_name, models_dir, "dev-schnell-merge")
        sources, dtype = model_sources(models, models_dir), resolve_dtype(None)
        check_merge(method, float(multiplier), sources, dtype, studio.manager.resident.free_bytes())

        def merge_then_save(on_progress):
            transformer, report = merge_transformers(method, float(multiplier), sources, dtype, on_progress)
            return save_model(target, sources[0][1], dtype=dtype, on_progress=on_progress,
                              transformer=transformer), report

        saved, report = yield from follow_save(
            cancel, status, f"Merging {' and '.join(models)} as {target.name}",
            "Stopped merging: nothing was written to the models folder.", merge_then_save)
        return (f"Merged {' and '.join(models)} ({MERGE_METHODS[method]}, M {float(multiplier):g}: "
                f"{report.summary()}) as {target.name} in the models folder: pick it by that name in any tool.")

    yield from page_job(studio, session, status, work, scope=MODELS_JOBS)


def extract_and_save(studio, tuned: str, base: str, rank: int, lora_name: str, session: str, status):
    """A LoRA extracted from `tuned` against `base` at `rank`, written into the models folder's loras/ as
    `lora_name` (part of the LoRA library), its progress on the status line."""
    from mflux_core.lora.extract import extract_lora, save_lora
    from mflux_core.weights.merge import model_sources

    def work(cancel):
        models_dir = Path(studio.manager.models_dir)
        models = [model_on_disk(name, models_dir, "extract a LoRA from it") for name in (tuned, base)]
        name = (lora_name or "").strip().removesuffix(".safetensors")
        if not name or "/" in name or name.startswith("."):
            raise InvalidRequest("Give the LoRA a file name (no slashes), e.g. my-finetune.")
        path = models_dir / "loras" / f"{name}.safetensors"
        if path.exists():
            raise InvalidRequest(f"The LoRA library already has {path.name}: choose another name.")
        sources = model_sources(models, models_dir, whole_first=False)
        tensors, report = yield from follow_save(
            cancel, status, f"Extracting a rank-{int(rank)} LoRA from {models[0]} against {models[1]}",
            "Stopped extracting: no LoRA was written.",
            lambda on_progress: extract_lora(sources, int(rank), resolve_dtype(None), on_progress))
        save_lora(path, tensors)
        return (f"Saved {path.name} ({gb_text(path.stat().st_size)}) in the LoRA library: "
                f"{report.summary(int(rank))}. Pick it in any tool's LoRAs.")

    yield from page_job(studio, session, status, work, scope=MODELS_JOBS)


def ask_delete(studio, name: str):
    """What Delete removes and a question naming the space it frees: the models folder's entry of that name (as
    models resolve), else the repo in the Hugging Face cache."""
    models_dir = studio.manager.models_dir
    if models_folder_entry(name, models_dir) is not None:
        entry = checked_models_folder_entry(name.strip(), models_dir)
        return entry.name, (f"Delete {entry.name} from the models folder, freeing {gb_text(bytes_removed(entry))}? "
                            "Press Confirm delete.")
    repo = repo_id_of(name)
    job = studio.downloads.job(repo)
    if job is not None and not job.finished.is_set():
        raise InvalidRequest(f"{repo} is downloading: stop the download first.")
    freed = cache_bytes_freed(repo)
    return repo, f"Delete {repo} from the Hugging Face cache, freeing {gb_text(freed)}? Press Confirm delete."


def delete_model(studio, target: str) -> str:
    """Delete what ask_delete named (checked again), unloading it first when it is resident."""
    models_dir = studio.manager.models_dir
    entry = models_folder_entry(target, models_dir)
    if entry is not None:
        studio.manager.unload(checked_models_folder_entry(target, models_dir), target)
        return delete_from_models_folder(target, models_dir)
    studio.manager.unload(cached_repo_path(target), target)
    return delete_from_cache(target)


def render(studio) -> None:
    offline = is_offline()
    with gr.Tab("Models", id="models", elem_id="tab-models"):
        gr.Markdown(OFFLINE_NOTE if offline else "Every model the studio knows. Pick a row, then act on it.",
                    elem_id="models-note")
        table = gr.Dataframe(studio_rows(studio), headers=HEADERS, interactive=False, elem_id="models-table",
                             wrap=True)
        with gr.Row():
            name = gr.Textbox(label="Model (alias or repo id)", elem_id="models-name", scale=3)
            download = gr.Button("Download", variant="primary", interactive=not offline, elem_id="models-download")
            stop = gr.Button("Stop", variant="stop", elem_id="models-stop")
            rescan = gr.Button("Rescan", elem_id="models-rescan")
        status = gr.HTML("", elem_id="models-status", elem_classes=["studio-status-box"])
        with gr.Row():
            delete = gr.Button("Delete", elem_id="models-delete")
            confirm = gr.Button("Confirm delete", variant="stop", visible=False, elem_id="models-confirm-delete")
            bits = gr.Dropdown(QUANTIZE_CHOICES, value="8", label="Bits", elem_id="models-bits", scale=0,
                               min_width=90)
            new_name = gr.Textbox(label="New model name", placeholder="dev-8bit", elem_id="models-new-name")
            quantize = gr.Button("Quantize and save", elem_id="models-quantize")
            stop_quantize = gr.Button("Stop quantizing", variant="stop", elem_id="models-quantize-stop")
        with gr.Accordion("Merge models (A1111's Checkpoint Merger)", open=False, elem_id="models-merge"):
            with gr.Row():
                mergeable = merge_choices(studio)
                merge_models = [gr.Dropdown(mergeable, value=None, label=label, allow_custom_value=True,
                                            elem_id=f"models-merge-{letter}", info=info)
                                for letter, label, info in (
                                    ("a", "Primary model (A)", "its architecture, VAE and text encoders are kept"),
                                    ("b", "Secondary model (B)", "a model folder, or a single transformer file"),
                                    ("c", "Tertiary model (C)", "add difference only"))]
            with gr.Row():
                method = gr.Radio([(label, name) for name, label in MERGE_METHODS.items()], value=WEIGHTED_SUM,
                                  label="Interpolation method", elem_id="models-merge-method",
                                  info="weighted sum: A x (1 - M) + B x M · add difference: A + (B - C) x M")
                multiplier = gr.Slider(0, 1, 0.5, step=0.05, label="Multiplier (M)", elem_id="models-merge-multiplier")
            with gr.Row():
                merge_name = gr.Textbox(label="New model name", placeholder="dev-schnell-merge",
                                        elem_id="models-merge-name")
                merge = gr.Button("Merge and save", elem_id="models-merge-run")
                stop_merge = gr.Button("Stop merging", variant="stop", elem_id="models-merge-stop")
        with gr.Accordion("Extract a LoRA (from a finetune and its base)", open=False, elem_id="models-extract"):
            with gr.Row():
                extract_models = [gr.Dropdown(mergeable, value=None, label=label, allow_custom_value=True,
                                              elem_id=f"models-extract-{kind}", info=info)
                                  for kind, label, info in (
                                      ("tuned", "Tuned model", "a finetune: a model folder or a single file"),
                                      ("base", "Base model", "the model it was tuned from (dev, schnell, ...)"))]
                rank = gr.Slider(1, 256, 32, step=1, label="Rank", elem_id="models-extract-rank",
                                 info="higher keeps more of the change in a larger file")
            with gr.Row():
                lora_name = gr.Textbox(label="LoRA name", placeholder="my-finetune", elem_id="models-extract-name")
                extract = gr.Button("Extract and save", elem_id="models-extract-run")
                stop_extract = gr.Button("Stop extracting", variant="stop", elem_id="models-extract-stop")
        with gr.Row():
            token = gr.Textbox(label="Hugging Face token", type="password", elem_id="models-token", scale=3,
                               placeholder="hf_…", info=token_note())
            save_token = gr.Button("Save token", interactive=not offline, elem_id="models-save-token")
    pending_delete = gr.State(None)

    def pick(rows, event: gr.SelectData):
        row = event.row_value if event.row_value else None
        return row[0] if row else gr.skip()

    pickers = [*merge_models, *extract_models]

    def listing() -> dict:
        """The table and the merge / extract pickers, as the models on disk are now."""
        choices = merge_choices(studio)
        return {table: studio_rows(studio), **{picker: gr.Dropdown(choices=choices) for picker in pickers}}

    table.select(pick, table, name, queue=False, api_visibility="private")
    rescan.click(listing, outputs=[table, *pickers], queue=False, api_visibility="private")

    def download_handler(value):
        yield from follow_download(studio, value, status, table)
        yield listing()

    downloaded = download.click(download_handler, name, [status, table, *pickers], concurrency_limit=None,
                                concurrency_id="studio-downloads", api_visibility="private")

    def stop_download(value):
        try:
            repo = repo_id_of(value)
        except StudioError as error:
            return progress_html(str(error), kind="error")
        if studio.downloads.stop(repo):
            return progress_html(f"Stopping the download of {repo}…")
        return progress_html(f"{repo} is not downloading.")

    stop.click(stop_download, name, status, queue=False, api_visibility="private")

    def ask(value):
        repo, question = ask_delete(studio, value)
        return {pending_delete: repo, status: progress_html(question), confirm: gr.Button(visible=True)}

    delete.click(safe_action(status, ask), name, [pending_delete, status, confirm], api_visibility="private")

    def delete_confirmed(target):
        message = delete_model(studio, target) if target else "Press Delete first."
        return {status: progress_html(message, kind="done"), confirm: gr.Button(visible=False),
                pending_delete: None, **listing()}

    deleted = confirm.click(safe_action(status, delete_confirmed), pending_delete,
                            [status, confirm, pending_delete, table, *pickers], api_visibility="private")

    def quantize_handler(value, bits_value, new_value, request: gr.Request):
        yield from quantize_and_save(studio, value, bits_value, new_value, request.session_hash if request else "",
                                     status)
        yield listing()

    quantized = quantize.click(quantize_handler, [name, bits, new_name], [status, table, *pickers],
                               concurrency_id=ENGINE_QUEUE, concurrency_limit=1, api_visibility="private")

    studio.wire_stop(stop_quantize, scope=MODELS_JOBS)

    def merge_handler(a, b, c, method_value, multiplier_value, new_value, request: gr.Request):
        yield from merge_and_save(studio, [a, b, c], method_value, multiplier_value, new_value,
                                  request.session_hash if request else "", status)
        yield listing()

    merged = merge.click(merge_handler, [*merge_models, method, multiplier, merge_name], [status, table, *pickers],
                         concurrency_id=ENGINE_QUEUE, concurrency_limit=1, api_visibility="private")
    for event in (rescan.click, downloaded.then, deleted.then, quantized.then, merged.then):  # every tool's list too
        refresh_model_pickers(studio, event)
    studio.wire_stop(stop_merge, scope=MODELS_JOBS)

    def extract_handler(tuned_value, base_value, rank_value, name_value, request: gr.Request):
        yield from extract_and_save(studio, tuned_value, base_value, rank_value, name_value,
                                    request.session_hash if request else "", status)
        yield {table: studio_rows(studio)}

    extract.click(extract_handler, [*extract_models, rank, lora_name], [status, table], concurrency_id=ENGINE_QUEUE,
                  concurrency_limit=1, api_visibility="private")
    studio.wire_stop(stop_extract, scope=MODELS_JOBS)

    def store_token(value):
        try:
            downloads.save_token(value)
        except StudioError as error:
            return {token: "", status: progress_html(error_text(error), kind="error")}
        return {token: gr.Textbox(value="", info=token_note()),
                status: progress_html("Token saved: downloads now use it.", kind="done")}

    save_token.click(store_token, token, [token, status], api_visibility="private")
