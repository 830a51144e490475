"""Reading the images users drop in, converting to and from model pixels, and saving PNGs atomically."""

import errno
import io
import itertools
import os
import secrets
import stat
import struct
import threading
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from mflux_core.errors import InvalidRequest, StudioError
from mflux_core.metadata import A1111_KEY
from mflux_core.request import MAX_INPUT_PIXELS, check_image_size

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
HIGH_DEPTH_MODES = (*SIXTEEN_BIT_MODES, "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
LOSSY_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # save_image_atomic's, by extension

ImageSource = str | os.PathLike | Image.Image


class ImageSaveError(StudioError):
    """An image could not be written (disk full, no permission, missing folder...)."""


# ImageFile.LOAD_TRUNCATED_IMAGES is process-wide; a library that sets it must not make us accept a
# cut-off upload. The lock keeps our decode and the flag's restore from interleaving across threads.
_truncation_lock = threading.Lock()


@contextmanager
def _truncated_images_are_errors():
    with _truncation_lock:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_pixel_count(image: Image.Image, label: str) -> None:
    """Read from the file's header, before a decompression bomb could be decoded."""
    check_image_size(*image.size, f"The image {label}", resized=True)


def _upright(image: Image.Image) -> Image.Image:
    """A detached copy, turned the way its EXIF orientation tag says (a broken EXIF block is ignored)."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, TypeError, KeyError, struct.error):
        return image.copy()


def _decode_file(path: Path, label: str) -> Image.Image:
    try:
        status = path.stat()
    except FileNotFoundError:
        raise InvalidRequest(f"The file {label} does not exist.") from None
    except OSError as error:
        raise InvalidRequest(f"The file {label} cannot be read: {error.strerror or error}.") from error
    if stat.S_ISDIR(status.st_mode):
        raise InvalidRequest(f"{label} is a folder, not an image file.")
    if status.st_size == 0:
        raise InvalidRequest(f"The file {label} is empty.")
    try:
        with _truncated_images_are_errors(), Image.open(path) as image:
            _check_pixel_count(image, label)
            image.load()  # the first frame only, for animated GIF / WebP
            return _upright(image)
    except Image.DecompressionBombError:
        raise InvalidRequest(
            f"The image {label} is too large (over {MAX_INPUT_PIXELS:,} pixels) to open safely."
        ) from None
    except UnidentifiedImageError:
        raise InvalidRequest(f"The file {label} is not an image, or not in a format Pillow can read.") from None
    except PermissionError:
        raise InvalidRequest(f"The file {label} cannot be read: permission denied.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InvalidRequest(f"The image {label} is truncated or damaged ({error}).") from error


def _decode(source: ImageSource, name: str | None = None) -> Image.Image:
    """A loaded, upright, detached copy of the source's first frame, in the mode it was stored in.

    `name` replaces the file's path in messages (an upload's temporary path means nothing to its sender).
    """
    if not isinstance(source, Image.Image):
        return _decode_file(Path(source), name or str(source))
    label = getattr(source, "filename", "") or "you gave"
    _check_pixel_count(source, label)
    try:
        with _truncated_images_are_errors():
            source.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InvalidRequest(f"The image {label} is truncated or damaged ({error}).") from error
    return _upright(source)


def _high_depth_to_gray(image: Image.Image) -> Image.Image:
    """16-bit or 32-bit grayscale as 8-bit 'L', scaled (Pillow's own convert clips at 255 instead).

    16-bit modes are scaled by 255/65535. Mode 'I' has no stated depth: values above 255 are read as
    16-bit. Mode 'F' up to 1.0 is read as [0, 1], anything larger as [0, 255].
    """
    values = np.asarray(image).astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and peak > 255):
        values = values * (255.0 / 65535.0)
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError as error:
        raise InvalidRequest(f"Images in the colour mode {image.mode} are not supported ({error}).") from error


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in HIGH_DEPTH_MODES:
        image = _high_depth_to_gray(image)
    if _has_alpha(image):
        rgba = _convert(image, "RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else _convert(image, "RGB")


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Any image a user may drop, as an upright RGB image (transparency composited over white).

    Handles EXIF rotation, CMYK, palettes, 16-bit grayscale, animated files (first frame). An
    empty, truncated, damaged, non-image or oversized file raises InvalidRequest naming the file
    (as `name` when given).
    """
    return _flatten_to_rgb(_decode(source, name))


def load_rgba(source: ImageSource, name: str | None = None) -> Image.Image:
    """An image with its transparency kept (a painted editor layer), checked as load_image checks."""
    return _convert(_decode(source, name), "RGBA")


def load_mask(source: ImageSource, name: str | None = None) -> Image.Image:
    """A mask file as 'L' (white = regenerate), checked as load_image checks (`name` as there).

    A mask with transparency is its alpha channel, opaque = regenerate whatever the colour (strokes of any colour
    on a transparent sheet, as image editors export a layer), as A1111 reads one; with uniform alpha, its gray levels.
    """
    image = _decode(source, name)
    if image.mode in HIGH_DEPTH_MODES:
        return _high_depth_to_gray(image)
    if not _has_alpha(image):
        return _convert(image, "L")
    rgba = _convert(image, "RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == alpha.getextrema()[1]:
        return rgba.convert("RGB").convert("L")
    return alpha


def pil_to_pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(1, H, W, 3) float32 in [-1, 1], as diffusers' VaeImageProcessor.preprocess makes from a PIL image.

    Same steps, same order: LANCZOS resize when the size differs, RGB, /255, *2-1.
    """
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    if image.mode != "RGB":
        image = image.convert("RGB")
    unit = np.asarray(image).astype(np.float32) / 255.0
    return (2.0 * unit - 1.0)[None]


def pixels_to_pil(pixels: np.ndarray) -> Image.Image:
    """(1, H, W, 3) values in [-1, 1] to an RGB image, as VaeImageProcessor.postprocess(output_type='pil')."""
    values = np.array(pixels, dtype=np.float32)  # the one float copy: the steps below work in place (a 4096 px
    if values.ndim != 4 or values.shape[0] != 1 or values.shape[-1] != 3:  # image is 200 MB a copy)
        raise ValueError(f"Expected pixels of shape (1, H, W, 3), got {values.shape}.")
    values *= 0.5
    values += 0.5
    np.clip(values, 0.0, 1.0, out=values)
    values *= 255
    np.rint(values, out=values)
    return Image.fromarray(values[0].astype(np.uint8), "RGB")


def _candidate_paths(path: Path):
    yield path
    for number in itertools.count(1):
        yield path.with_name(f"{path.stem}_{number}{path.suffix}")


def _create_temp_file(folder: Path, name: str) -> tuple[int, Path]:
    while True:
        temp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            # os.open with 0o666 honours the umask, unlike tempfile's private 0o600
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), temp
        except FileExistsError:
            continue


def _publish_under_free_name(temp: Path, path: Path) -> Path:
    """Give the finished temp file the first free name among name, name_1, name_2, ...

    os.link fails when the name exists, so two writers can never take the same one. Where the
    filesystem has no hard links, the name is reserved with O_EXCL and the temp file moved onto it.
    """
    for candidate in _candidate_paths(path):
        try:
            os.link(temp, candidate)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            os.replace(temp, candidate)
            return candidate
        os.unlink(temp)
        return candidate
    raise AssertionError("unreachable: the candidate names never run out")


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; folders cannot be opened for fsync on every platform."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def png_text_of(path: Path) -> dict[str, str]:
    """The text chunks of a PNG we saved (none for another format): what a plot's grid carries of its first cell."""
    with Image.open(path) as image:
        return {key: value for key, value in image.info.items() if isinstance(value, str)} \
            if image.format == "PNG" else {}


def png_info(text_chunks: dict[str, str] | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in (text_chunks or {}).items():
        info.add_text(key, value)  # falls back to an iTXt (UTF-8) chunk when the text is not Latin-1
    return info


def png_bytes(image: Image.Image, text_chunks: dict[str, str] | None = None) -> bytes:
    """`image` as the bytes of a PNG file carrying `text_chunks`, as save_png_atomic writes it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(text_chunks))
    return buffer.getvalue()


def save_png_atomic(
    image: Image.Image, path: Path, text_chunks: dict[str, str] | None = None, overwrite: bool = False
) -> Path:
    """Write `image` as a PNG with `text_chunks`, atomically; return the path actually written.

    The data goes to a hidden temp file in the same folder, is fsynced, then renamed into place, so
    a reader never sees a half-written PNG. Unless `overwrite`, an existing file is never replaced:
    the first free name among name_1.png, name_2.png, ... is taken. Failures raise ImageSaveError.
    """
    info = png_info(text_chunks)
    return _save_atomic(lambda stream: image.save(stream, format="PNG", pnginfo=info), Path(path), overwrite)


def save_image_atomic(image: Image.Image, path: Path, text_chunks: dict[str, str] | None = None,
                      overwrite: bool = False) -> Path:
    """As save_png_atomic, in the format the file's extension names: a .jpg, .jpeg or .webp (quality 95) carries the
    A1111 text in its EXIF UserComment, as A1111 saves one (its JSON has no place there); any other is a PNG."""
    kind = LOSSY_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        return save_png_atomic(image, path, text_chunks, overwrite)
    exif = Image.Exif()
    text = (text_chunks or {}).get(A1111_KEY)
    if text:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\0" + text.encode("utf-16-be")
    return _save_atomic(lambda stream: image.convert("RGB").save(stream, format=kind, quality=95,
                                                                 exif=exif.tobytes()), Path(path), overwrite)


def _save_atomic(write: Callable, path: Path, overwrite: bool) -> Path:
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp = _create_temp_file(path.parent, path.name)
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temp, path)
            final = path
        else:
            final = _publish_under_free_name(temp, path)
        _sync_folder(path.parent)
        return final
    except OSError as error:
        reason = error.strerror or str(error)
        raise ImageSaveError(f"Could not save the image to {path}: {reason}.") from error
    finally:
        if temp is not None:
            with suppress(OSError):
                temp.unlink(missing_ok=True)
