"""The face fix (A1111's ADetailer): faces found in a real photo by OpenCV's frontal-face cascade, each inpainted
again as Fill's "Only masked" inpaints (the same image as that tool run by hand on the first pass's image), the rest
of the picture kept, the steps reported per face, a picture without faces left as it was with a note, and bad
settings refused before the first pass.

The photo: Grace Hopper's official U.S. Navy portrait (public domain), as matplotlib ships it in its sample data."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.events import Step
from mflux_core.images.faces import face_boxes, face_mask
from mflux_core.manager import ModelManager
from mflux_core.metadata import request_from_metadata
from mflux_core.request import GenerationRequest
from tests.parity import run_cli

PHOTO = Path(__file__).parent / "fixtures" / "photos" / "grace_hopper.jpg"
SIDE = 128  # the demo's largest size


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> Path:
    """The photo at the demo's size: 128 px wide, cropped to a square about the face."""
    path = tmp_path_factory.mktemp("portrait") / "portrait.png"
    Image.open(PHOTO).convert("RGB").resize((SIDE, 150)).crop((0, 11, SIDE, 11 + SIDE)).save(path)
    return path


@pytest.fixture(scope="module")
def manager():
    return ModelManager()


def test_the_face_in_a_photo_is_found_and_shapes_are_not():
    [face] = face_boxes(Image.open(PHOTO))
    assert 140 <= face.left <= 170 and 95 <= face.top <= 120 and 200 <= face.size[0] <= 250  # her face, 512x600
    shapes = Image.new("RGB", (128, 128), (30, 80, 200))
    shapes.paste((220, 40, 40), (30, 30, 90, 90))
    assert face_boxes(shapes) == []
    mask = np.asarray(face_mask((128, 128), face_boxes(Image.open(PHOTO).resize((128, 150)))[0]))
    assert mask.max() == 255 and mask[0, 0] == 0


def test_each_face_is_inpainted_as_fills_only_masked_would_and_the_rest_is_kept(manager, portrait, tmp_path):
    request = GenerationRequest(model="demo", prompt="a red circle", seed=1, steps=20, width=SIDE, height=SIDE,
                                image_path=str(portrait), image_strength=0.9)
    first = manager.generate(request).image
    steps = []
    fixed = manager.generate(request.with_(extra={"face_fix": True, "face_fix_prompt": "a face"}), report=steps.append)
    assert fixed.notes[-1] == "Face fix: 1 face inpainted again."
    assert np.array_equal(np.asarray(fixed.before), np.asarray(first))  # the first pass, as the slider compares
    [face] = face_boxes(first)
    # the same as Fill "Only masked" run by hand on the first pass's image, with the face's box as the mask
    by_hand = manager.generate(GenerationRequest(
        tool="fill", model="demo", prompt="a face", seed=1, steps=20, image_strength=0.6, keep_unmasked=True,
        only_masked_padding=32, mask_blur=4, image_path=str(save(first, tmp_path / "first.png")),
        masked_image_path=str(save(face_mask(first.size, face), tmp_path / "mask.png"))))
    assert np.array_equal(np.asarray(fixed.image), np.asarray(by_hand.image))
    change = np.abs(np.asarray(fixed.image, np.int16) - np.asarray(first, np.int16)).max(axis=-1)
    assert change[face.top:face.bottom, face.left:face.right].mean() > 5
    far = np.ones(change.shape, bool)
    far[max(0, face.top - 20):face.bottom + 20, max(0, face.left - 20):face.right + 20] = False
    assert change[far].max() == 0  # beyond the mask's blur and feather: the first pass's pixels exactly
    assert [event.stage for event in steps if isinstance(event, Step)][-1] == "face fix 1 of 1"
    replayed = manager.generate(request_from_metadata(fixed.metadata))  # the PNG's settings run the face fix again
    assert np.array_equal(np.asarray(replayed.image), np.asarray(fixed.image))


def test_a_picture_without_faces_is_kept_with_a_note(manager):
    request = GenerationRequest(model="demo", prompt="a red circle on a blue background", seed=2, steps=4)
    plain = manager.generate(request)
    fixed = manager.generate(request.with_(extra={"face_fix": True}))
    assert np.array_equal(np.asarray(fixed.image), np.asarray(plain.image))
    assert fixed.notes[-1].startswith("Face fix: no face found")


@pytest.mark.parametrize("change, words", [
    ({"extra": {"face_fix": True, "face_fix_strength": 0}}, "face fix denoising strength must be above 0"),
    ({"extra": {"face_fix": True, "face_fix_padding": 1000}}, "face fix padding must be a whole number"),
    ({"tool": "kontext", "extra": {"face_fix": True}}, "face fix follows text-to-image and image-to-image"),
])
def test_bad_face_fix_settings_are_refused_before_the_first_pass(manager, change, words):
    request = GenerationRequest(model="demo", prompt="x", seed=1, steps=2, width=64, height=64).with_(**change)
    with pytest.raises(InvalidRequest, match=words):
        manager.generate(request)


def test_the_cli_fixes_faces(portrait, tmp_path, capsys):
    run_cli("generate", "--model", "demo", "--prompt", "a red circle", "--steps", 20, "--image-path", portrait,
            "--image-strength", 0.9, "--face-fix", "--face-fix-strength", 0.5, "--output", tmp_path / "o.png")
    assert "Face fix: 1 face inpainted again." in capsys.readouterr().err


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_the_infotext_says_it_as_adetailer_and_reads_back():
    from mflux_core.metadata import a1111_parameters
    from mflux_core.presets import settings_from_a1111

    extra = {"face_fix": True, "face_fix_prompt": 'a "smile", freckles', "face_fix_strength": 0.35,
             "face_fix_padding": 48}
    text = a1111_parameters(GenerationRequest(prompt="a portrait", seed=3, steps=20, width=64, height=64,
                                              extra=extra))
    assert ('ADetailer model: OpenCV frontal face, ADetailer prompt: "a \\"smile\\", freckles", ADetailer denoising '
            'strength: 0.35, ADetailer inpaint only masked: True, ADetailer inpaint padding: 48') in text
    assert settings_from_a1111(text)["extra"] == extra
    theirs = settings_from_a1111("a cat\nSteps: 20, Seed: 1, Size: 512x512, ADetailer model: face_yolov8n.pt, "
                                 "ADetailer confidence: 0.3, ADetailer denoising strength: 0.4, "
                                 "ADetailer version: 24.9.0")
    assert theirs["extra"] == {"face_fix": True, "face_fix_strength": 0.4}
