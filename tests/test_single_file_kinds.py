"""BFL's single files of the other FLUX.1 models (flux1-fill-dev, -depth-dev, -canny-dev, -kontext-dev.safetensors) in
the models folder: listed under their tool's models, not as base models, and run on a model folder on disk whose
transformer has their shape, as `--base-model` with that folder runs them."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from mflux_core.errors import ModelLoadError
from mflux_core.manager import ModelManager
from mflux_core.model_catalog import catalog
from mflux_core.registry import list_models
from mflux_core.request import GenerationRequest
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux
from tests.parity import max_uint8_diff, run_cli
from tests.test_transformer import diffusers_to_bfl
from webui.widgets import default_model, model_choices


def write_bfl_file(folder, path):
    state = {}
    for shard in sorted((folder / "transformer").glob("*.safetensors")):
        state.update(load_file(shard))
    save_file({name: value.contiguous() for name, value in diffusers_to_bfl(state).items()}, path)
    return path


@pytest.fixture(scope="module")
def other_heads(tmp_path_factory):
    """A dev-style folder whose attention heads (and so position axes) differ from the tiny fixtures'."""
    spec = TinyFluxSpec(heads=4, head_dim=8, axes_dims_rope=(2, 2, 4))
    return build_tiny_flux(tmp_path_factory.mktemp("other-heads"), spec)


@pytest.fixture
def models(tmp_path, tiny_dev, tiny_fill, tiny_depth, tiny_kontext, other_heads, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # this machine's FLUX.1 downloads aside
    models = tmp_path / "models"
    models.mkdir()
    (models / "a-other-heads").symlink_to(other_heads, target_is_directory=True)  # listed before my-dev, not fitting
    (models / "my-dev").symlink_to(tiny_dev, target_is_directory=True)
    write_bfl_file(tiny_fill, models / "flux1-fill-dev.safetensors")
    write_bfl_file(tiny_depth, models / "flux1-depth-dev.safetensors")
    write_bfl_file(tiny_kontext, models / "flux1-kontext-dev.safetensors")
    write_bfl_file(tiny_dev, models / "finetune.safetensors")
    return models


def test_single_files_are_listed_as_their_models_kind(models):
    kinds = {entry.name: entry.kind for entry in list_models(models)}
    assert kinds["flux1-fill-dev.safetensors"] == "fill"
    assert kinds["flux1-depth-dev.safetensors"] == "depth"
    assert kinds["flux1-kontext-dev.safetensors"] == "kontext"  # a base model's shape: its name says Kontext
    assert kinds["finetune.safetensors"] == "single-file"


def test_a_truncated_file_is_listed_as_unreadable_and_never_a_tools_default(models):
    whole = (models / "finetune.safetensors").read_bytes()
    (models / "finetune.safetensors").unlink()
    (models / "a-download.safetensors").write_bytes(whole[: len(whole) // 2])  # a copy or download still under way
    entries = list_models(models)
    assert {e.name: e.kind for e in entries}["a-download.safetensors"] == "unreadable"
    assert default_model(entries, "generate") == "a-other-heads"  # was the broken file, the first "base" by name
    assert "a-download.safetensors" not in [name for _, name in model_choices(entries, "generate")]
    row = next(row for row in catalog(models, [], []) if row.name == "a-download.safetensors")
    assert (row.kind, row.state) == ("unreadable file", "incomplete or damaged")


def test_a_fill_file_picked_by_name_runs_on_the_folder_with_its_shape(models, tiny_dev, tmp_path):
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    drawn = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(drawn).rectangle((16, 16, 40, 44), fill=255)
    drawn.save(mask)
    request = GenerationRequest(tool="fill", model="flux1-fill-dev.safetensors", prompt="a red house", seed=3, steps=2,
                                width=64, height=64, guidance=30.0, image_path=str(image), masked_image_path=str(mask))
    picked = ModelManager(models_dir=models).generate(request).image
    explicit = run_cli("fill", "--path", models / "flux1-fill-dev.safetensors", "--base-model", tiny_dev, "--prompt",
                       "a red house", "--seed", 3, "--steps", 2, "--guidance", 30.0, "--image-path", image,
                       "--masked-image-path", mask, "--output", tmp_path / "explicit.png")
    assert max_uint8_diff(picked.convert("RGB"), explicit) == 0


def test_a_file_whose_heads_no_folder_has_is_refused_in_a_sentence(models, other_heads):
    (models / "my-dev").unlink()
    request = GenerationRequest(model="finetune.safetensors", prompt="a red house", seed=3, steps=2, width=64,
                                height=64, guidance=3.5)
    with pytest.raises(ModelLoadError, match=r"^This single-file checkpoint's attention heads are 16 wide, but the "
                                             r"model folder it runs with \(for its VAE, text encoders and position "
                                             r"axes\) has heads of 8: the file was made for another base model"):
        ModelManager(models_dir=models).generate(request)
