"""Upscale in tiles (A1111's SD upscale, Ultimate SD Upscale): the grid, the blend, and the job on the shipped demo
models (which make 48 to 128 px a side only, so their tiles are what lets them upscale past 128).

Each tile of the result is exactly the upscale tool run by hand on that part of the resampled image at the tile's
size; the blend gives back an image whose tiles are its own crops; outputs past what one pass fits in the memory
budget are made within it; bad tile settings are refused in one sentence before any step.
"""

import re
import threading

import numpy as np
import pytest
from PIL import Image

from mflux_core import cli
from mflux_core.errors import InvalidRequest
from mflux_core.events import Step, Stopped, stream
from mflux_core.images.io import save_png_atomic
from mflux_core.images.tiles import Tile, blend_tiles, tile_grid, tile_starts
from mflux_core.manager import ModelManager
from mflux_core.metadata import read_metadata_file, request_from_metadata
from mflux_core.request import GenerationRequest

PROMPT = "a red circle on a blue background"


@pytest.mark.parametrize("side, tile, overlap", [(256, 64, 16), (4096, 1024, 128), (1000, 512, 64), (80, 64, 16),
                                                 (64, 64, 16), (48, 64, 8), (1040, 1024, 0)])
def test_the_tiles_cover_each_side_sharing_at_least_the_overlap(side, tile, overlap):
    starts = tile_starts(side, tile, overlap)
    width = min(tile, side)
    assert starts[0] == 0 and starts[-1] + width == side
    shared = [before + width - after for before, after in zip(starts, starts[1:])]
    assert all(band >= overlap for band in shared)
    fewer = len(starts) - 1  # one tile less could not cover the side with that overlap
    assert fewer == 0 or fewer * width - (fewer - 1) * overlap < side


def test_tiles_that_are_crops_of_one_picture_blend_back_into_it():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 328, 3), np.uint8))
    tiles = tile_grid(328, 200, 128, 96, 40)
    assert len({(t.width, t.height) for t in tiles}) == 1 and len(tiles) == 4 * 3
    blended = blend_tiles(328, 200, tiles, [picture.crop(t.box) for t in tiles])
    assert np.array_equal(np.asarray(blended), np.asarray(picture))


def test_a_pixel_one_tile_covers_alone_is_that_tiles_and_a_shared_band_fades_from_one_to_the_other():
    tiles = [Tile(0, 0, 64, 32), Tile(48, 0, 64, 32)]
    dark, light = Image.new("RGB", (64, 32), (0, 0, 0)), Image.new("RGB", (64, 32), (240, 240, 240))
    row = np.asarray(blend_tiles(112, 32, tiles, [dark, light]))[5, :, 0].astype(int)
    assert (row[:48] == 0).all() and (row[64:] == 240).all()
    band = row[48:64]
    assert (np.diff(band) > 0).all() and band[0] < 15 and band[-1] > 225  # a ramp, no step


# ----- the job ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manager():
    return ModelManager()


@pytest.fixture(scope="module")
def small_image(manager, tmp_path_factory):
    image = manager.generate(GenerationRequest(model="demo", prompt=PROMPT, seed=3, steps=3, width=64,
                                               height=48)).image
    return save_png_atomic(image, tmp_path_factory.mktemp("tiles") / "small.png")


def tiled(small_image, **changes) -> GenerationRequest:
    settings = {"tool": "upscale", "model": "demo", "prompt": PROMPT, "seed": 5, "steps": 4, "width": 128,
                "height": 96, "image_path": str(small_image), "dtype": "float32",
                "extra": {"tile_size": 64, "tile_overlap": 16}}
    return GenerationRequest(**{**settings, **changes})


@pytest.mark.parametrize("upscaler", ["ControlNet upscaler", "Lanczos"])
def test_each_tile_is_the_upscale_tool_run_on_its_part_of_the_resampled_image(manager, small_image, tmp_path,
                                                                             upscaler):
    request = tiled(small_image, extra={"tile_size": 64, "tile_overlap": 16, "upscaler": upscaler})
    steps = []
    result = manager.generate(request, report=lambda e: steps.append(e) if isinstance(e, Step) else 0)
    assert result.image.size == (128, 96)
    resampled = Image.open(small_image).convert("RGB").resize((128, 96), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.before), np.asarray(resampled))
    tiles = tile_grid(128, 96, 64, 64, 16)
    assert [t.box[:2] for t in tiles] == [(x, y) for y in (0, 32) for x in (0, 32, 64)]
    by_hand = []
    for index, tile in enumerate(tiles):
        part = save_png_atomic(resampled.crop(tile.box), tmp_path / f"part{index}.png")
        by_hand.append(manager.generate(request.with_(width=64, height=64, image_path=str(part),
                                                      extra={"upscaler": upscaler}, image_strength=0.65)).image)
    assert np.array_equal(np.asarray(result.image), np.asarray(blend_tiles(128, 96, tiles, by_hand)))
    changed = np.abs(np.asarray(result.image, np.int16) - np.asarray(resampled, np.int16))
    assert changed.max() > 20  # the tiles were regenerated
    # image strength 0.65 of 4 steps runs the last 2 of each tile: counted across the six tiles
    assert [(e.step, e.total) for e in steps] == [(i, 12) for i in range(1, 13)]
    assert [e.stage for e in steps[::2]] == [f"tile {i} of 6" for i in range(1, 7)]
    assert {e.preview.size for e in steps} == {(128, 96)}  # each tile's preview shown in place on the whole
    assert (result.request.controlnet_strength is None) == (upscaler == "Lanczos")


def test_the_tiles_replay_from_the_metadata_and_name_themselves_in_the_a1111_text(manager, small_image, tmp_path):
    result = manager.generate(tiled(small_image, extra={"tile_size": 0}))  # 0: the model's own side (demo: 64)
    assert result.request.extra == {"tile_size": 64, "tile_overlap": 16}
    assert result.request.image_strength == 0.65 and result.request.controlnet_strength == 0.6
    text = result.text_chunks["parameters"]
    assert ("Size: 128x96, Model: demo, Denoising strength: 0.35, SD upscale overlap: 16, "
            "SD upscale upscaler: ControlNet upscaler, Tile size: 64") in text
    path = save_png_atomic(result.image, tmp_path / "tiled.png", result.text_chunks)
    replayed = manager.generate(request_from_metadata(read_metadata_file(path)))
    assert np.array_equal(np.asarray(replayed.image), np.asarray(result.image))


def test_tiles_can_be_oblong_as_a1111s_width_x_height_and_replay(manager, small_image, tmp_path):
    request = tiled(small_image, steps=2, extra={"tile_size": 96, "tile_height": 48, "upscaler": "Lanczos"})
    result = manager.generate(request)
    assert result.request.extra == {"tile_size": 96, "tile_height": 48, "tile_overlap": 16, "upscaler": "Lanczos"}
    assert "SD upscale upscaler: Lanczos, Tile size: 96x48" in result.text_chunks["parameters"]
    tiles = tile_grid(128, 96, 96, 48, 16)
    assert [t.box for t in tiles] == [(x, y, x + 96, y + 48) for y in (0, 24, 48) for x in (0, 32)]
    resampled = Image.open(small_image).convert("RGB").resize((128, 96), Image.Resampling.LANCZOS)
    by_hand = []
    for index, tile in enumerate(tiles):
        part = save_png_atomic(resampled.crop(tile.box), tmp_path / f"part{index}.png")
        by_hand.append(manager.generate(request.with_(width=96, height=48, image_path=str(part),
                                                      extra={"upscaler": "Lanczos"}, image_strength=0.65)).image)
    assert np.array_equal(np.asarray(result.image), np.asarray(blend_tiles(128, 96, tiles, by_hand)))
    path = save_png_atomic(result.image, tmp_path / "oblong.png", result.text_chunks)
    replayed = manager.generate(request_from_metadata(read_metadata_file(path)))
    assert np.array_equal(np.asarray(replayed.image), np.asarray(result.image))
    square = manager.generate(tiled(small_image, steps=1, extra={"tile_size": 64, "tile_height": 64}))
    assert square.request.extra == {"tile_size": 64, "tile_overlap": 16}  # as wide: the square tile as before


@pytest.mark.parametrize("extra, expected", [
    ({"tile_size": 40}, r"^The tile size 40 must be a multiple of 16 from 32 to 4096 px \(0: the model's own "
                        r"side\)\.$"),
    ({"tile_size": 64, "tile_overlap": 40}, r"^A tile overlap of 40 px is more than half the 64 px tile: use at most "
                                            r"32\.$"),
    ({"tile_size": 96, "tile_height": 48, "tile_overlap": 32}, r"^A tile overlap of 32 px is more than half the "
                                                               r"96x48 px tile's shorter side: use at most 24\.$"),
    ({"tile_size": 64, "tile_height": 20}, r"^The tile height 20 must be a multiple of 16 from 32 to 4096 px \(0: as "
                                           r"wide as the tile\)\.$"),
    ({"tile_size": 64.5}, r"^The tile size must be a whole number of pixels, 0 or more, not 64\.5\.$"),
    ({"tile_size": 256}, r"^demo makes 48x48 to 128x128 images only, so it has no 256x256 tiles: give a tile size it "
                         r"makes, or 0 for its own\.$"),
    ({"tile_size": 64, "upscaler": "ESRGAN"}, r"^The upscaler 'ESRGAN' is not one the studio has: use Lanczos, "
                                              r"ControlNet upscaler, or an upscaler model in the models folder's "
                                              r"upscalers/\.$"),
])
def test_bad_tile_settings_are_refused_in_one_sentence_before_any_step(manager, small_image, extra, expected):
    events = []
    with pytest.raises(InvalidRequest, match=expected):
        manager.generate(tiled(small_image, width=512, height=512, extra=extra), report=events.append)
    assert not [event for event in events if isinstance(event, Step)]


def test_stop_works_in_a_later_tile(manager, small_image):
    cancel = threading.Event()
    for event in stream(lambda report: manager.generate(tiled(small_image), report, cancel.is_set), cancel):
        if isinstance(event, Step) and event.stage == "tile 3 of 6":
            cancel.set()
    assert isinstance(event, Stopped) and re.match(r"Stopped after step \d of 4\.", event.message)
    assert not manager.status()["busy"]


def test_the_cli_takes_the_tile_flags_and_the_model_s_own_tile_bare(small_image, tmp_path, capsys):
    output = tmp_path / "big.png"
    assert cli.main(["upscale", "--model", "demo", "--prompt", PROMPT, "--image-path", str(small_image),
                     "--upscale-factor", "4", "--tile-size", "--tile-overlap", "24", "--upscaler", "Lanczos",
                     "--image-strength", "0.7", "--steps", "2", "--output", str(output)]) == 0
    with Image.open(output) as image:
        assert image.size == (256, 192)  # past what the demo makes in one piece
        assert "Denoising strength: 0.3, SD upscale overlap: 24, SD upscale upscaler: Lanczos, Tile size: 64" in \
            image.info["parameters"]
    assert cli.main(["upscale", "--model", "demo", "--prompt", PROMPT, "--image-path", str(small_image),
                     "--tile-size", "96", "--tile-height", "48", "--steps", "1", "--output", str(output)]) == 0
    with Image.open(tmp_path / "big_1.png") as image:  # beside the first: the CLI never overwrites, as mflux
        assert image.size == (128, 96) and "Tile size: 96x48" in image.info["parameters"]
    assert cli.main(["upscale", "--model", "demo", "--prompt", PROMPT, "--image-path", str(small_image),
                     "--tile-size", "100", "--output", str(tmp_path / "no.png")]) == 1
    assert "The tile size 100 must be a multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()
