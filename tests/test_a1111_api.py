"""A1111's /sdapi/v1 on the studio's server, driven over real HTTP as A1111 clients send it: the shipped demo
models make images that follow the prompt, an inpainting mask keeps its unmasked pixels, resize modes shape the
input, options pick the model, progress shows the running step with its preview, interrupt stops a job,
png-info reads ours and A1111's PNGs, unknown fields are named in `info`, and bad input gets a 4xx in A1111's
error shape.

One server on the demo models for the module (as tests/test_openai_api.py starts it), read with the independent
shape classifier of tests/fixtures/shape_classifier.py.
"""

import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from huggingface_hub import constants
from PIL import ExifTags, Image, PngImagePlugin
from safetensors.numpy import save_file

from mflux_core.controlnet_units import MAX_UNITS
from mflux_core.demo.dataset import low_resolution, upscale_example
from mflux_core.demo.evaluate import EVALUATION_SEED, FILL_TOLERANCE
from mflux_core.demo.examples import SOURCES
from mflux_core.demo.family import IMAGE_SIZE
from mflux_core.demo.shapes import shape_mask
from mflux_core.images.canny import canny_edges
from mflux_core.images.masks import distance_to_mask
from mflux_core.images.resize_modes import RESIZE_AND_FILL, resize_to
from mflux_core.manager import ModelManager
from mflux_core.request import GenerationRequest
from mflux_core.upscaler_models import read_upscaler, upscale_with
from mflux_core.weights.resolve import DEMO_MODELS_ENV, demo_folder
from tests.fixtures.lora_files import Dims, write_diffusers_lora
from tests.fixtures.shape_classifier import classify, iou
from tests.fixtures.upscaler_models import random_rrdb, real_esrgan_names, write
from tests.test_comfy_workflow import flux_dev_example
from tests.test_webui_browser import free_port, request_in
from webui.a1111_adetailer import face_fix_extra
from webui.a1111_api import Txt2ImgParams, sampling_settings, sdapi_router
from webui.a1111_xyz import axis_labels
from webui.app import build_app, launch_kwargs
from webui.gallery import history
from webui.studio import StudioFolders

TIMEOUT_S = 300
CAPTION = "a red circle in the top left on a blue background"
LAYOUT_IOU = 0.5  # a ControlNet result's shape vs the control scene's, as tests/test_webui_demo.py asks of the page
X2PLUS = "RealESRGAN_x2plus"  # an upscaler model in the models folder: A1111's "R-ESRGAN 2x+"
COPY = "demo-copy"  # a second text-to-image model: the demo model's files in the models folder


STYLES_CSV = 'name,prompt,negative_prompt\n"Framed","a photo of {prompt}, framed","blurry"\nBold,"bold colours",\n'


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111-studio")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(DEMO_MODELS_ENV, raising=False)
        shutil.copytree(demo_folder("demo"), root / "models" / COPY)
        (root / "loras").mkdir()
        save_file({"lora_down.weight": np.zeros((1, 4), np.float32)}, str(root / "loras" / "ink.safetensors"),
                  metadata={"ss_output_name": "ink-v2", "ss_base_model_version": "flux1"})
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_CACHE", str(root / "hub"))
        patch.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
        (root / "styles").mkdir()
        (root / "styles" / "styles.csv").write_text(STYLES_CSV)
        write(real_esrgan_names(random_rrdb(seed=9, scale=4, in_nc=12, shuffle_factor=2, num_blocks=1)),
              root / "models" / "RealESRGAN" / f"{X2PLUS}.pth")  # Real-ESRGAN's x2, named as A1111 downloads it
        folders = StudioFolders.default(root / "outputs", models_dir=root / "models", loras=[root / "loras"],
                                        styles=root / "styles")
        manager = ModelManager(models_dir=root / "models")
        app = build_app(manager, folders, openai_api=False)
        port = free_port()
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                   **launch_kwargs(folders))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/sdapi/v1", timeout=TIMEOUT_S) as http:
            yield SimpleNamespace(http=http, folders=folders, manager=manager, examples=app.studio.examples,
                                  studio=app.studio)
        app.close()


def b64(image: Image.Image, pnginfo=None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def answer(response):
    assert response.status_code == 200, response.text
    return response.json()


def made(response) -> dict:
    """An images answer with its `info` JSON string read."""
    body = answer(response)
    return {**body, "info": json.loads(body["info"])}


def saved_requests(studio, seed: int) -> list[dict]:
    return [r for r in (request_in(path) for path, _ in history(studio.folders.outputs)) if r["seed"] == seed]


def assert_a1111_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"} and body["detail"].endswith("."), body
    assert "Traceback" not in response.text
    return body["detail"]


# ----- txt2img -----------------------------------------------------------------------------------


def test_txt2img_follows_the_prompt_and_names_what_it_ignored(studio):
    body = made(studio.http.post("/txt2img", json={
        "prompt": CAPTION, "seed": 41, "batch_size": 2, "width": IMAGE_SIZE, "height": IMAGE_SIZE,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "restore_faces": True, "tiling": False, "hr_scale": 2,
        "alwayson_scripts": {"ADetailer": {"args": []}}, "distilled_cfg_scale": 3.5,
        "override_settings": {"sd_model_checkpoint": "demo", "CLIP_stop_at_last_layers": 2}}))
    info = body["info"]
    assert len(body["images"]) == 2 and info["all_seeds"] == [41, 42] and info["seed"] == 41
    for text, infotext in zip(body["images"], info["infotexts"]):
        image = decoded(text)
        reading = classify(np.asarray(image.convert("RGB")))
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert (reading.background, reading.colour, reading.region) == ("blue", "red", "top left"), reading
        assert image.info["parameters"] == infotext and "Distilled CFG Scale: 3.5" in infotext  # the PNG's metadata
        assert "Sampler: DPM++ 2M, Schedule type: Karras" in infotext
    assert info["all_prompts"] == [CAPTION] * 2 and info["sd_model_name"] == "demo"
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras")
    assert body["parameters"]["prompt"] == CAPTION and body["parameters"]["restore_faces"] is True
    ignored = info["ignored"]
    assert {"restore_faces", "alwayson_scripts.ADetailer", "override_settings.CLIP_stop_at_last_layers"} <= \
        set(ignored)
    assert "tiling" not in ignored and "hr_scale" not in ignored  # at its default, or off with enable_hr
    assert not any("DPM++ 2M" in item or "Karras" in item for item in ignored)
    assert saved_requests(studio, 41) == []  # save_images is off by default, as in A1111
    assert info["notes"] == []


def test_fields_sent_as_null_take_their_defaults_as_a1111s_optional_fields_do(studio):
    # clients that send every field they know (JavaScript's null for what the user left unset)
    nulls = dict.fromkeys(("negative_prompt", "seed", "subseed", "steps", "batch_size", "cfg_scale", "sampler_name",
                           "scheduler", "styles", "override_settings", "alwayson_scripts", "script_name", "script_args",
                           "hr_upscaler", "enable_hr", "denoising_strength", "refiner_checkpoint", "send_images"))
    body = made(studio.http.post("/txt2img", json={"prompt": CAPTION, "width": IMAGE_SIZE, "height": IMAGE_SIZE,
                                                   **nulls}))
    assert len(body["images"]) == 1 and body["info"]["negative_prompt"] == "" and body["info"]["ignored"] == []
    assert classify(np.asarray(decoded(body["images"][0]).convert("RGB"))).colour == "red"


def test_a_size_the_demo_model_does_not_make_is_named_in_the_info_notes(studio):
    body = made(studio.http.post("/txt2img", json={"prompt": CAPTION, "seed": 5, "steps": 2, "width": 256,
                                                   "height": 256}))
    assert decoded(body["images"][0]).size == (128, 128) and (body["info"]["width"], body["info"]["height"]) == (128, 128)
    assert body["info"]["notes"] == ["demo makes 48x48 to 128x128 images only, so this one is 128x128 instead of "
                                     "256x256; other sizes need a FLUX.1 model."]


def test_a_variation_seed_keeps_the_seed_and_counts_the_subseed_up_as_a1111(studio):
    fields = {"prompt": CAPTION, "seed": 41, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    plain = made(studio.http.post("/txt2img", json=fields))
    body = made(studio.http.post("/txt2img", json={**fields, "subseed": 700, "subseed_strength": 0.2,
                                                   "batch_size": 2}))
    info = body["info"]
    assert (info["all_seeds"], info["all_subseeds"], info["subseed_strength"]) == ([41, 41], [700, 701], 0.2)
    assert "Seed: 41, Variation seed: 700, Variation seed strength: 0.2" in info["infotexts"][0]
    first, second = (np.asarray(decoded(text).convert("RGB")) for text in body["images"])
    assert not np.array_equal(first, second)
    assert classify(first).colour == "red"  # a variation of the seed's picture, still what the prompt asks
    assert plain["info"]["subseed"] == -1 and "subseed" not in plain["info"]["ignored"]


def test_enable_hr_runs_the_hires_fix_as_a1111_clients_ask_for_it(studio):
    fields = {"prompt": CAPTION, "seed": 21, "steps": 2, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "enable_hr": True}
    body = made(studio.http.post("/txt2img", json={**fields, "hr_scale": 1.5, "hr_upscaler": "Latent",
                                                   "hr_second_pass_steps": 3, "denoising_strength": 0.6}))
    image, infotext = decoded(body["images"][0]), body["info"]["infotexts"][0]
    reading = classify(np.asarray(image.convert("RGB")))
    assert image.size == (96, 96) and (reading.background, reading.colour, reading.region) == \
        ("blue", "red", "top left"), reading
    assert "Hires upscale: 1.5, Hires steps: 3" in infotext and "Denoising strength: 0.6" in infotext
    assert "hr_upscaler 'Latent' (not in the studio: Lanczos ran)" in body["info"]["ignored"]

    resized = made(studio.http.post("/txt2img", json={**fields, "hr_resize_x": 96, "hr_resize_y": 80}))
    assert decoded(resized["images"][0]).size == (96, 96) and "Hires upscale: 1.5" in resized["info"]["infotexts"][0]
    assert any(item.startswith("hr_resize_x/hr_resize_y's exact size") for item in resized["info"]["ignored"])
    assert "Hires upscale" in assert_a1111_error(studio.http.post("/txt2img", json={**fields, "hr_scale": 9}), 400)
    plain = made(studio.http.post("/img2img", json={"init_images": [b64(image)], "steps": 1, "enable_hr": True,
                                                    "prompt": CAPTION}))
    assert "enable_hr (the hires fix follows txt2img only)" in plain["info"]["ignored"]


def test_adetailers_face_unit_turns_the_face_fix_on(studio):
    """ADetailer's args as its API takes them ([enable, skip_img2img, unit, ...]): the first face unit's prompt,
    denoising strength and padding run the face fix (its model is named: faces are found another way here); a hand
    unit is named and left; disabled, nothing runs and nothing is named."""
    units = [{"ad_model": "hand_yolov8n.pt"}, {"ad_model": "face_yolov8n.pt", "ad_prompt": "a smile",
                                                "ad_denoising_strength": 0.5, "ad_inpaint_only_masked_padding": 24}]
    body = made(studio.http.post("/txt2img", json={"prompt": CAPTION, "seed": 340, "steps": 2, "save_images": True,
                                                   "alwayson_scripts": {"ADetailer": {"args": [True, False, *units]}}}))
    [request] = saved_requests(studio, 340)
    assert request["extra"] == {"face_fix": True, "face_fix_prompt": "a smile", "face_fix_strength": 0.5,
                                "face_fix_padding": 24}
    assert "ADetailer model: OpenCV frontal face" in body["info"]["infotexts"][0]
    assert body["info"]["ignored"] == [
        "alwayson_scripts.ADetailer unit with ad_model 'hand_yolov8n.pt' (the face fix runs one face unit)",
        "alwayson_scripts.ADetailer ad_model 'face_yolov8n.pt' (faces are found by OpenCV's frontal-face detector "
        "here)"]
    off = made(studio.http.post("/txt2img", json={"prompt": CAPTION, "seed": 341, "steps": 2, "save_images": True,
                                                  "alwayson_scripts": {"ADetailer": {"args": [False, False, *units]}}}))
    assert off["info"]["ignored"] == [] and saved_requests(studio, 341)[0]["extra"] == {}


def test_adetailer_values_out_of_range_are_named_and_the_face_fixs_own_run():
    ignored = []
    unit = {"ad_model": "face_yolov8n.pt", "ad_denoising_strength": 7, "ad_inpaint_only_masked_padding": -1}
    assert face_fix_extra({"ADetailer": {"args": [True, False, unit]}}, ignored) == {"face_fix": True}
    assert ignored[1:] == [
        "alwayson_scripts.ADetailer ad_denoising_strength '7' (not above 0 and at most 1: the face fix's own ran)",
        "alwayson_scripts.ADetailer ad_inpaint_only_masked_padding '-1' (not 0 to 256: the face fix's own ran)"]


def test_a_controlnet_unit_steers_txt2img_by_the_control_pictures_edges(studio):
    example = studio.examples["controlnet"][0]
    control = SOURCES["controlnet"](EVALUATION_SEED, example.index, IMAGE_SIZE, held_out=True)
    picture = Image.open(example.images["image"]).convert("RGB")
    unit = {"module": "canny", "model": "None", "weight": 0.4, "image": b64(picture), "threshold_a": 100,
            "threshold_b": 200, "guidance_end": 0.8, "pixel_perfect": True}
    fields = {"prompt": example.prompt, "seed": 0, "sampler_name": "Euler"}
    body = made(studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {
        "ControlNet": {"args": [unit, {"enabled": False, "module": "depth"}]}, "ADetailer": {"args": []}}}))
    image = np.asarray(decoded(body["images"][0]).convert("RGB"))
    score = iou(classify(image).mask, shape_mask(control.scene.shapes[0], IMAGE_SIZE))
    assert score >= LAYOUT_IOU, f"{example.prompt!r}: IoU {score:.2f}"
    assert "Tool: controlnet" in body["info"]["infotexts"][0]
    assert "alwayson_scripts.ADetailer" in body["info"]["ignored"]
    assert any("guidance_start/guidance_end" in item for item in body["info"]["ignored"])

    extension = str(studio.http.base_url).rstrip("/").replace("/sdapi/v1", "/controlnet")  # beside /sdapi/v1
    side = min(picture.size)  # the processor resolution at which detect sees the picture as it is
    detected = answer(studio.http.post(f"{extension}/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(picture)], "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200, "controlnet_processor_res": side}))
    edges = decoded(detected["images"][0])
    assert np.array_equal(np.asarray(edges.convert("L")), cv2.Canny(np.asarray(picture), 100, 200))  # OpenCV's
    as_edge_map = made(studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "module": "none", "image": b64(edges), "guidance_end": 1}]}}}))
    assert np.array_equal(np.asarray(decoded(as_edge_map["images"][0]).convert("RGB")), image)  # the same edges

    listed = answer(studio.http.get(f"{extension}/model_list"))["model_list"]
    assert listed[:2] == ["demo-canny", "demo-upscaler"] and not {"canny", "upscaler"} & set(listed)  # offline here
    hashed = made(studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "model": "demo-canny [4c5e6a1b]"}]}}}))  # the extension titles its models "name [hash]"
    assert not [item for item in hashed["info"]["ignored"] if "not in the studio" in item]
    assert np.array_equal(np.asarray(decoded(hashed["images"][0]).convert("RGB")), image)  # demo-canny: the default
    assert not [item for item in body["info"]["ignored"] if "processor_res" in item]  # pixel_perfect: what runs
    at_512 = made(studio.http.post("/txt2img", json={**fields, "steps": 1, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "pixel_perfect": False, "processor_res": 512}]}}}))  # webuiapi's unit defaults
    assert "alwayson_scripts.controlnet processor_res 512 (the module runs at the output's size here, as with " \
           "pixel_perfect)" in at_512["info"]["ignored"]
    refused = studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "module": "openpose"}]}}})
    assert "module 'openpose' is not in the studio" in assert_a1111_error(refused, 400)
    depth = made(studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "module": "depth_anything_v2"}]}}}))  # demo-canny has no modes: it is given the depth map
    assert not np.array_equal(np.asarray(decoded(depth["images"][0]).convert("RGB")), image)
    detected = answer(studio.http.post(f"{extension}/detect", json={
        "controlnet_module": "depth_anything_v2", "controlnet_input_images": [b64(picture)],
        "controlnet_processor_res": side}))
    depth_map = decoded(detected["images"][0])
    assert depth_map.size == picture.size and np.ptp(np.asarray(depth_map)) > 100  # a map, not a flat image
    as_depth_map = made(studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "module": "none", "image": b64(depth_map)}]}}}))  # the map the depth module made, given as is
    assert np.array_equal(np.asarray(decoded(as_depth_map["images"][0]).convert("RGB")),
                          np.asarray(decoded(depth["images"][0]).convert("RGB")))
    as_is = answer(studio.http.post(f"{extension}/detect", json={
        "controlnet_module": "none", "controlnet_input_images": [b64(picture)]}))
    assert np.array_equal(np.asarray(decoded(as_is["images"][0]).convert("RGB")), np.asarray(picture))
    unknown = studio.http.post(f"{extension}/detect", json={
        "controlnet_module": "openpose", "controlnet_input_images": [b64(picture)]})
    assert "module 'openpose' is not in the studio" in assert_a1111_error(unknown, 422)  # the extension's status
    assert answer(studio.http.get(f"{extension}/settings")) == {"control_net_unit_count": MAX_UNITS}
    assert answer(studio.http.get("/options"))["control_net_unit_count"] == MAX_UNITS  # where A1111 keeps it too
    types = answer(studio.http.get(f"{extension}/control_types"))["control_types"]
    weights = answer(studio.http.get(f"{extension}/model_list"))["model_list"]
    assert types["All"]["model_list"] == weights
    assert types["Canny"] == {"module_list": ["canny", "none"], "default_option": "canny", "default_model": "demo-canny",
                              "model_list": [name for name in weights if "canny" in name]}
    assert types["Depth"]["default_option"] == "depth_anything_v2" and types["Depth"]["default_model"] == "none"
    heavy = studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "weight": 3}]}}})
    assert "'alwayson_scripts.controlnet.args[0].weight' is invalid" in assert_a1111_error(heavy, 422)


def test_a_controlnet_unit_with_enable_hr_steers_both_passes(studio):
    example = studio.examples["controlnet"][0]
    picture = Image.open(example.images["image"]).convert("RGB")
    unit = {"module": "canny", "model": "None", "weight": 0.4, "image": b64(picture)}
    body = made(studio.http.post("/txt2img", json={
        "prompt": example.prompt, "seed": 0, "steps": 2, "enable_hr": True, "hr_scale": 1.5,
        "hr_upscaler": "ControlNet upscaler", "denoising_strength": 0.5,
        "alwayson_scripts": {"controlnet": {"args": [unit]}}}))
    infotext = body["info"]["infotexts"][0]
    assert decoded(body["images"][0]).size == (96, 96)
    assert "Tool: controlnet" in infotext and "Hires upscale: 1.5" in infotext and "ControlNet 0: " in infotext
    assert not any(item.startswith("enable_hr") for item in body["info"]["ignored"])
    assert "hr_upscaler 'ControlNet upscaler' (with a ControlNet unit, its ControlNets steer the second pass: " \
           "Lanczos ran)" in body["info"]["ignored"]


def test_several_controlnet_units_steer_together_in_any_order(studio):
    """Two enabled units (Canny edges of one picture, another picture's edges given as they are) make an image
    unlike either unit alone; the same units in the other order make the same image (their residuals add up)."""
    first, second = studio.examples["controlnet"][:2]
    edges = canny_edges(Image.open(second.images["image"]).convert("RGB"))
    units = [{"module": "canny", "weight": 0.6, "image": b64(Image.open(first.images["image"]).convert("RGB"))},
             {"module": "none", "weight": 0.5, "image": b64(edges), "resize_mode": "Crop and Resize"}]
    fields = {"prompt": first.prompt, "seed": 0, "sampler_name": "Euler"}

    def image(*chosen):
        body = made(studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {
            "args": list(chosen)}}}))
        return np.asarray(decoded(body["images"][0]).convert("RGB")), body["info"]

    both, info = image(*units)
    assert "resize_mode of a later unit" not in str(info["ignored"])
    assert np.array_equal(image(*reversed(units))[0], both)
    for alone in units:
        assert not np.array_equal(image(alone)[0], both)
    many, info = image(*units, *units, units[0])
    assert any("units after the first 4 (1: the studio runs up to 4 at once)" in item for item in info["ignored"])
    heavy = studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        units[0], {**units[1], "weight": 2.5}]}}})
    assert "'alwayson_scripts.controlnet.args[1].weight' is invalid" in assert_a1111_error(heavy, 422)
    blind = studio.http.post("/txt2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        units[0], {"enabled": False}, {"module": "canny", "image": ""}]}}})
    assert ("ControlNet unit 2 (of the enabled ones) has no image: send its control picture as base64 in "
            "'image'.") in assert_a1111_error(blind, 422)


def test_detect_works_at_the_processor_resolution_as_the_extension_does(studio):
    """Canny edges at `controlnet_processor_res` (512 when none is sent): the picture's shorter side scaled to it with
    OpenCV (cubic up, area down), edge-padded to multiples of 64, cv2.Canny, cropped back (the extension's
    resize_image_with_pad); the depth map at that size too; a resolution past the limits is a 422 sentence."""
    extension = str(studio.http.base_url).rstrip("/").replace("/sdapi/v1", "/controlnet")
    picture = Image.open(studio.examples["controlnet"][0].images["image"]).convert("RGB").resize((96, 80))

    def detected(sent=picture, **fields):
        body = answer(studio.http.post(f"{extension}/detect", json={"controlnet_input_images": [b64(sent)],
                                                                      **fields}))
        return np.asarray(decoded(body["images"][0]).convert("RGB"))

    def extension_canny(res: int, low: float = 100, high: float = 200, pixels=np.asarray(picture)) -> np.ndarray:
        scale = res / min(pixels.shape[:2])
        width, height = round(96 * scale), round(80 * scale)
        resized = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        padded = np.pad(resized, [(0, -height % 64), (0, -width % 64), (0, 0)], mode="edge")
        return cv2.Canny(padded, low, high)[:height, :width]

    for res, fields in ((512, {}), (512, {"controlnet_processor_res": -1}), (64, {"controlnet_processor_res": 64})):
        edges = detected(controlnet_module="canny", **fields)
        assert np.array_equal(edges[..., 0], extension_canny(res)), (res, fields)
    assert edges.shape[:2] == (64, 77)
    as_text = detected(controlnet_module="canny", controlnet_processor_res="64", controlnet_threshold_a="50",
                       controlnet_threshold_b="150")  # FastAPI reads the extension's numbers from text too
    assert np.array_equal(as_text[..., 0], extension_canny(64, 50, 150))
    assert detected(controlnet_module="depth_anything_v2", controlnet_processor_res=128).shape[:2] == (128, 154)
    # semi-transparent: over white in float, truncated, as the extension's HWC3 (a rounding composite moves edges)
    ramp = np.broadcast_to(np.linspace(0, 255, 96).astype(np.uint8)[None, :, None], (80, 96, 1))
    faded = Image.fromarray(np.concatenate([np.asarray(picture), ramp], axis=2), "RGBA")
    alpha = ramp.astype(np.float32) / 255.0
    hwc3 = (np.asarray(picture, np.float32) * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    assert np.array_equal(detected(faded, controlnet_module="none"), hwc3)
    assert np.array_equal(detected(faded, controlnet_module="canny", controlnet_processor_res=64)[..., 0],
                          extension_canny(64, pixels=hwc3))
    huge = studio.http.post(f"{extension}/detect", json={"controlnet_module": "canny", "controlnet_processor_res": 10**6,
                                                         "controlnet_input_images": [b64(picture)]})
    assert "controlnet_processor_res must be a whole number of pixels from 64 to 4096" in assert_a1111_error(huge, 422)


def test_a_controlnet_unit_in_img2img_starts_from_the_init_image_and_takes_it_as_control_without_one(studio):
    example = studio.examples["controlnet"][0]
    control = SOURCES["controlnet"](EVALUATION_SEED, example.index, IMAGE_SIZE, held_out=True)
    picture = b64(Image.open(example.images["image"]).convert("RGB"))
    unit = {"module": "canny", "weight": 0.4, "threshold_a": 100, "threshold_b": 200, "image": ""}  # webuiapi's
    fields = {"prompt": example.prompt, "seed": 0, "sampler_name": "Euler", "init_images": [picture],
              "denoising_strength": 0.8}
    body = made(studio.http.post("/img2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [unit]}}}))
    image = np.asarray(decoded(body["images"][0]).convert("RGB"))
    score = iou(classify(image).mask, shape_mask(control.scene.shapes[0], IMAGE_SIZE))
    assert score >= LAYOUT_IOU, f"{example.prompt!r}: IoU {score:.2f}"
    assert "Tool: controlnet" in body["info"]["infotexts"][0]
    given = made(studio.http.post("/img2img", json={**fields, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "image": picture}]}}}))
    assert np.array_equal(np.asarray(decoded(given["images"][0]).convert("RGB")), image)  # the init image as control
    from_text = made(studio.http.post("/txt2img", json={**{k: fields[k] for k in ("prompt", "seed", "sampler_name")},
                                                        "alwayson_scripts": {"controlnet": {"args": [
                                                            {**unit, "image": picture}]}}}))
    assert not np.array_equal(np.asarray(decoded(from_text["images"][0]).convert("RGB")), image)  # it started there


def test_an_init_image_past_the_size_limit_is_used_at_the_limit_with_its_aspect(studio):
    """As the page and the CLI take it: no size given, a 6000x1000 init image makes a 4096x672 request (the demo
    model then paints its nearest size), not a refusal; the output keeps the input's aspect."""
    answer = studio.http.post("/img2img", json={"prompt": "x", "steps": 1, "seed": 3, "init_images": [
        b64(Image.new("RGB", (6000, 1000), "red"))]})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["width"] > 2 * info["height"], info  # the demo's widest size near 4096x672's aspect (128x48)


def test_a_refused_request_frees_the_image_it_read(studio):
    """Cycles through a refusal's traceback (its future, its frames) kept each refused 60-megapixel init image until
    a garbage collection: a few refusals took the server past its memory budget."""
    import gc

    wide = b64(Image.new("RGB", (6000, 1000), "red"))
    gc.collect()
    gc.disable()  # as between two of Python's own collections
    try:
        for _ in range(2):
            assert "denoising_strength 0 would change nothing" in assert_a1111_error(studio.http.post(
                "/img2img", json={"prompt": "x", "steps": 1, "init_images": [wide], "denoising_strength": 0}), 400)
        kept = [thing for thing in gc.get_objects() if isinstance(thing, Image.Image) and thing.size == (6000, 1000)]
    finally:
        gc.enable()
    assert not kept


def test_an_extras_batch_whose_answer_would_not_fit_the_memory_budget_is_refused_first(tmp_path):
    """Every upscaled image of a batch is held in its answer at once (as RGB, PNG, base64 and JSON): 40 images 8x
    to 4096x4096 ask for gigabytes however small the request was."""
    from mflux_core.errors import InvalidRequest
    from webui.a1111_extras import batch_images

    check_memory = ModelManager(models_dir=tmp_path, memory_budget_bytes=2 * 10**9).check_side_run
    small = b64(Image.new("RGB", (512, 512), "red"))
    fields = {"imageList": [{"data": small, "name": f"a{index}.png"} for index in range(40)],
              "upscaling_resize": 8, "upscaler_1": "Lanczos"}
    with pytest.raises(InvalidRequest, match="Holding the 40 upscaled images of the answer needs about .* more than "
                                             "the memory budget of 2.0 GB"):
        batch_images(fields, None, lambda name: False, check_memory)
    answer = batch_images({**fields, "imageList": fields["imageList"][:2], "upscaling_resize": 2}, None,
                          lambda name: False, check_memory)
    assert [decoded(image).size for image in answer["images"]] == [(1024, 1024)] * 2


def test_extras_upscale_with_pillows_filters_and_the_controlnet_upscaler(studio):
    example = upscale_example(EVALUATION_SEED, 0, IMAGE_SIZE, held_out=True)
    small = low_resolution(example.image, IMAGE_SIZE // 4).convert("RGB")  # 16x16
    lanczos = answer(studio.http.post("/extra-single-image", json={"image": b64(small), "upscaler_1": "Lanczos",
                                                                   "upscaling_resize": 2.5, "gfpgan_visibility": 1}))
    assert np.array_equal(np.asarray(decoded(lanczos["image"])), np.asarray(small.resize((40, 40), Image.LANCZOS)))
    assert "GFPGAN" in lanczos["html_info"]
    blended = answer(studio.http.post("/extra-batch-images", json={
        "imageList": [{"data": b64(small), "name": "a"}, {"data": b64(small.transpose(Image.FLIP_LEFT_RIGHT))}],
        "resize_mode": 1, "upscaling_resize_w": 48, "upscaling_resize_h": 32, "upscaler_1": "Nearest",
        "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.25}))
    covering = Image.blend(small.resize((48, 48), Image.NEAREST), small.resize((48, 48), Image.LANCZOS), 0.25)
    assert len(blended["images"]) == 2 and np.array_equal(np.asarray(decoded(blended["images"][0])),
                                                          np.asarray(covering)[8:40])  # A1111's centred crop

    diffused, again = (decoded(answer(studio.http.post("/extra-single-image", json={
        "image": b64(small), "upscaler_1": "ControlNet upscaler", "upscaling_resize": 4}))["image"]) for _ in range(2))
    reading = classify(np.asarray(diffused.convert("RGB")))
    assert diffused.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.array_equal(np.asarray(diffused), np.asarray(again))  # one picture for one input, as A1111's upscalers
    assert iou(reading.mask, shape_mask(example.scene.shapes[0], IMAGE_SIZE)) >= LAYOUT_IOU, reading

    assert "not in the studio" in assert_a1111_error(studio.http.post("/extra-single-image", json={
        "image": b64(small), "upscaler_1": "R-ESRGAN 4x+"}), 400)
    assert "past the 4096-pixel limit" in assert_a1111_error(studio.http.post("/extra-single-image", json={
        "image": b64(Image.new("RGB", (1024, 1024))), "upscaler_1": "Lanczos", "upscaling_resize": 8}), 400)
    assert assert_a1111_error(studio.http.post("/extra-batch-images", json={  # every size checked before any runs
        "imageList": [{"data": b64(small)}, {"data": b64(Image.new("RGB", (1024, 1024)))}],
        "upscaler_1": "ControlNet upscaler", "upscaling_resize": 8}), 400).startswith(
        "imageList[1]: The upscaled image would be 8192x8192 pixels")


def test_upscaler_models_are_listed_and_run_in_extras_the_hires_fix_and_sd_upscale(studio):
    """A Real-ESRGAN model in the models folder's RealESRGAN/ (A1111's folder): /upscalers lists it after the
    built-in ones, extras upscale with it by A1111's label, txt2img's hr_upscaler and SD upscale's upscaler_index
    name it, and what ran says so."""
    listed = answer(studio.http.get("/upscalers"))
    assert [entry["name"] for entry in listed] == ["None", "Lanczos", "Nearest", "ControlNet upscaler", X2PLUS]
    assert listed[-1]["model_path"].endswith(f"RealESRGAN/{X2PLUS}.pth")
    [realesrgan] = answer(studio.http.get("/realesrgan-models"))  # by A1111's label, as its page names them
    assert realesrgan["name"] == "R-ESRGAN 2x+" and realesrgan["scale"] == 2
    assert realesrgan["path"] == listed[-1]["model_path"]
    model = read_upscaler(studio.manager.models_dir / "RealESRGAN" / f"{X2PLUS}.pth")
    small = Image.fromarray(upscale_example(EVALUATION_SEED, 1, IMAGE_SIZE, held_out=True).image).resize((30, 20))
    upscaled = answer(studio.http.post("/extra-single-image", json={"image": b64(small), "upscaler_1": "R-ESRGAN 2x+",
                                                                   "upscaling_resize": 3}))
    assert np.array_equal(np.asarray(decoded(upscaled["image"])), np.asarray(upscale_with(model, small, (90, 60))))

    hires = made(studio.http.post("/txt2img", json={"prompt": "a red circle on a blue background", "seed": 73,
                                                    "steps": 2, "width": 64, "height": 64, "enable_hr": True,
                                                    "hr_scale": 2, "hr_upscaler": X2PLUS,
                                                    "denoising_strength": 0.5}))
    assert decoded(hires["images"][0]).size == (128, 128) and hires["info"]["ignored"] == []
    assert f"Hires upscaler: {X2PLUS}" in hires["info"]["infotexts"][0]
    tiled = made(studio.http.post("/img2img", json={
        "init_images": [b64(small.resize((32, 32)))], "prompt": "x", "seed": 74, "steps": 2, "width": 64,
        "height": 64, "denoising_strength": 0.3, "script_name": "SD upscale", "script_args": ["", 16, 4, 2]}))
    assert decoded(tiled["images"][0]).size == (64, 64)
    assert f"SD upscale upscaler: {X2PLUS}" in tiled["info"]["infotexts"][0]


def test_the_sd_upscale_script_runs_the_upscale_tool_in_tiles_as_a1111_clients_ask_for_it(studio):
    """img2img with script_name "SD upscale" and A1111's script_args [info, overlap, upscaler_index, scale_factor]:
    the init image upscaled 4 times, regenerated in tiles of width x height (the demo's 64) at the denoising
    strength; what ran is recorded, replays to the same image, and keeps the picture."""
    example = upscale_example(EVALUATION_SEED, 0, IMAGE_SIZE, held_out=True)
    picture = Image.fromarray(example.image)
    listed = ["x/y/z plot", "prompt matrix", "prompts from file or textbox"]
    assert answer(studio.http.get("/scripts")) == {"txt2img": [*listed, "controlnet", "adetailer"],
                                                   "img2img": [*listed, "sd upscale", "controlnet", "adetailer"]}
    body = made(studio.http.post("/img2img", json={
        "init_images": [b64(picture)], "prompt": example.caption, "seed": 71, "steps": 4, "width": 64, "height": 64,
        "denoising_strength": 0.35, "script_name": "SD upscale", "script_args": ["", 16, 1, 4], "save_images": True,
        "override_settings": {"sd_model_checkpoint": "demo"}}))
    image = decoded(body["images"][0]).convert("RGB")
    assert image.size == (4 * IMAGE_SIZE, 4 * IMAGE_SIZE) and body["info"]["ignored"] == []
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos, Tile size: 64" in body["info"]["infotexts"][0]
    [recorded] = saved_requests(studio, 71)  # seeds of saved images are each test's own (one outputs folder)
    assert recorded["extra"] == {"upscale_factor": 4.0, "tile_size": 64, "tile_overlap": 16, "upscaler": "Lanczos"}
    assert (recorded["tool"], recorded["image_strength"], recorded["width"]) == ("upscale", 0.65, 256)
    again = studio.manager.generate(GenerationRequest(**{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in recorded.items()}))
    assert np.array_equal(np.asarray(again.image), np.asarray(image))
    shrunk = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(shrunk - example.image.astype(np.int16)).mean() < 12

    steered = made(studio.http.post("/img2img", json={  # A1111's tiles are its width x height
        "init_images": [b64(picture.resize((48, 32)))], "prompt": example.caption, "seed": 8, "steps": 2,
        "width": 64, "height": 48, "script_name": "sd upscale", "script_args": [None, 16, 3, 2]}))
    assert decoded(steered["images"][0]).size == (96, 64)  # two tiles across, two down
    assert "SD upscale upscaler: ControlNet upscaler, Tile size: 64x48" in steered["info"]["infotexts"][0]
    assert steered["info"]["ignored"] == []
    other = made(studio.http.post("/img2img", json={"init_images": [b64(picture)], "prompt": "x", "steps": 1,
                                                    "script_name": "Loopback", "script_args": [1, "2"]}))
    assert "script_name 'Loopback' (the studio runs x/y/z plot, prompt matrix, prompts from file or textbox, sd " \
           "upscale)" in other["info"]["ignored"]


def test_script_info_lists_each_scripts_args_as_a1111s_ui_labels_them(studio):
    """A client can build script_args by label: /script-info gives each script's args in order, the X/Y/Z plot's
    types with the tab's axis labels (what an index points into)."""
    listing = {(script["name"], script["is_img2img"]): script for script in answer(studio.http.get("/script-info"))}
    xyz = listing[("x/y/z plot", False)]["args"]
    assert [a["label"] for a in xyz[:4]] == ["X type", "X values", "X values", "Y type"]
    assert [a["label"] for a in xyz[12:17]] == ["Keep -1 for seeds", "Vary seeds for X", "Vary seeds for Y",
                                                "Vary seeds for Z", "Grid margins (px)"]  # A1111's positions
    assert xyz[0]["choices"][4] == "Steps" and xyz[0]["choices"][9] == "Sampler"
    assert listing[("x/y/z plot", True)]["args"][0]["choices"][22] == "Denoising"
    assert [a["label"] for a in listing[("prompts from file or textbox", True)]["args"]][2:] == [
        "Insert prompts at the", "List of prompt inputs"]
    assert listing[("sd upscale", True)]["args"][2]["choices"] == [u["name"] for u in answer(studio.http.get(
        "/upscalers"))]
    assert ("sd upscale", False) not in listing and listing[("controlnet", False)]["is_alwayson"]


def test_the_prompt_matrix_script_answers_its_grid_then_every_combination_as_a1111_does(studio):
    """txt2img with script_name "Prompt matrix" and A1111's script_args [put_at_start, different_seeds, prompt_type,
    variations_delimiter, margin_size]: every combination of the parts after the first, in A1111's order (the first
    part changing fastest), each the image txt2img makes with that prompt; the grid first."""
    fields = {"prompt": "a red circle|in the top left|on a blue background", "seed": 30, "steps": 2,
              "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    body = made(studio.http.post("/txt2img", json={**fields, "script_name": "Prompt matrix",
                                                   "script_args": [False, True, "positive", "comma", 0]}))
    info = body["info"]
    assert info["all_prompts"] == ["a red circle", "a red circle, in the top left",
                                   "a red circle, on a blue background",
                                   "a red circle, in the top left, on a blue background"]
    assert info["all_seeds"] == [30, 31, 32, 33] and info["index_of_first_image"] == 1 and len(body["images"]) == 5
    grid = decoded(body["images"][0])
    assert grid.width > 2 * IMAGE_SIZE and grid.height > 2 * IMAGE_SIZE  # two across, two down, with labels
    alone = made(studio.http.post("/txt2img", json={**fields, "seed": 33, "prompt": info["all_prompts"][3]}))
    assert np.array_equal(np.asarray(decoded(body["images"][4])), np.asarray(decoded(alone["images"][0])))
    start = made(studio.http.post("/txt2img", json={**fields, "steps": 1, "script_name": "prompt matrix",
                                                    "script_args": [True, False, "positive", "space"]}))
    assert start["info"]["all_prompts"][3] == "in the top left on a blue background a red circle"
    assert start["info"]["all_seeds"] == [30] * 4
    negative = made(studio.http.post("/txt2img", json={
        **fields, "steps": 1, "prompt": "a cat", "negative_prompt": "blurry|green", "cfg_scale": 2,
        "script_name": "Prompt matrix", "script_args": [False, False, "negative"]}))
    assert negative["info"]["all_negative_prompts"] == ["blurry", "blurry, green"]
    for script_args, status, words in (([False, False, "sideways"], 422, "prompt_type (script_args[2]) is"),
                                       ([False, False, "positive", "tab"], 422, "variations_delimiter"),
                                       ([], 400, "A prompt matrix needs optional parts")):
        response = studio.http.post("/txt2img", json={**fields, "prompt": "a cat", "script_name": "Prompt matrix",
                                                      "script_args": script_args})
        assert words in assert_a1111_error(response, status)


def test_the_prompts_from_file_script_runs_each_line_as_a1111_does(studio):
    """txt2img with script_name "Prompts from file or textbox" and A1111's script_args [iterate seed, same seed,
    prompt_position, prompt_txt]: each line's prompt before the request's ("start"), a line's own settings kept, the
    seed moved on by the request's images after each line; each image is the one txt2img makes with its settings."""
    fields = {"prompt": "on a blue background", "seed": 40, "steps": 2, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    lines = "a red circle in the top left\n\n# a comment\n--prompt \"a green square\" --steps 1\n"
    body = made(studio.http.post("/txt2img", json={**fields, "batch_size": 2, "script_name": "Prompts from file or "
                                                   "textbox", "script_args": [True, False, "start", lines]}))
    info = body["info"]
    assert info["all_prompts"] == ["a red circle in the top left on a blue background"] * 2 + \
        ["a green square on a blue background"] * 2
    assert info["all_seeds"] == [40, 41, 42, 43] and "Steps: 1," in info["infotexts"][3]
    alone = made(studio.http.post("/txt2img", json={**fields, "seed": 42, "steps": 1,
                                                    "prompt": "a green square on a blue background"}))
    assert np.array_equal(np.asarray(decoded(body["images"][2])), np.asarray(decoded(alone["images"][0])))
    older = made(studio.http.post("/txt2img", json={**fields, "prompt": "", "script_name": "prompts from file or "
                                                    "textbox", "script_args": [False, False, "a cat\na dog"]}))
    assert older["info"]["all_prompts"] == ["a cat", "a dog"] and older["info"]["all_seeds"] == [40, 40]
    end = made(studio.http.post("/txt2img", json={**fields, "steps": 1, "script_name": "Prompts from file or textbox",
                                                  "script_args": [False, False, "end", "a cat"]}))
    assert end["info"]["all_prompts"] == ["on a blue background a cat"]
    a1111_options = made(studio.http.post("/txt2img", json={  # the rest of A1111's line options run too
        **fields, "steps": 1, "script_name": "Prompts from file or textbox", "script_args": [
            False, False, "start", "--prompt \"a cat\" --batch_size 2 --sd_model demo --styles Vivid "
                                   "--restore_faces true --sampler_name LMS"]}))
    assert a1111_options["info"]["all_seeds"] == [40, 41] and a1111_options["info"]["ignored"] == [
        "script_args line 1: --styles (the job's styles apply)",
        "script_args line 1: --restore_faces (no face restore on a line)",
        "script_args line 1: --sampler 'LMS' (not in the studio: the default runs)"]
    for script_args, words in (([False, False, "middle", "a cat"], "prompt_position (script_args[2]) is 'start' or "
                                                                     "'end', not 'middle'."),
                               ([False, False, "start", 5], "prompt_txt (script_args[3]) must be the lines"),
                               ([False, False, "start", "--steps x"], "Line 1: Argument --steps: invalid int value")):
        response = studio.http.post("/txt2img", json={**fields, "script_name": "Prompts from file or textbox",
                                                      "script_args": script_args})
        assert words in assert_a1111_error(response, response.status_code if response.status_code in (400, 422)
                                           else 0)


def test_the_xyz_plot_script_answers_its_grid_then_the_cells_as_a1111_does(studio):
    """txt2img with script_name "X/Y/Z plot" and A1111's script_args (types as indices into A1111's txt2img axis
    list: 4 Steps, 1 Seed): the grid first, labelled, then each cell, which is the image txt2img makes with the
    cell's settings; the grid's infotext names the script and its axes."""
    fields = {"prompt": CAPTION, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    body = made(studio.http.post("/txt2img", json={**fields, "seed": 3, "script_name": "X/Y/Z plot", "script_args": [
        4, "1-2", [], 1, "", [80, 81], 0, "", [], True, True, False, False, False, False, False, 0, False]}))
    grid, *cells = [decoded(image).convert("RGB") for image in body["images"]]
    info = body["info"]
    assert len(cells) == 4 and info["index_of_first_image"] == 1 and info["ignored"] == []
    assert grid.width > 2 * IMAGE_SIZE and grid.height > 2 * IMAGE_SIZE  # two across, two down, with labels
    assert info["all_seeds"] == [80, 80, 81, 81] and len(info["infotexts"]) == 5
    assert info["infotexts"][0].endswith(
        "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: Seed, Y Values: \"80, 81\"")
    for cell, (steps, seed) in zip(cells, [(1, 80), (2, 80), (1, 81), (2, 81)]):
        alone = made(studio.http.post("/txt2img", json={**fields, "steps": steps, "seed": seed}))
        assert np.array_equal(np.asarray(cell), np.asarray(decoded(alone["images"][0]).convert("RGB")))
        assert f"Steps: {steps}," in info["infotexts"][1 + cells.index(cell)]

    varied = made(studio.http.post("/txt2img", json={**fields, "seed": 3, "script_name": "X/Y/Z plot", "script_args": [
        4, "1-2", [], 0, "", [], 0, "", [], True, False, False, False, True, False, False]}))  # Vary seeds for X
    assert varied["info"]["all_seeds"] == [3, 4]
    own = made(studio.http.post("/txt2img", json={**fields, "seed": -1, "steps": 1, "script_name": "X/Y/Z plot",
                                                  "script_args": [4, "1-3", [], 0, "", [], 0, "", [], True, False,
                                                                  False, True, False, False, False, 20]}))
    assert len(set(own["info"]["all_seeds"])) == 3  # "Keep -1 for seeds": a seed of each cell's own
    assert own["info"]["ignored"] == ["script_args margin_size (the grid's cells touch)"]
    automatic = made(studio.http.post("/txt2img", json={**fields, "seed": 3, "steps": 1, "script_name": "X/Y/Z plot",
                                                        "script_args": ["Schedule type", "Automatic, Karras", []]}))
    assert "X Values: \"Automatic, Karras\"" in automatic["info"]["infotexts"][0]  # A1111's first schedule label
    forge = made(studio.http.post("/txt2img", json={**fields, "seed": 3, "steps": 1, "distilled_cfg_scale": 3.5,
                                                    "script_name": "X/Y/Z plot", "script_args": [
                                                        7, "2.5, 4.5", [], 8, "red, green", []]}))  # Forge's indices
    assert "X Type: Distilled CFG Scale" in forge["info"]["infotexts"][0] and "Y Type: Prompt S/R" in \
        forge["info"]["infotexts"][0] and "Distilled CFG Scale: 2.5," in forge["info"]["infotexts"][0]

    # A1111's older layout (no dropdowns), a Z axis: one grid per Z value side by side, each with include_sub_grids
    older = made(studio.http.post("/txt2img", json={**fields, "seed": 3, "steps": 1, "script_name": "x/y/z plot",
                                                     "script_args": ["Prompt S/R", "red, green", 0, "", 1, "5, 6",
                                                                     True, False, True, False, 0]}))
    main, *z_grids = [decoded(image) for image in older["images"]]
    assert len(z_grids) == 2 and main.width == sum(g.width for g in z_grids) and main.height == z_grids[0].height
    assert "Z Type: Seed" in older["info"]["infotexts"][0] and "Y Type" not in older["info"]["infotexts"][0]


def test_the_xyz_plot_scripts_styles_axis_merges_each_style_from_the_styles_folder(studio):
    """A1111's Styles axis (by its index in the txt2img list, or its label): each cell with that style merged in."""
    index = axis_labels(False).index("Styles")
    body = made(studio.http.post("/txt2img", json={
        "prompt": "a red circle", "seed": 5, "steps": 1, "width": IMAGE_SIZE, "height": IMAGE_SIZE,
        "script_name": "X/Y/Z plot", "script_args": [index, "", ["Framed", "Bold"], 0, "", [], 0, "", []]}))
    assert body["info"]["all_prompts"] == ["a photo of a red circle, framed", "a red circle, bold colours"]
    unknown = studio.http.post("/txt2img", json={"prompt": "x", "steps": 1, "script_name": "X/Y/Z plot",
                                                  "script_args": ["Styles", "Noir"]})
    assert "The Styles axis: there is no style named 'Noir'" in assert_a1111_error(unknown, 400)


def test_a1111_scripts_merge_the_requests_styles_after_they_changed_the_prompts(studio):
    """As A1111, which merges p.styles when the images are made, after a script set the prompts: a Prompt S/R or
    Prompt order term is looked for in the user's own prompt (not a style's text), a Styles axis's style merges after
    the request's own, a prompt file's line and a matrix's parts are styled together with the request's prompt."""
    fields = {"prompt": "a red circle", "styles": ["Framed"], "seed": 5, "steps": 1, "width": IMAGE_SIZE,
              "height": IMAGE_SIZE, "send_images": False}

    def prompts(script_name: str, script_args: list, **changes) -> list[str]:
        return made(studio.http.post("/txt2img", json={**fields, **changes, "script_name": script_name,
                                                        "script_args": script_args}))["info"]["all_prompts"]

    assert prompts("X/Y/Z plot", ["Prompt S/R", "red, blue"]) == ["a photo of a red circle, framed",
                                                                  "a photo of a blue circle, framed"]
    assert prompts("X/Y/Z plot", ["Styles", "none, Bold"]) == ["a photo of a red circle, framed",
                                                               "a photo of a red circle, framed, bold colours"]
    assert prompts("X/Y/Z plot", [axis_labels(False).index("Prompt order"), "red, circle"]) == [
        "a photo of a red circle, framed", "a photo of a circle red, framed"]
    assert prompts("Prompts from file or textbox", [False, False, "start", "a blue"]) == [
        "a photo of a blue a red circle, framed"]
    assert prompts("Prompt matrix", [False, False, "positive", "comma"], prompt="a red circle|on blue") == [
        "a photo of a red circle, framed", "a photo of a red circle, on blue, framed"]
    refused = studio.http.post("/txt2img", json={**fields, "script_name": "X/Y/Z plot",
                                                  "script_args": ["Prompt S/R", "photo, drawing"]})
    assert "neither the prompt nor the negative prompt contains 'photo'" in assert_a1111_error(refused, 400)


def test_the_xyz_plot_scripts_denoising_axis_is_the_image_to_image_strength(studio):
    """img2img's Denoising (index 22 of A1111's img2img axis list): each cell at its denoising strength."""
    picture = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (20, 90, 200))
    body = made(studio.http.post("/img2img", json={
        "init_images": [b64(picture)], "prompt": CAPTION, "seed": 4, "steps": 2, "script_name": "X/Y/Z plot",
        "script_args": [22, "0.25, 1.0", [], 0, "", [], 0, "", [], True, True]}))
    assert ["Denoising strength: 0.25," in text for text in body["info"]["infotexts"][1:]] == [True, False]
    assert "Denoising strength: 1.0," in body["info"]["infotexts"][2]
    change = [np.abs(np.asarray(decoded(image).convert("RGB"), int) - np.asarray(picture, int)).mean()
              for image in body["images"][1:]]
    assert change[0] < change[1]  # denoising 0.25 keeps more of the picture than 1.0


@pytest.mark.parametrize("script_args, status, words", [
    ([21, "0, 1"], 422, "The X/Y/Z plot's axis 'Eta' has no counterpart in FLUX.1 here"),
    ([99, "1"], 422, "x_type '99' is neither an index into A1111's txt2img axis list (0 to 37)"),
    ([0, "", [], 0, "", []], 422, "The X/Y/Z plot has no axis"),
    ([23, "0.5, 0.7"], 422, "Denoising axis needs enable_hr in txt2img"),
    ([11, "nowhere [abc]"], 400, "The checkpoint 'nowhere [abc]' is not in the studio"),
    ([4, "1-500"], 400, "The plot has 500 cells, more than the limit of 100"),
    ([4, "one, two"], 400, "The Steps axis: 'one' is not a number."),
])
def test_bad_xyz_plot_arguments_get_a1111_errors(studio, script_args, status, words):
    response = studio.http.post("/txt2img", json={"prompt": "x", "steps": 1, "script_name": "X/Y/Z plot",
                                                   "script_args": script_args})
    assert words in assert_a1111_error(response, status)


@pytest.mark.parametrize("changes, words", [
    ({"script_args": ["", "wide", 1, 2]}, "SD upscale's overlap (script_args[1]) must be a whole number from 0 to "
                                          "2048, not 'wide'."),
    ({"script_args": ["", 16, 9, 2]}, "upscaler_index (script_args[2]) must be a whole number from 0 to 4"),
    ({"script_args": ["", 16, 1, 20]}, "scale_factor (script_args[3]) must be a number from 1 to 8, not 20."),
    ({"denoising_strength": 0}, "SD upscale at denoising_strength 0 would return the resampled image as it is"),
    ({"script_args": ["", 48, 1, 2]}, "A tile overlap of 48 px is more than half the 64 px tile: use at most 32."),
])
def test_bad_sd_upscale_arguments_get_a1111_errors(studio, changes, words):
    body = {"init_images": [b64(Image.new("RGB", (32, 32)))], "prompt": "x", "steps": 1, "width": 64, "height": 64,
            "script_name": "SD upscale", **changes}
    response = studio.http.post("/img2img", json=body)
    assert words in assert_a1111_error(response, response.status_code if response.status_code in (400, 422) else 0)


def test_true_cfg_runs_with_a_negative_prompt_above_cfg_scale_1(studio):
    fields = {"prompt": CAPTION, "negative_prompt": "green", "seed": 7, "steps": 2, "save_images": True,
              "send_images": False}
    plain = made(studio.http.post("/txt2img", json={**fields, "cfg_scale": 1}))
    assert plain["images"] == [] and any("negative_prompt" in item for item in plain["info"]["ignored"])
    made(studio.http.post("/txt2img", json={**fields, "cfg_scale": 4, "seed": 8}))
    (off,), (on,) = saved_requests(studio, 7), saved_requests(studio, 8)
    assert (off["negative_prompt"], off["true_cfg_scale"]) == ("", 1)
    assert (on["negative_prompt"], on["true_cfg_scale"]) == ("green", 4)


def test_styles_merge_into_the_prompts_as_a1111_does_and_are_listed(studio):
    assert answer(studio.http.get("/prompt-styles")) == [
        {"name": "Framed", "prompt": "a photo of {prompt}, framed", "negative_prompt": "blurry"},
        {"name": "Bold", "prompt": "bold colours", "negative_prompt": ""}]
    body = made(studio.http.post("/txt2img", json={"prompt": "a red circle", "styles": ["Framed", "Bold"],
                                                    "negative_prompt": "green", "cfg_scale": 3, "seed": 61,
                                                    "steps": 1, "send_images": False, "save_images": True}))
    assert body["info"]["all_prompts"] == ["a photo of a red circle, framed, bold colours"]
    (saved,) = saved_requests(studio, 61)
    assert (saved["prompt"], saved["negative_prompt"]) == ("a photo of a red circle, framed, bold colours",
                                                           "green, blurry")
    assert "no style named 'Noir'" in assert_a1111_error(
        studio.http.post("/txt2img", json={"prompt": "x", "styles": ["Noir"], "steps": 1}), 400)


def test_prompt_lora_tags_apply_library_loras_as_a1111_clients_write_them(studio):
    style = studio.folders.loras[0] / "style.safetensors"
    write_diffusers_lora(style, Dims.of(demo_folder("demo")), magnitude=2.0)
    try:
        fields = {"seed": 12, "steps": 2, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
        tagged = made(studio.http.post("/txt2img", json={**fields, "prompt": f"{CAPTION} <lora:style:0.7>"}))
        plain = made(studio.http.post("/txt2img", json={**fields, "prompt": CAPTION}))
        assert tagged["info"]["infotexts"][0].split("\n")[0] == f"{CAPTION} <lora:style:0.7>"
        assert tagged["info"]["all_prompts"] == [f"{CAPTION} <lora:style:0.7>"]  # A1111's, tags kept
        assert "<lora" not in plain["info"]["infotexts"][0]
        assert not np.array_equal(np.asarray(decoded(tagged["images"][0])), np.asarray(decoded(plain["images"][0])))
        # as A1111 ("Networks not found"): made without it, and named
        stale = made(studio.http.post("/txt2img", json={**fields, "prompt": f"{CAPTION} <lora:nowhere:1>"}))
        assert np.array_equal(np.asarray(decoded(stale["images"][0])), np.asarray(decoded(plain["images"][0])))
        assert "<lora:nowhere:1> (not in the LoRA library: the image was made without it)" in stale["info"]["ignored"]
    finally:
        style.unlink()


# ----- img2img -----------------------------------------------------------------------------------


@pytest.mark.parametrize("invert, only_masked", [(False, True), (True, True), (False, False)])
def test_img2img_with_a_mask_repaints_it_and_keeps_the_rest(studio, invert, only_masked):
    example = studio.examples["fill"][0]
    pair = SOURCES["fill"](EVALUATION_SEED, example.index, IMAGE_SIZE, held_out=True)
    source, mask = pixels(example.images["image"]), pixels(example.images["mask"])[..., 0] > 127
    drawn = ~mask if invert else mask  # with inpainting_mask_invert, black is what gets repainted
    body = made(studio.http.post("/img2img", json={
        "init_images": ["data:image/png;base64," + b64(Image.open(example.images["image"]))],
        "mask": b64(Image.fromarray(np.where(drawn, 255, 0).astype(np.uint8))), "inpainting_mask_invert": int(invert),
        "inpaint_full_res": only_masked, "inpaint_full_res_padding": 32,  # A1111's page default
        "prompt": example.prompt, "seed": 0, "denoising_strength": 1.0, "mask_blur": 4}))
    image = np.asarray(decoded(body["images"][0]).convert("RGB"))
    change = np.abs(image.astype(int) - source.astype(int)).max(axis=-1)
    assert change[mask].mean() > FILL_TOLERANCE  # repainted
    # kept, past the 4 px the paste blends over and the 3 sigma that mask_blur 4 reaches
    assert np.all(change[distance_to_mask(mask, 12) > 12] == 0)
    assert classify(np.where(mask[..., None], image, source)).colour == pair.scene.shapes[0].colour
    assert body["info"]["sd_model_name"] == "demo-fill" and "Mask blur: 4" in body["info"]["infotexts"][0]
    assert ("Inpaint area: Only masked, Masked area padding: 32" in body["info"]["infotexts"][0]) == only_masked


def test_a_demo_checkpoint_chosen_for_a_masked_img2img_is_said_to_be_a_demo(studio):
    example = studio.examples["fill"][0]
    assert studio.http.post("/options", json={"sd_model_checkpoint": "demo"}).status_code == 200
    try:
        body = made(studio.http.post("/img2img", json={
            "init_images": [b64(Image.open(example.images["image"]))], "steps": 1, "seed": 0, "prompt": "x",
            "mask": b64(Image.open(example.images["mask"]).convert("L"))}))
    finally:
        studio.http.post("/options", json={"sd_model_checkpoint": None})
    assert "sd_model_checkpoint 'demo' (a demo model: the fill tool ran its own, demo-fill)" in body["info"]["ignored"]


def test_img2img_with_a_mask_inpaints_on_a_base_checkpoint_as_a1111_does_with_the_loaded_one(studio):
    """FLUX.1-Fill is not on disk (only the demo's), so a base checkpoint of the user's own inpaints, keeping the
    image's latents outside the mask at every step (diffusers' FluxInpaintPipeline)."""
    example = studio.examples["fill"][0]
    source, mask = pixels(example.images["image"]), pixels(example.images["mask"])[..., 0] > 127
    fields = {"init_images": [b64(Image.open(example.images["image"]))], "prompt": example.prompt, "seed": 0,
              "mask": b64(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))), "inpaint_full_res": False,
              "denoising_strength": 1.0, "mask_blur": 0, "steps": 4}
    for body in (made(studio.http.post("/img2img", json={**fields, "override_settings": {
            "sd_model_checkpoint": COPY}})), options_checkpoint(studio, COPY, fields)):
        image = np.asarray(decoded(body["images"][0]).convert("RGB"))
        change = np.abs(image.astype(int) - source.astype(int)).max(axis=-1)
        assert body["info"]["sd_model_name"] == COPY and "Tool: fill" in body["info"]["infotexts"][0]
        assert change[mask].mean() > FILL_TOLERANCE and np.all(change[distance_to_mask(mask, 8) > 8] == 0)

    # A1111's masked content at denoising 0.5: original starts the masked area from the image, fill from the image
    # with its masked area painted from the surroundings, latent noise from noise
    strengths, contents = {}, {}
    for content in (1, 2, 0):
        body = made(studio.http.post("/img2img", json={**fields, "denoising_strength": 0.5, "seed": 330 + content,
                                                       "inpainting_fill": content, "save_images": True}))
        [recorded] = saved_requests(studio, 330 + content)
        strengths[content], contents[content] = recorded["image_strength"], recorded["extra"].get("masked_content")
        assert np.array_equal(pixels(recorded["image_path"]), source)  # the tool fills (tests/test_tools_parity.py)
        assert not [note for note in body["info"]["ignored"] if "inpainting_fill" in note]
    assert strengths == {1: 0.5, 2: None, 0: 0.5} and contents == {1: None, 2: None, 0: "fill"}


@pytest.mark.parametrize("spelling", ["red strokes on a transparent sheet", "opaque gray levels"])
def test_img2img_reads_an_rgba_mask_as_a1111_does(studio, spelling):
    """A1111 reads an RGBA mask with any transparency from its alpha, whatever the strokes' colour (the mask was
    composited over white: the whole picture was repainted), and one without transparency from its gray levels."""
    example = studio.examples["fill"][0]
    mask = pixels(example.images["mask"])[..., 0] > 127
    strokes = np.zeros((*mask.shape, 4), np.uint8)
    if spelling == "red strokes on a transparent sheet":
        strokes[mask] = (200, 0, 0, 255)
    else:
        strokes[..., :3], strokes[..., 3] = np.where(mask, 255, 0)[..., None], 255
    seed = 340 + len(spelling)
    made(studio.http.post("/img2img", json={
        "init_images": [b64(Image.open(example.images["image"]))], "prompt": example.prompt, "seed": seed,
        "mask": b64(Image.fromarray(strokes, "RGBA")), "inpaint_full_res": False, "mask_blur": 0, "steps": 1,
        "save_images": True}))
    [recorded] = saved_requests(studio, seed)
    assert np.array_equal(pixels(recorded["masked_image_path"])[..., 0] > 127, mask)


def options_checkpoint(studio, name: str, fields: dict) -> dict:
    """An img2img answer with `name` set as the options' checkpoint (set back to the demo after)."""
    assert studio.http.post("/options", json={"sd_model_checkpoint": name}).status_code == 200
    try:
        return made(studio.http.post("/img2img", json=fields))
    finally:
        studio.http.post("/options", json={"sd_model_checkpoint": "demo"})


def test_img2img_without_a_size_runs_at_the_init_images_rounded_down_to_16(studio):
    response = studio.http.post("/img2img", json={"init_images": [b64(Image.new("RGB", (100, 70), "red"))],
                                                  "prompt": "a red circle", "steps": 1, "seed": 2})
    assert decoded(made(response)["images"][0]).size == (96, 64)


def test_img2img_shapes_the_input_by_resize_mode(studio):
    """A 2:1 input (red | green | green | blue quarters) made square: stretched, cropped to its middle, or fitted
    with its edge rows repeated above and below."""
    wide = np.zeros((IMAGE_SIZE, 2 * IMAGE_SIZE, 3), np.uint8)
    quarter = IMAGE_SIZE // 2
    wide[:, :quarter], wide[:, quarter:-quarter], wide[:, -quarter:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    inputs = {}
    for mode in (0, 1, 2):
        body = made(studio.http.post("/img2img", json={
            "init_images": [b64(Image.fromarray(wide))], "resize_mode": mode, "width": IMAGE_SIZE,
            "height": IMAGE_SIZE, "prompt": "x", "seed": 900 + mode, "steps": 1, "save_images": True}))
        assert body["info"]["width"] == IMAGE_SIZE and body["info"]["sd_model_name"] == "demo"
        (request,) = saved_requests(studio, 900 + mode)
        assert request["tool"] == "generate" and request["image_strength"] == 0.25
        inputs[mode] = pixels(request["image_path"]).astype(int)
    red, green, blue = (np.array(c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    middle, edge = IMAGE_SIZE // 2, IMAGE_SIZE // 4
    assert np.abs(inputs[0][middle, 2] - red).max() < 40 and np.abs(inputs[0][middle, -3] - blue).max() < 40
    assert np.abs(inputs[1] - green).max() < 40  # the middle half, at scale 1
    fitted = inputs[2]
    assert np.abs(fitted[2, 2] - red).max() < 40 and np.abs(fitted[-3, -3] - blue).max() < 40  # bars repeat edges
    assert np.abs(fitted[:edge - 1, middle] - green).max() < 40
    assert np.array_equal(fitted, np.asarray(resize_to(Image.fromarray(wide), IMAGE_SIZE, IMAGE_SIZE, RESIZE_AND_FILL)))


# ----- models and options ------------------------------------------------------------------------


def test_options_post_switches_the_model_for_later_requests(studio):
    models = {m["model_name"]: m for m in answer(studio.http.get("/sd-models"))}
    assert {"demo", "demo-fill", COPY} <= set(models) and "demo-canny" not in models
    assert not {"schnell", "dev", "fill"} & set(models)  # downloads are off here: only models on disk are offered
    assert set(models["demo"]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert answer(studio.http.get("/options"))["sd_model_checkpoint"] == "demo"
    try:
        assert studio.http.post("/options", json={"sd_model_checkpoint": f"{COPY} [0123abcd]",
                                                  "CLIP_stop_at_last_layers": 2}).status_code == 200
        options = answer(studio.http.get("/options"))
        assert (options["sd_model_checkpoint"], options["CLIP_stop_at_last_layers"]) == (COPY, 2)
        body = made(studio.http.post("/txt2img", json={"prompt": CAPTION, "seed": 3, "steps": 2}))
        assert body["info"]["sd_model_name"] == COPY and f"Model: {COPY}" in body["info"]["infotexts"][0]
    finally:
        studio.http.post("/options", json={"sd_model_checkpoint": "demo"})
    studio.http.post("/options", json={"sd_model_checkpoint": COPY})
    assert studio.http.post("/options", json={"sd_model_checkpoint": None}).status_code == 200  # the default again
    assert answer(studio.http.get("/options"))["sd_model_checkpoint"] == "demo"


def test_options_kept_for_show_are_held_to_what_can_be_kept_and_answered_back(studio):
    """Each POST may be 64 MB and every unknown option was kept for good (~60 MB more memory a request); a value
    nested ~960 deep was kept but made every later GET /options fail."""
    deep = '{"deep": ' + "[" * 960 + "]" * 960 + f', "sd_model_checkpoint": "{COPY}"}}'  # json.dumps cannot
    for fields in ({"a_long_one": "x" * 100_000}, deep, {f"option_{n}": n for n in range(3000)}):
        body = fields if isinstance(fields, str) else json.dumps(fields | {"sd_model_checkpoint": COPY})
        refused = studio.http.post("/options", content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 400 and "keep" in refused.json()["detail"], refused.text
    options = answer(studio.http.get("/options"))
    assert not {"a_long_one", "deep", "option_5"} & set(options) and options["sd_model_checkpoint"] == "demo"


def test_img2img_answers_leave_out_the_inputs_and_keep_none_unless_the_images_are_saved(studio):
    """As A1111: the answer's parameters repeat the init images and mask only with include_init_images, and with
    save_images off (its default) no input is kept on disk; a saved result keeps the input its metadata names."""
    inputs = studio.folders.outputs / "inputs"
    before = set(inputs.rglob("*")) if inputs.exists() else set()
    picture = b64(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 30, 30)))
    mask = b64(Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 255))
    fields = {"init_images": [picture], "mask": mask, "prompt": CAPTION, "seed": 4242, "steps": 1}
    body = made(studio.http.post("/img2img", json=fields))
    assert (body["parameters"]["init_images"], body["parameters"]["mask"]) == (None, None)
    assert (set(inputs.rglob("*")) if inputs.exists() else set()) == before
    echoed = made(studio.http.post("/img2img", json={**fields, "include_init_images": True, "save_images": True}))
    assert (echoed["parameters"]["init_images"], echoed["parameters"]["mask"]) == ([picture], mask)
    (saved,) = saved_requests(studio, 4242)
    assert Path(saved["image_path"]).is_file() and Path(saved["image_path"]).parent == inputs


def test_forges_modules_pick_a_t5_file_for_one_call_or_by_the_options(studio):
    """forge_additional_modules as Forge's clients send it (the paths /sd-modules lists), for one call in
    override_settings or for the calls after a POST to /options; Forge's "Module 1" in the infotext; a file the studio
    does not have is a 400 in one sentence."""
    from safetensors.numpy import load_file
    from safetensors.torch import save_file as save_torch

    from tests.fixtures.comfy_split_files import bfl_vae_state

    models = studio.manager.models_dir
    own_t5 = demo_folder("demo") / "text_encoder_2"
    state = {name: value for path in sorted(own_t5.glob("*.safetensors")) for name, value in load_file(path).items()}
    noise = np.random.default_rng(4)
    (models / "text_encoders").mkdir()
    save_file({name: (value + value.std() * noise.standard_normal(value.shape)).astype(value.dtype)
               for name, value in state.items()}, str(models / "text_encoders" / "t5xxl_other.safetensors"))
    (models / "VAE").mkdir()  # listed by /sd-vae; the demo's VAE, one norm group, runs from its folder only
    save_torch(bfl_vae_state(demo_folder("demo") / "vae"), models / "VAE" / "ae_demo.safetensors")
    call = {"prompt": CAPTION, "seed": 3, "steps": 2}
    try:
        listed = answer(studio.http.get("/sd-modules"))
        assert sorted(m["model_name"] for m in listed) == ["ae_demo.safetensors", "t5xxl_other.safetensors"]
        assert [m["model_name"] for m in answer(studio.http.get("/sd-vae"))] == ["ae_demo.safetensors"]
        t5 = next(m["filename"] for m in listed if m["model_name"] == "t5xxl_other.safetensors")
        own = made(studio.http.post("/txt2img", json=call))
        chosen = made(studio.http.post("/txt2img", json={**call, "override_settings": {
            "forge_additional_modules": [t5]}}))
        assert "Module 1: t5xxl_other" in chosen["info"]["infotexts"][0] and not chosen["info"]["ignored"]
        assert not np.array_equal(np.asarray(decoded(own["images"][0])), np.asarray(decoded(chosen["images"][0])))
        assert studio.http.post("/options", json={"forge_additional_modules": [t5]}).status_code == 200
        assert answer(studio.http.get("/options"))["forge_additional_modules"] == [t5]
        later = made(studio.http.post("/txt2img", json=call))
        assert np.array_equal(np.asarray(decoded(later["images"][0])), np.asarray(decoded(chosen["images"][0])))
        png = answer(studio.http.post("/png-info", json={"image": chosen["images"][0]}))
        assert "Module 1: t5xxl_other" in png["info"]
        assert assert_a1111_error(studio.http.post("/txt2img", json={**call, "override_settings": {
            "forge_additional_modules": ["/forge/models/text_encoder/t5xxl_fp16.safetensors"]}}), 400) == (
            "The VAE / text encoder file '/forge/models/text_encoder/t5xxl_fp16.safetensors' is not in the studio: "
            "GET /sdapi/v1/sd-modules lists them.")
    finally:
        studio.http.post("/options", json={"forge_additional_modules": []})
        shutil.rmtree(models / "text_encoders")
        shutil.rmtree(models / "VAE")


def test_forges_diffusion_in_low_bits_quantizes_the_model_for_one_call_or_by_the_options(studio):
    """forge_unet_storage_dtype as Forge's clients send it: its NF4 / FP4 as the studio's 4-bit weights, float8 as
    8-bit ones, Automatic as stored; a value Forge does not have is a 400 before it is kept."""
    call = {"prompt": CAPTION, "steps": 2, "save_images": True}
    try:
        made(studio.http.post("/txt2img", json={**call, "seed": 51, "override_settings": {
            "forge_unet_storage_dtype": "float8-e4m3fn"}}))
        assert studio.http.post("/options", json={"forge_unet_storage_dtype": "bnb-nf4 (fp16 LoRA)"}).status_code == 200
        assert answer(studio.http.get("/options"))["forge_unet_storage_dtype"] == "bnb-nf4 (fp16 LoRA)"
        quantized = made(studio.http.post("/txt2img", json={**call, "seed": 52}))
        assert not quantized["info"]["ignored"]
        assert [r["quantize"] for r in saved_requests(studio, 51) + saved_requests(studio, 52)] == [8, 4]
        refused = studio.http.post("/options", json={"forge_unet_storage_dtype": "int3"})
        assert "not one of Forge's" in assert_a1111_error(refused, 400)
        assert answer(studio.http.get("/options"))["forge_unet_storage_dtype"] == "bnb-nf4 (fp16 LoRA)"
    finally:
        studio.http.post("/options", json={"forge_unet_storage_dtype": "Automatic"})
    made(studio.http.post("/txt2img", json={**call, "seed": 53}))
    assert saved_requests(studio, 53)[0]["quantize"] is None


# ----- progress and interrupt --------------------------------------------------------------------


def test_progress_shows_the_running_step_and_interrupt_stops_the_job(studio):
    assert answer(studio.http.get("/progress"))["state"]["job_count"] == 0  # idle
    answers = []
    job = threading.Thread(target=lambda: answers.append(studio.http.post("/txt2img", json={
        "prompt": CAPTION, "seed": 500, "steps": 400, "batch_size": 3})))
    job.start()
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        progress = answer(studio.http.get("/progress"))
        if progress["state"]["sampling_step"] >= 2 and progress["current_image"]:
            break
        assert time.monotonic() < deadline and job.is_alive(), "the job showed no step"
        time.sleep(0.05)
    state = progress["state"]
    assert (state["job"], state["job_count"], state["sampling_steps"]) == ("txt2img", 3, 400)
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert decoded(progress["current_image"]).size[0] > 0
    assert studio.http.post("/interrupt").status_code == 200
    job.join(TIMEOUT_S)
    body = made(answers[0])
    assert body["info"]["interrupted"] and body["images"] == []  # stopped inside the first image
    assert answer(studio.http.get("/progress"))["state"]["job_count"] == 0


def test_a_job_whose_client_went_away_stops_after_its_current_step(studio):
    """A client that gives up (a timeout, then perhaps a retry) stops its job: no image is made for nobody."""
    import socket

    body = json.dumps({"prompt": CAPTION, "seed": 501, "steps": 400, "batch_size": 3, "save_images": True}).encode()
    client = socket.create_connection((studio.http.base_url.host, studio.http.base_url.port))
    client.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + TIMEOUT_S
    while answer(studio.http.get("/progress"))["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline, "the job showed no step"
        time.sleep(0.05)
    client.close()  # gone, its answer unread
    while answer(studio.http.get("/progress"))["state"]["job_count"]:
        assert time.monotonic() < deadline, "the job went on without its client"
        time.sleep(0.05)
    assert saved_requests(studio, 501) == []  # stopped inside the first of its three 400-step images


def test_api_jobs_wait_for_the_engine_turn_that_page_jobs_take(studio):
    turns, held, release, answers = studio.studio.turns, threading.Event(), threading.Event(), []

    def page_job():  # what a page job does while it runs (webui.jobs.page_job)
        with turns.turn():
            held.set()
            release.wait(TIMEOUT_S)

    holder = threading.Thread(target=page_job)
    holder.start()
    held.wait(TIMEOUT_S)
    tickets = turns._next_ticket
    api = threading.Thread(target=lambda: answers.append(studio.http.post("/txt2img", json={
        "prompt": CAPTION, "seed": 12, "steps": 2})))
    api.start()
    deadline = time.monotonic() + TIMEOUT_S
    while turns._next_ticket == tickets:  # the API job has taken the next turn
        assert time.monotonic() < deadline and api.is_alive(), "the API job took no turn"
        time.sleep(0.02)
    assert answers == [] and answer(studio.http.get("/progress"))["state"]["job_count"] == 0  # waiting, not running
    release.set()
    api.join(TIMEOUT_S)
    assert made(answers[0])["info"]["all_seeds"] == [12]


# ----- png-info and listings ----------------------------------------------------------------------


def test_png_info_reads_our_pngs_a1111s_and_comfyuis(studio):
    body = made(studio.http.post("/txt2img", json={"prompt": CAPTION, "seed": 77, "steps": 2, "width": 64,
                                                   "height": 48}))
    ours = answer(studio.http.post("/png-info", json={"image": body["images"][0]}))
    assert ours["info"] == body["info"]["infotexts"][0] and "mflux_studio" in ours["items"]
    assert "parameters" not in ours["items"]  # A1111 answers the text as `info` only
    assert {k: ours["parameters"][k] for k in ("Prompt", "Negative prompt", "Steps", "Seed", "Size-1", "Size-2")} == \
        {"Prompt": CAPTION, "Negative prompt": "", "Steps": "2", "Seed": "77", "Size-1": "64", "Size-2": "48"}
    assert (ours["settings"]["prompt"], ours["settings"]["seed"], ours["settings"]["steps"]) == (CAPTION, 77, 2)
    comfy_nodes = json.loads(ours["items"]["prompt"])  # the graph ComfyUI opens the image as (test_comfy_workflow.py)
    assert {"UNETLoader", "KSampler", "SaveImage"} <= {node["class_type"] for node in comfy_nodes.values()}
    chunk = PngImagePlugin.PngInfo()
    text = ("a cat,\n  on a mat\nNegative prompt: a dog\nblurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, "
            'Size: 512x768, ADetailer prompt: "a face, smiling", Lora hashes: "cat: 0123"')
    chunk.add_text("parameters", text)
    theirs = answer(studio.http.post("/png-info", json={"image": b64(Image.new("RGB", (8, 8)), chunk)}))
    assert theirs["info"] == text
    assert theirs["parameters"] == {  # what A1111's parse_generation_parameters reads, less its page defaults
        "Prompt": "a cat,\non a mat", "Negative prompt": "a dog\nblurry", "Steps": "20", "Sampler": "Euler a",
        "CFG scale": "7", "Seed": "5", "Size-1": "512", "Size-2": "768", "ADetailer prompt": "a face, smiling",
        "Lora hashes": "cat: 0123"}
    assert {k: theirs["settings"][k] for k in ("prompt", "negative_prompt", "steps", "seed", "width", "height")} == \
        {"prompt": "a cat,\non a mat", "negative_prompt": "a dog\nblurry", "steps": 20, "seed": 5, "width": 512,
         "height": 768}
    comfy = PngImagePlugin.PngInfo()
    comfy.add_text("prompt", json.dumps(flux_dev_example(seed=5)))
    graph = answer(studio.http.post("/png-info", json={"image": b64(Image.new("RGB", (8, 8)), comfy)}))
    assert graph["info"] == "" and "prompt" in graph["items"]  # no A1111 text; the settings from ComfyUI's graph
    assert graph["parameters"] == {"Prompt": "", "Negative prompt": ""}
    assert {k: graph["settings"][k] for k in ("seed", "steps", "width", "guidance")} == \
        {"seed": 5, "steps": 20, "width": 1024, "guidance": 3.5}
    bare = answer(studio.http.post("/png-info", json={"image": b64(Image.new("RGB", (8, 8)))}))
    assert (bare["info"], bare["parameters"], bare["settings"]) == ("", {"Prompt": "", "Negative prompt": ""}, {})
    exif = Image.Exif()  # a JPEG A1111 saved: its text in the EXIF UserComment, UTF-16 as piexif writes it
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\0" + text.encode("utf-16-be")
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG", exif=exif)
    from_jpeg = answer(studio.http.post("/png-info", json={"image": base64.b64encode(jpeg.getvalue()).decode()}))
    assert from_jpeg["info"] == text and from_jpeg["parameters"] == theirs["parameters"]
    assert from_jpeg["settings"] == theirs["settings"]
    metadata = json.loads(decoded(body["images"][0]).text["mflux_studio"])
    metadata["request"]["steps"] = 0  # a value the page would refuse to restore
    damaged = PngImagePlugin.PngInfo()
    damaged.add_text("parameters", ours["info"])
    damaged.add_text("mflux_studio", json.dumps(metadata))
    read = answer(studio.http.post("/png-info", json={"image": b64(Image.new("RGB", (8, 8)), damaged)}))
    assert (read["info"], read["parameters"]["Seed"], read["settings"]) == (ours["info"], "77", {})


def test_the_listings_clients_probe_answer(studio):
    assert [s["name"] for s in answer(studio.http.get("/samplers"))] == [
        "Euler", "Euler a", "Heun", "DPM++ 2M", "DPM++ 2M SDE", "UniPC"]
    assert [s["label"] for s in answer(studio.http.get("/schedulers"))] == ["Simple", "Beta", "Karras", "Exponential"]
    (lora,) = answer(studio.http.get("/loras"))
    assert (lora["name"], lora["alias"], lora["metadata"]["ss_base_model_version"]) == ("ink", "ink-v2", "flux1")
    assert lora["path"] == str(studio.folders.loras[0] / "ink.safetensors")
    assert [u["name"] for u in answer(studio.http.get("/upscalers"))] == ["None", "Lanczos", "Nearest",
                                                                          "ControlNet upscaler", X2PLUS]
    for path in ("/sd-vae", "/prompt-styles", "/face-restorers", "/hypernetworks"):
        assert isinstance(answer(studio.http.get(path)), list)
    memory = answer(studio.http.get("/memory"))
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0
    accelerator = memory["cuda"]  # A1111's key; MLX's memory against the studio's budget
    assert accelerator["system"]["total"] == studio.manager.budget.bytes
    assert accelerator["system"]["used"] == accelerator["active"]["current"] + accelerator["inactive"]["current"]
    for path in ("/cmd-flags", "/embeddings", "/scripts"):
        assert isinstance(answer(studio.http.get(path)), dict)
    assert studio.http.post("/refresh-checkpoints").status_code == 200
    assert "/sdapi/v1/interrogate" in assert_a1111_error(studio.http.post("/interrogate"), 404)


def test_unload_checkpoint_frees_the_models_and_the_next_call_loads_them(studio):
    fields = {"prompt": CAPTION, "seed": 3, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    made(studio.http.post("/txt2img", json=fields))
    assert studio.manager.status()["resident_bytes"] > 0
    with studio.manager._lock:  # a job running
        assert "A job is running" in assert_a1111_error(studio.http.post("/unload-checkpoint"), 409)
    assert studio.http.post("/unload-checkpoint").status_code == 200
    assert studio.manager.status()["resident_bytes"] == 0
    assert studio.http.post("/reload-checkpoint").status_code == 200  # the next job loads it
    assert len(made(studio.http.post("/txt2img", json=fields))["images"]) == 1


@pytest.mark.parametrize("fields, settings, ignored", [
    ({"sampler_name": "Heun", "scheduler": "Beta"}, {"sampler": "heun", "schedule": "beta"}, []),
    ({"sampler_index": "k_dpmpp_2m"}, {"sampler": "dpm++2m"}, []),
    ({"sampler_name": "DPM++ 2M Karras"}, {"sampler": "dpm++2m", "schedule": "karras"}, []),  # before A1111 1.9
    ({"sampler_name": "Euler", "scheduler": "Automatic"}, {"sampler": "euler"}, []),
    ({"sampler_name": "Euler a", "scheduler": "Align Your Steps"}, {"sampler": "euler_a"}, ["Align Your Steps"]),
    ({"sampler_index": "k_euler_a"}, {"sampler": "euler_a"}, []),
    ({"sampler_name": "DPM++ 2M SDE Karras"}, {"sampler": "dpm++2m_sde", "schedule": "karras"}, []),
    ({"sampler_index": "k_dpmpp_2m_sde"}, {"sampler": "dpm++2m_sde"}, []),
    ({"sampler_name": "UniPC", "scheduler": "Exponential"}, {"sampler": "unipc", "schedule": "exponential"}, []),
    ({"sampler_name": "DPM++ SDE"}, {}, ["DPM++ SDE"]),
])
def test_samplers_and_schedulers_are_picked_by_a1111s_names(fields, settings, ignored):
    notes = []
    assert sampling_settings(Txt2ImgParams(**fields), notes) == settings
    assert len(notes) == len(ignored) and all(name in note for name, note in zip(ignored, notes))


# ----- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, status, words", [
    ("/txt2img", {"seed": "abc"}, 422, "'seed'"),
    ("/txt2img", {"batch_size": 0}, 422, "'batch_size'"),
    ("/txt2img", {"batch_size": 8, "n_iter": 4}, 400, "at most 16"),
    ("/txt2img", {"width": 100, "height": 64}, 400, "multiple of 16"),
    ("/txt2img", {"override_settings": {"sd_model_checkpoint": "nope"}}, 400, "sd-models"),
    ("/txt2img", {"override_settings": {"sd_model_checkpoint": "demo-fill"}}, 400, "generate tool"),
    ("/img2img", {"prompt": "x"}, 422, "'init_images'"),
    ("/img2img", {"init_images": ["not base64!"]}, 400, "init image is not base64"),
    ("/img2img", {"init_images": [b64(Image.new("RGB", (16, 16)))], "width": -16}, 422, "'width'"),
    ("/img2img", {"init_images": [base64.b64encode(b"not a picture").decode()]}, 400, "init image"),
    ("/img2img", {"init_images": [b64(Image.new("RGB", (16, 16)))], "mask": b64(Image.new("L", (16, 16)))}, 400,
     "marks nothing"),
    ("/options", {"sd_model_checkpoint": "nope"}, 400, "sd-models"),
    ("/img2img", {"init_images": [b64(Image.new("RGB", (16, 16)))], "denoising_strength": 0}, 400,
     "denoising_strength 0 would change nothing"),
    ("/txt2img", {"cfg_scale": "nan"}, 422, "'cfg_scale' is invalid: Input should be a finite number"),
    ("/txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "threshold_a": "-inf"}]}}}, 422,
     "threshold_a"),
    ("/txt2img", {"override_settings": {"sd_model_checkpoint": "dev"}}, 400, "not on this machine"),  # listed, absent
    ("/png-info", {}, 422, "'image'"),
    ("/extra-single-image", {"image": b64(Image.new("RGB", (16, 16))), "upscaler_1": "Lanczos",
                             "upscaling_resize": 0.01}, 422, "'upscaling_resize'"),  # A1111's range: 1 to 8
    ("/txt2img", {"script_name": "Prompts from file or textbox", "script_args": [False, False, "start", "a\n" * 101]},
     400, "101 images; one answer holds at most 100"),
])
def test_bad_requests_get_a1111_errors(studio, path, body, status, words):
    assert words in assert_a1111_error(studio.http.post(path, json=body), status)


def test_bad_bodies_get_a1111_errors_and_auth_is_the_pages(studio):
    assert "JSON" in assert_a1111_error(studio.http.post("/txt2img", content=b"prompt=x"), 400)
    for number in (b"NaN", b"Infinity", b"-Infinity"):  # as Python's json writes them, which no setting takes
        body = b'{"prompt": "x", "eta": ' + number + b'}'
        assert f"eta must be a finite number, not {number.decode()}." in assert_a1111_error(
            studio.http.post("/txt2img", content=body), 400)
    deep = b'{"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [{"weight": 1}, {"weight": NaN}]}}}'
    assert "alwayson_scripts.controlnet.args[1].weight must be a finite number, not NaN." in assert_a1111_error(
        studio.http.post("/txt2img", content=deep), 400)
    digits = b'{"prompt": "x", "seed": ' + b"9" * 5000 + b'}'  # past the 4,300 digits Python reads
    assert "number too long" in assert_a1111_error(studio.http.post("/txt2img", content=digits), 400)
    nested = b'{"prompt": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "too deeply" in assert_a1111_error(studio.http.post("/txt2img", content=nested), 400)
    assert "/sdapi/v1/txt2img takes POST, not GET" in assert_a1111_error(studio.http.get("/txt2img"), 405)
    guarded = FastAPI(routes=sdapi_router(studio.studio, auth=("ann", "s3cret")).routes)
    with TestClient(guarded, base_url="http://127.0.0.1/sdapi/v1") as client:
        refused = client.get("/sd-models")
        assert "user and password" in assert_a1111_error(refused, 401)
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert_a1111_error(client.post("/txt2img", json={}, auth=("ann", "wrong")), 401)
        assert client.get("/sd-models", auth=("ann", "s3cret")).status_code == 200


def test_a_units_module_and_union_control_type_pick_the_preprocessing_and_the_union_mode():
    from webui.a1111_controlnet import ControlNetUnit, module_settings

    def extra(**fields):
        return module_settings(ControlNetUnit(**fields))

    assert extra(module="canny") == {"canny_low": 100, "canny_high": 200}
    assert extra(module="none") == {"controlnet_skip_canny": True}
    assert extra(module="depth_midas") == extra(module="depth_anything_v2") == {"controlnet_mode": "depth"}
    assert extra(module="none", union_control_type="Depth") == {"controlnet_skip_canny": True,
                                                                 "controlnet_mode": "Depth"}
    assert extra(module="canny", union_control_type="Unknown") == {"canny_low": 100, "canny_high": 200}
