"""What the panels share: the manager, the folders, the job board, and the studio-wide outputs.

One Studio per app (built by build_app); nothing here is global, and nothing loads at import time.
"""

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from mflux_core.downloads import Downloads
from mflux_core.errors import InvalidRequest, StudioError
from mflux_core.lora.library import library_names, lora_folders
from mflux_core.tools.specs import TOOL_NAMES
from webui import gallery
from webui.compare import show_comparison
from webui.jobs import JobBoard, JobView, stop_handler, studio_job
from webui.requests import InputStore, RequestContext
from webui.status import status_markdown
from webui.turns import EngineTurns

SHIPPED_PRESETS = Path(__file__).resolve().parent.parent / "presets"


def api_signature(inputs: dict) -> inspect.Signature:
    """A Run handler's signature as Gradio reads it for the API: every named input optional. Gradio takes an
    input's default from its component's value, or None where a parameter defaults to None (images: no image)."""
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    return inspect.Signature([request, *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                                         for name in inputs)])


@dataclass(frozen=True)
class StudioFolders:
    outputs: Path
    user_presets: Path  # default: <outputs>/presets
    shipped_presets: Path = SHIPPED_PRESETS
    loras: tuple[Path, ...] = ()
    wildcards: Path | None = None  # __name__ wildcard files (read only)
    styles: Path | None = None  # A1111 styles.csv files (read only)

    @property
    def inputs(self) -> Path:
        return self.outputs / "inputs"

    @property
    def examples(self) -> Path:
        """The demo examples the app renders at start (webui.demo_examples), served like any output."""
        return self.outputs / "examples"

    @property
    def exports(self) -> Path:
        return self.user_presets / "exports"

    def allowed_paths(self) -> list[str]:
        """What Gradio may serve: results, inputs, presets. Nothing else on disk is reachable from the page."""
        return [str(p.resolve()) for p in (self.outputs, self.user_presets, self.shipped_presets)]

    @classmethod
    def default(cls, outputs: Path, models_dir: Path | None = None, user_presets: Path | None = None,
                loras: list[Path] | None = None, wildcards: Path | None = None,
                styles: Path | None = None) -> "StudioFolders":
        outputs = Path(outputs).resolve()
        if loras is None:
            loras = lora_folders(models_dir)
        return cls(outputs=outputs, user_presets=Path(user_presets or outputs / "presets").resolve(),
                   loras=tuple(Path(p).resolve() for p in loras),
                   wildcards=Path(wildcards).resolve() if wildcards else None,
                   styles=Path(styles).resolve() if styles else None)


@dataclass
class StudioOutputs:
    """Components every job updates; created unrendered and placed by the app."""

    history: gr.Gallery
    history_paths: gr.State
    status_strip: gr.Markdown


@dataclass
class Studio:
    manager: object  # ModelManager
    folders: StudioFolders
    jobs: JobBoard = field(default_factory=JobBoard)
    turns: EngineTurns = field(default_factory=EngineTurns)
    downloads: Downloads = field(default_factory=Downloads)  # the Models tab's, one job per repo
    outputs: StudioOutputs | None = None
    tabs: gr.Tabs | None = None
    panels: dict = field(default_factory=dict)  # tab id -> webui.panels.Panel
    examples: dict = field(default_factory=dict)  # tool -> its mflux_core.demo.examples.DemoExample list
    model_pickers: list = field(default_factory=list)  # (tool, its Model dropdown) of every panel (widgets.py)

    def lora_library(self) -> dict[str, Path]:
        return library_names(list(self.folders.loras))

    def request_context(self) -> RequestContext:
        return RequestContext(inputs=InputStore(self.folders.inputs), loras=self.lora_library(),
                              wildcards=self.folders.wildcards, styles=self.folders.styles)

    def available_tools(self) -> set[str]:
        return set(TOOL_NAMES)

    def model_names(self) -> set[str]:
        return {entry.name for entry in self.manager.list_models()}

    def batch(self, requests: list, cancelled):
        """The engine's batch (ModelManager.batch) for requests from the page and the APIs, whose models must be
        ones the studio lists: a prompt-list line and a plot axis name theirs as text, and the engine takes any path
        or repo id (for the CLI's --model), which would let a client read files anywhere or start any download."""
        listed = self.model_names()
        for request in requests:
            if request.model is not None and request.model not in listed:
                shown = request.model if len(request.model) <= 80 else request.model[:80] + "…"
                raise InvalidRequest(f"The model {shown!r} is not one of the studio's (its model pickers, the Models "
                                     "tab and GET /sdapi/v1/sd-models list them): a path or another repo goes in the "
                                     "models folder first.", setting="model")
        return self.manager.batch(requests, cancelled)

    def history(self) -> list[tuple[str, str]]:
        return gallery.history(self.folders.outputs)

    def status_text(self) -> str:
        """The strip: the manager's status, with a download running in the Models tab when the engine has none."""
        status = self.manager.status()
        running = self.downloads.running()
        if not status.get("download") and running:
            status["download"] = {"model": running[0].repo_id, "done_bytes": running[0].done_bytes,
                                  "total_bytes": running[0].total_bytes}
        return status_markdown(status)

    def unload_models(self) -> str:
        """The strip after unloading every model (A1111's "Unload SD checkpoint"): a note says what was freed, or
        why not (a job is running)."""
        try:
            gr.Info(self.manager.unload_all())
        except StudioError as error:
            gr.Warning(str(error))
        return self.status_text()

    def after_job_updates_outputs(self) -> list:
        return [self.outputs.history, self.outputs.history_paths, self.outputs.status_strip]

    def after_job_updates(self) -> dict:
        items = self.history()
        return {self.outputs.history: items, self.outputs.history_paths: [path for path, _ in items],
                self.outputs.status_strip: self.status_text()}

    # ----- wiring -------------------------------------------------------------------------

    def job(self, view: JobView):
        return studio_job(self, view)

    def job_outputs(self, view: JobView) -> list:
        """What a Run event (and so its API endpoint) returns: status, the last image, this run's images."""
        compared = [view.compared] if view.compared else []  # a State: not part of the API's result
        return [view.status, view.preview, view.results, *compared]

    def wire_run(self, trigger: gr.Button, handler, inputs: dict, view: JobView, api_name: str):
        """A Run button: named inputs, our own progress display. Gradio lets every Run event in at once: they
        wait in the engine's queue (webui.turns), where the queue view lists them and each shows its place.

        The page's history and status strip refresh in a chained event of their own, outside the API's result:
        a gradio_client call would otherwise download every file of the history.
        """
        handler.__signature__ = api_signature(inputs)
        run = trigger.click(handler, inputs_kwargs=inputs, outputs=self.job_outputs(view), api_name=api_name,
                            concurrency_limit=None, show_progress="minimal",
                            show_progress_on=[view.results])
        if view.compare is not None:  # a refused run hides the last run's before / after (its state is not kept)
            run.success(show_comparison, inputs=[view.compared], outputs=[view.compare], queue=False,
                        show_progress="hidden", api_visibility="private")
            run.failure(lambda: show_comparison(None), outputs=[view.compare], queue=False, show_progress="hidden",
                        api_visibility="private")
        return run.then(self.after_job_updates, outputs=self.after_job_updates_outputs(), queue=False,
                        show_progress="hidden", api_visibility="private")

    def wire_stop(self, trigger: gr.Button, api_name: str | None = None, scope: str | None = None):
        """A Stop button; every panel's does the same (stops this session's job), so one is in the API; one with a
        `scope` stops only the jobs page_job ran with it (a training, the Models tab's tasks)."""
        return trigger.click(stop_handler(self, scope), api_name=api_name, concurrency_limit=None,
                             concurrency_id="studio-stop", show_progress="hidden",
                             api_visibility="public" if api_name else "private")
