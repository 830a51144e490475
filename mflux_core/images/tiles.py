"""Tiles of a large image (A1111's SD upscale, Ultimate SD Upscale): a grid of equal tiles that overlap, each
regenerated on its own, then blended back into one image.

Tiles are spread evenly over each side, as A1111's split_grid spreads them: as few as cover the side with at least
`overlap` pixels shared between neighbours. The blend is written here rather than taken from A1111 (whose
combine_grid fades one neighbour over the other in a fixed band) because our tiles may share more than `overlap`
pixels: each tile's weight ramps linearly across the whole band it shares with a neighbour, and the weights are
normalised, so a pixel that one tile covers alone is that tile's pixel exactly and no seam is a step.
"""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Tile:
    left: int
    top: int
    width: int
    height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.left + self.width, self.top + self.height


def tile_starts(side: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start: the fewest tiles of `tile` pixels (the whole side when it is shorter)
    that cover `side` with neighbours sharing at least `overlap` pixels, spread evenly, the last ending at the edge."""
    if tile >= side:
        return [0]
    count = math.ceil((side - overlap) / (tile - overlap))
    return [round(index * (side - tile) / (count - 1)) for index in range(count)]


def tile_grid(width: int, height: int, tile_width: int, tile_height: int, overlap: int) -> list[Tile]:
    """The grid's tiles, row by row, each min(tile, side) wide and high."""
    tile_width, tile_height = min(tile_width, width), min(tile_height, height)
    return [Tile(left, top, tile_width, tile_height)
            for top in tile_starts(height, tile_height, overlap)
            for left in tile_starts(width, tile_width, overlap)]


def edge_ramp(length: int, before: int, after: int) -> np.ndarray:
    """A tile's weights along one side: rising over the `before` pixels it shares with the previous tile, falling
    over the `after` pixels it shares with the next, 1 between. Half-pixel centred, so two neighbours' ramps over
    the same band add up to 1."""
    ramp = np.ones(length, np.float32)
    positions = np.arange(length, dtype=np.float32) + 0.5
    if before:
        ramp = np.minimum(ramp, positions / before)
    if after:
        ramp = np.minimum(ramp, (length - positions) / after)
    return ramp


def shared_bands(starts: list[int], length: int) -> list[tuple[int, int]]:
    """(before, after) of each tile along a side: the pixels it shares with its previous and next neighbour."""
    shared = [max(0, start + length - following) for start, following in zip(starts, starts[1:])]
    return list(zip([0, *shared], [*shared, 0]))


def blend_bytes(width: int, height: int) -> int:
    """What blend_tiles holds at its peak for a width x height image: float32 sums and weights, the uint8 result."""
    return width * height * (4 * 4 + 3)


def blend_tiles(width: int, height: int, tiles: list[Tile], images: list[Image.Image]) -> Image.Image:
    """The tiles' images (each at its tile's size) blended into one RGB image of width x height."""
    lefts, tops = sorted({tile.left for tile in tiles}), sorted({tile.top for tile in tiles})
    tile_width, tile_height = tiles[0].width, tiles[0].height
    across = dict(zip(lefts, shared_bands(lefts, tile_width)))
    down = dict(zip(tops, shared_bands(tops, tile_height)))
    total = np.zeros((height, width, 3), np.float32)
    weights = np.zeros((height, width, 1), np.float32)
    for tile, image in zip(tiles, images):
        weight = np.outer(edge_ramp(tile_height, *down[tile.top]), edge_ramp(tile_width, *across[tile.left]))[..., None]
        rows, columns = slice(tile.top, tile.top + tile.height), slice(tile.left, tile.left + tile.width)
        total[rows, columns] += weight * np.asarray(image.convert("RGB"), np.float32)
        weights[rows, columns] += weight
    return Image.fromarray(np.clip(np.rint(total / weights), 0, 255).astype(np.uint8))
