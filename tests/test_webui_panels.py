"""The page's logic without a browser: each panel's settings and requests, the shared widgets, the history
gallery, the status strip, the job wrapper (on a real tiny model) and the app's wiring."""

import os
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.events import Finished, Loading, Step, Stopped, stream
from mflux_core.manager import GenerationResult, ModelManager
from mflux_core.metadata import png_text_chunks
from mflux_core.presets import settings_from_png, settings_from_request, validate_settings
from mflux_core.registry import ModelEntry
from mflux_core.request import GenerationRequest
from webui import gallery
from webui.jobs import JobBoard, event_text, safe_action
from webui.panels import controlnet, depth, fill, generate, in_context, kontext, redux
from webui.regions_ui import DEFAULT_BOXES
from webui.requests import InputStore, RequestContext, batch_seeds
from webui.status import status_markdown
from webui.widgets import aspect_size, default_model, model_choices, shared_values, snap_to_16

PANELS = (generate, fill, depth, kontext, controlnet, redux)


def shared(**overrides) -> dict:
    """Values as the shared widgets hand them to a handler."""
    values = {"model": "tiny", "prompt": "a fox", "seed": 5, "random_seed": False, "batch_count": 1, "steps": "",
              "guidance": "", "width": 64, "height": 64, "quantize": "off", "vae_tiling": False, "modules": [],
              "sampler": "euler", "schedule": "simple", "styles": [], "variation_seed": -1, "variation_strength": 0.0}
    for i in (1, 2, 3):
        values.update({f"lora_{i}": "", f"lora_scale_{i}": 1.0, f"lora_te_scale_{i}": ""})
    return {**values, **overrides}


@pytest.fixture
def context(tmp_path):
    library = {"ink": tmp_path / "loras" / "ink.safetensors"}
    return RequestContext(inputs=InputStore(tmp_path / "inputs"), loras=library, draw_seed=lambda: 1000)


def picture(color=(200, 40, 10), size=(64, 48)) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[...] = color
    pixels[::7, ::5] = (0, 255, 0)
    return Image.fromarray(pixels)


def stroke_layer(size=(64, 48), box=(10, 10, 30, 20)) -> Image.Image:
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    x0, y0, x1, y1 = box
    layer[y0:y1, x0:x1] = (255, 255, 255, 255)
    return Image.fromarray(layer, "RGBA")


# ----- shared controls -------------------------------------------------------------------------


def test_sizes_snap_to_multiples_of_16_and_aspects_keep_the_area():
    assert [snap_to_16(v) for v in (None, 0, 1, 23, 24, 1000, 99999)] == [None, 0, 16, 16, 32, 1008, 4096]
    assert aspect_size("1:1", 1024, 1024) == (1024, 1024)
    assert aspect_size("16:9", 1024, 1024) == (1360, 768)
    assert aspect_size("2:3", None, None) == (832, 1248)
    assert all(side % 16 == 0 for ratio in ("4:3", "21:9", "9:16") for side in aspect_size(ratio, 700, 900))


def test_model_picker_lists_downloaded_models_first_and_filters_by_tool():
    entries = [ModelEntry("schnell", "base", "alias", False), ModelEntry("fill", "fill", "alias", False),
               ModelEntry("my-flux", "base", "models folder", True), ModelEntry("org/flux", "base", "HF cache", True),
               ModelEntry("my-fill", "fill", "models folder", True)]
    assert [name for _, name in model_choices(entries, "generate")] == ["my-flux", "org/flux", "schnell"]
    assert model_choices(entries, "generate")[-1][0] == "schnell  ·  not downloaded"
    # Fill also runs on base models (keeping the image's latents outside the mask): after the Fill models
    assert [name for _, name in model_choices(entries, "fill")] == ["my-fill", "fill", "my-flux", "org/flux",
                                                                    "schnell"]
    assert default_model(entries, "fill") == "my-fill"
    shadowing = [ModelEntry("canny", "controlnet", "alias", False),
                 ModelEntry("canny", "controlnet", "models folder", True)]
    assert model_choices(shadowing, kinds=("controlnet",)) == [("canny  ·  models folder", "canny")]
    assert default_model(entries, "generate") == "my-flux"
    assert default_model(entries[:2], "generate") == "schnell"  # nothing downloaded: the alias
    assert default_model(entries, "kontext") == "kontext"
    # Depth also runs on a base model with BFL's Depth LoRA: base models follow the Depth models, never the default
    depth = [*entries, ModelEntry("depth", "depth", "alias", False)]
    assert [name for _, name in model_choices(depth, "depth")] == ["depth", "my-flux", "org/flux", "schnell"]
    assert default_model(depth, "depth") == "depth"


def test_shared_settings_parse_text_boxes_and_refuse_garbage(context):
    [request] = generate.build_requests(shared(steps=" 12 ", guidance="3.5", width=0, height=0), context)
    assert (request.steps, request.guidance, request.width, request.height) == (12, 3.5, None, None)
    [request] = generate.build_requests(shared(), context)
    assert (request.steps, request.guidance) == (None, None)
    with pytest.raises(InvalidRequest, match="Steps must be a number"):
        generate.build_requests(shared(steps="many"), context)
    with pytest.raises(InvalidRequest, match="Steps must be a whole number"):
        generate.build_requests(shared(steps="2.5"), context)
    with pytest.raises(InvalidRequest, match="not a multiple of 16; try 64"):
        generate.build_requests(shared(width=65), context)


@pytest.mark.parametrize("panel, values, expected", [
    (generate, {"lora_1": "ink", "lora_scale_1": float("nan")}, "The scale of LoRA 1 must be a finite number"),
    (generate, {"guidance": "inf"}, "Guidance must be a finite number, not inf"),
    (generate, {"image_strength": float("nan")}, "Image strength must be a finite number"),
    (controlnet, {"control_image": picture(), "canny_low": float("nan")}, "The Canny low threshold must be a finite"),
    (controlnet, {"control_image": picture(), "controlnet_strength": float("inf")}, "The ControlNet strength must"),
    (redux, {"redux_image_1": picture(), "redux_strength_1": float("nan")}, "The strength of Redux image 1 must"),
    (fill, {"editor": {"background": picture(), "layers": [stroke_layer()]}, "mask_grow_px": float("nan")},
     "Grow mask must be a finite number"),
    (fill, {"editor": {"background": picture(), "layers": []}, "mode": fill.OUTPAINT, "pad_left": float("inf")},
     "The left padding must be a finite number"),
], ids=["lora scale", "guidance", "image strength", "canny", "controlnet strength", "redux", "mask grow", "padding"])
def test_panels_refuse_nan_and_infinities_by_name(context, panel, values, expected):
    with pytest.raises(InvalidRequest, match=expected):
        panel.build_requests(shared(**values), context)
    assert not (context.inputs.folder).exists()  # refused before any input was copied


def test_batches_use_consecutive_seeds_from_a_fixed_or_random_start(context):
    assert [r.seed for r in generate.build_requests(shared(batch_count=3), context)] == [5, 6, 7]
    assert [r.seed for r in generate.build_requests(shared(random_seed=True, batch_count=2), context)] == [1000, 1001]
    assert batch_seeds(2**32 - 1, 2) == [2**32 - 1, 0]


def test_loras_are_named_in_the_page_and_resolved_to_library_files(context):
    [request] = generate.build_requests(shared(lora_2="ink", lora_scale_2=0.6), context)
    assert request.lora_paths == (str(context.loras["ink"]),) and request.lora_scales == (0.6,)
    with pytest.raises(InvalidRequest, match="'gone' is not in the LoRA library"):
        generate.build_requests(shared(lora_1="gone"), context)


def test_a_loras_text_encoder_box_sets_its_own_scale_and_empty_means_the_scale(context):
    [plain] = generate.build_requests(shared(lora_1="ink", lora_scale_1=0.5), context)
    assert plain.lora_text_encoder_scales == ()  # an untouched box: the scale serves both parts
    [own] = generate.build_requests(shared(lora_1="ink", lora_scale_1=0.5, lora_te_scale_1=" 0.25 "), context)
    assert (own.lora_scales, own.lora_text_encoder_scales) == ((0.5,), (0.25,))
    restored = generate.values_from_settings(settings_from_request(own))
    assert (restored["lora_te_scale_1"], restored["lora_te_scale_2"]) == ("0.25", "")
    with pytest.raises(InvalidRequest, match="The text encoder scale of LoRA 1 must be a number"):
        generate.build_requests(shared(lora_1="ink", lora_te_scale_1="half"), context)
    with pytest.raises(InvalidRequest, match="LoRA text encoder scale 9.0 is out of range"):
        generate.build_requests(shared(lora_1="ink", lora_te_scale_1="9"), context)


def test_prompt_lora_tags_join_the_picked_loras_as_in_a1111(context, tmp_path):
    library = {**context.loras, "soft light": tmp_path / "loras" / "soft light.safetensors"}
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "look.txt").write_text("<lora:soft light:0.3> glowing\n")
    context = replace(context, loras=library, wildcards=tmp_path / "wildcards")
    [request] = generate.build_requests(shared(prompt="a fox <lora:ink:0.8>, at dusk __look__", lora_1="ink",
                                               lora_scale_1=0.5), context)
    assert request.prompt == "a fox, at dusk glowing"
    assert request.lora_paths == tuple(str(library[name]) for name in ("ink", "ink", "soft light"))
    assert request.lora_scales == (0.5, 0.8, 0.3)
    with pytest.raises(InvalidRequest, match="'nowhere' is not in the LoRA library: check its name"):
        generate.build_requests(shared(prompt="a fox <lora:nowhere:1>"), context)
    with pytest.raises(InvalidRequest, match="LoRA scale 9.0 is out of range"):
        generate.build_requests(shared(prompt="a fox <lora:ink:9>"), context)


def test_quantize_choice_becomes_bits(context):
    assert generate.build_requests(shared(quantize="4"), context)[0].quantize == 4
    assert generate.build_requests(shared(quantize="off"), context)[0].quantize is None


# ----- each panel: settings <-> values, requests --------------------------------------------


PANEL_VALUES = {
    generate: {"image_strength": 0.55, "region_strength": 0.8,
               **{f"region_{row}_{key}": value for row, box in enumerate(DEFAULT_BOXES, 1)  # row 1 on, the rest off
                  for key, value in zip(("prompt", "weight", "x", "y", "w", "h"),
                                        ("a fox" if row == 1 else "", 0.5 if row == 1 else 1.0, *box))},
               "hires": True, "hires_scale": 1.5, "hires_steps": 6, "hires_strength": 0.35,
               "hires_upscaler": "Lanczos", "hires_prompt": "sharper", "face_fix": True, "face_fix_prompt": "a smile",
               "face_fix_strength": 0.35, "face_fix_padding": 48},
    fill: {"mode": fill.OUTPAINT, "keep_unmasked": False, "mask_invert": True, "mask_grow_px": 3, "mask_blur_px": 2,
           "pad_top": 0.0, "pad_right": 25.0, "pad_bottom": 10.0, "pad_left": 0.0, "pad_unit": "%",
           "inpaint_area": fill.ONLY_MASKED, "only_masked_padding": 48, "image_strength": 0.3,
           "masked_content": "fill"},
    depth: {"canny_edges": True, "canny_low": 50, "canny_high": 150},
    kontext: {"kontext_auto_resize": "Always Kontext's size (as diffusers)"},
    controlnet: {"mode": controlnet.UPSCALE, "controlnet_strength": 0.7, "upscale_factor": 1.5,
                 "controlnet_weights": "my-upscaler", "controlnet_mode": "blur", "upscaler": "Lanczos",
                 "upscaler_only": False, "upscale_strength": 0.7, "tiles": True, "tile_size": 512, "tile_height": 768,
                 "tile_overlap": 48},
    redux: {"redux_strength_1": 0.3, "redux_strength_2": 0.9, "redux_strength_3": 1.0, "redux_strength_4": 0.5,
            "redux_weights": ""},
}


@pytest.mark.parametrize("panel", PANELS, ids=lambda m: m.TOOL)
def test_settings_and_values_round_trip_for_every_panel(panel):
    values = shared(steps="7", guidance="2.5", lora_1="ink", lora_scale_1=0.25, quantize="8", batch_count=2,
                    styles=["Bold"], variation_seed=77, variation_strength=0.25,
                    modules=["text_encoders/t5xxl_fp8_e4m3fn.safetensors"], **PANEL_VALUES[panel])
    settings = validate_settings(panel.settings_from_values(values))
    restored = panel.values_from_settings(settings)
    for name, value in restored.items():
        assert values[name] == value, name
    assert panel.settings_from_values({**values, **restored}) == settings


def test_generate_text_to_image_and_image_to_image(context):
    [text_only] = generate.build_requests(shared(image_strength=0.7), context)
    assert (text_only.tool, text_only.image_path, text_only.image_strength) == ("generate", None, None)
    image = picture()
    [img2img] = generate.build_requests(shared(init_image=image, image_strength=0.7), context)
    assert img2img.image_strength == 0.7
    assert Path(img2img.image_path).parent == context.inputs.folder
    assert np.array_equal(np.asarray(Image.open(img2img.image_path)), np.asarray(image))
    [again] = generate.build_requests(shared(init_image=image.copy()), context)
    assert again.image_path == img2img.image_path  # same content, same file, written once
    assert len(list(context.inputs.folder.iterdir())) == 1
    [face_fixed] = generate.build_requests(shared(face_fix=True, face_fix_strength=0.5), context)
    assert face_fixed.extra == {"face_fix": True, "face_fix_prompt": "", "face_fix_strength": 0.5,
                                "face_fix_padding": 32}


def test_fill_inpaint_sends_the_painted_mask(context):
    editor = {"background": picture().convert("RGBA"), "layers": [stroke_layer()], "composite": None}
    [request] = fill.build_requests(shared(editor=editor, mode=fill.INPAINT, keep_unmasked=True), context)
    assert request.tool == "fill" and request.keep_unmasked and request.outpaint_padding is None
    mask = np.asarray(Image.open(request.masked_image_path))
    expected = np.zeros((48, 64), np.uint8)
    expected[10:20, 10:30] = 255
    assert np.array_equal(mask, expected)
    assert np.array_equal(np.asarray(Image.open(request.image_path)), np.asarray(picture()))
    assert request.extra == {"mask_invert": False, "mask_grow_px": 0, "masked_content": "original"}
    assert request.mask_blur == 0 and request.image_strength is None  # the slider's 0: from noise
    [blurred] = fill.build_requests(shared(editor=editor, mode=fill.INPAINT, mask_blur_px=6), context)
    assert blurred.mask_blur == 6 and blurred.masked_image_path == request.masked_image_path  # the tool blurs it
    [from_image] = fill.build_requests(shared(editor=editor, mode=fill.INPAINT, image_strength=0.25,
                                              masked_content="fill"), context)
    assert from_image.image_strength == 0.25 and from_image.extra["masked_content"] == "fill"


def test_fill_takes_an_uploaded_mask_in_place_of_the_strokes(context, tmp_path):
    mask = np.zeros((24, 32), np.uint8)
    mask[2:8, 20:30] = 255  # half the image's size: stretched to it
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    editor = {"background": picture().convert("RGBA"), "layers": [stroke_layer()], "composite": None}
    [request] = fill.build_requests(shared(editor=editor, mode=fill.INPAINT, mask_upload=str(path),
                                           mask_invert=True), context)
    sent = np.asarray(Image.open(request.masked_image_path))
    expected = np.full((48, 64), 255, np.uint8)
    expected[4:16, 40:60] = 0  # inverted, as asked
    assert np.array_equal(sent, expected)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidRequest, match="The file empty.png is empty"):
        fill.editor_mask(editor, uploaded=str(tmp_path / "empty.png"))


def test_fill_mask_options_invert_and_grow():
    editor = {"background": picture(), "layers": [stroke_layer()]}
    inverted = np.asarray(fill.editor_mask(editor, invert=True))
    assert inverted[15, 20] == 0 and inverted[40, 60] == 255
    grown = np.asarray(fill.editor_mask(editor, grow_px=4))
    assert grown[7, 20] == 255 and grown[3, 20] == 0
    with pytest.raises(InvalidRequest, match="mask is empty"):
        fill.editor_mask({"background": picture(), "layers": [stroke_layer(box=(0, 0, 0, 0))]})
    with pytest.raises(InvalidRequest, match="Upload an image"):
        fill.build_requests(shared(editor={"background": None, "layers": []}, mode=fill.INPAINT), RequestContext(
            InputStore(Path("/nonexistent"))))


def test_fill_outpaint_sends_padding_and_previews_the_engines_canvas(context):
    values = shared(editor={"background": picture(), "layers": []}, mode=fill.OUTPAINT, pad_top=0, pad_right=16,
                    pad_bottom=0, pad_left=8, pad_unit="px", keep_unmasked=True)
    [request] = fill.build_requests(values, context)
    assert request.outpaint_padding == "0px,16px,0px,8px" and request.masked_image_path is None
    canvas, mask = fill.outpaint_preview(values, 16)
    assert canvas.size == (96, 48) and mask.size == (96, 48)  # 64 + 16 + 8 = 88, padded to a multiple of 16
    canvas, _ = fill.outpaint_preview(values, 32)  # a model whose VAE scales by 16: its tokens are 32 px
    assert canvas.size == (96, 64)
    assert fill.padding_values("10%") == {"mode": fill.OUTPAINT, "pad_unit": "%", "pad_top": 10.0,
                                          "pad_right": 10.0, "pad_bottom": 10.0, "pad_left": 10.0}
    assert fill.padding_values(None) == {"mode": fill.INPAINT}


def test_depth_uses_the_shown_map_or_lets_the_engine_estimate_one(context):
    photo, depth_map = picture(), picture((90, 90, 90))
    [with_map] = depth.build_requests(shared(photo=photo, depth_map=depth_map), context)
    assert with_map.depth_image_path and with_map.image_path is None
    [estimated] = depth.build_requests(shared(photo=photo, depth_map=None), context)
    assert estimated.depth_image_path is None and estimated.image_path
    with pytest.raises(InvalidRequest, match="Upload a photo"):
        depth.build_requests(shared(photo=None, depth_map=None), context)
    # Canny: the photo's edges are taken at the output size, whatever preview the map box shows; without a photo,
    # the map box's own edge map
    canny = {"canny_edges": True, "canny_low": 50, "canny_high": 150}
    [edges] = depth.build_requests(shared(photo=photo, depth_map=depth_map, **canny), context)
    assert edges.image_path and edges.depth_image_path is None
    assert edges.extra == {"canny_edges": True, "canny_low": 50, "canny_high": 150}
    [given] = depth.build_requests(shared(photo=None, depth_map=depth_map, **canny), context)
    assert given.depth_image_path and given.image_path is None
    assert depth.estimates_depth(shared(photo=photo, depth_map=None))  # so the page checks for an estimator
    assert not depth.estimates_depth(shared(photo=photo, depth_map=None, **canny))  # edges need none


def test_kontext_needs_a_reference_and_an_instruction(context):
    [request] = kontext.build_requests(shared(reference=picture(), kontext_auto_resize="Its own size"), context)
    assert request.tool == "kontext" and request.image_path and request.extra == {"kontext_auto_resize": False}
    [default] = kontext.build_requests(shared(reference=picture()), context)
    assert default.extra == {}  # the tool's default: Kontext's size for a reference larger than it
    for extra, label in (({}, "Kontext's size when larger"), ({"kontext_auto_resize": True}, "Always Kontext's size "
                         "(as diffusers)"), ({"kontext_auto_resize": False}, "Its own size")):
        assert kontext.values_from_settings({"tool": "kontext", "extra": extra})["kontext_auto_resize"] == label
    assert request.reference_image_paths == ()
    [several] = kontext.build_requests(shared(reference=picture(), reference_3=picture((0, 0, 250))), context)
    [more] = several.reference_image_paths  # the filled slots, in order
    assert np.asarray(Image.open(more))[0, 1].tolist() == [0, 0, 250]
    with pytest.raises(InvalidRequest, match="instruction"):
        kontext.build_requests(shared(reference=picture(), prompt="  "), context)
    with pytest.raises(InvalidRequest, match="reference image"):
        kontext.build_requests(shared(reference=None), context)


def test_controlnet_canny_and_upscale(context):
    canny = shared(control_image=picture(), mode=controlnet.CANNY, canny_low=50, canny_high=150,
                   controlnet_strength=0.5)
    [request] = controlnet.build_requests(canny, context)
    assert (request.tool, request.controlnet_strength, request.extra) == (
        "controlnet", 0.5, {"canny_low": 50, "canny_high": 150})
    assert request.controlnet_image_path and (request.image_path, request.image_strength) == (None, None)
    [request] = controlnet.build_requests({**canny, "init_image": picture(), "image_strength": 0.3}, context)
    assert request.image_path and request.image_strength == 0.3  # image-to-image, steered by the edges
    face_fix = {**canny, "face_fix": True, "face_fix_prompt": "a smile"}
    [request] = controlnet.build_requests(face_fix, context)
    assert request.extra == {"canny_low": 50, "canny_high": 150, "face_fix": True, "face_fix_prompt": "a smile",
                             "face_fix_strength": 0.4, "face_fix_padding": 32}
    restored = controlnet.values_from_settings(validate_settings(controlnet.settings_from_values(face_fix)))
    assert (restored["face_fix"], restored["face_fix_prompt"]) == (True, "a smile")
    upscale = shared(control_image=picture(), mode=controlnet.UPSCALE, upscale_factor=2, width=0, height=0,
                     controlnet_strength=0.6, controlnet_weights="my-upscaler", init_image=picture())
    [request] = controlnet.build_requests(upscale, context)
    assert (request.image_path, request.image_strength) == (None, None)  # Canny mode's input only
    assert (request.tool, request.width, request.height) == ("upscale", None, None)  # the engine sizes it
    assert request.extra == {"upscale_factor": 2.0, "controlnet_path": "my-upscaler"}
    [request] = controlnet.build_requests({**upscale, "tiles": True, "tile_size": 0, "tile_overlap": 0,
                                           "upscale_strength": 0.8, "upscaler": "Lanczos"}, context)
    assert request.extra == {"upscale_factor": 2.0, "controlnet_path": "my-upscaler", "upscaler": "Lanczos",
                             "tile_size": 0}  # the model's own tile, the default overlap
    assert request.image_strength == 0.8
    [request] = controlnet.build_requests({**upscale, "upscaler": "4x-UltraSharp", "upscaler_only": True}, context)
    assert request.extra == {"upscale_factor": 2.0, "controlnet_path": "my-upscaler", "upscaler": "4x-UltraSharp",
                             "upscaler_only": True}  # A1111's Extras: the model's image alone
    assert controlnet.values_from_settings({"tool": "upscale", "extra": request.extra})["upscaler_only"] is True
    [request] = controlnet.build_requests({**canny, "controlnet_mode": "depth", "controlnet_weights": "my-union"},
                                          context)
    assert request.extra == {"canny_low": 50, "canny_high": 150, "controlnet_mode": "depth",
                             "controlnet_path": "my-union"}  # a Union ControlNet's control type
    edges = np.asarray(controlnet.edges_preview(picture(), 100, 200))
    assert edges.shape == (48, 64, 3) and set(np.unique(edges)) == {0, 255}


def test_upscale_batch_makes_one_request_per_image_and_refuses_a_bad_upload_before_any(context, tmp_path):
    files = []
    for index, colour in enumerate(((200, 0, 0), (0, 200, 0))):
        picture(colour).save(tmp_path / f"batch{index}.png")
        files.append(str(tmp_path / f"batch{index}.png"))
    upscale = shared(mode=controlnet.UPSCALE, upscale_factor=2, width=0, height=0, controlnet_strength=0.6,
                     control_image=picture((0, 0, 200)), upscale_batch=files)
    requests = controlnet.build_requests(upscale, context)
    assert [r.tool for r in requests] == ["upscale"] * 3 and len({r.image_path for r in requests}) == 3
    assert np.array_equal(np.asarray(Image.open(requests[1].image_path)), np.asarray(picture((200, 0, 0))))
    assert len(controlnet.build_requests({**upscale, "control_image": None}, context)) == 2
    with pytest.raises(InvalidRequest, match="more than 16"):
        controlnet.build_requests({**upscale, "batch_count": 8}, context)
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    picture((1, 2, 3)).save(tmp_path / "new.png")
    before = set(context.inputs.folder.iterdir())
    with pytest.raises(InvalidRequest, match="broken.png"):
        controlnet.build_requests({**upscale, "upscale_batch": [str(tmp_path / name) for name in ("new.png",
                                                                                                 "broken.png")]},
                                  context)
    assert set(context.inputs.folder.iterdir()) == before  # nothing of the refused batch was kept
    Image.new("RGB", (3000, 2000)).save(tmp_path / "large.png")  # upscaled twice: past the 4096 px side limit
    with pytest.raises(InvalidRequest, match=r"^large.png: The image upscaled from 3000x2000 would be 6000x4000"):
        controlnet.build_requests({**upscale, "upscale_batch": [str(tmp_path / name) for name in ("new.png",
                                                                                                 "large.png")]},
                                  context)
    assert set(context.inputs.folder.iterdir()) == before  # refused before the first image ran or was kept


def test_controlnet_units_with_an_image_run_beside_unit_1_and_presets_keep_their_settings(context):
    values = shared(control_image=picture(), mode=controlnet.CANNY, unit2_image=None, unit2_strength=0.9,
                    unit3_image=picture((0, 0, 200)), unit3_weights="my-union", unit3_mode="depth", unit3_strength=0.7,
                    unit4_image=picture((0, 200, 0)), unit4_weights="", unit4_mode="", unit4_strength=0.4)
    [request] = controlnet.build_requests(values, context)
    third, fourth = request.controlnet_units  # unit 2 has no image: it does not run
    assert {k: v for k, v in third.items() if k != "controlnet_image_path"} == {
        "controlnet_strength": 0.7, "controlnet_path": "my-union", "controlnet_mode": "depth"}
    assert fourth.keys() == {"controlnet_strength", "controlnet_image_path"}  # the tool's defaults
    assert Path(third["controlnet_image_path"]).parent == context.inputs.folder
    assert np.array_equal(np.asarray(Image.open(fourth["controlnet_image_path"])), np.asarray(picture((0, 200, 0))))
    settings = validate_settings(settings_from_request(request))  # as a preset or "send to" holds them
    restored = controlnet.values_from_settings(settings)
    assert (restored["unit2_mode"], restored["unit2_weights"], restored["unit2_strength"]) == ("depth", "my-union", 0.7)
    assert "unit4_strength" not in restored  # the preset's units fill the page's slots in order
    upscale = controlnet.build_requests({**values, "mode": controlnet.UPSCALE, "width": 0, "height": 0}, context)
    assert upscale[0].controlnet_units == ()  # further units belong to Canny mode


def test_redux_sends_filled_slots_with_their_strengths(context):
    values = shared(redux_image_1=picture(), redux_image_2=None, redux_image_3=picture((0, 0, 200)),
                    redux_image_4=None, redux_strength_1=0.2, redux_strength_2=0.4, redux_strength_3=0.8,
                    redux_strength_4=1.0)
    [request] = redux.build_requests(values, context)
    assert len(request.redux_image_paths) == 2 and request.redux_image_strengths == (0.2, 0.8)
    with pytest.raises(InvalidRequest, match="at least one image"):
        redux.build_requests(shared(), context)


def test_settings_restored_from_a_png_fill_the_panel(tmp_path):
    request = GenerationRequest(tool="fill", model="tiny-fill", prompt="p", seed=9, steps=3, width=64, height=48,
                                keep_unmasked=True, outpaint_padding="0px,16px,0px,16px", image_path="/x.png",
                                mask_blur=5, extra={"mask_invert": False, "mask_grow_px": 2})
    path = gallery.save_result(tmp_path, GenerationResult(picture(), request, {}, png_text_chunks(request), 0.1))
    values = fill.values_from_settings(settings_from_png(path))
    assert values["mode"] == fill.OUTPAINT and values["pad_right"] == 16 and values["mask_grow_px"] == 2
    assert values["mask_blur_px"] == 5
    assert (values["seed"], values["steps"], values["width"], values["prompt"]) == (9, "3", 64, "p")
    # a seed comes with its variation (none here), so a variation left on the panel cannot change the replay
    assert shared_values({"seed": None}) == {"random_seed": True, "variation_seed": -1, "variation_strength": 0.0}


# ----- results on disk, history, status ------------------------------------------------------


def test_results_are_saved_with_metadata_and_never_overwritten(tmp_path):
    request = GenerationRequest(model="dev", prompt="a boat", seed=3, steps=2, width=64, height=48)
    result = GenerationResult(picture(), request, {}, png_text_chunks(request), 0.5)
    first = gallery.save_result(tmp_path, result)
    second = gallery.save_result(tmp_path, result)
    assert first != second and first.exists() and second.exists()
    assert settings_from_png(second) == settings_from_request(request)


def test_history_is_rebuilt_from_the_outputs_folder(tmp_path):
    request = GenerationRequest(prompt="x" * 200, seed=11, width=64, height=48)
    result = GenerationResult(picture(), request, {}, png_text_chunks(request), 0.5)
    older = gallery.save_result(tmp_path, result)
    newer = gallery.save_result(tmp_path, GenerationResult(picture(), request.with_(prompt="a hill", seed=12), {},
                                                           png_text_chunks(request.with_(prompt="a hill", seed=12)), 1))
    os.utime(older, (1_000_000_000, 1_000_000_000))
    for ignored in (tmp_path / "inputs" / "img.png", tmp_path / "presets" / "x.png"):
        ignored.parent.mkdir(parents=True)
        picture().save(ignored)
    items = gallery.history(tmp_path)  # what a restarted server shows
    assert [Path(p) for p, _ in items] == [newer, older]
    assert items[0][1] == "a hill · seed 12"
    assert items[1][1].endswith("… · seed 11") and len(items[1][1]) < 100
    assert gallery.history(tmp_path / "missing") == []


def test_status_strip_names_backend_memory_swap_and_download():
    resident = [{"kind": "transformer", "name": "transformer /m/models/dev/transformer", "bytes": 3 * 2**30},
                {"kind": "vae", "name": "VAE /m/models/dev/vae", "bytes": 5 * 2**20},
                {"kind": "auxiliary", "name": "canny (/m/models/canny)", "bytes": 2**20}]
    text = status_markdown({"backend": "Metal", "resident": resident, "resident_bytes": 3 * 2**30 + 6 * 2**20,
                            "busy": True, "last_load": {"what": "VAE /m/models/dev/vae", "seconds": 1.0},
                            "last_swap": {"from": "transformer /m/models/schnell/transformer",
                                          "to": "transformer /m/models/dev/transformer", "seconds": 12.5},
                            "download": {"model": "fill", "done_bytes": 2**30, "total_bytes": 4 * 2**30}})
    assert "**Backend** Metal" in text and "generating" in text
    assert "transformer dev 3.00 GB, VAE dev 5.0 MB, side model canny 1.0 MB (total 3.01 GB)" in text
    assert "**Last swap** transformer schnell → transformer dev in 12.50 s" in text
    assert "**Downloading** fill: 1.00 GB of 4.00 GB" in text
    idle = status_markdown({"backend": "CPU", "resident": [], "last_swap": None, "download": None,
                            "last_load": {"what": "text encoders /m/models/dev", "seconds": 0.25}})
    assert "none (the next run loads them)" in idle and "**Last load** text encoders dev in 0.25 s" in idle and "idle" in idle
    relative = status_markdown({"backend": "CPU", "resident": [  # the default models folder is ./models
        {"kind": "transformer", "name": "transformer models/demo-mix/transformer", "bytes": 2**20}]})
    assert "transformer demo-mix 1.0 MB" in relative


# ----- the job wrapper on a real tiny model ----------------------------------------------------


def test_progress_streams_steps_and_stop_ends_within_one_step(tiny_schnell):
    manager = ModelManager(models_dir=tiny_schnell.parent)
    request = GenerationRequest(model=str(tiny_schnell), prompt="a fox", steps=3, width=32, height=32)
    events = list(stream(lambda report: manager.generate(request, report), threading.Event()))
    steps, finished = [e for e in events[:-1] if not isinstance(e, Loading)], events[-1]
    assert [e.step for e in steps] == [1, 2, 3] and all(isinstance(e, Step) for e in steps)
    assert isinstance(finished, Finished) and finished.result.image.size == (32, 32)
    assert steps[-1].seconds_per_step > 0
    assert "step 3 of 3" in event_text(steps[-1], 1, 1) and "Image 2 of 4" in event_text(steps[-1], 2, 4)

    cancel = threading.Event()
    seen = []
    for event in stream(lambda report: manager.generate(request.with_(steps=8), report, cancel.is_set), cancel):
        if isinstance(event, Step):
            seen.append(event.step)
            cancel.set()
    assert isinstance(event, Stopped)
    assert re.search(r"Stopped after step [12] of 8", event.message)  # the step running when asked may finish
    assert seen[0] == 1 and len(seen) <= 2 and not manager.status()["busy"]


def test_job_board_cancels_only_the_sessions_own_job():
    board = JobBoard()
    mine, theirs = board.begin("me"), board.begin("them")
    assert board.cancel("me") and mine.is_set() and not theirs.is_set()
    board.end("me", mine)
    assert not board.cancel("me")


# ----- the app -----------------------------------------------------------------------------------


def test_command_line_and_folders(tmp_path):
    from webui.app import parse_args
    from webui.studio import StudioFolders

    args = parse_args([])
    assert (args.host, args.port, args.listen, args.auth) == ("127.0.0.1", 7860, False, None)
    assert args.openai_api and args.a1111_api and not parse_args(["--no-a1111-api"]).a1111_api
    args = parse_args(["--listen", "--auth", "me:s3:cret", "--port", "7000", "--models-dir", str(tmp_path)])
    assert args.listen and args.auth == "me:s3:cret" and args.port == 7000
    with pytest.raises(SystemExit):
        parse_args(["--auth", "no-colon"])
    folders = StudioFolders.default(tmp_path / "out", models_dir=tmp_path / "models", loras=[])
    assert folders.user_presets == (tmp_path / "out" / "presets").resolve()
    assert folders.inputs == folders.outputs / "inputs"
    assert set(folders.allowed_paths()) == {str(folders.outputs), str(folders.user_presets),
                                            str(folders.shipped_presets)}
    assert str(tmp_path / "models") not in folders.allowed_paths()


def test_every_run_button_reaches_the_engine_queue(tmp_path):
    from webui.app import build_app
    from webui.jobs import ENGINE_QUEUE
    from webui.studio import StudioFolders

    app = build_app(ModelManager(models_dir=tmp_path), StudioFolders.default(tmp_path / "out", loras=[]),
                    max_queue_size=5)
    runs = {fn.api_name: fn for fn in app.fns.values()
            if fn.api_name in ("generate", "fill", "depth", "kontext", "controlnet", "redux", "estimate_depth")}
    assert len(runs) == 7
    estimate = runs.pop("estimate_depth")  # not a job: it runs outside the engine's queue, one at a time
    assert (estimate.concurrency_id, estimate.concurrency_limit) == (ENGINE_QUEUE, 1)
    # every Run event waits in webui.turns, where the queue view lists it, not in Gradio's queue
    assert {fn.concurrency_limit for fn in runs.values()} == {None}
    assert app._queue.max_size == 5
    assert set(app.studio.panels) >= {"generate", "fill", "depth", "kontext", "controlnet", "redux"}
    history = {app.studio.outputs.history._id, app.studio.outputs.status_strip._id}
    for fn in runs.values():  # a tool's API result is its own images; the history refreshes in a private event
        assert not history & {block._id for block in fn.outputs}, fn.api_name


def test_send_to_carries_every_setting_into_its_own_tool_and_the_shared_ones_into_another(tmp_path):
    request = GenerationRequest(tool="generate", model="tiny", prompt="a fox", negative_prompt="blur",
                                true_cfg_scale=2.0, seed=9, steps=3, width=64, height=48, guidance=4.0,
                                image_strength=0.5, resize_mode="just resize")
    path = gallery.save_result(tmp_path, GenerationResult(picture(), request, {}, png_text_chunks(request), 0.1))
    assert gallery.settings_to_send(path, ("generate",)) == settings_from_request(request)
    into_fill = gallery.settings_to_send(path, ("fill",))
    assert into_fill == {"prompt": "a fox", "negative_prompt": "blur", "true_cfg_scale": 2.0, "seed": 9, "steps": 3,
                         "width": 64, "height": 48, "lora_paths": [], "lora_scales": [],
                         "lora_text_encoder_scales": []}  # not its model, guidance
    picture().save(tmp_path / "plain.png")
    assert gallery.settings_to_send(tmp_path / "plain.png", ("fill",)) == {}


def test_the_controlnet_tab_has_the_hires_fix_in_canny_mode():
    hires = {"hires": True, "hires_scale": 1.5, "hires_steps": 6, "hires_strength": 0.35, "hires_upscaler": "Lanczos",
             "hires_prompt": "sharper"}
    settings = validate_settings(controlnet.settings_from_values(shared(mode=controlnet.CANNY, **hires)))
    assert (settings["hires_scale"], settings["hires_steps"], settings["hires_prompt"]) == (1.5, 6, "sharper")
    restored = controlnet.values_from_settings(settings)
    assert {key: restored[key] for key in hires} == hires
    upscale = controlnet.settings_from_values(shared(mode=controlnet.UPSCALE, **hires))
    assert "hires_scale" not in upscale  # Upscale mode makes no image from text
    assert controlnet.values_from_settings({**settings, "hires_scale": None})["hires"] is False


def test_a_refused_preview_input_clears_the_preview_of_the_input_before():
    """The ControlNet tab's edges, the Depth tab's map, Fill's canvas: a new upload that is refused must not leave
    the last one's preview on screen as if it were the new one's."""
    import gradio as gr

    def refused(image):
        raise InvalidRequest(f"The file {image} is empty.")

    handler = safe_action("status", refused, clears=("edges",))("empty.png")
    shown = next(handler)
    assert shown["edges"] is None and "The file empty.png is empty." in shown["status"]
    with pytest.raises(gr.Error, match="is empty"):  # then the event ends as an error, for gradio_client
        next(handler)


def test_the_ic_edit_tab_picks_its_lora_from_the_library(tmp_path):
    """As the CLI's --ic-edit-lora: a library LoRA in place of RiverZ's (by name; a result records its file, which
    restores to the same pick); IC-Edit's own when none is picked; an unknown name refused in a sentence."""
    lora = tmp_path / "my-ic-edit.safetensors"
    lora.write_bytes(b"")
    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), loras={"my-ic-edit": lora})
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(photo)
    values = {"prompt": "", "instruction": "make it red", "reference": str(photo), "ic_edit_lora": "my-ic-edit"}
    [request] = in_context.build_requests("ic-edit", values, context)
    assert request.extra["ic_edit_lora"] == str(lora)
    restored = in_context.values_from_settings("ic-edit", {"extra": dict(request.extra)})
    [again] = in_context.build_requests("ic-edit", {**values, **restored}, context)
    assert again.extra["ic_edit_lora"] == str(lora)
    [own] = in_context.build_requests("ic-edit", {**values, "ic_edit_lora": in_context.OWN_IC_EDIT_LORA}, context)
    assert "ic_edit_lora" not in own.extra
    assert in_context.values_from_settings("ic-edit", {"extra": {}})["ic_edit_lora"] == in_context.OWN_IC_EDIT_LORA
    with pytest.raises(InvalidRequest, match="The LoRA 'gone' is not in the LoRA library"):
        in_context.build_requests("ic-edit", {**values, "ic_edit_lora": "gone"}, context)
