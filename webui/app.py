"""The studio page: one tab per tool, a history of results, a status strip; `python -m webui.app` serves it,
with OpenAI's images API (webui.openai_api) and A1111's /sdapi/v1 (webui.a1111_api) beside it on the same server."""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import mflux_core  # noqa: E402,F401  (loads OpenBLAS before anything imports mlx.core)
import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from mflux_core.cli import add_memory_budget_flag  # noqa: E402
from mflux_core.demo.examples import write_examples  # noqa: E402
from mflux_core.errors import StudioError  # noqa: E402
from mflux_core.idle_unload import IdleUnloader  # noqa: E402
from mflux_core.presets import settings_from_png  # noqa: E402
from webui.a1111_api import sdapi_router  # noqa: E402
from webui.api_server import MAX_BODY_BYTES  # noqa: E402
from webui.jobs import safe_action, message_markdown  # noqa: E402
import webui.number_inputs  # noqa: E402,F401  (the page's number fields refuse bad values by name)
from webui.openai_api import openai_router  # noqa: E402
from webui.panels import controlnet, depth, fill, generate, in_context, kontext, redux  # noqa: E402
from webui.panels import concept, plot, train  # noqa: E402
from webui.panels import models as models_tab  # noqa: E402
from webui.gallery import settings_to_send  # noqa: E402
from webui.presets_ui import apply_settings  # noqa: E402
from webui.request_guard import RequestGuard, is_loopback  # noqa: E402
from webui.panels.queue import render as render_queue  # noqa: E402
from webui.studio import Studio, StudioFolders, StudioOutputs  # noqa: E402
from webui.turns import EngineTurns  # noqa: E402
from webui.widgets import refresh_model_pickers  # noqa: E402

PANEL_MODULES = (generate, fill, depth, kontext, controlnet, redux, *in_context.PANELS, plot, concept, train)
MAX_QUEUE_SIZE = 16
MAX_UPLOAD = f"{MAX_BODY_BYTES // 2**20}mb"

CSS = """
.studio-status { display: flex; gap: 0.75em; align-items: center; min-height: 1.6em; }
.studio-status progress { flex: 0 0 40%; height: 0.9em; }
.studio-error { color: var(--error-text-color, #c00); }
.studio-done { color: var(--color-accent, #0a0); }
#status-strip { font-size: 0.85em; }
"""


class StudioBlocks(gr.Blocks):
    """The page; launching it serves OpenAI's images API and A1111's /sdapi/v1 on the same server too (unless
    `openai_api` / `a1111_api` is off), asking API clients for the page's `auth` credentials when it has them
    (HTTP basic); every route behind the request guard (webui.request_guard: no foreign web page, no foreign host
    name on a studio bound to this machine)."""

    studio: Studio
    openai_api: bool = True
    a1111_api: bool = True

    def launch(self, *args, auth=None, app_kwargs: dict | None = None, **kwargs):
        app_kwargs = dict(app_kwargs or {})
        server_name = kwargs.get("server_name") or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                    Middleware(RequestGuard, loopback_only=is_loopback(server_name))]
        routers = [router for on, router in ((self.openai_api, openai_router), (self.a1111_api, sdapi_router)) if on]
        for router in routers:  # given to the FastAPI app Gradio builds, so they are there from the first request
            app_kwargs["routes"] = [*app_kwargs.get("routes", []), *router(self.studio, auth).routes]
        return super().launch(*args, auth=auth, app_kwargs=app_kwargs, **kwargs)


def build_app(manager, folders: StudioFolders | None = None, max_queue_size: int = MAX_QUEUE_SIZE,
              openai_api: bool = True, a1111_api: bool = True) -> StudioBlocks:
    """The whole page for one ModelManager; launch it with `launch_kwargs(folders)`."""
    folders = folders or StudioFolders.default(Path("outputs"), models_dir=manager.models_dir)
    studio = Studio(manager=manager, folders=folders, examples=write_examples(folders.examples),
                    turns=EngineTurns(max_waiting=max_queue_size, slots=manager.jobs_at_once))
    with StudioBlocks(title="mflux-studio") as app:
        studio.outputs = StudioOutputs(
            history=gr.Gallery(label="History (newest first)", columns=6, height=520, elem_id="history-gallery",
                               interactive=False, render=False, format="png"),
            history_paths=gr.State([]),
            status_strip=gr.Markdown("", label="Engine status", elem_id="status-strip", render=False),
        )
        with gr.Row(equal_height=True):
            with gr.Column(scale=1, min_width=150):
                gr.Markdown("### mflux-studio", elem_id="studio-title")
            with gr.Column(scale=8):
                studio.outputs.status_strip.render()
            refresh_status = gr.Button("↻ status", size="sm", scale=0, min_width=90, elem_id="status-refresh")
            unload = gr.Button("⏏ unload models", size="sm", scale=0, min_width=130, elem_id="unload-models")
        render_queue(studio)
        with gr.Tabs(elem_id="tool-tabs") as studio.tabs:
            panels = studio.panels = {module.TOOL: module.render(studio) for module in PANEL_MODULES}
            with gr.Tab("History", id="history", elem_id="tab-history"):
                render_history(studio, panels)
            models_tab.render(studio)
        refresh_status.click(studio.status_text, outputs=studio.outputs.status_strip, api_name="status",
                             queue=False)
        unload.click(studio.unload_models, outputs=studio.outputs.status_strip, api_name="unload_models")
        app.load(studio.after_job_updates, outputs=studio.after_job_updates_outputs(), api_name="history",
                 queue=False)
        refresh_model_pickers(studio, app.load)
        app.queue(max_size=max_queue_size, default_concurrency_limit=2)
    app.studio, app.openai_api, app.a1111_api = studio, openai_api, a1111_api
    return app


def render_history(studio, panels: dict) -> None:
    """The history gallery, 'send to' buttons, and restoring a result's settings into its tool's panel."""
    outputs = studio.outputs
    outputs.history.render()
    selected = gr.State(None)
    with gr.Row():
        targets = {"generate": "→ Image to image", "fill": "→ Fill", "kontext": "→ Kontext", "redux": "→ Redux"}
        send_buttons = {tool: gr.Button(label, elem_id=f"send-to-{tool}") for tool, label in targets.items()}
        restore = gr.Button("Restore its settings", variant="primary", elem_id="history-restore")
    message = gr.Markdown("Select an image, then send it to a tool or restore its settings.",
                          elem_id="history-message")

    def pick(paths, event: gr.SelectData):
        index = event.index if isinstance(event.index, int) else None
        path = paths[index] if index is not None and 0 <= index < len(paths) else None
        return path, f"Selected {Path(path).name}: send it to a tool or restore its settings." if path else ""

    outputs.history.select(pick, outputs.history_paths, [selected, message], queue=False, api_visibility="private")

    def sender(tool):
        panel = panels[tool]

        def send(path):
            if not path:
                return {message: message_markdown("Select an image in the history first.")}
            settings = settings_to_send(Path(path), panel.tools)
            updates, notes = apply_settings(studio, panel, settings)
            what = "with its prompt and settings" if settings else "(it holds no settings to carry)"
            opened = {panel.send_opens: gr.Accordion(open=True)} if panel.send_opens else {}
            return {**updates, **opened, panel.send_target: path, studio.tabs: gr.Tabs(selected=panel.tab_id),
                    message: " ".join([f"Sent {Path(path).name} to {panel.tab_id} {what}."] + notes)}
        return send

    for tool, button in send_buttons.items():
        panel = panels[tool]
        button.click(sender(tool), selected, [panel.send_target, studio.tabs, message, *panel.controls.values(),
                                              *([panel.send_opens] if panel.send_opens else [])],
                     queue=False, api_visibility="private")

    all_controls = [c for panel in panels.values() for c in panel.controls.values()]

    def restore_settings(path):
        if not path:
            raise StudioError("Select an image in the history first.")
        settings = settings_from_png(path)
        tool = settings.get("tool", "generate")
        panel = next(p for p in panels.values() if tool in p.tools)
        updates, notes = apply_settings(studio, panel, settings)
        return {**updates, studio.tabs: gr.Tabs(selected=panel.tab_id),
                message: " ".join([f"Restored the settings into {panel.tab_id}."] + notes)}

    restore.click(safe_action(message, restore_settings, message_markdown), selected,
                  [*all_controls, studio.tabs, message], api_visibility="private")


def launch_kwargs(folders: StudioFolders) -> dict:
    return {"allowed_paths": folders.allowed_paths(), "max_file_size": MAX_UPLOAD, "css": CSS,
            "footer_links": ["api"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webui.app", description="Serve the mflux-studio page.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="folder of local models (default ./models)")
    parser.add_argument("--outputs-dir", type=Path, default=Path("outputs"),
                        help="where results, inputs and your presets go (default ./outputs)")
    parser.add_argument("--presets-dir", type=Path, help="your presets (default <outputs-dir>/presets)")
    parser.add_argument("--lora-dir", type=Path, action="append",
                        help="a LoRA library folder (repeatable; default $LORA_LIBRARY_PATH and <models-dir>/loras)")
    parser.add_argument("--wildcards-dir", type=Path, default=Path("wildcards"),
                        help="folder of wildcard files: __name__ in a prompt picks a line of name.txt "
                        "(default ./wildcards)")
    parser.add_argument("--styles-dir", type=Path, default=Path("styles"),
                        help="folder of A1111 styles files (styles.csv: name, prompt, negative_prompt), picked by name "
                        "under the prompt (default ./styles)")
    parser.add_argument("--listen", action="store_true", help="bind 0.0.0.0 so other machines can connect (as "
                        "--host 0.0.0.0)")
    parser.add_argument("--auth", help="user:password required to open the page and use its APIs")
    parser.add_argument("--no-openai-api", dest="openai_api", action="store_false",
                        help="do not serve OpenAI's images API (/v1/images/generations, /v1/images/edits, /v1/models)")
    parser.add_argument("--no-a1111-api", dest="a1111_api", action="store_false",
                        help="do not serve AUTOMATIC1111's API (/sdapi/v1/txt2img, img2img, options, progress...)")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE_SIZE, help="most jobs waiting at once")
    parser.add_argument("--low-ram", action="store_true", help="free the text encoders after each prompt")
    parser.add_argument("--unload-after", type=float, metavar="MINUTES",
                        help="unload the models after this many minutes without a job, giving their memory back "
                             "(default: keep them; the next job loads them again)")
    add_memory_budget_flag(parser)
    parser.add_argument("--cluster", metavar="ADDRESS|local|auto",
                        help="run the engine on a Ray cluster (needs the `cluster` extra): `local` starts one on this "
                             "machine, `auto` joins the one this machine joined with `ray start`, or a Ray address")
    parser.add_argument("--replicas", type=int, help="engine replicas on the cluster (default: one per GPU, per "
                                                     "Mac with the studio_mac resource, else per machine; local: 2)")
    args = parser.parse_args(argv)
    if args.replicas is not None and (args.replicas < 1 or not args.cluster):
        parser.error("--replicas takes a positive count, with --cluster")
    if args.auth is not None and ":" not in args.auth:
        parser.error("--auth takes user:password")
    if args.listen and args.host != parser.get_default("host"):
        parser.error("--listen binds 0.0.0.0 (every interface); give it or --host, not both")
    if args.unload_after is not None and not 0 < args.unload_after <= 10_000:
        parser.error("--unload-after takes minutes, more than 0")
    if args.unload_after is not None and args.cluster:
        parser.error("--unload-after is for the engine in this process; a cluster's replicas keep their models")
    return args


def engine(args: argparse.Namespace):
    """The in-process ModelManager, or with --cluster the replicas on a Ray cluster (Ray is imported only then)."""
    options = {"low_ram": args.low_ram, "memory_budget_bytes": args.memory_budget}
    if not args.cluster:
        from mflux_core.manager import ModelManager

        return ModelManager(models_dir=args.models_dir, **options)
    try:
        from mflux_core.cluster.engine import connect
    except ImportError:
        sys.exit("--cluster needs Ray Serve: pip install -e '.[cluster]' (or python3 launch.py --cluster ...).")
    try:
        return connect(args.cluster, args.replicas, args.models_dir, **options)
    except (ConnectionError, RuntimeError) as error:  # no cluster at that address, or the local one did not start
        sys.exit(f"Could not use the Ray cluster '{args.cluster}': {error}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folders = StudioFolders.default(args.outputs_dir, models_dir=args.models_dir, user_presets=args.presets_dir,
                                    loras=args.lora_dir, wildcards=args.wildcards_dir, styles=args.styles_dir)
    manager = engine(args)
    if args.unload_after:
        IdleUnloader(manager, args.unload_after * 60)
    app = build_app(manager, folders, max_queue_size=args.max_queue, openai_api=args.openai_api,
                    a1111_api=args.a1111_api)
    host = "0.0.0.0" if args.listen else args.host
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if not auth and not is_loopback(host):
        print(f"Warning: bound to {host} without --auth: anyone who can reach this machine can use the studio.",
              file=sys.stderr)
    everywhere = host in ("0.0.0.0", "::")
    print(f"mflux-studio: http://{'127.0.0.1' if everywhere else host}:{args.port}"
          f"{' (listening on all interfaces)' if everywhere else ''}"
          f"{'; OpenAI images API under /v1' if args.openai_api else ''}"
          f"{'; A1111 API under /sdapi/v1' if args.a1111_api else ''}", flush=True)
    # Our handlers turn every error into a status line (a refused input also ends its event with the sentence);
    # show_error lets Gradio's own refusals (a value out of a slider's range) reach the page as a sentence too.
    app.launch(server_name=host, server_port=args.port, auth=auth, show_error=True, **launch_kwargs(folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
