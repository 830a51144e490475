"""In-context tools (in-context, catvton, ic-edit) are diptych Fill calls: canvas, mask, crop and LoRA.

Whole images are compared with diffusers' FluxFillPipeline called on a canvas and mask the test
builds itself, with the tool's LoRA merged into diffusers' transformer (W += scale * up @ down),
float32, uint8 max |diff| <= 2. Each test also checks the LoRA and the conditioning move the
image far beyond that tolerance.
"""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mflux_core.images.masks import distance_to_mask
from mflux_core.tools.catvton import DEFAULT_PROMPT as CATVTON_PROMPT
from mflux_core.tools.ic_edit import panel_size
from mflux_core.tools.in_context import diptych_canvas, diptych_mask, right_half, with_lora
from mflux_core.tools.in_context_lora import LORA_REPO, LORA_STYLES
from mflux_core.tools.specs import IC_EDIT_TEMPLATE
from mflux_core.manager import ModelManager
from mflux_core.request import GenerationRequest
from mflux_core.models.text_encoders import TextEncoders
from mflux_core.tools.common import default_sequence_length
from mflux_core.weights.resolve import demo_folder
from tests.fixtures import lora_files as lf
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

H, W, STEPS, GUIDANCE = 48, 32, 3, 30.0  # one panel; the canvas is 48 x 64
EFFECT = 3 * UINT8_TOLERANCE  # a LoRA or an input must move the image more than this


def random_image(width, height, seed) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new(left.mode, (left.width + right.width, left.height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


@pytest.fixture
def posterior_mean(monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("noise"), (1, 4, H // 8, 2 * W // 8), seed=21)


def block_lora(path, folder, seed):
    """A tiny LoRA on the transformer blocks (like the published ones, which leave x_embedder alone)."""
    dims = lf.Dims.of(folder)
    layers = [name for name in lf.diffusers_linears(dims) if "transformer_blocks." in name]
    return lf.write_diffusers_lora(path, dims, seed=seed, magnitude=1.0, layers=layers)


def diffusers_fill(folder, prompt, canvas, mask, noise, merged=()):
    pipe = load_diffusers_pipeline(folder, "FluxFillPipeline")
    for deltas, scale in merged:
        lf.merge_into(pipe.transformer, deltas, scale)
    return pipe(prompt, image=canvas, mask_image=mask, height=H, width=2 * W, num_inference_steps=STEPS,
                guidance_scale=GUIDANCE, latents=pack(np.load(noise)), output_type="pil").images[0]


def common_flags(folder, noise, output):
    return ("--path", folder, "--steps", STEPS, "--height", H, "--width", W, "--guidance", GUIDANCE,
            "--init-noise", noise, "--dtype", "float32", "--output", output)


# ----- canvas, mask, crop ---------------------------------------------------------------------------


def test_diptych_canvas_keeps_each_panel_and_the_mask_never_touches_the_left():
    left, right = random_image(W, H, 1), random_image(W, H, 2)
    canvas = np.asarray(diptych_canvas(left, right, W, H))
    assert canvas.shape == (H, 2 * W, 3)
    assert np.array_equal(canvas[:, :W], np.asarray(left)) and np.array_equal(canvas[:, W:], np.asarray(right))
    assert not np.asarray(diptych_canvas(left, None, W, H))[:, W:].any()

    given = np.zeros((H, W), np.uint8)
    given[10:30, 5:20] = 255
    mask = diptych_mask(Image.fromarray(given), W, H)
    assert mask.shape == (H, 2 * W) and not mask[:, :W].any()
    assert np.array_equal(mask[:, W:], given > 127)
    whole = diptych_mask(None, W, H)
    assert not whole[:, :W].any() and whole[:, W:].all()

    assert np.array_equal(np.asarray(right_half(Image.fromarray(canvas))), np.asarray(right))


def test_ic_edit_panel_is_512_wide_and_tool_loras_are_appended():
    assert panel_size(1000, 750) == (512, 384)
    assert panel_size(300, 1000) == (512, 1696)
    request = with_lora(GenerationRequest(lora_paths=("a.safetensors",)), "b.safetensors", 0.5)
    assert request.lora_paths == ("a.safetensors", "b.safetensors") and request.lora_scales == (1.0, 0.5)


def tokenizers_of(folder) -> TextEncoders:
    return TextEncoders.tokenizers_of(folder)


def test_ic_edits_template_takes_no_room_from_the_instruction(tiny_fill):
    """IC-Edit's default T5 length is the model's plus its template's own tokens. On demo-fill (32 tokens, a
    vocabulary learned from the shapes' captions) the template alone takes ~100: the instruction was cut off."""
    demo = tokenizers_of(demo_folder("demo-fill"))
    length = default_sequence_length(demo, "ic-edit")
    assert demo.t5_token_count(IC_EDIT_TEMPLATE.format(instruction="")) > demo.default_sequence_length == 32
    for instruction in ("make the triangle orange", "move the circle to the bottom right", "make the background "
                        "purple", "a b c d e f g h i j k l m n o"):
        full = IC_EDIT_TEMPLATE.format(instruction=instruction)
        assert demo.t5_token_count(full) <= length, (instruction, demo.t5_token_count(full), length)
    assert default_sequence_length(demo, "generate") == 32
    assert default_sequence_length(demo, "in-context") == 2 * 32  # its prompt describes two panels
    two_panels = "[IMAGE1] a pink star in the top left on a cyan background; [IMAGE2] a pink star in the bottom " \
                 "right on a green background"
    assert demo.t5_token_count(two_panels) <= 2 * 32
    assert default_sequence_length(tokenizers_of(tiny_fill), "ic-edit") == 512  # FLUX.1 folders: 512 already


# ----- whole tools against diffusers -----------------------------------------------------------------


def test_in_context_lora_style_matches_fill_with_merged_lora(tiny_fill, tmp_path, noise, posterior_mean, monkeypatch):
    library = tmp_path / "library"
    style_file = library / LORA_REPO / LORA_STYLES["couple"]
    style_file.parent.mkdir(parents=True)
    _, deltas = block_lora(style_file, tiny_fill, seed=5)
    monkeypatch.setenv("LORA_LIBRARY_PATH", str(library))
    reference_image = random_image(W, H, 3)
    reference_path = tmp_path / "reference.png"
    reference_image.save(reference_path)
    prompt = "[IMAGE1] a red mug; [IMAGE2] the same mug on a desk"
    args = ("in-context", "--prompt", prompt, "--image-path", reference_path)

    ours = run_cli(*args, "--lora-style", "couple", *common_flags(tiny_fill, noise, tmp_path / "ours.png"))
    ours_half = run_cli(*args, "--lora-style", "couple", "--save-full-image",
                        *common_flags(tiny_fill, noise, tmp_path / "full.png"))
    ours_full = Image.open(tmp_path / "full_full.png").convert("RGB")  # as mflux: the diptych beside the result
    without_lora = run_cli(*args, *common_flags(tiny_fill, noise, tmp_path / "plain.png"))

    canvas = side_by_side(reference_image, Image.new("RGB", (W, H)))
    mask = side_by_side(Image.new("L", (W, H), 0), Image.new("L", (W, H), 255))
    expected_full = diffusers_fill(tiny_fill, prompt, canvas, mask, noise, merged=[(deltas, 1.0)])
    expected_plain = diffusers_fill(tiny_fill, prompt, canvas, mask, noise)
    assert ours.size == (W, H) and ours_full.size == (2 * W, H)
    assert max_uint8_diff(ours_full, expected_full) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours_half, ours) == 0
    assert max_uint8_diff(ours, right_half(expected_full)) <= UINT8_TOLERANCE
    assert max_uint8_diff(without_lora, right_half(expected_plain)) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours, without_lora) > EFFECT
    other = diffusers_fill(tiny_fill, prompt, side_by_side(random_image(W, H, 9), Image.new("RGB", (W, H))), mask,
                           noise, merged=[(deltas, 1.0)])
    assert max_uint8_diff(right_half(other), right_half(expected_full)) > EFFECT  # the reference matters


def test_catvton_masks_only_the_person_and_uses_the_trained_prompt(tiny_fill, tmp_path, noise, posterior_mean):
    garment, person = random_image(W, H, 4), random_image(W, H, 6)
    person_mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(person_mask).rectangle((6, 10, 25, 37), fill=255)
    for name, image in (("garment", garment), ("person", person), ("mask", person_mask)):
        image.save(tmp_path / f"{name}.png")
    ours = run_cli("catvton", "--garment-image", tmp_path / "garment.png", "--person-image", tmp_path / "person.png",
                   "--person-mask", tmp_path / "mask.png", "--save-full-image",
                   *common_flags(tiny_fill, noise, tmp_path / "ours.png"))
    whole = Image.open(tmp_path / "ours_full.png").convert("RGB")

    mask = side_by_side(Image.new("L", (W, H), 0), person_mask)
    expected = diffusers_fill(tiny_fill, CATVTON_PROMPT, side_by_side(garment, person), mask, noise)
    assert max_uint8_diff(whole, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours, right_half(whole)) == 0
    other_garment = diffusers_fill(tiny_fill, CATVTON_PROMPT, side_by_side(random_image(W, H, 8), person), mask, noise)
    assert max_uint8_diff(right_half(other_garment), right_half(expected)) > EFFECT

    kept = run_cli("catvton", "--garment-image", tmp_path / "garment.png", "--person-image", tmp_path / "person.png",
                   "--person-mask", tmp_path / "mask.png", "--keep-unmasked",
                   *common_flags(tiny_fill, noise, tmp_path / "kept.png"))
    feather = 4
    far = distance_to_mask(np.asarray(person_mask) > 127, feather + 1) > feather
    assert np.array_equal(np.asarray(kept)[far], np.asarray(person)[far])  # the person, exactly, away from the mask
    inside = np.asarray(person_mask) > 127
    assert np.array_equal(np.asarray(kept)[inside], np.asarray(ours)[inside])  # the generated garment


def test_ic_edit_applies_its_lora_and_wraps_the_instruction(tiny_fill, tmp_path, noise, posterior_mean):
    lora_file, deltas = block_lora(tmp_path / "ic_edit.safetensors", tiny_fill, seed=7)
    reference_image = random_image(W, H, 10)
    reference_image.save(tmp_path / "reference.png")
    ours = run_cli("ic-edit", "--reference-image", tmp_path / "reference.png", "--instruction", "make it pink",
                   "--ic-edit-lora", lora_file, *common_flags(tiny_fill, noise, tmp_path / "ours.png"))

    prompt = IC_EDIT_TEMPLATE.format(instruction="make it pink")
    canvas = side_by_side(reference_image, Image.new("RGB", (W, H)))
    mask = side_by_side(Image.new("L", (W, H), 0), Image.new("L", (W, H), 255))
    expected = right_half(diffusers_fill(tiny_fill, prompt, canvas, mask, noise, merged=[(deltas, 1.0)]))
    without_lora = right_half(diffusers_fill(tiny_fill, prompt, canvas, mask, noise))
    assert ours.size == (W, H)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, without_lora) > EFFECT


def test_in_context_tools_refuse_a_model_without_fill_channels(tiny_dev, tmp_path, capsys):
    from mflux_core.cli import main

    random_image(W, H, 1).save(tmp_path / "r.png")
    assert main(["ic-edit", "--path", str(tiny_dev), "--reference-image", str(tmp_path / "r.png"), "--instruction",
                 "x", "--ic-edit-lora", str(tmp_path / "missing.safetensors"), "--height", str(H), "--width", str(W),
                 "--steps", "1", "--output", str(tmp_path / "o.png")]) == 1
    assert not (tmp_path / "o.png").exists()
    assert "IC-Edit needs a FLUX.1-Fill model" in capsys.readouterr().err
    assert main(["catvton", "--path", str(tiny_dev), "--person-image", str(tmp_path / "r.png"), "--garment-image",
                 str(tmp_path / "r.png"), "--person-mask", str(tmp_path / "r.png"), "--height", str(H), "--width",
                 str(W), "--steps", "1", "--output", str(tmp_path / "c.png")]) == 1
    assert "CatVTON needs a FLUX.1-Fill model" in capsys.readouterr().err


def test_an_in_context_image_replays_from_its_recorded_request(tiny_fill, tmp_path):
    """The request records one panel's size (the diptych is sampled at twice its width), so the
    metadata, a preset or --config-from-metadata makes the same image again."""
    reference = tmp_path / "reference.png"
    random_image(W, H, 4).save(reference)
    manager = ModelManager(models_dir=tmp_path)
    first = manager.generate(GenerationRequest(tool="in-context", model=str(tiny_fill), prompt="[IMAGE1] a; [IMAGE2] b",
                                               image_path=str(reference), steps=2, seed=3, dtype="float32"))
    assert first.image.size == (W, H) and (first.request.width, first.request.height) == (W, H)
    again = manager.generate(first.request)
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))
