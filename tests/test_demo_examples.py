"""The demo examples: held-out dataset examples rendered as each panel's inputs, the same files every time, and
offered by the page only for tools whose demo model is on disk."""

import json

import numpy as np
import pytest
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.evaluate import EVALUATION_SEED
from mflux_core.demo.examples import EDITS, EXAMPLES_FILE, PER_TOOL, SOURCES, UPSCALE_FACTOR, read_examples, write_examples
from mflux_core.demo.family import IMAGE_SIZE, PIPELINE_CLASSES
from mflux_core.demo.shapes import caption
from mflux_core.manager import ModelManager
from mflux_core.weights.resolve import DEMO_MODELS_ENV
from webui.panels import fill


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    return folder, write_examples(folder)


def test_every_tool_gets_its_examples_from_the_held_out_split_on_its_demo_model(written):
    _, examples = written
    assert {tool: [e.model for e in entries] for tool, entries in examples.items()} == {
        "generate": ["demo"] * PER_TOOL, "fill": ["demo-fill"] * PER_TOOL, "depth": ["demo-depth"] * PER_TOOL,
        "kontext": ["demo-kontext"] * PER_TOOL, "controlnet": ["demo"] * PER_TOOL, "upscale": ["demo"] * PER_TOOL,
        "in-context": ["demo-fill"] * PER_TOOL, "catvton": ["demo-fill"] * PER_TOOL, "redux": ["demo"] * PER_TOOL,
        "ic-edit": ["demo-fill"] * PER_TOOL}
    for tool, entries in examples.items():
        for example in entries:
            source = SOURCES[tool](EVALUATION_SEED, example.index, IMAGE_SIZE, held_out=True)
            scene = source.after_scene if tool in EDITS else source.scene
            assert dataset.is_held_out(scene.shapes[0], scene.background)
            side = IMAGE_SIZE // UPSCALE_FACTOR if tool == "upscale" else IMAGE_SIZE
            assert all(pixels(path).shape[:2] == (side, side) for path in example.images.values())
    for tool in EDITS:
        assert [dataset.kontext_example(EVALUATION_SEED, e.index, held_out=True).kind for e in examples[tool]] == [
            "colour", "move", "background"]
    all_indices = [e.index for tool in ("generate", "depth", "controlnet", "redux") for e in examples[tool]]
    assert len(set(all_indices)) == len(all_indices)  # these tools draw the same scene for the same index


def test_the_files_hold_the_dataset_examples_inputs_and_the_prompts_their_captions(written):
    _, examples = written
    first = examples["generate"][0]
    assert first.prompt == caption(dataset.text_to_image_example(EVALUATION_SEED, first.index, held_out=True).scene)
    assert first.images == {}
    for example in examples["fill"]:
        source = dataset.fill_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == source.caption
        assert np.array_equal(pixels(example.images["image"]), source.source)
        assert np.array_equal(pixels(example.images["mask"]) > 127, source.mask)
    for example in examples["depth"]:
        source = dataset.depth_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == source.caption
        assert np.array_equal(pixels(example.images["depth_map"]), source.control)
    for example in examples["kontext"] + examples["ic-edit"]:
        source = dataset.kontext_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == source.instruction and np.array_equal(pixels(example.images["image"]), source.before)
    for example in examples["controlnet"]:
        source = dataset.canny_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == source.caption and np.array_equal(pixels(example.images["image"]), source.image)
    for example in examples["upscale"]:
        source = dataset.upscale_example(EVALUATION_SEED, example.index, held_out=True)
        small = dataset.low_resolution(source.image, IMAGE_SIZE // UPSCALE_FACTOR)
        assert example.prompt == source.caption and np.array_equal(pixels(example.images["image"]), np.asarray(small))
    for example in examples["in-context"]:
        source = dataset.kontext_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == f"[IMAGE1] {caption(source.before_scene)}; [IMAGE2] {caption(source.after_scene)}"
        assert np.array_equal(pixels(example.images["image"]), source.before)
    for example in examples["catvton"]:
        source = dataset.try_on_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == caption(source.scene)  # the result, as Fill's examples
        assert np.array_equal(pixels(example.images["garment"]), source.garment)
        assert np.array_equal(pixels(example.images["image"]), source.person)
        assert np.array_equal(pixels(example.images["mask"]) > 127, source.mask)
    for example in examples["redux"]:
        source = dataset.text_to_image_example(EVALUATION_SEED, example.index, held_out=True)
        assert example.prompt == "" and np.array_equal(pixels(example.images["image"]), source.image)


def test_a_rerun_writes_the_same_files_and_the_manifest_reads_back(written, tmp_path):
    folder, examples = written
    again = write_examples(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tmp_path.iterdir())
    assert all((folder / p.name).read_bytes() == p.read_bytes() for p in tmp_path.iterdir())
    assert read_examples(folder) == examples
    assert {tool: [(e.model, e.prompt, e.index) for e in entries] for tool, entries in again.items()} == {
        tool: [(e.model, e.prompt, e.index) for e in entries] for tool, entries in examples.items()}
    manifest = json.loads((folder / EXAMPLES_FILE).read_text())
    assert (manifest["seed"], manifest["size"], len(manifest["examples"])) == (EVALUATION_SEED, IMAGE_SIZE,
                                                                               PER_TOOL * len(SOURCES))


def test_a_fill_example_reaches_the_fill_panel_as_its_picture_and_painted_mask(written):
    _, examples = written
    example = examples["fill"][0]
    value = fill.example_editor_value(example)
    assert np.array_equal(np.asarray(fill.editor_image(value)), pixels(example.images["image"]))
    assert np.array_equal(np.asarray(fill.editor_mask(value)) > 127, pixels(example.images["mask"]) > 127)


def test_the_page_offers_examples_only_for_tools_whose_demo_model_is_on_disk(tmp_path, monkeypatch):
    from webui.app import build_app, launch_kwargs
    from webui.studio import StudioFolders

    demos = tmp_path / "demo_models"
    for name, tool in (("demo", "base"), ("demo-fill", "fill")):  # enough of a folder to be listed
        (demos / name / "transformer").mkdir(parents=True)
        (demos / name / "model_index.json").write_text(json.dumps({"_class_name": PIPELINE_CLASSES[tool]}))
    monkeypatch.setenv(DEMO_MODELS_ENV, str(demos))
    folders = StudioFolders.default(tmp_path / "out", loras=[])
    app = build_app(ModelManager(models_dir=tmp_path / "models"), folders)
    shown = {block.elem_id for block in app.blocks.values() if (block.elem_id or "").endswith("-examples")}
    assert shown == {"generate-examples", "fill-examples", "controlnet-examples", "upscale-examples",
                     "in-context-examples", "catvton-examples", "redux-examples", "ic-edit-examples"}
    assert (folders.examples / EXAMPLES_FILE).is_file()
    assert any(folders.examples.is_relative_to(path) for path in launch_kwargs(folders)["allowed_paths"])
