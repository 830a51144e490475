"""The shipped demo family as first-class models: aliases, listing, per-tool defaults (engine, CLI, web UI)
and the demo ControlNet, on a toy family trained with the real recipe and found through
MFLUX_STUDIO_DEMO_MODELS, with an empty Hugging Face cache."""

import json
import shutil

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from mflux_core.demo import export, family, train
from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.manager import ModelManager
from mflux_core.models.vae import VAEConfig, native_side
from mflux_core.registry import list_models
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import default_model_for
from mflux_core.weights.resolve import DEMO_MODELS, DEMO_MODELS_ENV, demo_models_dir, resolve_name
from tests.parity import run_cli

DEMO_KINDS = {"demo": "base", "demo-fill": "fill", "demo-depth": "depth", "demo-kontext": "kontext",
              "demo-canny": "controlnet", "demo-depth-estimator": "depth-estimator", "demo-upscaler": "controlnet",
              "demo-redux": "redux"}
TOOL_DEMOS = {"generate": "demo", "fill": "demo-fill", "depth": "demo-depth", "kontext": "demo-kontext",
              "controlnet": "demo", "upscale": "demo", "redux": "demo", "in-context": "demo-fill",
              "catvton": "demo-fill", "ic-edit": "demo-fill"}
SMALL = {"width": 64, "height": 64, "steps": 1, "seed": 3}


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The five FLUX.1 demo folders, exported from a toy-scale run of the real training recipe, and a copy of the
    shipped demo depth estimator and demo Redux (each trained on its own: mflux_core/demo/depth_estimator.py,
    redux_encoder.py)."""
    run = tmp_path_factory.mktemp("demo-run")
    train.main([str(run), "--stages", "vae,base,teacher,guidance,fill,depth,kontext,canny,upscale",
                "--scale-steps", "0.0005", "--batch", "2"])
    out = tmp_path_factory.mktemp("demo_models")
    export.export_run(run, out)
    for trained_alone in ("demo-depth-estimator", "demo-redux"):
        shutil.copytree(demo_models_dir() / trained_alone, out / trained_alone)
    return out


@pytest.fixture(autouse=True)
def only_the_demo_models(demo_models, tmp_path, monkeypatch):
    """Demo models from the toy family; an empty Hugging Face cache, so no FLUX.1 model is on disk."""
    monkeypatch.setenv(DEMO_MODELS_ENV, str(demo_models))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read once at import: patch it too
    return tmp_path / "hub"


def fake_cached_repo(cache, repo: str) -> None:
    """A repo in the HF cache's layout with a model index and an empty transformer/ (enough to be listed)."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    (snapshot / "transformer").mkdir(parents=True)
    (snapshot / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")


def control_picture(path) -> str:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 20:44] = 255
    Image.fromarray(pixels).save(path)
    return str(path)


def test_the_demo_models_are_listed_as_built_in_and_available_with_their_kinds(demo_models):
    entries = {entry.name: entry for entry in list_models(None)}
    assert {name: entries[name].kind for name in DEMO_MODELS} == DEMO_KINDS
    assert all(entries[name].available and entries[name].where == "built-in" for name in DEMO_MODELS)
    assert not entries["schnell"].available
    assert resolve_name("demo-kontext") == demo_models / "demo-kontext"


def test_each_tool_defaults_to_its_demo_model_until_its_flux_model_is_on_disk(only_the_demo_models, tmp_path):
    assert {tool: default_model_for(tool) for tool in TOOL_DEMOS} == TOOL_DEMOS
    fake_cached_repo(only_the_demo_models, "black-forest-labs/FLUX.1-schnell")
    assert default_model_for("generate") == "schnell"
    assert default_model_for("fill") == "demo-fill"
    (tmp_path / "models" / "fill").mkdir(parents=True)  # a FLUX.1 Fill folder under the alias's name
    assert default_model_for("fill", tmp_path / "models") == "fill"


def test_the_cli_without_a_model_generates_through_demo(tmp_path):
    common = ["--prompt", "a red circle on a blue background", "--steps", 2, "--height", 64, "--width", 64,
              "--seed", 5, "--dtype", "float32"]
    default = run_cli("generate", *common, "--output", tmp_path / "default.png")
    named = run_cli("generate", *common, "--model", "demo", "--output", tmp_path / "demo.png")
    assert default.size == (64, 64)
    assert np.array_equal(np.asarray(default), np.asarray(named))


def test_the_controlnet_tool_on_a_demo_base_uses_demo_canny(tmp_path):
    manager = ModelManager(models_dir=tmp_path)
    request = GenerationRequest(tool="controlnet", prompt="a green square", dtype="float32",
                                controlnet_image_path=control_picture(tmp_path / "edges.png"), **SMALL)
    result = manager.generate(request)
    assert result.image.size == (64, 64)
    side_models = [r["name"] for r in manager.status()["resident"] if r["kind"] == "auxiliary"]
    assert len(side_models) == 1 and side_models[0].startswith("demo-canny float32 (")  # the dtype it was loaded in
    with pytest.raises(InvalidRequest, match="The ControlNet canny is made for FLUX.1-dev and cannot drive the demo"):
        manager.generate(request.with_(extra={"controlnet_path": "canny"}))


def test_demo_canny_on_a_flux_base_of_another_width_is_refused(tiny_dev, tmp_path):
    request = GenerationRequest(tool="controlnet", model=str(tiny_dev), prompt="x",
                                extra={"controlnet_path": "demo-canny"},
                                controlnet_image_path=control_picture(tmp_path / "edges.png"), **SMALL)
    demo = family.transformer_config()
    width = demo["num_attention_heads"] * demo["attention_head_dim"]
    manager = ModelManager(models_dir=tmp_path)
    with pytest.raises(InvalidRequest, match=f"The ControlNet demo-canny was made for a transformer of width {width}"):
        manager.generate(request)
    assert not [r for r in manager.status()["resident"] if r["kind"] == "auxiliary"]  # the refused one is not kept


def test_a_missing_demo_folder_is_a_clear_error_and_never_a_download(tmp_path, monkeypatch):
    empty = tmp_path / "no-demos"
    empty.mkdir()
    monkeypatch.setenv(DEMO_MODELS_ENV, str(empty))
    with pytest.raises(ModelLoadError, match=f"The demo model demo is missing: its folder {empty / 'demo'} "):
        ModelManager(models_dir=tmp_path).generate(GenerationRequest(model="demo", prompt="x", **SMALL))
    assert not any(entry.name in DEMO_MODELS for entry in list_models(None))
    assert default_model_for("generate") == "schnell"  # nothing shipped: the FLUX.1 alias, downloaded on first use


def test_the_web_ui_lists_the_demo_models_as_on_disk_and_picks_them_on_an_empty_machine(only_the_demo_models):
    from webui.widgets import default_model, model_choices, native_side_of

    entries = list_models(None)
    assert {tool: default_model(entries, tool) for tool in TOOL_DEMOS} == TOOL_DEMOS
    assert model_choices(entries, "generate")[0] == ("demo  ·  built-in", "demo")
    assert native_side_of(entries, "demo") == 64 and native_side_of(entries, "schnell") == 1024
    fake_cached_repo(only_the_demo_models, "black-forest-labs/FLUX.1-dev")
    entries = list_models(None)
    assert default_model(entries, "generate") == "dev"  # a downloaded FLUX.1 model goes before the demo
    assert [name for _, name in model_choices(entries, "generate")][:2] == ["dev", "demo"]


def test_text_to_image_without_a_size_takes_the_models_native_side(tiny_dev, tmp_path):
    manager = ModelManager(models_dir=tmp_path)
    result = manager.generate(GenerationRequest(model="demo", prompt="a red circle", steps=1, dtype="float32"))
    assert result.image.size == (64, 64) and (result.request.width, result.request.height) == (64, 64)
    assert {entry.name: entry.native_side for entry in list_models(tmp_path)}["demo"] == 64
    assert native_side({"sample_size": 1024}) == 1024 and native_side({"sample_size": 64}) == 64
    assert native_side({"sample_size": 32}) == native_side({}) == 1024  # diffusers' unset default: FLUX.1's side
    tiny_vae = json.loads((tiny_dev / "vae" / "config.json").read_text())
    assert tiny_vae["sample_size"] == 32 and VAEConfig.from_dict(tiny_vae).native_side == 1024
