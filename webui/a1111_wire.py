"""A1111's API on the wire: its error body, its 422 for a malformed body, and images as base64 PNGs (data URLs
too) read with the studio's checks. Shared by a1111_api.py, a1111_controlnet.py and a1111_extras.py."""

import base64
import binascii
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, ValidationError

from mflux_core.images.io import load_image, load_mask, load_rgba, png_bytes
from webui.api_server import ApiRefusal

DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
TITLE_HASH = re.compile(r"(?<!\s)\s*\[[0-9a-fA-F]+\]$")  # A1111 titles a model file "name [shorthash]"; (?<!\s):
# tried from a run's first space only, linear in a long run


def without_hash(title: str) -> str:
    """A1111's title of a checkpoint or ControlNet model ("demo-canny [d14c016b]") as the studio names it."""
    return TITLE_HASH.sub("", str(title).strip())


@dataclass
class SdApiError(ApiRefusal):
    """A1111's error body (its FastAPI handler's): {"error": kind, "detail", "body", "errors"}."""

    kind: str = "HTTPException"

    @classmethod
    def of(cls, status: int, message: str, setting: str | None = None) -> "SdApiError":
        return cls(status, message, kind="HTTPException" if status < 500 else "RuntimeError")

    def body(self) -> dict:
        return {"error": self.kind, "detail": self.message, "body": "", "errors": self.message}


def refused_fields(error: ValidationError, within: str = "") -> SdApiError:
    """A1111's 422 for a malformed request, naming the first problem as one sentence (its field's path after
    `within`, the path of the object that was parsed: "alwayson_scripts.controlnet.args[0].")."""
    problem = error.errors()[0]
    where = within + ".".join(str(part) for part in problem["loc"]) or "the body"
    message = f"The field '{where}' is required." if problem["type"] == "missing" else \
        f"The field '{where}' is invalid: {problem['msg']}."
    return SdApiError(422, message, kind="RequestValidationError")


def parsed(model: type[BaseModel], fields: dict, within: str = "") -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise refused_fields(error, within) from None


def base64_data(text: str, what: str) -> bytes:
    """The bytes of a base64 string (a data URL too); 400 naming `what` when it is not base64."""
    try:
        return base64.b64decode(DATA_URL.sub("", text.strip()), validate=True)
    except (binascii.Error, ValueError):
        raise SdApiError(400, f"The {what} is not base64 image data.") from None


@contextmanager
def as_file(data: bytes):
    """The path of a temporary file holding `data`, so the file readers' checks apply to it."""
    with tempfile.NamedTemporaryFile(suffix=".png") as copy:
        copy.write(data)
        copy.flush()
        yield copy.name


def decoded_image(text: str, what: str) -> Image.Image:
    """A base64 image decoded with load_image's checks (size, format, damage), named `what` in its refusals."""
    with as_file(base64_data(text, what)) as path:
        return load_image(path, name=f"sent as {what}")


def decoded_mask(text: str) -> Image.Image:
    """An inpainting mask as A1111 reads one ('L', white = repaint): an RGBA image with any transparency is its
    alpha (opaque = repaint, whatever the colour: strokes on a transparent sheet), any other its gray levels."""
    with as_file(base64_data(text, "mask")) as path:
        gray = load_mask(path, name="mask")  # read with the studio's checks
        with Image.open(path) as opened:
            if opened.mode != "RGBA":  # A1111 looks at the mode as decoded, before any conversion
                return gray
        alpha = load_rgba(path, name="mask").getchannel("A")
        if alpha.getextrema() == (255, 255):
            return gray
        return alpha.point(lambda value: 255 if value > 128 else 0)  # A1111 rounds the alpha so


def b64_png(image: Image.Image, text_chunks: dict | None = None) -> str:
    return base64.b64encode(png_bytes(image, text_chunks)).decode("ascii")
