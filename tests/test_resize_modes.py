"""A1111's resize modes for input images of another size than the output: the geometry of each mode (pixel checks
on striped synthetic images), masks resized with the image's geometry, and tool runs that honour the mode (equal
to diffusers handed the image we resized, which diffusers then leaves alone) and say what they did."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mflux_core.errors import InvalidRequest
from mflux_core.images.resize_modes import RESIZE_MODES, resize_note, resize_to
from mflux_core.request import GenerationRequest
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.test_tools_parity import posterior_mean  # noqa: F401  (a fixture: diffusers' Fill encodes the mean)
from tests.parity import (
    UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, pack, random_image, run_cli, save,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(width: int, height: int, across: bool = True) -> Image.Image:
    """Red first quarter, green middle half, blue last quarter: along x (`across`) or along y."""
    pixels = np.zeros((height, width, 3), np.uint8)
    length = width if across else height
    bands = ((0, length // 4, RED), (length // 4, 3 * length // 4, GREEN), (3 * length // 4, length, BLUE))
    for start, end, colour in bands:
        if across:
            pixels[:, start:end] = colour
        else:
            pixels[start:end, :] = colour
    return Image.fromarray(pixels)


def near(pixels: np.ndarray, colour) -> bool:
    return bool(np.all(np.abs(pixels.astype(int) - colour) <= 8))


def test_just_resize_stretches_everything_in():
    out = np.asarray(resize_to(stripes(160, 80), 40, 40, "just resize"))
    assert out.shape == (40, 40, 3)
    assert near(out[:, 1:9], RED) and near(out[:, 12:28], GREEN) and near(out[:, 31:39], BLUE)


def test_crop_and_resize_covers_the_output_and_cuts_the_overflow_off_both_sides():
    wide = np.asarray(resize_to(stripes(160, 80), 40, 40, "crop and resize"))
    assert wide.shape == (40, 40, 3)
    assert near(wide[:, 1:39], GREEN)  # the red and blue quarters were the overflow
    tall = np.asarray(resize_to(stripes(80, 160, across=False), 40, 40, "crop and resize"))
    assert near(tall[1:39], GREEN)
    kept = np.asarray(resize_to(stripes(80, 80), 40, 20, "crop and resize"))  # a wide output crops top and bottom
    assert near(kept[:, 1:9], RED) and near(kept[:, 31:39], BLUE)


def test_resize_and_fill_fits_the_image_and_stretches_its_edges_into_the_rest():
    wide = np.asarray(resize_to(stripes(160, 80), 40, 40, "resize and fill"))
    assert wide.shape == (40, 40, 3)
    assert near(wide[:, 1:9], RED) and near(wide[:, 12:28], GREEN) and near(wide[:, 31:39], BLUE)
    assert all(np.array_equal(wide[row], wide[10]) for row in range(10))  # the fitted image is rows 10..29
    assert all(np.array_equal(wide[row], wide[29]) for row in range(30, 40))
    tall = np.asarray(resize_to(stripes(40, 80, across=False), 40, 40, "resize and fill"))
    assert all(np.array_equal(tall[:, col], tall[:, 10]) for col in range(10))  # columns 10..29
    assert all(np.array_equal(tall[:, col], tall[:, 29]) for col in range(30, 40))
    assert near(tall[1:9, 10:30], RED) and near(tall[31:39, 10:30], BLUE)
    odd = resize_to(random_image(100, 30, seed=1), 48, 48, "resize and fill")  # 48x14 fitted, 17 + 17 rows filled
    assert odd.size == (48, 48)


def test_the_geometry_is_a1111s_to_the_pixel():
    """A1111's resize_image, worked by hand. Crop, 451x300 to 64x64: scaled to 451*64//300 = 96 wide, columns
    96//2 - 64//2 = 16 on kept. Fill, 100x68 to 64x64: scaled to 68*64//100 = 43 high (43.52 rounded down), placed at
    row 64//2 - 43//2 = 11 (a centring would put it at 10), its edge rows stretched over the 11 rows above and the 10
    below."""
    photo = random_image(451, 300, seed=6)
    cropped = resize_to(photo, 64, 64, "crop and resize")
    assert np.array_equal(np.asarray(cropped), np.asarray(photo.resize((96, 64), Image.Resampling.LANCZOS))[:, 16:80])
    photo = random_image(100, 68, seed=7)
    filled = np.asarray(resize_to(photo, 64, 64, "resize and fill"))
    assert np.array_equal(filled[11:54], np.asarray(photo.resize((64, 43), Image.Resampling.LANCZOS)))
    assert all(np.array_equal(filled[row], filled[0]) for row in range(11))  # one row, stretched
    assert all(np.array_equal(filled[row], filled[54]) for row in range(54, 64))
    assert not np.array_equal(filled[0], filled[54])


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_a_mask_resized_by_the_same_mode_still_covers_the_same_pixels(mode):
    image = Image.new("RGB", (120, 60), GREEN)
    ImageDraw.Draw(image).rectangle((50, 10, 69, 49), fill=RED)
    mask = Image.new("L", (120, 60), 0)
    ImageDraw.Draw(mask).rectangle((50, 10, 69, 49), fill=255)
    pixels = np.asarray(resize_to(image, 48, 48, mode)).astype(int)
    masked = np.asarray(resize_to(mask, 48, 48, mode)) > 127
    reddish = (pixels[..., 0] > 127) & (pixels[..., 1] < 128)
    assert masked.any() and np.mean(masked == reddish) > 0.97


def test_same_size_is_left_alone_and_the_note_says_what_was_done():
    image = random_image(32, 32, seed=2)
    assert all(resize_to(image, 32, 32, mode) is image for mode in RESIZE_MODES)
    assert resize_note((32, 32), 32, 32, "crop and resize") is None
    assert resize_note((800, 600), 512, 512, "crop and resize") == "Input 800x600 cropped and resized to 512x512."
    assert resize_note((800, 600), 512, 512, "resize and fill") == "Input 800x600 resized and filled to 512x512."
    assert resize_note((800, 600), 512, 512, "just resize") == "Input 800x600 resized (stretched) to 512x512."
    for mode in RESIZE_MODES:  # an Upscale's input: same proportions, nothing cut, stretched or filled
        assert resize_note((16, 16), 64, 64, mode) == "Input 16x16 resized to 64x64."
    with pytest.raises(ValueError, match="Unknown resize mode"):
        resize_to(image, 16, 16, "stretch")


def test_the_request_refuses_an_unknown_mode_with_a_sentence():
    assert GenerationRequest().resize_mode == "crop and resize"
    with pytest.raises(InvalidRequest, match="The resize mode must be one of just resize, crop and resize, resize"):
        GenerationRequest(resize_mode="stretch").validated()


# ----- tool runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["crop and resize", "resize and fill"])
def test_image_to_image_uses_the_resize_mode_and_says_so(tiny_dev, tmp_path, mode):
    import diffusers
    from diffusers.pipelines.flux import pipeline_flux_img2img

    height, width, steps, strength = 64, 48, 3, 0.6
    init = random_image(80, 48, seed=3)  # wide into tall: the modes differ a lot
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=4)
    ours = run_cli(
        "generate", "--path", tiny_dev, "--prompt", "a hill", "--steps", steps, "--height", height, "--width", width,
        "--image-path", save(init, tmp_path / "init.png"), "--image-strength", strength, "--init-noise", noise_path,
        "--guidance", 4.0, "--resize-mode", mode, "--metadata", "--output", tmp_path / "ours.png",
    )
    pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)

    def reference(image):
        with deterministic_diffusers(pipeline_flux_img2img, np.load(noise_path)):
            return pipe("a hill", image=image, height=height, width=width, strength=1 - strength,
                        num_inference_steps=steps, guidance_scale=4.0, output_type="pil").images[0]

    expected = reference(resize_to(init, width, height, mode))
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(init)) > 3 * UINT8_TOLERANCE  # diffusers' own resize stretches
    metadata = json.loads((tmp_path / "ours.json").read_text())
    assert metadata["request"]["resize_mode"] == mode
    assert metadata["notes"] == [resize_note((80, 48), width, height, mode)]


def test_fill_resizes_image_and_mask_with_one_geometry(tiny_fill, tmp_path, capsys, posterior_mean):  # noqa: F811
    height = width = 48
    image = random_image(96, 48, seed=5)
    mask = Image.new("L", (96, 48), 0)
    ImageDraw.Draw(mask).rectangle((40, 8, 63, 31), fill=255)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=6)
    ours = run_cli(
        "fill", "--path", tiny_fill, "--prompt", "a blue square", "--image-path", save(image, tmp_path / "i.png"),
        "--masked-image-path", save(mask, tmp_path / "m.png"), "--steps", 2, "--height", height, "--width", width,
        "--guidance", 30, "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    assert "Note: Input 96x48 cropped and resized to 48x48." in capsys.readouterr().err
    pipe = load_diffusers_pipeline(tiny_fill, "FluxFillPipeline")
    expected = pipe("a blue square", image=resize_to(image, width, height, "crop and resize"),
                    mask_image=resize_to(mask, width, height, "crop and resize"), height=height, width=width,
                    num_inference_steps=2, guidance_scale=30, latents=pack(np.load(noise_path)),
                    output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE


# ----- the page ----------------------------------------------------------------------------------


def test_the_page_offers_the_modes_where_an_input_is_resized_and_says_which_it_used(tmp_path):
    """Through the served page's API, on the demo model (64 px)."""
    from gradio_client import Client, handle_file

    from mflux_core.manager import ModelManager
    from tests.test_plot_panel import free_port
    from webui.app import build_app, launch_kwargs
    from webui.studio import StudioFolders

    folders = StudioFolders.default(tmp_path / "outputs", models_dir=tmp_path / "models", loras=[])
    app = build_app(ModelManager(models_dir=tmp_path / "models"), folders)
    radios = {block.elem_id for block in app.blocks.values() if (block.elem_id or "").endswith("-resize-mode")}
    assert radios == {"generate-resize-mode", "fill-resize-mode", "depth-resize-mode", "controlnet-resize-mode",
                      "concept-resize-mode"}  # not Kontext (its reference keeps its size), Redux, the plot
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               **launch_kwargs(folders))
    try:
        client = Client(f"http://127.0.0.1:{port}/", analytics_enabled=False, verbose=False)
        init = handle_file(str(save(random_image(80, 48, seed=7), tmp_path / "wide.png")))
        status, _, results = client.predict(prompt="a red circle", init_image=init, image_strength=0.5, steps="2",
                                            width=64, height=64, resize_mode="resize and fill", api_name="/generate")
    finally:
        app.close()
    assert "Done: 1 image" in status and "Input 80x48 resized and filled to 64x64." in status
    [saved] = list((tmp_path / "outputs").glob("????-??-??/*.png"))
    with Image.open(saved) as image:
        assert json.loads(image.info["mflux_studio"])["request"]["resize_mode"] == "resize and fill"


def test_the_panels_resize_mode_reaches_the_request_and_a_preset(tmp_path):
    from mflux_core.presets import validate_settings
    from tests.test_webui_panels import picture, shared
    from webui.panels import generate
    from webui.requests import InputStore, RequestContext

    context = RequestContext(inputs=InputStore(tmp_path / "inputs"))
    [request] = generate.build_requests(shared(init_image=picture(), resize_mode="just resize"), context)
    assert request.resize_mode == "just resize"
    settings = validate_settings(generate.settings_from_values(shared(resize_mode="resize and fill")))
    assert settings["resize_mode"] == "resize and fill"
    assert generate.values_from_settings(settings)["resize_mode"] == "resize and fill"
    with pytest.raises(InvalidRequest, match="The resize mode must be one of"):
        generate.build_requests(shared(init_image=picture(), resize_mode="stretch"), context)
