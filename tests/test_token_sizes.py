"""A model whose VAE scales by more than 8 (five blocks: a packed 2x2 latent token covers 32 px) makes sizes in
whole tokens only. Every size a request allows is a multiple of 16, so on such a model a size that is not whole
tokens runs rounded down to them, as diffusers rounds, with a note that says so (a side under one token runs at one
token); a tool that cannot change its size refuses in one sentence before any step. FLUX.1's VAE scales by 8 (16 px
tokens): every allowed size is whole tokens there, and nothing changes."""

import pytest
from PIL import Image

from mflux_core.concept.run import ConceptSettings, concepts_from_image
from mflux_core.errors import InvalidRequest
from mflux_core.events import Step
from mflux_core.manager import ModelManager
from mflux_core.native_sizes import check_whole_tokens
from mflux_core.request import GenerationRequest
from tests.fixtures import lora_files
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux
from tests.parity import random_image

SCALE_16 = dict(vae_blocks=(8, 16, 16, 16, 16), seed=6)
ROUNDED = "makes sizes in steps of 32 px (its VAE scales by 16), so this image is {} instead of {}."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-16")
    fill = TinyFluxSpec(**SCALE_16, in_channels=2 * 16 + 4 * 16 * 16, out_channels=16)
    return {"base": build_tiny_flux(root / "base", TinyFluxSpec(**SCALE_16)),
            "fill": build_tiny_flux(root / "fill", fill, "FluxFillPipeline")}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    random_image(48, 80, seed=2).save(path)
    return path


@pytest.fixture(scope="module")
def manager():
    return ModelManager()


def request(model, **changes) -> GenerationRequest:
    return GenerationRequest(**{"model": str(model), "prompt": "a red boat", "steps": 2, "seed": 1,
                                "dtype": "float32", **changes})


def test_image_to_image_runs_at_whole_tokens_with_a_note(manager, models, photo):
    result = manager.generate(request(models["base"], image_path=str(photo)))  # the photo's own 48x80
    assert result.image.size == (32, 64)
    assert any(note.endswith(ROUNDED.format("32x64", "48x80")) for note in result.notes), result.notes


def test_text_to_image_rounds_with_a_note_and_a_side_under_a_token_runs_at_one(manager, models):
    result = manager.generate(request(models["base"], width=80, height=48))
    assert result.image.size == (64, 32) and result.notes == (f"{models['base']} {ROUNDED.format('64x32', '80x48')}",)
    assert manager.generate(request(models["base"], width=16, height=16)).image.size == (32, 32)


def test_inpainting_and_outpainting_on_a_fill_model_make_whole_tokens(manager, models, photo, tmp_path):
    mask = Image.new("L", (48, 80), 0)
    mask.paste(255, (8, 8, 40, 40))
    mask.save(tmp_path / "mask.png")
    inpainted = manager.generate(request(models["fill"], tool="fill", image_path=str(photo),
                                         masked_image_path=str(tmp_path / "mask.png")))
    assert inpainted.image.size == (32, 64)
    outpainted = manager.generate(request(models["fill"], tool="fill", image_path=str(photo), keep_unmasked=True,
                                          outpaint_padding="0,8,0,8"))  # 64x80, grown to whole tokens: 64x96
    assert outpainted.image.size == (64, 96)  # nothing asked for cropped off again to make whole tokens
    kept = outpainted.image.crop((24, 24, 40, 72))  # the photo at (8, 8), away from the seams repainted
    assert kept.tobytes() == Image.open(photo).convert("RGB").crop((16, 16, 32, 64)).tobytes()


def test_only_the_masked_area_is_processed_at_whole_tokens_and_the_note_says_so(manager, models, photo, tmp_path):
    mask = Image.new("L", (48, 80), 0)
    mask.paste(255, (8, 8, 40, 40))
    mask.save(tmp_path / "mask.png")
    result = manager.generate(request(models["fill"], tool="fill", image_path=str(photo), width=48, height=80,
                                      masked_image_path=str(tmp_path / "mask.png"), only_masked_padding=0))
    assert result.image.size == (48, 80)  # the image keeps its size; its masked area was processed at 32x64
    assert any(note.endswith("makes sizes in steps of 32 px (its VAE scales by 16), so the masked area is inpainted "
                             "at 32x64 instead of 48x80.") for note in result.notes), result.notes


def test_the_in_context_tools_make_panels_of_whole_tokens(manager, models, photo, tmp_path):
    """IC-Edit decides its panel before In-Context's canvas is built (its 512 px wide panels, or the size asked)."""
    dims = lora_files.Dims.of(models["fill"])
    lora, _ = lora_files.write_diffusers_lora(tmp_path / "ic-edit.safetensors", dims, seed=7, layers=[
        name for name in lora_files.diffusers_linears(dims) if "transformer_blocks." in name])
    edited = manager.generate(request(models["fill"], tool="ic-edit", image_path=str(photo), prompt="make it red",
                                      width=48, height=80, extra={"ic_edit_lora": str(lora)}))
    assert edited.image.size == (32, 64)
    assert manager.generate(request(models["fill"], tool="in-context", image_path=str(photo))).image.size == (32, 64)


def test_a_hires_fix_past_whole_tokens_is_refused_before_a_step(manager, models):
    steps = []
    with pytest.raises(InvalidRequest, match=r"makes sizes in steps of 32 px \(its VAE scales by 16\), so it has no "
                                             r"hires fix from 64x96 to 96x144: use multiples of 32 px\.$"):
        manager.generate(request(models["base"], width=64, height=96, hires_scale=1.5, hires_steps=1),
                         report=steps.append)
    assert not [event for event in steps if isinstance(event, Step)]


def test_concepts_from_an_image_of_part_tokens_are_refused(manager, models, photo):
    with pytest.raises(InvalidRequest, match=r"^The image's size 48x80 is not one this model makes: it makes sizes "
                                             r"in steps of 32 px \(its VAE scales by 16\); use 32x64\.$"):
        concepts_from_image(manager, request(models["base"], image_path=str(photo)), ConceptSettings(("boat",)))


def test_a_training_size_of_part_tokens_is_refused():
    check_whole_tokens(16, (48, 80), "The training size")  # FLUX.1's VAE: any multiple of 16
    with pytest.raises(InvalidRequest, match=r"^The training size 48x80 is not one this model makes: it makes sizes "
                                             r"in steps of 32 px \(its VAE scales by 16\); use 32x64\.$"):
        check_whole_tokens(32, (48, 80), "The training size")
