"""Image utilities: loading what users drop, diffusers-exact pixel conversion, atomic PNG saving,
masks, outpainting canvases and the Canny edge detector. Real files are written to tmp_path."""

import errno
import math
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageDraw, ImageFile

from mflux_core.errors import InvalidRequest, StudioError
from mflux_core.images import canny, io
from mflux_core.images.io import load_image, load_mask, pil_to_pixels, pixels_to_pil, save_png_atomic
from mflux_core.images.masks import (
    binarize_mask,
    blur_mask,
    filled_from_surroundings,
    describe_mask_note,
    describe_mask_problem,
    distance_to_mask,
    feathered_paste,
    fit_mask_to_image,
    grow_mask,
    invert_mask,
    mask_from_editor_layers,
)
from mflux_core.images.outpaint import Padding, outpaint_canvas, parse_padding
from tests.fixtures.photos import textured_photo


def noise_image(width, height, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4}[mode]
    values = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(values, mode)


def brute_force_distance(mask):
    """Euclidean distance from every pixel to the nearest True pixel, the slow obvious way."""
    ys, xs = np.nonzero(mask)
    grid_y, grid_x = np.mgrid[: mask.shape[0], : mask.shape[1]]
    squared = (grid_y[..., None] - ys) ** 2 + (grid_x[..., None] - xs) ** 2
    return np.sqrt(squared.min(axis=-1))


def png_claiming_size(path, width, height):
    """A tiny PNG whose header claims a huge size; Pillow reads the header before any pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------- loading


def test_load_image_plain_png_round_trips(tmp_path):
    image = noise_image(23, 17)
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB" and loaded.size == (23, 17)
    assert np.array_equal(np.asarray(loaded), np.asarray(image))
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "a.png"))), np.asarray(image))


@pytest.mark.parametrize("format_name, suffix", [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif")])
@pytest.mark.parametrize("load_truncated_flag", [False, True])
def test_truncated_files_are_refused_even_if_pillow_is_told_to_accept_them(
    tmp_path, monkeypatch, format_name, suffix, load_truncated_flag
):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated_flag)
    path = tmp_path / f"cut.{suffix}"
    noise_image(64, 48).save(path, format=format_name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidRequest, match="cut") as caught:
        load_image(path)
    assert "truncated or damaged" in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated_flag  # the global is restored


def test_empty_missing_folder_and_non_image_files_raise_a_sentence_naming_them(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    (tmp_path / "folder.png").mkdir()
    cases = {
        "empty.png": "is empty",
        "notes.png": "is not an image",
        "folder.png": "is a folder",
        "missing.png": "does not exist",
    }
    for name, problem in cases.items():
        with pytest.raises(InvalidRequest) as caught:
            load_image(tmp_path / name)
        message = str(caught.value)
        assert name in message and problem in message and message.endswith(".")


def test_decompression_bombs_are_refused(tmp_path):
    over_pillow_limit = png_claiming_size(tmp_path / "huge.png", 100_000, 100_000)
    over_our_limit = png_claiming_size(tmp_path / "big.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for path in (over_pillow_limit, over_our_limit):
            with pytest.raises(InvalidRequest, match="too large") as caught:
                load_image(path)
            assert path.name in str(caught.value)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "print.jpg", quality=95)
    loaded = np.asarray(load_image(tmp_path / "print.jpg")).astype(int)
    assert loaded.shape == (8, 16, 3)
    assert np.abs(loaded - [255, 0, 0]).max() <= 6  # pure red, up to JPEG's rounding


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    assert loaded.shape == (1, 4, 3)
    assert loaded[0, :, 0].tolist() == [0, 100, 128, 255]
    assert np.asarray(load_mask(tmp_path / "deep.png")).tolist() == [[0, 100, 128, 255]]


def test_thirty_two_bit_integer_images_with_sixteen_bit_values_are_scaled():
    image = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert np.asarray(load_image(image))[0, :, 0].tolist() == [0, 255]


def test_palette_png_with_transparency_is_composited_over_white(tmp_path):
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    palette_image.save(tmp_path / "pal.png", transparency=0)
    loaded = np.asarray(load_image(tmp_path / "pal.png"))
    assert loaded[0, 1].tolist() == [200, 0, 0]
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[1, 3].tolist() == [255, 255, 255]


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([rgba[..., 0], rgba[..., 3]], -1), "LA").save(tmp_path / "la.png")
    rgb = np.asarray(load_image(tmp_path / "rgba.png")).astype(int)
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert np.abs(rgb[1, 0] - [228, 127, 127]).max() <= 1  # 200*a + 255*(1-a), a = 128/255
    gray = np.asarray(load_image(tmp_path / "la.png")).astype(int)
    assert gray[0, 0].tolist() == [200] * 3 and gray[0, 1].tolist() == [255] * 3


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = [255, 0, 0]  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    loaded = np.asarray(load_image(tmp_path / "phone.jpg")).astype(int)
    assert loaded.shape == (40, 20, 3)
    assert loaded[:18, :, 0].min() > 200 and loaded[22:, :, 0].max() < 50  # the left half is now on top


@pytest.mark.parametrize("suffix", ["gif", "webp"])
def test_animated_files_give_their_first_frame(tmp_path, suffix):
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    path = tmp_path / f"anim.{suffix}"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0, lossless=True)
    assert getattr(Image.open(path), "n_frames", 1) == 2
    assert np.asarray(load_image(path))[4, 4].tolist() == [255, 0, 0]


def test_one_pixel_images_load(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    loaded = load_image(tmp_path / "dot.png")
    assert loaded.size == (1, 1) and loaded.getpixel((0, 0)) == (1, 2, 3)


def test_pil_input_is_converted_and_not_modified():
    rgba = noise_image(5, 4, mode="RGBA")
    before = np.asarray(rgba).copy()
    loaded = load_image(rgba)
    assert loaded.mode == "RGB" and loaded is not rgba
    assert np.array_equal(np.asarray(rgba), before)


def test_load_mask_reads_alpha_when_it_varies_as_a1111_does(tmp_path):
    alpha = np.array([[0, 255], [255, 40]], dtype=np.uint8)
    sheet = np.zeros((2, 2, 4), dtype=np.uint8)
    sheet[..., 3] = alpha
    Image.fromarray(sheet, "RGBA").save(tmp_path / "alpha_mask.png")
    assert np.array_equal(np.asarray(load_mask(tmp_path / "alpha_mask.png")), alpha)

    for colour, sheet_colour in (((255, 255, 255), (0, 0, 0)), ((200, 0, 0), (0, 0, 0)), ((0, 0, 0), (255, 255, 255)),
                                 ((0, 0, 255), (255, 255, 255))):  # strokes of any colour on a transparent sheet
        strokes = np.zeros((2, 2, 4), dtype=np.uint8)
        strokes[..., :3] = sheet_colour
        strokes[0, 1] = [*colour, 255]
        strokes[1, 0] = [*colour, 128]  # a soft brush's edge
        Image.fromarray(strokes, "RGBA").save(tmp_path / "strokes.png")
        assert np.asarray(load_mask(tmp_path / "strokes.png")).tolist() == [[0, 255], [128, 0]], colour

    plain = np.array([[0, 255], [128, 0]], dtype=np.uint8)
    Image.fromarray(np.stack([plain] * 3, -1)).save(tmp_path / "rgb_mask.png")
    mask = load_mask(tmp_path / "rgb_mask.png")
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), plain)


# ---------------------------------------------------------------- pixels, exactly as diffusers


@pytest.mark.parametrize("source_size", [(50, 37), (64, 48)])
def test_pil_to_pixels_matches_diffusers_preprocess_bit_for_bit(source_size):
    image = noise_image(*source_size, seed=3)
    reference = VaeImageProcessor(vae_scale_factor=16).preprocess(image, height=48, width=64)
    ours = pil_to_pixels(image, width=64, height=48)
    assert ours.dtype == np.float32 and ours.shape == (1, 48, 64, 3)
    assert np.array_equal(ours, reference.permute(0, 2, 3, 1).numpy())


def test_pixels_to_pil_matches_diffusers_postprocess_bit_for_bit():
    rng = np.random.default_rng(4)
    pixels = rng.uniform(-1.2, 1.2, (1, 24, 32, 3)).astype(np.float32)
    pixels[0, 0, :6, 0] = [-1.0, 1.0, 0.0, 1 / 255, -1 / 255, 3 / 255]  # rounding boundaries
    reference = VaeImageProcessor(vae_scale_factor=16).postprocess(
        torch.from_numpy(pixels).permute(0, 3, 1, 2), output_type="pil"
    )[0]
    ours = pixels_to_pil(pixels)
    assert ours.mode == "RGB" and np.array_equal(np.asarray(ours), np.asarray(reference))


# ---------------------------------------------------------------- atomic PNG saving


def leftover_temp_files(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_save_png_atomic_writes_text_chunks_and_never_overwrites(tmp_path):
    target = tmp_path / "out" / "image.png"
    chunks = {"parameters": "a cat, Steps: 4", "mflux": '{"prompt": "café ☕"}'}
    first = save_png_atomic(noise_image(8, 8, seed=1), target, text_chunks=chunks)
    second = save_png_atomic(noise_image(8, 8, seed=2), target)
    third = save_png_atomic(noise_image(8, 8, seed=3), target)
    assert (first, second, third) == (target, target.with_name("image_1.png"), target.with_name("image_2.png"))
    with Image.open(first) as saved:
        assert saved.text == chunks
        assert np.array_equal(np.asarray(saved), np.asarray(noise_image(8, 8, seed=1)))
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(noise_image(8, 8, seed=2)))
    assert leftover_temp_files(target.parent) == []


def test_save_png_atomic_overwrites_only_when_asked(tmp_path):
    target = tmp_path / "image.png"
    save_png_atomic(noise_image(8, 8, seed=1), target)
    assert save_png_atomic(noise_image(8, 8, seed=2), target, overwrite=True) == target
    assert np.array_equal(np.asarray(Image.open(target)), np.asarray(noise_image(8, 8, seed=2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


def test_concurrent_writers_never_take_the_same_name(tmp_path):
    target = tmp_path / "same.png"
    results, barrier = [], threading.Barrier(8)

    def write(seed):
        barrier.wait()
        results.append(save_png_atomic(noise_image(16, 16, seed=seed), target))

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 8 and all(path.exists() for path in results)
    assert leftover_temp_files(tmp_path) == []


def test_a_failed_write_leaves_no_temp_file_and_says_why(tmp_path, monkeypatch):
    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", disk_full)
    with pytest.raises(StudioError, match="No space left on device") as caught:
        save_png_atomic(noise_image(8, 8), tmp_path / "image.png")
    assert "image.png" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_png_encode_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(io.ImageSaveError, match="Input/output error"):
        save_png_atomic(noise_image(8, 8), tmp_path / "image.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- masks


def test_binarize_mask_accepts_images_and_arrays():
    levels = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    expected = [[False, False, True, True]]
    assert binarize_mask(Image.fromarray(levels, "L")).tolist() == expected
    assert binarize_mask(levels).tolist() == expected
    assert binarize_mask(levels[..., None]).tolist() == expected
    assert binarize_mask(levels / 255.0).tolist() == expected
    assert binarize_mask(np.array([[True, False]])).tolist() == [[True, False]]
    assert binarize_mask(levels, threshold=0.9).tolist() == [[False, False, False, True]]


def test_fit_mask_to_image_resizes_with_nearest_and_says_so():
    mask = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), "L")
    same, note = fit_mask_to_image(mask, (2, 2))
    assert same is mask and note is None
    fitted, note = fit_mask_to_image(mask, (4, 6))
    assert fitted.size == (4, 6) and set(np.unique(np.asarray(fitted))) == {0, 255}
    assert "2x2" in note and "4x6" in note and "resized" in note
    fitted_array, _ = fit_mask_to_image(np.array([[True, False]]), (4, 1))
    assert fitted_array.tolist() == [[True, True, False, False]]


def test_invert_mask_keeps_the_kind():
    assert invert_mask(np.array([[True, False]])).tolist() == [[False, True]]
    assert invert_mask(np.array([[0, 200]], dtype=np.uint8)).tolist() == [[255, 55]]
    inverted = invert_mask(Image.fromarray(np.array([[0, 255]], dtype=np.uint8), "L"))
    assert np.asarray(inverted).tolist() == [[255, 0]]


def test_distance_to_mask_is_exact_up_to_its_limit():
    mask = np.random.default_rng(5).random((40, 50)) > 0.995
    mask[0, 0] = True
    exact = brute_force_distance(mask)
    ours = distance_to_mask(mask, 9)
    near = exact <= 9
    assert np.allclose(ours[near], exact[near], rtol=0, atol=1e-5)
    assert np.all(np.isinf(ours[~near]))


def test_grow_mask_grows_by_a_disc_and_shrinks_with_negative_pixels():
    mask = np.zeros((21, 21), dtype=bool)
    mask[10, 10] = True
    grown = grow_mask(mask, 4)
    assert np.array_equal(grown, brute_force_distance(mask) <= 4)
    assert grown[10, 6] and not grown[10, 5] and not grown[7, 7]  # (3, 3) is 4.24 away

    square = np.zeros((30, 30), dtype=bool)
    square[5:25, 5:25] = True
    assert np.array_equal(grow_mask(square, -3), np.pad(np.ones((14, 14), bool), 8))
    assert np.array_equal(grow_mask(square, 0), square)
    assert grow_mask(np.ones((6, 6), bool), -2).all()  # the picture's border is not an edge


def test_blur_mask_is_a_soft_mask_in_unit_range():
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, 16:] = True
    soft = blur_mask(mask, 2.0)
    assert soft.dtype == np.float32 and soft.min() >= 0.0 and soft.max() <= 1.0
    assert soft[0, 0] == 0.0 and soft[0, -1] == pytest.approx(1.0)
    assert 0.0 < soft[5, 15] < 0.5 < soft[5, 16] < 1.0
    assert np.allclose(soft[:, 15] + soft[:, 16], 1.0, atol=1e-6)  # symmetric about the edge


@pytest.mark.parametrize("radius", [0.7, 2.0, 5.5])
def test_blur_mask_is_a_gaussian_cut_at_three_sigma_with_the_border_repeated(radius):
    mask = np.random.default_rng(9).random((30, 41)) > 0.6
    reach = math.ceil(3 * radius)
    kernel = np.exp(-0.5 * (np.arange(-reach, reach + 1) / radius) ** 2)
    expected = np.pad(mask.astype(np.float64), reach, mode="edge")
    for axis in (0, 1):
        expected = np.apply_along_axis(np.convolve, axis, expected, kernel / kernel.sum(), mode="valid")
    assert np.allclose(blur_mask(mask, radius), expected, rtol=0, atol=1e-6)
    assert np.array_equal(blur_mask(mask, 0), mask.astype(np.float32))


def test_an_empty_mask_is_infinitely_far_and_grows_to_nothing():
    empty = np.zeros((12, 9), dtype=bool)
    assert np.isinf(distance_to_mask(empty, 5)).all()
    assert not grow_mask(empty, 3).any()


@pytest.mark.parametrize("feather_px", [0, 3, 7])
def test_feathered_paste_keeps_the_original_exactly_beyond_the_feather(feather_px):
    original, generated = noise_image(48, 40, seed=6), noise_image(48, 40, seed=7)
    mask = np.zeros((40, 48), dtype=bool)
    mask[12:25, 15:30] = True
    mask[30, 40] = True
    pasted = np.asarray(feathered_paste(original, generated, mask, feather_px)).astype(int)
    before, after = np.asarray(original).astype(int), np.asarray(generated).astype(int)
    distance = brute_force_distance(mask)
    far = distance > feather_px
    assert np.array_equal(pasted[far], before[far])
    assert np.array_equal(pasted[mask], after[mask])
    between = ~far & ~mask
    low, high = np.minimum(before, after), np.maximum(before, after)
    assert np.all((pasted[between] >= low[between]) & (pasted[between] <= high[between]))
    if feather_px:
        assert np.any(pasted[between] != before[between])


def test_mask_from_editor_layers_is_the_union_of_painted_pixels():
    first, second = Image.new("RGBA", (6, 4), (0, 0, 0, 0)), Image.new("RGBA", (6, 4), (0, 0, 0, 0))
    first.putpixel((1, 1), (255, 255, 255, 255))
    second.putpixel((4, 2), (10, 10, 10, 1))
    union = mask_from_editor_layers([first, None, second])
    assert union.shape == (4, 6) and union.sum() == 2 and union[1, 1] and union[2, 4]
    with pytest.raises(InvalidRequest, match="The mask is empty"):
        mask_from_editor_layers([])


def test_mask_problems_and_notes():
    assert describe_mask_problem(np.zeros((4, 4), bool)) == "The mask is empty: paint the area to regenerate."
    assert describe_mask_problem(np.ones((4, 4), bool)) is None
    assert describe_mask_note(np.ones((4, 4), bool)).startswith("The mask covers the whole image")
    partial = np.eye(4, dtype=bool)
    assert describe_mask_problem(partial) is None and describe_mask_note(partial) is None


# ---------------------------------------------------------------- outpainting


def test_parse_padding_shorthands_and_units():
    assert parse_padding("64", 200, 100) == Padding(64, 64, 64, 64)
    assert parse_padding("32,64", 200, 100) == Padding(32, 64, 32, 64)
    assert parse_padding("10, 20px, 30", 200, 100) == Padding(10, 20, 30, 20)
    assert parse_padding("0,30%,20%,0", 200, 100) == Padding(0, 60, 20, 0)
    assert parse_padding(" 12.6PX ", 200, 100) == Padding(13, 13, 13, 13)


@pytest.mark.parametrize(
    "text, named",
    [("-5", "'-5'"), ("0,abc", "'abc'"), ("1,2,3,4,5", "'1,2,3,4,5'"), ("10,5000", "'5000'"), ("", "empty")],
)
def test_parse_padding_rejects_bad_values_by_name(text, named):
    with pytest.raises(InvalidRequest) as caught:
        parse_padding(text, 1000, 1000)
    assert named in str(caught.value)
    with pytest.raises(InvalidRequest, match="'300%'"):
        parse_padding("0,300%", 2000, 100)  # 6000 pixels


def test_outpaint_canvas_places_the_image_and_masks_the_new_area():
    image = noise_image(50, 30, seed=8)
    canvas, mask = outpaint_canvas(image, Padding(top=0, right=20, bottom=10, left=0), overlap=4)
    assert canvas.size == (80, 48) and mask.size == (80, 48) and mask.mode == "L"
    pixels, white = np.asarray(canvas), np.asarray(mask) == 255
    assert np.array_equal(pixels[:30, :50], np.asarray(image))  # extra width went to the padded side
    assert np.array_equal(white, ~np.pad(np.ones((26, 46), bool), ((0, 22), (0, 34))))
    assert set(np.unique(np.asarray(mask))) == {0, 255}

    blocks = outpaint_canvas(Image.new("RGB", (32, 32), (200, 40, 90)), Padding(16, 16, 16, 16))[0]
    assert np.abs(np.asarray(blocks).astype(int) - [200, 40, 90]).max() <= 1  # edge colours, not black
    again = outpaint_canvas(image, Padding(0, 20, 10, 0), overlap=4)
    assert np.array_equal(np.asarray(again[0]), pixels) and np.array_equal(np.asarray(again[1]), white * 255)


def test_outpaint_canvas_rounds_to_the_multiple_even_without_horizontal_padding():
    canvas, mask = outpaint_canvas(noise_image(50, 30), Padding(top=8, right=0, bottom=0, left=0))
    assert canvas.size == (64, 48)
    keep = np.zeros((48, 64), bool)
    keep[18 + 7 :, 7 + 8 : 57 - 8] = True  # image at rows 18.., columns 7..56; bands of 8, and 30 // 4 = 7
    assert np.array_equal(np.asarray(mask) == 255, ~keep)
    assert np.array_equal(np.asarray(canvas)[18:48, 7:57], np.asarray(noise_image(50, 30)))


# ---------------------------------------------------------------- canny


def edge_map(image, **thresholds):
    edges = np.asarray(canny.canny_edges(image, **thresholds))
    assert edges.shape[-1] == 3 and np.array_equal(edges[..., 0], edges[..., 2])
    assert set(np.unique(edges)) <= {0, 255}
    return edges[..., 0] == 255


def test_canny_finds_exactly_the_border_of_a_filled_rectangle():
    image = Image.new("RGB", (96, 80), (30, 30, 30))
    ImageDraw.Draw(image).rectangle([20, 15, 69, 54], fill=(220, 220, 220))  # rows 15..54, columns 20..69
    edges = edge_map(image)
    within_one_pixel_of_border = np.zeros((80, 96), bool)
    within_one_pixel_of_border[14:56, 19:71] = True
    within_one_pixel_of_border[17:53, 22:68] = False
    assert not (edges & ~within_one_pixel_of_border).any()
    assert edges[14:17, 20:70].any(axis=0).all() and edges[53:56, 20:70].any(axis=0).all()  # top, bottom
    assert edges[15:55, 19:22].any(axis=1).all() and edges[15:55, 68:71].any(axis=1).all()  # left, right


def test_canny_blank_image_has_no_edges():
    assert not edge_map(Image.new("RGB", (40, 30), (128, 64, 32))).any()


def test_canny_thresholds_change_the_result_on_steps_of_rising_contrast():
    ramp = np.zeros((24, 160), dtype=np.uint8)
    for index, contrast in enumerate(range(10, 250, 30)):  # 8 bars, contrast 10 .. 220
        ramp[:, index * 20 + 10 : index * 20 + 20] = contrast
    image = Image.fromarray(ramp).convert("RGB")
    counts = [edge_map(image, low=value, high=value).sum() for value in (20, 100, 200, 350, 500)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0
    assert len(set(counts)) == len(counts)
    assert edge_map(image, low=20, high=500).sum() == counts[-1]  # the bars are apart: no weak edge joins


def test_canny_hysteresis_keeps_weak_edges_only_when_linked_to_strong_ones():
    pixels = np.zeros((60, 80), dtype=np.uint8)
    pixels[30:] = np.linspace(200, 60, 80).round().astype(np.uint8)  # one edge, fading left to right
    pixels[5:15, 60:70] = 60  # an isolated square as faint as the edge's faint end
    image = Image.fromarray(pixels).convert("RGB")
    # OpenCV's L1 magnitude puts the square's corners at 1.5x its sides (360 here), so the strong bar is 400
    edges = edge_map(image, low=100, high=400)
    assert edges[28:32].any(axis=0)[2:-2].all()  # the whole edge, weak end included, hangs together
    assert not edges[:20].any()  # the isolated faint square is dropped
    strong_only = edge_map(image, low=400, high=400)
    assert strong_only[28:32, :20].any(axis=0).all() and not strong_only[28:32, 60:].any()
    assert edge_map(image, low=100, high=100)[:20].any()


@pytest.mark.parametrize("low, high", [(100, 200), (50, 150), (0, 0), (20.5, 300.25), (1020, 1020)])
def test_canny_edges_are_opencv_canny_of_the_rgb_picture(low, high):
    image = textured_photo(160, 120, seed=3)
    reference = cv2.Canny(np.asarray(image), low, high)  # as InstantX's and mflux's examples make the edge map
    edges = edge_map(image, low=low, high=high)
    assert np.array_equal(edges, reference == 255)
    if (low, high) == (100, 200):
        assert 0.02 < edges.mean() < 0.3, edges.mean()  # a real edge map, neither empty nor noise


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_canny_edges_of_other_modes_are_those_of_the_rgb_conversion(mode):
    image = textured_photo(64, 48, seed=4).convert(mode)
    reference = cv2.Canny(np.asarray(image.convert("RGB")), 100, 200)
    assert np.array_equal(edge_map(image), reference == 255)


def test_canny_thresholds_in_either_order_are_opencvs():
    image = textured_photo(64, 48, seed=5)
    swapped = edge_map(image, low=200, high=100)
    assert np.array_equal(swapped, cv2.Canny(np.asarray(image.convert("RGB")), 200, 100) == 255)
    assert np.array_equal(swapped, edge_map(image)) and swapped.any()
    with pytest.raises(InvalidRequest, match="must not be negative"):
        canny.canny_edges(image, low=-1, high=100)


def test_a1111s_fill_paints_the_masked_area_from_its_surroundings_and_keeps_the_rest():
    """A red | blue picture with a square masked over the border: outside it nothing changes; inside, the left edge
    takes the red around it, the right edge the blue, the middle a mix, and no trace of what was under the mask."""
    picture = np.zeros((256, 320, 3), np.uint8)
    picture[:, :160], picture[:, 160:] = (200, 30, 30), (30, 30, 200)
    picture[96:160, 140:180] = (0, 255, 0)  # under the mask: must not show through
    mask = np.zeros((256, 320), bool)
    mask[64:192, 96:224] = True
    filled = np.asarray(filled_from_surroundings(Image.fromarray(picture), Image.fromarray(mask)), np.int16)
    assert np.array_equal(filled[~mask], picture[~mask])
    assert filled[128, 98, 0] > 170 and filled[128, 98, 2] < 60  # by the red side: red
    assert filled[128, 221, 2] > 170 and filled[128, 221, 0] < 60  # by the blue side: blue
    assert 80 < filled[128, 160, 0] < 150 and 80 < filled[128, 160, 2] < 150  # between: a mix
    assert filled[mask][:, 1].max() < 60  # the green under the mask is gone
