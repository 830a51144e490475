"""Image-to-image on a batch of images (A1111's img2img "Batch"): the requests, and the CLI's --image-dir on the
demo model, whose every image equals the same run on that image alone."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from mflux_core.cli import main
from mflux_core.errors import InvalidRequest
from mflux_core.image_batch import batch_requests, images_in
from mflux_core.metadata import JSON_KEY
from mflux_core.request import GenerationRequest

A1111_TEXT = ("a blue star\nNegative prompt: blurry\nSteps: 5, Sampler: DPM++ 2M, Schedule type: Karras, Seed: 77, "
              "CFG scale: 1.5, Distilled CFG Scale: 2.5, Size: 64x64")


def recorded_request(path: Path) -> dict:
    return json.loads(Image.open(path).info[JSON_KEY])["request"]


def a1111_png(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (64, 64), (40, 90, 200)).save(path, pnginfo=info)
    return path


def test_each_image_takes_what_is_asked_from_its_png_info_after_the_batch_prompts(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), "white").save(photo)
    images = [(path.name, path, {"image_path": str(path)}) for path in (a1111_png(tmp_path / "made.png"), photo)]
    base = GenerationRequest(prompt="watercolour", negative_prompt="text", true_cfg_scale=2.0, seed=5, steps=3,
                             guidance=3.5)
    every = batch_requests(base, images, ("Prompt", "Negative prompt", "Seed", "Guidance", "Sampler", "Steps"), [5])
    (made_name, made), (photo_name, plain) = every
    assert (made_name, photo_name) == ("made.png", "photo.jpg")
    assert (made.prompt, made.negative_prompt) == ("watercolour a blue star", "text blurry")
    assert (made.seed, made.steps) == (77, 5)
    assert (made.guidance, made.true_cfg_scale, made.sampler, made.schedule) == (2.5, 1.5, "dpm++2m", "karras")
    assert made.image_path == str(tmp_path / "made.png")
    # a photo carries no settings: it runs with the batch's, as A1111's batch does
    assert (plain.prompt, plain.seed, plain.steps, plain.guidance) == ("watercolour", 5, 3, 3.5)
    only_seed = batch_requests(base, images, ("Seed",), [5])
    assert [r.seed for _, r in only_seed] == [77, 5] and only_seed[0][1].prompt == "watercolour"
    counted = batch_requests(base, images, (), [5], batch_count=2)
    assert [(name, r.seed) for name, r in counted] == [("made.png", 5), ("made.png", 6), ("photo.jpg", 5),
                                                       ("photo.jpg", 6)]


def test_a_batch_is_refused_whole_naming_what_is_wrong(tmp_path):
    with pytest.raises(InvalidRequest, match="Unknown PNG info 'Colour'"):
        batch_requests(GenerationRequest(), [("a.png", tmp_path / "a.png", {})], ("Colour",), [1])
    with pytest.raises(InvalidRequest, match="no images"):
        batch_requests(GenerationRequest(), [], (), [1])
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InvalidRequest, match="holds no images"):
        images_in(tmp_path)
    with pytest.raises(InvalidRequest, match="is not a folder"):
        images_in(tmp_path / "missing")
    with pytest.raises(InvalidRequest, match="^made.png: The prompt"):  # validated per image, before any runs
        batch_requests(GenerationRequest(), [("made.png", a1111_png(tmp_path / "made.png"), {})],
                       ("Prompt",), [1], styled=lambda request: request.with_(prompt=request.prompt + "x" * 20_000))


def test_the_cli_runs_every_image_in_the_folder_as_a_single_run_on_it_would(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    common = ["--model", "demo", "--steps", "3", "--width", "64", "--height", "64"]
    for name, prompt, seed in (("f1.png", "a red circle in the top left on a blue background", 3),
                               ("f2.png", "a green square in the bottom right on a white background", 4)):
        assert main(["generate", "-p", prompt, "--seed", str(seed), *common, "--output", str(frames / name)]) == 0
    Image.new("RGB", (80, 48), (250, 200, 30)).save(frames / "f3.jpg")
    (frames / "notes.txt").write_text("skipped: not an image")
    assert main(["generate", "-p", "", "--image-dir", str(frames), "--png-info", "prompt", "seed", "--seed", "9",
                 "--image-strength", "0.5", *common, "--output", str(tmp_path / "out" / "v.png")]) == 0
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == ["v_f1.png", "v_f2.png", "v_f3.png"]
    for name, seed in (("f1", 3), ("f2", 4), ("f3", 9)):
        made = recorded_request(tmp_path / "out" / f"v_{name}.png")
        prompt = recorded_request(frames / f"{name}.png")["prompt"] if name != "f3" else ""
        assert (made["prompt"], made["seed"], made["image_strength"]) == (prompt, seed, 0.5)
        alone = tmp_path / f"alone_{name}.png"
        source = frames / (f"{name}.jpg" if name == "f3" else f"{name}.png")
        assert main(["generate", "-p", prompt, "--image-path", str(source), "--seed", str(seed), "--image-strength",
                     "0.5", *common, "--output", str(alone)]) == 0
        assert np.array_equal(np.asarray(Image.open(alone)), np.asarray(Image.open(tmp_path / "out" / f"v_{name}.png")))


def test_the_cli_refuses_a_bad_batch_before_any_image(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (64, 64), "white").save(frames / "a.png")
    (frames / "b.png").write_bytes((frames / "a.png").read_bytes()[:60])  # truncated
    out = tmp_path / "out" / "v.png"
    assert main(["generate", "-p", "x", "--steps", "1", "--image-dir", str(frames), "--output", str(out)]) == 1
    assert "b.png is truncated or damaged" in capsys.readouterr().err and not out.parent.exists()
    assert main(["generate", "-p", "x", "--png-info", "seed", "--output", str(out)]) == 1
    assert "give that folder too" in capsys.readouterr().err
    assert main(["generate", "-p", "x", "--image-dir", str(frames), "--image-path", str(frames / "a.png"),
                 "--output", str(out)]) == 1
    assert "does not combine with --image-path" in capsys.readouterr().err


def box_mask(path: Path, box: tuple[int, int, int, int]) -> Path:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, box)
    mask.save(path)
    return path


def test_the_cli_fill_batch_inpaints_each_image_inside_its_own_mask_or_the_one_mask(tmp_path, capsys):
    frames, masks, one = tmp_path / "frames", tmp_path / "masks", tmp_path / "one"
    for folder in (frames, masks, one):
        folder.mkdir()
    for index, colour in enumerate(((200, 40, 40), (30, 160, 60))):
        Image.new("RGB", (64, 64), colour).save(frames / f"f{index}.png")
    box_mask(masks / "f0.png", (0, 0, 32, 32))
    box_mask(masks / "f1.jpg", (32, 32, 64, 64))
    box_mask(one / "any.png", (16, 16, 48, 48))
    common = ["fill", "--model", "demo-fill", "-p", "a blue circle", "--seed", "2", "--steps", "3"]
    for folder in (masks, one):
        out = tmp_path / folder.name / "v.png"
        assert main([*common, "--image-dir", str(frames), "--mask-dir", str(folder), "--output", str(out)]) == 0
        for name in ("f0", "f1"):
            mask = one / "any.png" if folder == one else next(masks.glob(f"{name}.*"))
            alone = tmp_path / f"alone_{folder.name}_{name}.png"
            assert main([*common, "--image-path", str(frames / f"{name}.png"), "--masked-image-path", str(mask),
                         "--output", str(alone)]) == 0
            assert np.array_equal(np.asarray(Image.open(alone)),
                                  np.asarray(Image.open(out.with_name(f"v_{name}.png"))))
    (masks / "f1.jpg").unlink()
    box_mask(masks / "other.png", (0, 0, 8, 8))
    assert main([*common, "--image-dir", str(frames), "--mask-dir", str(masks), "--output",
                 str(tmp_path / "none" / "v.png")]) == 1
    assert "have no mask for f1.png (a mask is found by its image's name" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
