"""'Try a demo example' under a panel's controls: held-out inputs from the demo world (rendered at app start by
mflux_core.demo.examples) that fill in the panel and pick the tool's demo model, shown only when that model is on disk.

An example also resets what would spoil it: the size (the input's, or the demo's 64x64 for Generate), steps and
guidance (the model's and tool's defaults, which the demo models were evaluated with).
"""

from typing import Callable

import gradio as gr

from mflux_core.demo.examples import DemoExample
from mflux_core.demo.family import IMAGE_SIZE
from mflux_core.tools.specs import TOOL_SPECS

ExampleValue = Callable[[DemoExample], object]


def render_demo_examples(studio, tool: str, controls: dict, shown: dict[gr.components.Component, ExampleValue],
                         settings: dict[gr.components.Component, object] | None = None, kind: str = "",
                         emptied: tuple[gr.components.Component, ...] = (),
                         prompt: gr.components.Component | None = None) -> None:
    """Render the examples of `tool` (inside the panel's Blocks context).

    `controls`: the panel's shared controls; `shown`: the tool's inputs shown in the table before the prompt
    (component -> its value for an example); `settings`: controls every example sets (component -> value), unshown;
    `kind`: which of a panel's modes the examples are for, in the label ("Upscale"), where a panel has several;
    `emptied`: inputs an example empties (a panel's further image slots, so that no earlier picture mixes in);
    `prompt`: the control an example's prompt goes into (IC-Edit's instruction box; by default the panel's prompt).
    """
    examples = studio.examples.get(tool) or []
    if not examples or not any(entry.name == examples[0].model and entry.available
                               for entry in studio.manager.list_models()):
        return
    size = 0 if TOOL_SPECS[tool].sized_by_input else IMAGE_SIZE  # 0: the input image's size
    fixed = {**(settings or {}), controls["width"]: size, controls["height"]: size, controls["steps"]: "",
             controls["guidance"]: ""}
    rows = [[*(value(e) for value in shown.values()), e.prompt, e.model, *fixed.values()] for e in examples]
    table = gr.Examples(rows, [*shown, prompt or controls["prompt"], controls["model"], *fixed],
                        visible_columns=list(range(len(shown) + 1)), elem_id=f"{tool}-examples",
                        label=f"Try a demo {kind + ' ' if kind else ''}example (runs on {examples[0].model})",
                        api_visibility="private")
    if emptied:  # gr.Examples drops a column that is None in every example, so it cannot empty them itself
        table.dataset.click(lambda: [None] * len(emptied), None, list(emptied), queue=False, api_visibility="private")
