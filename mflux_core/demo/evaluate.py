"""The demo models' quality bar, measured through the real engine on held-out examples.

Each function generates images with `ModelManager.generate` (as the studio does) and reads them
with a `classify(image) -> reading` supplied by the caller (the tests bring their own, independent
of the models), where a reading has `.background`, `.colour`, `.region` and a bool `.mask`.
Every function returns the fraction of examples that meet its criterion.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.family import NATIVE_SIZE
from mflux_core.demo.pools import Size
from mflux_core.demo.shapes import COLOURS, caption, shape_mask
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import IC_EDIT_TEMPLATE

EVALUATION_SEED = 100  # held-out examples are drawn with this dataset seed
IC_EDIT_PANEL = (64, 64)  # demo-fill lists 128x64: IC-Edit's diptych of two 64 px panels
FILL_TOLERANCE = 10  # levels an unmasked pixel may move (Fill runs with keep-unmasked on, as the page's default)


@dataclass(frozen=True)
class PromptScores:
    colour: float  # dominant shape colour = the caption's
    region: float  # shape centroid in the caption's region
    background: float


def _generate(manager, model: str, tool: str, prompt: str, seed: int, max_sequence_length: int | None,
              size: Size = NATIVE_SIZE, **paths):
    request = GenerationRequest(tool=tool, model=model, prompt=prompt, seed=seed, width=size[0], height=size[1],
                                max_sequence_length=max_sequence_length, **paths)
    return np.asarray(manager.generate(request).image.convert("RGB"))


def _save(folder: Path, name: str, pixels: np.ndarray) -> str:
    path = folder / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def _shape_iou(mask: np.ndarray, shape) -> float:
    """IoU of a found shape mask with where `shape` really is."""
    target = shape_mask(shape, mask.shape[1], mask.shape[0])
    return float(np.logical_and(mask, target).sum() / max(np.logical_or(mask, target).sum(), 1))


def prompt_following(manager, model: str, classify: Callable, count: int = 50,
                     max_sequence_length: int | None = None, size: Size = NATIVE_SIZE) -> PromptScores:
    """Held-out captions painted at `size` (width, height)."""
    hits = np.zeros(3)
    for index in range(count):
        scene = dataset.text_to_image_example(EVALUATION_SEED, index, held_out=True).scene
        shape = scene.shapes[0]
        reading = classify(_generate(manager, model, "generate", caption(scene), index, max_sequence_length, size))
        hits += [reading.colour == shape.colour, reading.region == shape.region, reading.background == scene.background]
    return PromptScores(*(hits / count))


@dataclass(frozen=True)
class CarriedScores:
    colour: float  # the result's shape colour = the reference's
    region: float
    background: float
    shape_iou: float  # mean IoU of the result's shape with the reference's (its outline and place)


def reference_carried(manager, model: str, classify: Callable, count: int = 20, redux: str | None = None,
                      max_sequence_length: int | None = None) -> CarriedScores:
    """With an empty prompt, how much of a held-out reference picture the result shows when the picture goes
    through the Redux weights `redux` (None: no reference at all, the model's unprompted baseline)."""
    hits, ious = np.zeros(3), []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            example = dataset.text_to_image_example(EVALUATION_SEED, index, held_out=True)
            shape = example.scene.shapes[0]
            paths = {} if redux is None else {"redux_image_paths": (_save(Path(folder), f"reference{index}",
                                                                           example.image),),
                                              "extra": {"redux_path": redux}}
            image = _generate(manager, model, "generate" if redux is None else "redux", "", index,
                              max_sequence_length, **paths)
            reading = classify(image)
            hits += [reading.colour == shape.colour, reading.region == shape.region,
                     reading.background == example.scene.background]
            ious.append(_shape_iou(reading.mask, shape))
    return CarriedScores(*(hits / count), float(np.mean(ious)))


def colour_strength(manager, model: str, count: int = 20, guidance: float | None = None,
                    max_sequence_length: int | None = None) -> float:
    """How far generated shapes have moved from the background's colour to the caption's (0: not at all,
    1: all the way), the median over held-out captions of the median pixel in each scene's true shape."""
    strengths = []
    for index in range(count):
        scene = dataset.text_to_image_example(EVALUATION_SEED, index, held_out=True).scene
        shape = scene.shapes[0]
        image = _generate(manager, model, "generate", caption(scene), index, max_sequence_length, guidance=guidance)
        painted = np.median(image[shape_mask(shape, image.shape[0])].astype(np.float32), axis=0)
        background, wanted = (np.array(COLOURS[name], np.float32) for name in (scene.background, shape.colour))
        strengths.append(float(np.dot(painted - background, wanted - background) / np.sum((wanted - background) ** 2)))
    return float(np.median(strengths))


def fill_scores(manager, model: str, classify: Callable, count: int = 20,
                max_sequence_length: int | None = None, size: Size = NATIVE_SIZE) -> tuple[float, float]:
    """(fraction whose masked region shows the prompted colour, mean fraction of unmasked pixels kept)."""
    recoloured, kept = 0, []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            example = dataset.fill_example(EVALUATION_SEED, index, size[0], held_out=True, height=size[1])
            paths = {"image_path": _save(Path(folder), f"source{index}", example.source),
                     "masked_image_path": _save(Path(folder), f"mask{index}", example.mask.astype(np.uint8) * 255)}
            image = _generate(manager, model, "fill", example.caption, index, max_sequence_length, size,
                              keep_unmasked=True, **paths)
            reading = classify(np.where(example.mask[..., None], image, example.source))  # the masked region only
            recoloured += reading.colour == example.scene.shapes[0].colour
            difference = np.abs(image.astype(int) - example.source.astype(int)).max(axis=-1)
            kept.append(float((difference[~example.mask] <= FILL_TOLERANCE).mean()))
    return recoloured / count, float(np.mean(kept))


def try_on_worn(manager, model: str, classify: Callable, count: int = 30, max_sequence_length: int | None = None,
                size: Size = IC_EDIT_PANEL) -> float:
    """Held-out try-ons through CatVTON, the prompt describing the result (demo-fill cannot copy the garment from
    the left panel: README) and the person kept outside the mask as the page does: the fraction whose person mask
    shows the garment's colour; `size` is one panel's."""
    worn = 0
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            example = dataset.try_on_example(EVALUATION_SEED, index, size[0], held_out=True, height=size[1])
            paths = {"image_path": _save(Path(folder), f"person{index}", example.person),
                     "masked_image_path": _save(Path(folder), f"mask{index}", example.mask.astype(np.uint8) * 255)}
            garment = _save(Path(folder), f"garment{index}", example.garment)
            image = _generate(manager, model, "catvton", caption(example.scene), index, max_sequence_length, size,
                              keep_unmasked=True,
                              extra={"garment_image_path": garment}, **paths)
            worn += classify(image).colour == example.scene.shapes[0].colour
    return worn / count


def _layout_iou(manager, model: str, tool: str, example_for: Callable, control_for: Callable, path_field: str,
                classify: Callable, count: int, max_sequence_length: int | None, size: Size = NATIVE_SIZE,
                **extra) -> float:
    """Mean IoU of the generated shape with the shape of the scene the control image came from."""
    scores = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            example = example_for(EVALUATION_SEED, index, size[0], held_out=True, height=size[1])
            path = _save(Path(folder), f"control{index}", control_for(example))
            image = _generate(manager, model, tool, example.caption, index, max_sequence_length, size,
                              **{path_field: path}, **extra)
            scores.append(_shape_iou(classify(image).mask, example.scene.shapes[0]))
    return float(np.mean(scores))


def depth_layout(manager, model: str, classify: Callable, count: int = 20,
                 max_sequence_length: int | None = None, size: Size = NATIVE_SIZE) -> float:
    """Mean IoU of the generated shape with the depth map's shape."""
    return _layout_iou(manager, model, "depth", dataset.depth_example, lambda e: e.control, "depth_image_path",
                       classify, count, max_sequence_length, size)


def estimated_depth_layout(manager, model: str, classify: Callable, count: int = 20,
                           max_sequence_length: int | None = None) -> float:
    """Mean IoU of the generated shape with the scene's shape when the Depth tool estimates the map from the
    scene's picture (the depth estimator the manager picks: the demo one offline)."""
    return _layout_iou(manager, model, "depth", dataset.depth_example, lambda e: e.image, "image_path",
                       classify, count, max_sequence_length)


def controlnet_layout(manager, model: str, controlnet: str, classify: Callable, count: int = 20,
                      max_sequence_length: int | None = None, size: Size = NATIVE_SIZE) -> float:
    """Mean IoU of the generated shape with the shape of the control picture, whose Canny edges the
    ControlNet tool takes itself."""
    return _layout_iou(manager, model, "controlnet", dataset.canny_example, lambda e: e.image,
                       "controlnet_image_path", classify, count, max_sequence_length, size,
                       extra={"controlnet_path": controlnet})


def kontext_applied(manager, model: str, classify: Callable, count: int = 30,
                    max_sequence_length: int | None = None, size: Size = NATIVE_SIZE) -> float:
    return _edits_applied(manager, model, "kontext", lambda example: (example.instruction, {}), classify, count,
                          max_sequence_length, size)


def ic_edit_applied(manager, model: str, classify: Callable, count: int = 30, max_sequence_length: int | None = None,
                    size: Size = IC_EDIT_PANEL, lora: str | None = None) -> float:
    """Held-out edits through IC-Edit (its default LoRA, or `lora`); `size` is one panel's."""
    extra = {"ic_edit_lora": lora} if lora else {}
    return _edits_applied(manager, model, "ic-edit", lambda example: ("", {"instruction": example.instruction,
                                                                           **extra}),
                          classify, count, max_sequence_length, size)


def in_context_edit_applied(manager, model: str, classify: Callable, count: int = 30,
                            max_sequence_length: int | None = None, size: Size = IC_EDIT_PANEL) -> float:
    """The same edits through the In-Context tool with IC-Edit's prompt (and no style): what IC-Edit's LoRA adds."""
    return _edits_applied(manager, model, "in-context", lambda example: (IC_EDIT_TEMPLATE.format(
        instruction=example.instruction), {}), classify, count, max_sequence_length, size)


def in_context_applied(manager, model: str, classify: Callable, count: int = 30,
                       max_sequence_length: int | None = None, size: Size = IC_EDIT_PANEL) -> float:
    """Held-out edits through In-Context with both panels described, "[IMAGE1] <before>; [IMAGE2] <after>" (on a
    demo Fill, with its In-Context LoRA): how often the right panel shows the after picture's edit."""
    return _edits_applied(manager, model, "in-context", lambda example: (
        f"[IMAGE1] {caption(example.before_scene)}; [IMAGE2] {caption(example.after_scene)}", {}),
        classify, count, max_sequence_length, size)


def _edits_applied(manager, model: str, tool: str, as_request: Callable, classify: Callable, count: int,
                   max_sequence_length: int | None, size: Size) -> float:
    """Fraction of held-out Kontext edits (recolour, move, new background) whose result shows the edit;
    `as_request(example)` gives the tool's prompt and request.extra."""
    applied = 0
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            example = dataset.kontext_example(EVALUATION_SEED, index, size[0], held_out=True, height=size[1])
            path = _save(Path(folder), f"before{index}", example.before)
            prompt, extra = as_request(example)
            reading = classify(_generate(manager, model, tool, prompt, index, max_sequence_length, size,
                                         image_path=path, **({"extra": extra} if extra else {})))
            after = example.after_scene
            applied += {"colour": reading.colour == after.shapes[0].colour,
                        "move": reading.region == after.shapes[0].region,
                        "background": reading.background == after.background}[example.kind]
    return applied / count


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 pictures (OpenCV's)."""
    return float(cv2.PSNR(np.ascontiguousarray(image), np.ascontiguousarray(truth)))


def upscale_psnr(manager, model: str, controlnet: str, side: int, count: int = 30, strength: float | None = None,
                 max_sequence_length: int | None = None, size: Size = NATIVE_SIZE) -> tuple[float, float]:
    """(mean PSNR of the Upscale tool's result at `size`, of a Lanczos upscale) against the true picture, each
    upscaled from the picture shrunk to a shorter side of `side`, over held-out scenes; `strength`: the
    ControlNet's (None: the tool's default)."""
    ours, lanczos = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            example = dataset.upscale_example(EVALUATION_SEED, index, size[0], held_out=True, height=size[1])
            path = Path(folder) / f"small{index}.png"
            dataset.low_resolution(example.image, side).save(path)
            image = _generate(manager, model, "upscale", example.caption, index, max_sequence_length, size,
                              image_path=str(path), controlnet_strength=strength,
                              extra={"controlnet_path": controlnet})
            ours.append(psnr(image, example.image))
            lanczos.append(psnr(dataset.upscaled_control(example.image, side), example.image))
    return float(np.mean(ours)), float(np.mean(lanczos))
