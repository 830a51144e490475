"""The page's number fields (Gradio's Number and Slider) refuse a bad value in a sentence that names the field.

Only a raw API call can send one (the page's own fields cannot): Gradio's answer to NaN in an integer field was
"Could not preprocess input component at index 15 ... of the event handler (named "build_requests") with input
components: [dropdown, ...]" and to 1e300 "Value 1e+300 is greater than maximum value 4.", with a traceback in the
server log each time. The classes' `preprocess` is wrapped once, on import, as webui.panels wraps gr.Image's: a
method replaced on an instance is lost when an event updates the component, and a subclass of a Gradio component
makes Gradio write a .pyi stub beside its module.
"""

import math
from typing import Callable

import gradio as gr


def _refused(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def _checked(preprocess: Callable) -> Callable:
    def checked(field, payload):
        if payload is None:
            return preprocess(field, payload)
        name = (field.label or "This number").split(" (")[0]  # "Image strength (how much ... is kept)": its name
        try:
            value = float(payload)
        except (TypeError, ValueError):
            raise _refused(f"{name} must be a number, not {payload!r}.") from None
        if not math.isfinite(value):
            if field.precision is None:
                return value  # the request's checks name a float field better ("The scale of LoRA 1 must be ...")
            raise _refused(f"{name} must be a finite number, not {value}.")
        if field.minimum is not None and value < field.minimum:
            raise _refused(f"{name} must be at least {field.minimum:g}, not {value:g}.")
        if field.maximum is not None and value > field.maximum:
            raise _refused(f"{name} must be at most {field.maximum:g}, not {value:g}.")
        return preprocess(field, value)
    return checked


gr.Number.preprocess = _checked(gr.Number.preprocess)
gr.Slider.preprocess = _checked(gr.Slider.preprocess)
