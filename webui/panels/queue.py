"""The queue view above the tabs: every job waiting for the engine or running, from every tab and from the APIs,
with a cancel for a waiting job and Stop for a running one (on a cluster several run at once). Its title carries
the running and waiting counts on every tab."""

import time

import gradio as gr

from webui.turns import QueueEntry, ordinal

HEADERS = ["Job", "State", "Tool", "Prompt", "Size", "From", "Submitted"]
REFRESH_S = 1.0


def queue_rows(entries: list[QueueEntry], viewer: str) -> list[list]:
    """The table's rows, the running jobs first; a page job is "this tab" for the tab that submitted it."""
    rows, waiting = [], 0
    for entry in entries:
        waiting += entry.state != "running"
        state = "running" if entry.state == "running" else f"waiting, {ordinal(waiting)}"
        source = ("this tab" if entry.session == viewer else "another tab") if entry.source == "page" else entry.source
        rows.append([entry.id, state, entry.tool or "job", entry.prompt, entry.size, source,
                     time.strftime("%H:%M:%S", time.localtime(entry.submitted))])
    return rows


def queue_title(entries: list[QueueEntry]) -> str:
    if not entries:
        return "Queue: empty"
    running = sum(entry.state == "running" for entry in entries)
    return f"Queue: {running} running, {len(entries) - running} waiting"


def render(studio) -> None:
    with gr.Accordion(queue_title([]), open=False, elem_id="queue") as accordion:
        table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, elem_id="queue-table")
        with gr.Row(equal_height=True):
            job = gr.Number(label="Job", precision=0, minimum=1, elem_id="queue-job", scale=1)
            cancel = gr.Button("Cancel (waiting) / Stop (running)", variant="stop", size="sm", elem_id="queue-cancel",
                               scale=1)
            message = gr.Markdown("Select a row or type its job number.", elem_id="queue-message")
    timer = gr.Timer(REFRESH_S)

    def refresh(request: gr.Request):
        entries = studio.turns.entries()
        return gr.Accordion(label=queue_title(entries)), queue_rows(entries, request.session_hash if request else "")

    def pick(rows, event: gr.SelectData):
        row = event.index[0] if isinstance(event.index, (list, tuple)) else None
        return rows.iloc[row, 0] if row is not None and row < len(rows) else None

    def withdraw(job_id):
        return "Select a row or type its job number." if job_id is None else studio.turns.cancel(int(job_id))

    timer.tick(refresh, outputs=[accordion, table], queue=False, show_progress="hidden", api_visibility="private")
    table.select(pick, table, job, queue=False, api_visibility="private")
    cancel.click(withdraw, job, message, queue=False, api_name="queue_cancel").then(
        refresh, outputs=[accordion, table], queue=False, show_progress="hidden", api_visibility="private")
