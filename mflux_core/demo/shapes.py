"""Procedural scenes of coloured shapes: the world the demo models are trained on.

A scene is a solid background with one or two shapes (circle, square, triangle, star), each with a
colour from a dozen, a centre inside one of nine regions (a 3x3 grid) and a size. Rendering is
numpy only: 4x supersampled coverage, so edges are anti-aliased and masks are exact.
"""

from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 180), "pink": (245, 150, 200), "brown": (130, 80, 40),
    "black": (20, 20, 20), "white": (240, 240, 240), "grey": (128, 128, 128), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star")
# Regions of a 3x3 grid, row-major, with the phrase a caption uses for each.
REGIONS = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
REGION_NAMES = tuple(REGIONS)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # a key of COLOURS
    cx: float  # centre, as a fraction of the image width / height
    cy: float
    size: float  # half-extent as a fraction of the image side

    @property
    def region(self) -> str:
        return region_of(self.cx, self.cy)


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


def region_of(x: float, y: float) -> str:
    """The region name of a point given as fractions of the image (x right, y down)."""
    column = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    return REGION_NAMES[3 * row + column]


def region_centre(region: str) -> tuple[float, float]:
    index = REGION_NAMES.index(region)
    return ((index % 3) + 0.5) / 3, ((index // 3) + 0.5) / 3


# --- sampling ---------------------------------------------------------------------------------


def random_shape(rng: np.random.Generator, colour: str | None = None, kind: str | None = None,
                 region: str | None = None, exclude_colours: tuple[str, ...] = ()) -> Shape:
    """A shape whose centre lies well inside its region and whose body stays inside the image."""
    if colour is None:
        colour = str(rng.choice([c for c in COLOURS if c not in exclude_colours]))
    kind = kind or str(rng.choice(SHAPES))
    region = region or str(rng.choice(REGION_NAMES))
    size = float(rng.uniform(0.10, 0.16))
    centre_x, centre_y = region_centre(region)
    jitter = 1 / 3 * 0.3
    cx = float(np.clip(centre_x + rng.uniform(-jitter, jitter), size + 0.02, 0.98 - size))
    cy = float(np.clip(centre_y + rng.uniform(-jitter, jitter), size + 0.02, 0.98 - size))
    return Shape(kind, colour, cx, cy, size)


def random_scene(rng: np.random.Generator, background: str | None = None, **shape_choices) -> Scene:
    """One shape on a background of another colour."""
    background = background or str(rng.choice(list(COLOURS)))
    shape = random_shape(rng, exclude_colours=(background,), **shape_choices)
    return Scene(background, (shape,))


def with_shape(scene: Scene, index: int, **changes) -> Scene:
    shapes = list(scene.shapes)
    shapes[index] = replace(shapes[index], **changes)
    return Scene(scene.background, tuple(shapes))


# --- rendering --------------------------------------------------------------------------------


def _star_polygon(shape: Shape) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * shape.size * 1.15
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _triangle_polygon(shape: Shape) -> np.ndarray:
    s = shape.size * 1.1
    return np.array([[0.0, -s], [s, 0.8 * s], [-s, 0.8 * s]])


def _inside_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule over the polygon's edges."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _inside(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether offsets (u, v) from the shape's centre, in units of the image's shorter side, lie inside it."""
    if shape.kind == "circle":
        return u**2 + v**2 <= shape.size**2
    if shape.kind == "square":
        s = shape.size * 0.9
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    if shape.kind == "triangle":
        return _inside_polygon(u, v, _triangle_polygon(shape))
    if shape.kind == "star":
        return _inside_polygon(u, v, _star_polygon(shape))
    raise ValueError(f"Unknown shape {shape.kind!r}.")


def _pixel_centres(width: int, height: int, samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(height * samples, width * samples) x and y of sample points, as fractions of the image."""
    xs = (np.arange(width * samples, dtype=np.float32) + 0.5) / (width * samples)
    ys = (np.arange(height * samples, dtype=np.float32) + 0.5) / (height * samples)
    return np.meshgrid(xs, ys)


def _offsets(shape: Shape, x: np.ndarray, y: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of image fractions (x, y) from the shape's centre in units of the shorter side: a shape keeps
    its proportions (a circle stays round) on any aspect, its size a fraction of the shorter side."""
    short = min(width, height)
    return (x - shape.cx) * (width / short), (y - shape.cy) * (height / short)


def coverage(shape: Shape, width: int, height: int | None = None) -> np.ndarray:
    """(height, width) float32 fraction of each pixel the shape covers (4x4 samples per pixel); height
    defaults to width."""
    height = height or width
    x, y = _pixel_centres(width, height, SUPERSAMPLE)
    covered = _inside(shape, *_offsets(shape, x, y, width, height)).astype(np.float32)
    return covered.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))


def shape_mask(shape: Shape, width: int, height: int | None = None) -> np.ndarray:
    """(height, width) bool: pixels at least half covered by the shape."""
    return coverage(shape, width, height) >= 0.5


def render(scene: Scene, width: int, height: int | None = None) -> np.ndarray:
    """(height, width, 3) uint8 RGB; later shapes are drawn over earlier ones."""
    height = height or width
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = COLOURS[scene.background]
    for shape in scene.shapes:
        alpha = coverage(shape, width, height)[..., None]
        image = image * (1 - alpha) + np.array(COLOURS[shape.colour], np.float32) * alpha
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def depth_map(scene: Scene, width: int, height: int | None = None) -> np.ndarray:
    """(height, width, 3) uint8 depth image, near = bright: the floor is dark, each shape a raised block
    (circles raised discs with a rounded top), later shapes nearer."""
    height = height or width
    depth = np.full((height, width), 30.0, dtype=np.float32)
    x, y = _pixel_centres(width, height)
    for index, shape in enumerate(scene.shapes):
        alpha = coverage(shape, width, height)
        level = 170.0 + 40.0 * index
        if shape.kind == "circle":
            u, v = _offsets(shape, x, y, width, height)
            distance = np.sqrt(u**2 + v**2) / shape.size
            level = level + 40.0 * np.sqrt(np.clip(1 - distance**2, 0, 1))
        depth = depth * (1 - alpha) + level * alpha
    gray = np.clip(np.round(depth), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def box_mask(shape: Shape, width: int, margin: float, height: int | None = None) -> np.ndarray:
    """(height, width) bool: the shape's bounding square grown by `margin` (both in units of the shorter side)."""
    height = height or width
    extent = shape.size * 1.2 + margin
    u, v = _offsets(shape, *_pixel_centres(width, height), width, height)
    return (np.abs(u) <= extent) & (np.abs(v) <= extent)


# --- captions ---------------------------------------------------------------------------------


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def shape_phrase(shape: Shape, with_region: bool = True) -> str:
    phrase = f"{article(shape.colour)} {shape.colour} {shape.kind}"
    return f"{phrase} {REGIONS[shape.region]}" if with_region else phrase


def caption(scene: Scene, with_region: bool = True, with_background: bool = True) -> str:
    """'a red circle in the top left on a blue background' (parts can be left out)."""
    text = " and ".join(shape_phrase(s, with_region) for s in scene.shapes)
    return f"{text} on {article(scene.background)} {scene.background} background" if with_background else text
