"""Events as they travel from a replica to the front: images as PNG bytes, results naming their replica."""

import io
import json
from dataclasses import dataclass, replace

from PIL import Image

from mflux_core.errors import StudioError
from mflux_core.events import Event, Failed, Finished, Step
from mflux_core.manager import GenerationResult
from mflux_core.metadata import JSON_KEY
from mflux_core.request import GenerationRequest


@dataclass(frozen=True)
class Started:
    replica: str  # the replica that took the job: the first event of every remote job


@dataclass(frozen=True)
class RemoteResult:
    png: bytes
    request: GenerationRequest
    metadata: dict
    text_chunks: dict[str, str]
    seconds: float
    notes: tuple[str, ...] = ()
    before: bytes | None = None  # the hires fix's upscaled first pass, for the page's before/after slider


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.copy()


def with_replica(result: GenerationResult, replica: str) -> RemoteResult:
    """The result as PNG bytes, its metadata (our JSON chunk too) recording the replica that made it."""
    metadata = {**result.metadata, "replica": replica}
    chunks = {**result.text_chunks, JSON_KEY: json.dumps(metadata, sort_keys=True)}
    before = png_bytes(result.before) if result.before is not None else None
    return RemoteResult(png_bytes(result.image), result.request, metadata, chunks, result.seconds, result.notes, before)


def to_wire(event: Event, replica: str) -> Event:
    if isinstance(event, Step) and event.preview is not None:
        return replace(event, preview=png_bytes(event.preview))
    if isinstance(event, Finished):
        return Finished(with_replica(event.result, replica))
    if isinstance(event, Failed) and not isinstance(event.error, StudioError):
        # A bug's exception may not unpickle in the front; its name and text always do.
        return Failed(RuntimeError(f"on replica {replica}: {type(event.error).__name__}: {event.error}"))
    return event


def from_wire(event: Event) -> Event:
    if isinstance(event, Step) and isinstance(event.preview, bytes):
        return replace(event, preview=png_image(event.preview))
    if isinstance(event, Finished) and isinstance(event.result, RemoteResult):
        result = event.result
        before = png_image(result.before) if result.before is not None else None
        return Finished(GenerationResult(png_image(result.png), result.request, result.metadata, result.text_chunks,
                                         result.seconds, before=before, notes=result.notes))
    return event
