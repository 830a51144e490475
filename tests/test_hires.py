"""Hires fix: text-to-image, the image upscaled with Lanczos, then image-to-image at the larger size, as one job.

On the shipped demo model (64 px native), 64 -> 128: the result is exactly generate then img2img run by hand
through the same engine; the settings survive metadata (ours and A1111's text), presets and the CLI; an
over-limit or over-budget second pass is refused before the first step; a stop works in the second pass.
"""

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mflux_core import cli
from mflux_core.errors import InvalidRequest
from mflux_core.events import Loading, Step, Stopped, stream
from mflux_core.manager import ModelManager
from mflux_core.native_sizes import NATIVE_SIZES_KEY
from mflux_core.metadata import read_metadata_file, request_from_metadata
from mflux_core.presets import (
    Preset, parse_preset, preset_json, settings_from_a1111, settings_from_png, settings_from_request,
    validate_settings,
)
from mflux_core.request import GenerationRequest
from mflux_core.images.io import save_png_atomic
from mflux_core.weights.resolve import demo_models_dir
from tests.fixtures.any_size_demo import any_size_demo_models  # noqa: F401 (a fixture)
from tests.test_memory_budget import budget_leaving

HIRES = {"hires_scale": 2.0, "hires_steps": 4, "hires_strength": 0.6}
SHIPPED_DEMO = demo_models_dir() / "demo"  # read before the module's fixture points the demo name at a copy


def demo_request(**changes) -> GenerationRequest:
    settings = {"model": "demo", "prompt": "a red circle", "seed": 3, "steps": 3, "width": 64, "height": 48,
                "dtype": "float32"}
    return GenerationRequest(**{**settings, **changes})


@pytest.fixture(scope="module", autouse=True)
def any_size_demo(any_size_demo_models):
    """The demo draws its native sizes only and refuses a hires fix past them
    (test_a_model_with_native_sizes_has_a_hires_fix_within_them_only): here its copy without that list stands in
    for FLUX.1."""
    return any_size_demo_models


@pytest.fixture(scope="module")
def manager(any_size_demo):
    return ModelManager()


def test_the_second_pass_runs_at_the_larger_size_and_equals_generate_then_img2img(manager, tmp_path):
    steps = []
    result = manager.generate(demo_request(**HIRES), report=lambda e: steps.append(e) if isinstance(e, Step) else 0)
    assert result.image.size == (128, 96)

    first = manager.generate(demo_request())
    upscaled = first.image.resize((128, 96), Image.Resampling.LANCZOS)
    path = save_png_atomic(upscaled, tmp_path / "upscaled.png")
    by_hand = manager.generate(demo_request(width=128, height=96, steps=4, image_path=str(path),
                                            image_strength=1 - 0.6))
    assert np.array_equal(np.asarray(result.image), np.asarray(by_hand.image))
    assert np.array_equal(np.asarray(result.before), np.asarray(upscaled))
    assert np.abs(np.asarray(result.image, np.int16) - np.asarray(upscaled, np.int16)).max() > 20  # it really ran

    # 3 steps, then 4 hires steps of which strength 0.6 runs the last 3: counted across both passes
    assert [(e.step, e.total) for e in steps] == [(i, 6) for i in range(1, 7)]
    assert [e.stage for e in steps] == ["hires fix pass 1 of 2"] * 3 + ["hires fix pass 2 of 2"] * 3
    assert steps[0].preview.size == (64, 48) and steps[-1].preview.size == (128, 96)


def test_on_the_controlnet_tool_its_controlnets_steer_both_passes(manager, tmp_path):
    """ControlNet + hires fix (A1111's txt2img with a ControlNet unit and enable_hr): exactly the ControlNet tool at
    the first size, then the ControlNet tool's image-to-image from the upscaled image at the second, the control
    image brought to each size; its ControlNet items travel in the infotext."""
    control = save_png_atomic(Image.new("RGB", (64, 48), "white"), tmp_path / "control.png")
    control_image = Image.open(control)
    control_image.paste((200, 0, 0), (16, 12, 48, 36))
    control_image.save(control)
    steered = demo_request(**HIRES, tool="controlnet", controlnet_image_path=str(control))
    result = manager.generate(steered)
    assert result.image.size == (128, 96)
    first = manager.generate(demo_request(tool="controlnet", controlnet_image_path=str(control)))
    upscaled = save_png_atomic(first.image.resize((128, 96), Image.Resampling.LANCZOS), tmp_path / "upscaled.png")
    by_hand = manager.generate(demo_request(tool="controlnet", controlnet_image_path=str(control), width=128,
                                            height=96, steps=4, image_path=str(upscaled), image_strength=1 - 0.6))
    assert np.array_equal(np.asarray(result.image), np.asarray(by_hand.image))
    text = result.text_chunks["parameters"]
    assert "Hires upscale: 2" in text and "ControlNet 0: " in text
    with pytest.raises(InvalidRequest, match="The ControlNet tool's hires fix takes no ControlNet upscaler"):
        manager.generate(steered.with_(hires_upscaler="ControlNet upscaler"))


def test_pixel_box_regions_are_scaled_to_the_second_pass(manager):
    from mflux_core.hires import second_pass_request

    left = {"prompt": "a blue square on the left on a white background", "weight": 1.0}
    in_pixels = demo_request(**{**HIRES, "hires_steps": 2}, steps=1,
                             regions=({**left, "x": 0, "y": 0, "w": 32, "h": 48},))
    assert second_pass_request(in_pixels, 1).regions == ({**left, "x": 0, "y": 0, "w": 64, "h": 96},)
    in_fractions = in_pixels.with_(regions=({**left, "x": 0, "y": 0, "w": 0.5, "h": 1},))
    assert second_pass_request(in_fractions, 1).regions == in_fractions.regions
    edited = in_fractions.with_(regions=({**in_fractions.regions[0], "prompt": "a [blue:red:0.5] square"},))
    assert second_pass_request(edited, 1).regions[0]["prompt"] == "a red square"  # switched in the first pass
    pixels, fractions = (np.asarray(manager.generate(r).image) for r in (in_pixels, in_fractions))
    assert np.array_equal(pixels, fractions)  # the same left half in both passes


def test_the_settings_survive_metadata_a_preset_and_the_a1111_text(manager, tmp_path):
    result = manager.generate(demo_request(**HIRES, hires_prompt="a sharp red circle"))
    recorded = result.request
    assert (recorded.hires_scale, recorded.hires_steps, recorded.hires_strength, recorded.hires_upscaler) == (
        2.0, 4, 0.6, "Lanczos")
    path = save_png_atomic(result.image, tmp_path / "hires.png", result.text_chunks)
    assert request_from_metadata(read_metadata_file(path)) == recorded
    assert settings_from_png(path)["hires_prompt"] == "a sharp red circle"
    preset = parse_preset(preset_json(Preset("hires", validate_settings(settings_from_request(recorded)))))
    assert {k: v for k, v in preset.settings.items() if k.startswith("hires")} == {
        "hires_scale": 2.0, "hires_steps": 4, "hires_strength": 0.6, "hires_upscaler": "Lanczos",
        "hires_prompt": "a sharp red circle"}

    text = result.text_chunks["parameters"]
    assert ("Size: 64x48, Model: demo, Denoising strength: 0.6, Hires upscale: 2, Hires steps: 4, "
            'Hires upscaler: Lanczos, Hires prompt: "a sharp red circle"') in text
    restored = settings_from_a1111(text)
    assert {k: restored[k] for k in HIRES} == HIRES and restored["hires_upscaler"] == "Lanczos"
    # A1111's own: "Hires steps: 0" is the first pass's steps, an upscaler we lack leaves ours
    theirs = settings_from_a1111("a cat\nSteps: 20, Seed: 1, Size: 512x512, Denoising strength: 0.7, "
                                 "Hires upscale: 1.5, Hires steps: 0, Hires upscaler: Latent")
    assert (theirs["hires_scale"], theirs["hires_strength"], theirs.get("hires_steps"),
            theirs.get("hires_upscaler")) == (1.5, 0.7, None, None)


def test_a_scale_that_rounds_back_to_the_first_size_says_the_second_pass_only_repainted():
    result = ModelManager().generate(demo_request(width=48, height=48, steps=2, hires_scale=1.25, hires_steps=1))
    assert result.image.size == (48, 48)
    assert "The hires fix kept 48x48: 1.25 times that, rounded down to multiples of 16, is the same size, so the " \
           "second pass only repainted it." in result.notes


@pytest.mark.parametrize("changes, expected", [
    ({"width": 4096, "height": 64, "hires_scale": 2.0}, r"hires fix's second pass \(4096x64 upscaled 2 times\) "
                                                        r"would be 8192x128 pixels, past the 4096-pixel limit"),
    ({"hires_scale": 5.0}, r"Hires upscale 5.0 is out of range: use 1 to 4"),
    ({"hires_scale": 2.0, "hires_strength": 0.0}, r"Hires denoising strength 0 would leave"),
    ({"hires_scale": 2.0, "image_path": "x.png"}, r"runs after text-to-image only"),
    ({"hires_scale": 2.0, "tool": "fill"}, r"runs after text-to-image only \(Generate, or ControlNet steering it\)"),
    ({"hires_scale": 2.0, "hires_upscaler": "ESRGAN"}, r"^The upscaler 'ESRGAN' is not one the studio has: use "
                                                       r"Lanczos, ControlNet upscaler, or an upscaler model in the "
                                                       r"models folder's upscalers/\.$"),
])
def test_bad_hires_settings_are_refused_in_one_sentence_before_any_step(changes, expected):
    manager = ModelManager()
    steps = []
    with pytest.raises(InvalidRequest, match=expected):
        manager.generate(demo_request(**changes), report=steps.append)
    assert not [e for e in steps if not isinstance(e, Loading)]


def test_the_controlnet_upscaler_is_refused_in_one_sentence_when_its_controlnet_is_not_on_disk(tmp_path,
                                                                                               monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    steps = []
    with pytest.raises(InvalidRequest, match=r"^The ControlNet upscaler needs jasperai/Flux.1-dev-Controlnet-Upscaler, "
                                             r"which is not on disk: put it into the models folder as upscaler/"):
        ModelManager(models_dir=tmp_path / "models").generate(
            demo_request(hires_scale=2.0, hires_upscaler="ControlNet upscaler"), report=steps.append)
    assert not steps  # refused before loading anything


def test_the_controlnet_upscaler_steers_the_second_pass(tiny_dev, tmp_path):
    """With a tiny Upscaler ControlNet as `upscaler` in the models folder: the second pass differs from Lanczos's
    by the ControlNet's residuals alone (at strength 0 the images are equal), and the choice replays."""
    from tests.fixtures.tiny_controlnet import build_tiny_controlnet, load_transformer

    build_tiny_controlnet(tmp_path / "models" / "upscaler", load_transformer(tiny_dev), num_layers=1,
                          num_single_layers=1)
    manager = ModelManager(models_dir=tmp_path / "models")
    hires = GenerationRequest(model=str(tiny_dev), prompt="a red house by a lake", seed=1, steps=2, width=32,
                              height=32, hires_scale=2.0, hires_steps=2, hires_strength=0.8)
    lanczos = np.asarray(manager.generate(hires).image, np.int16)
    steered = manager.generate(hires.with_(hires_upscaler="ControlNet upscaler"))
    assert steered.image.size == (64, 64) and np.abs(np.asarray(steered.image, np.int16) - lanczos).max() > 20
    assert "Hires upscaler: ControlNet upscaler" in steered.text_chunks["parameters"]
    assert settings_from_a1111(steered.text_chunks["parameters"])["hires_upscaler"] == "ControlNet upscaler"
    assert validate_settings(settings_from_request(steered.request))["hires_upscaler"] == "ControlNet upscaler"
    assert steered.request.controlnet_strength == 0.6
    unsteered = manager.generate(hires.with_(hires_upscaler="ControlNet upscaler", controlnet_strength=0.0))
    assert np.array_equal(np.asarray(unsteered.image, np.int16), lanczos)
    replayed = manager.generate(request_from_metadata(steered.metadata))
    assert np.array_equal(np.asarray(replayed.image), np.asarray(steered.image))


def test_a_second_pass_over_the_memory_budget_is_refused_before_the_first_pass(manager):
    manager = ModelManager()
    manager.generate(demo_request(width=64, height=64))  # the demo resident, the process settled
    manager.resident.budget = budget_leaving(400 * 10**6, manager.resident.resident_bytes())
    events = []
    # the first pass alone (1024 px) fits; its second pass (4096 px, a 0.7 GB step) does not
    with pytest.raises(InvalidRequest, match=r"^A 4096x4096 image needs about .* more than the memory budget"):
        manager.generate(demo_request(width=1024, height=1024, hires_scale=4.0), report=events.append)
    assert not [e for e in events if isinstance(e, Step)]
    assert manager.generate(demo_request(**HIRES)).image.size == (128, 96)


def test_a_model_with_native_sizes_has_a_hires_fix_within_them_only(manager, tmp_path):
    steps = []
    with pytest.raises(InvalidRequest, match=r"/demo makes 64x64 images only, so it has no hires fix from 64x64 to "
                                             r"128x128: use a FLUX\.1 model\.$"):
        manager.generate(demo_request(model=str(listing(tmp_path / "64" / "demo", ((64, 64),))), width=64, height=64, **HIRES),
                         report=steps.append)
    assert not [event for event in steps if isinstance(event, Step)]
    sides = range(48, 129, 16)
    sizes = listing(tmp_path / "sizes" / "demo", tuple((width, height) for height in sides for width in sides))
    with pytest.raises(InvalidRequest, match=r"/demo makes 48x48 to 128x128 images only, so it has no hires fix from "
                                             r"96x96 to 192x192"):
        manager.generate(demo_request(model=str(sizes), width=96, height=96, **HIRES))
    result = manager.generate(demo_request(model=str(sizes), width=64, height=48, **HIRES))
    assert result.image.size == (128, 96) and not result.notes


def listing(folder: Path, sizes) -> Path:
    """The shipped demo's parts, linked, under a model_index.json that lists `sizes` (the rule, not the weights,
    is what the hires test reads)."""
    folder.mkdir(parents=True)
    for part in SHIPPED_DEMO.iterdir():
        if part.name != "model_index.json":
            (folder / part.name).symlink_to(part)
    index = json.loads((SHIPPED_DEMO / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, NATIVE_SIZES_KEY: [list(s) for s in sizes]}))
    return folder


def test_stop_works_in_the_second_pass(manager):
    cancel = threading.Event()
    for event in stream(lambda report: manager.generate(demo_request(**HIRES), report, cancel.is_set), cancel):
        if isinstance(event, Step) and event.stage.endswith("pass 2 of 2"):
            cancel.set()
    assert isinstance(event, Stopped) and re.match(r"Stopped after step \d of 4\.", event.message)
    assert not manager.status()["busy"]


def test_the_cli_runs_both_passes_into_one_png(tmp_path, capsys):
    output = tmp_path / "hires.png"
    assert cli.main(["generate", "--model", "demo", "--prompt", "a red circle", "--steps", "2", "--seed", "4",
                     "--hires-scale", "2", "--hires-steps", "3", "--hires-strength", "0.5", "--hires-upscaler",
                     "Lanczos", "--output", str(output)]) == 0
    with Image.open(output) as image:
        assert image.size == (128, 128)
        assert "Hires upscale: 2, Hires steps: 3, Hires upscaler: Lanczos" in image.info["parameters"]
    assert cli.main(["generate", "--model", "demo", "--prompt", "x", "--width", "4096", "--hires-scale", "2",
                     "--output", str(tmp_path / "no.png")]) == 1
    assert "past the 4096-pixel limit" in capsys.readouterr().err and not (tmp_path / "no.png").exists()


# ----- the page: the Generate panel's "Hires fix" and the before / after slider -------------------------------


def hires_values(**overrides) -> dict:
    from tests.test_webui_panels import shared

    values = {"model": "demo", "steps": "2", "image_strength": 0.4, "init_image": None, "hires": True,
              "hires_scale": 2, "hires_steps": 2, "hires_strength": 0.5, "hires_upscaler": "Lanczos", "hires_prompt": ""}
    return shared(**{**values, **overrides})


def run_panel_job(studio, view, values) -> dict:
    """The last update a Generate run sends the page (its results and the before / after pair)."""
    from webui.jobs import run_job
    from webui.panels import generate

    return list(run_job(studio, view, generate.build_requests, values, "session"))[-1]


def test_the_generate_panel_sends_the_hires_settings_only_when_ticked(tmp_path):
    from webui.panels import generate
    from webui.requests import InputStore, RequestContext

    context = RequestContext(inputs=InputStore(tmp_path / "inputs"))
    [request] = generate.build_requests(hires_values(hires_steps=0, hires_prompt="sharper"), context)
    assert (request.hires_scale, request.hires_steps, request.hires_strength, request.hires_upscaler,
            request.hires_prompt) == (2, None, 0.5, "Lanczos", "sharper")
    [plain] = generate.build_requests(hires_values(hires=False), context)
    assert plain.hires_scale is None and plain == request.with_(hires_scale=None, hires_steps=None,
                                                                hires_strength=None, hires_upscaler=None,
                                                                hires_prompt="")


def test_the_slider_gets_the_image_a_result_started_from_and_the_result(manager, tmp_path):
    import gradio as gr

    from webui.compare import show_comparison
    from webui.panels import result_column
    from webui.studio import Studio, StudioFolders

    with gr.Blocks():
        view, _, _ = result_column("test", compare=True)
    studio = Studio(manager=manager, folders=StudioFolders.default(tmp_path / "out", loras=[]))

    last = run_panel_job(studio, view, hires_values())
    before, after = last[view.compared]
    assert [after] == [path for path, _ in last[view.results]]
    assert Path(before).parent == studio.folders.inputs
    with Image.open(before) as first_pass, Image.open(after) as result:
        assert first_pass.size == result.size == (128, 128)
        assert np.abs(np.asarray(first_pass, np.int16) - np.asarray(result.convert("RGB"), np.int16)).max() > 20
    slider = show_comparison((before, after))
    assert slider.visible and slider.value is not None

    photo = Image.new("RGB", (64, 64), (200, 40, 10))
    last = run_panel_job(studio, view, hires_values(hires=False, init_image=photo))  # image-to-image
    before, after = last[view.compared]
    with Image.open(before) as shown:
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(photo))
    assert run_panel_job(studio, view, hires_values(hires=False))[view.compared] is None  # from noise: no slider
    assert show_comparison(None).visible is False


def test_the_panels_that_change_an_image_wire_the_slider_outside_their_api_result(tmp_path):
    from webui.app import build_app
    from webui.studio import StudioFolders

    app = build_app(ModelManager(models_dir=tmp_path), StudioFolders.default(tmp_path / "out", loras=[]))
    sliders = {panel: app.studio.panels[panel].view.compare for panel in ("generate", "fill", "kontext", "controlnet")}
    assert all(sliders.values()) and app.studio.panels["depth"].view.compare is None
    fed = {block._id for fn in app.fns.values() for block in fn.outputs}
    assert {slider._id for slider in sliders.values()} <= fed
    api = app.get_api_info()["named_endpoints"]
    assert len(api["/generate"]["returns"]) == 3  # status, preview, results: gradio_client callers unchanged
