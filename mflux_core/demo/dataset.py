"""Training and evaluation examples for every demo tool, drawn from procedural scenes.

Every example is a pure function of (seed, index), so a training run can be resumed at any step
and a rerun sees the same data. About a tenth of all (colour, shape, region, background)
combinations are held out of training (`is_held_out`) so that evaluation uses captions the
models have never seen.
"""

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mflux_core.demo.shapes import (
    COLOURS, REGION_NAMES, SHAPES, Scene, Shape, box_mask, caption, depth_map, random_scene, random_shape, render,
    with_shape,
)
from mflux_core.images.canny import canny_edges
from mflux_core.images.resize_modes import DEFAULT_RESIZE_MODE, RESAMPLE, resize_to

HELD_OUT_PERCENT = 10


def is_held_out(shape: Shape, background: str) -> bool:
    """A fixed tenth of the combinations of colour, shape, region and background."""
    key = f"{shape.colour}|{shape.kind}|{shape.region}|{background}".encode()
    return zlib.crc32(key) % 100 < HELD_OUT_PERCENT


def example_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def sample_scene(rng: np.random.Generator, held_out: bool, **choices) -> Scene:
    """A one-shape scene from the training split (held_out=False) or the held-out split."""
    while True:
        scene = random_scene(rng, **choices)
        if is_held_out(scene.shapes[0], scene.background) == held_out:
            return scene


@dataclass(frozen=True)
class TextToImageExample:
    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    scene: Scene


@dataclass(frozen=True)
class FillExample:
    source: np.ndarray  # the image before, (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, True = regenerate
    target: np.ndarray  # the image after: equal to source outside the mask
    caption: str  # describes the target
    scene: Scene  # the target scene


@dataclass(frozen=True)
class ControlExample:
    control: np.ndarray  # (H, W, 3) uint8: a depth map or canny edges
    image: np.ndarray
    caption: str
    scene: Scene


@dataclass(frozen=True)
class KontextExample:
    before: np.ndarray
    after: np.ndarray
    instruction: str
    kind: str  # "colour", "move" or "background"
    before_scene: Scene
    after_scene: Scene


def text_to_image_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                          height: int | None = None) -> TextToImageExample:
    """A scene and its caption; one caption in five leaves out the region or the background."""
    rng = example_rng(seed, index)
    scene = sample_scene(rng, held_out)
    drop = rng.integers(10)
    text = caption(scene, with_region=drop != 0, with_background=drop != 1)
    return TextToImageExample(render(scene, width, height), text, scene)


def fill_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                 height: int | None = None) -> FillExample:
    """Recolour (or reshape) the shape inside a box around it; the caption describes the result."""
    rng = example_rng(seed, index)
    while True:
        before = sample_scene(rng, held_out=False)
        shape = before.shapes[0]
        if rng.random() < 0.75:
            colours = [c for c in COLOURS if c not in (shape.colour, before.background)]
            after = with_shape(before, 0, colour=str(rng.choice(colours)))
        else:
            after = with_shape(before, 0, kind=str(rng.choice([k for k in SHAPES if k != shape.kind])))
        if is_held_out(after.shapes[0], after.background) == held_out:
            break
    mask = box_mask(shape, width, float(rng.uniform(0.03, 0.08)), height)
    source, target = render(before, width, height), render(after, width, height)
    target = np.where(mask[..., None], target, source)
    return FillExample(source, mask, target, caption(after), after)


@dataclass(frozen=True)
class TryOnExample:
    garment: np.ndarray  # the garment: one shape in the centre, (H, W, 3) uint8
    person: np.ndarray  # the scene that puts it on
    mask: np.ndarray  # (H, W) bool: a box around the person's shape, True = regenerate
    target: np.ndarray  # the person wearing it: the garment's shape inside the mask, the person outside
    scene: Scene  # the target scene


def try_on_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                   height: int | None = None) -> TryOnExample:
    """CatVTON's pairs in the shapes world: a garment picture (a shape alone in the centre) and a scene whose
    shape, inside a box around it, takes the garment's colour and kind."""
    rng = example_rng(seed, index)
    while True:
        person = sample_scene(rng, held_out=False)
        shape = person.shapes[0]
        colour = str(rng.choice([c for c in COLOURS if c not in (shape.colour, person.background)]))
        after = with_shape(person, 0, colour=colour, kind=str(rng.choice(SHAPES)))
        if is_held_out(after.shapes[0], after.background) == held_out:
            break
    garment_background = str(rng.choice([c for c in COLOURS if c != colour]))
    garment = Scene(garment_background, (random_shape(rng, colour=colour, kind=after.shapes[0].kind,
                                                      region="centre"),))
    mask = box_mask(shape, width, float(rng.uniform(0.03, 0.08)), height)
    source = render(person, width, height)
    target = np.where(mask[..., None], render(after, width, height), source)
    return TryOnExample(render(garment, width, height), source, mask, target, after)


def depth_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                  height: int | None = None) -> ControlExample:
    """A depth map of a scene and the scene; the caption names colours and shape, not the place."""
    rng = example_rng(seed, index)
    scene = sample_scene(rng, held_out)
    return ControlExample(depth_map(scene, width, height), render(scene, width, height),
                          caption(scene, with_region=False), scene)


def canny_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                  height: int | None = None) -> ControlExample:
    """Canny edges of a scene and the scene (the canny ControlNet's pairs), with the ControlNet tool's
    default thresholds: what the tool makes of the same picture (a faint outline may vanish)."""
    rng = example_rng(seed, index)
    scene = sample_scene(rng, held_out)
    image = render(scene, width, height)
    edges = np.asarray(canny_edges(Image.fromarray(image)).convert("RGB"))
    return ControlExample(edges, image, caption(scene, with_region=False), scene)


UPSCALE_INPUT_SIDES = (8, 16, 32)  # the low-resolution pictures the demo upscaler learns from: 8x, 4x and 2x


def low_resolution(image: np.ndarray, side: int) -> Image.Image:
    """`image` shrunk so that its shorter side is `side` (what a user would upscale)."""
    height, width = image.shape[:2]
    short = min(width, height)
    return Image.fromarray(image).resize((width * side // short, height * side // short), RESAMPLE)


def upscaled_control(image: np.ndarray, side: int) -> np.ndarray:
    """`image` shrunk to `side` (low_resolution), then brought back to its own size as the Upscale tool brings
    its input to the output size: what the upscaler ControlNet sees (and what a plain Lanczos upscale gives)."""
    return np.asarray(resize_to(low_resolution(image, side), image.shape[1], image.shape[0], DEFAULT_RESIZE_MODE))


def upscale_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                    height: int | None = None) -> ControlExample:
    """A scene upscaled by Lanczos from a shorter side of 8, 16 or 32 and the true scene (the upscaler ControlNet's pairs)."""
    rng = example_rng(seed, index)
    scene = sample_scene(rng, held_out)
    image = render(scene, width, height)
    side = int(rng.choice(UPSCALE_INPUT_SIDES))
    return ControlExample(upscaled_control(image, side), image, caption(scene, with_region=False), scene)


def kontext_example(seed: int, index: int, width: int = 64, held_out: bool = False,
                    height: int | None = None) -> KontextExample:
    """A before/after pair and the instruction that turns one into the other."""
    rng = example_rng(seed, index)
    while True:
        before = sample_scene(rng, held_out=False)
        shape = before.shapes[0]
        kind = ("colour", "move", "background")[int(rng.integers(3))]
        if kind == "colour":
            colour = str(rng.choice([c for c in COLOURS if c not in (shape.colour, before.background)]))
            after = with_shape(before, 0, colour=colour)
            instruction = f"make the {shape.kind} {colour}"
        elif kind == "move":
            region = str(rng.choice([r for r in REGION_NAMES if r != shape.region]))
            placed = random_shape(rng, colour=shape.colour, kind=shape.kind, region=region)
            bounds = (shape.size + 0.02, 0.98 - shape.size)
            after = with_shape(before, 0, cx=float(np.clip(placed.cx, *bounds)), cy=float(np.clip(placed.cy, *bounds)))
            instruction = f"move the {shape.kind} to the {region}"
        else:
            colour = str(rng.choice([c for c in COLOURS if c not in (shape.colour, before.background)]))
            after = Scene(colour, before.shapes)
            instruction = f"make the background {colour}"
        if is_held_out(after.shapes[0], after.background) == held_out:
            return KontextExample(render(before, width, height), render(after, width, height), instruction, kind,
                                  before, after)
