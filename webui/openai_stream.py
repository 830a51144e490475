"""OpenAI's streamed image answers (`stream: true` on /v1/images/generations and /v1/images/edits): server-sent
events as the `openai` package reads them, `<kind>.partial_image` for up to `partial_images` (0 to 3) of the
steps' previews, spread over the steps, then `<kind>.completed` with each finished image. The previews are the
engine's own step previews, so a streamed image costs no extra decode. A failure after the stream has begun is
an `error` event in OpenAI's error shape (a refusal before it is the usual JSON answer).
"""

import base64
import io
import json
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from PIL import Image

from mflux_core.events import Step
from mflux_core.request import GenerationRequest
from webui.api_server import ApiRefusal, refusal_of
from webui.gallery import save_result
from webui.turns import request_about

# The studio counts no tokens: OpenAI's usage block, which its clients read, says so.
NO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
            "total_tokens": 0}


def partial_steps(total: int, count: int) -> set[int]:
    """The steps (1-based) whose previews are sent: `count` of them spread evenly before the last step, which
    the completed image stands for."""
    return {round(total * index / (count + 1)) for index in range(1, count + 1)} & set(range(1, total))


@dataclass(frozen=True)
class OutputFormat:
    """gpt-image's `output_format` and `output_compression` (the JPEG/WebP quality, 0-100) of the images sent."""

    name: str = "png"
    compression: int = 100

    def base64_of(self, image: Image.Image | Path) -> str:
        """A saved PNG is sent as it is (its metadata with it); anything else is encoded in this format."""
        if isinstance(image, Path) and self.name == "png":
            return base64.b64encode(image.read_bytes()).decode("ascii")
        if isinstance(image, Path):
            with Image.open(image) as opened:
                return self.base64_of(opened.convert("RGB"))
        buffer = io.BytesIO()
        quality = {} if self.name == "png" else {"quality": self.compression}
        image.save(buffer, format=self.name.upper(), **quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_event(kind: str, stage: str, image_b64: str, size: tuple[int, int], output: OutputFormat,
                **fields) -> dict:
    """One event's data: what OpenAI's ImageGen/ImageEdit PartialImage and Completed events carry."""
    return {"type": f"{kind}.{stage}", "b64_json": image_b64, "background": "opaque", "created_at": int(time.time()),
            "output_format": output.name, "quality": "auto", "size": f"{size[0]}x{size[1]}", **fields}


def run_streamed(emit: Callable[[dict], None], gone, studio, requests: list[GenerationRequest], kind: str,
                 partial_images: int, output: OutputFormat, source: str) -> None:
    """Run the requests in the engine's turn (stopped by the queue's Stop or the client leaving), emitting each
    image's chosen step previews and then the saved image."""
    with studio.turns.turn(**request_about(requests), source=source, cancel=gone) as entry:
        with closing(studio.batch(requests, entry.cancel.is_set)) as runs:
            for run in runs:
                sent = []

                def report(event, chosen: set[int] | None = None):
                    if not isinstance(event, Step) or event.preview is None or event.stage:
                        return
                    if event.step in partial_steps(event.total, partial_images):
                        emit(image_event(kind, "partial_image", output.base64_of(event.preview),
                                         event.preview.size, output, partial_image_index=len(sent)))
                        sent.append(event.step)

                path = save_result(studio.folders.outputs, run(report))
                with Image.open(path) as image:
                    size = image.size
                emit(image_event(kind, "completed", output.base64_of(path), size, output, usage=NO_USAGE))


async def server_sent(events: AsyncIterator[dict], refusal: type[ApiRefusal]) -> AsyncIterator[str]:
    """The events as SSE text (`event:` names the type, as OpenAI sends it); a failure as an `error` event."""
    try:
        async for event in events:
            yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
    except Exception as error:  # the answer has begun: the error travels as an event the client raises
        yield f"event: error\ndata: {json.dumps(refusal_of(error, refusal).body())}\n\n"
