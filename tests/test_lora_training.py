"""LoRA training: it learns, resumes bit for bit, saves an adapter the LoRA loader uses, refuses bad input."""

import json
import zipfile

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mflux_core.cli import main as cli_main
from mflux_core.errors import InvalidRequest
from mflux_core.lora.apply import add_lora
from mflux_core.lora.formats import load_lora_file
from mflux_core.lora.info import read_lora_info
from mflux_core.training.flow_matching import flow_matching_loss
from mflux_core.training.lora_config import TrainingConfig
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import IC_EDIT_TEMPLATE
from mflux_core.tools.in_context import in_context_inputs
from mflux_core.training.lora_training import batch_maker, encode_examples, load_base_model, train_lora
from tests.parity import max_uint8_diff, run_cli

SIZE = 64
PROMPTS = ["a red circle on a blue background", "a green square on a white background",
           "a yellow triangle on a black background"]
VALIDATION = {"validation_prompt": PROMPTS[0], "validation_steps": 3, "validation_seed": 5}


def draw_examples(folder, size=(SIZE, SIZE)):
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    shapes = [("blue", "red", "ellipse"), ("white", "green", "rectangle"), ("black", "yellow", "polygon")]
    for index, (background, colour, shape) in enumerate(shapes):
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        if shape == "polygon":
            draw.polygon([(w // 2, h // 5), (w // 5, 4 * h // 5), (4 * w // 5, 4 * h // 5)], fill=colour)
        else:
            getattr(draw, shape)(box, fill=colour)
        image.save(folder / f"example_{index}.png")


def write_config(folder, model, **changes) -> TrainingConfig:
    config = {
        "model": str(model), "seed": 7, "width": SIZE, "height": SIZE, "guidance": 1.0, "max_sequence_length": 16,
        "training_loop": {"steps": 6, "batch_size": 2},
        "optimizer": {"name": "AdamW", "learning_rate": 5e-3, "weight_decay": 0.01},
        "save": {"output_path": "out", "checkpoint_frequency": 4},
        "lora_layers": {
            "rank": 4, "alpha": 8,
            "transformer_blocks": {"block_range": {"start": 0, "end": 2},
                                   "layer_types": ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2"]},
            "single_transformer_blocks": {"blocks": [1], "layer_types": ["attn.to_q", "proj_mlp", "proj_out"]},
        },
        "examples": {"path": "images", "images": [{"image": f"example_{i}.png", "prompt": p}
                                                  for i, p in enumerate(PROMPTS)]},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    if not (folder / "images").exists():
        draw_examples(folder / "images")
    path = folder / "train.json"
    path.write_text(json.dumps(config, indent=2))
    return TrainingConfig.from_file(path)


def zip_arrays(path, member) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(member)
    scratch = path.with_name(f"{path.stem}_{member.replace('/', '_')}")
    scratch.write_bytes(data)
    return {k: np.array(v) for k, v in mx.load(str(scratch)).items()}


def test_training_lowers_the_loss_and_the_adapter_loads_through_the_lora_path(tiny_dev, tmp_path):
    config = write_config(tmp_path, tiny_dev, training_loop={"steps": 40, "batch_size": 3},
                          optimizer={"learning_rate": 1e-2})
    outcome = train_lora(config)
    assert outcome.finished and outcome.step == 40 and len(outcome.losses) == 40

    # The same fixed batches (steps far past the run, so none was trained on as such) before and after.
    model = load_base_model(config, tmp_path)
    batches = batch_maker(model, config, encode_examples(model, config))
    evaluation = [batches(10_000 + i) for i in range(8)]

    def mean_loss():
        return float(np.mean([float(flow_matching_loss(model.transformer, batch)) for batch in evaluation]))

    before = mean_loss()
    lora = load_lora_file(outcome.adapter)
    report = add_lora(model.transformer, lora, "trained")
    assert report.complete and report.format == "diffusers" and report.layers == 13
    assert read_lora_info(outcome.adapter).family == "FLUX.1"  # as `mflux-studio loras` lists it
    after = mean_loss()
    print(f"held-out flow-matching loss: {before:.4f} before, {after:.4f} after 40 steps")
    assert after < 0.8 * before

    curve = Image.open(outcome.loss_curve)
    assert curve.size == (640, 360) and len(set(curve.convert("RGB").getdata())) > 2


def test_an_interrupted_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(tiny_dev, tmp_path):
    straight = train_lora(write_config(tmp_path / "a", tiny_dev))
    assert straight.checkpoint.name == "0000006_checkpoint.zip"

    seen = []
    stopped = train_lora(write_config(tmp_path / "b", tiny_dev), report=lambda p: seen.append(p.step),
                         cancelled=lambda: len(seen) >= 3)
    assert (stopped.step, stopped.finished, stopped.checkpoint.name) == (3, False, "0000003_checkpoint.zip")
    with zipfile.ZipFile(stopped.checkpoint) as archive:
        meta = json.loads(archive.read("checkpoint.json"))
    assert meta["step"] == 3 and meta["rng"] == {**meta["rng"], "seed": 7, "next_step": 3}

    # A copy taken elsewhere, resumed from the zip alone: the run goes on beside the copy, the original is left as is.
    run = tmp_path / "b" / "out"
    adapter_before = (run / "adapter.safetensors").read_bytes()
    branch = tmp_path / "branch" / "step3.zip"
    branch.parent.mkdir()
    branch.write_bytes(stopped.checkpoint.read_bytes())
    assert cli_main(["train", "--train-checkpoint", str(branch)]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000003_checkpoint.zip"]
    assert (run / "adapter.safetensors").read_bytes() == adapter_before
    # Resume from the zip alone in its run, through the CLI (the config inside it is used).
    assert cli_main(["train", "--train-checkpoint", str(stopped.checkpoint)]) == 0
    for resumed in (run / "checkpoints" / "0000006_checkpoint.zip",
                    tmp_path / "branch" / "checkpoints" / "0000006_checkpoint.zip"):
        for member in ("adapter.safetensors", "loop/model.safetensors", "loop/optimizer.safetensors"):
            expected, actual = zip_arrays(straight.checkpoint, member), zip_arrays(resumed, member)
            assert expected.keys() == actual.keys()
            for name in expected:
                assert np.array_equal(expected[name], actual[name]), (member, name)
        with zipfile.ZipFile(resumed) as archive:
            assert json.loads(archive.read("loop/state.json"))["losses"] == straight.losses
    assert straight.losses[0] != straight.losses[-1]


def test_the_adapter_changes_the_image_exactly_as_training_saw_it(tiny_dev, tmp_path):
    config = write_config(tmp_path, tiny_dev, training_loop={"steps": 12, "batch_size": 3},
                          optimizer={"learning_rate": 2e-2}, instrumentation=VALIDATION)
    outcome = train_lora(config)
    assert [p.name for p in outcome.validation_images] == ["0000012.png"]
    args = ["generate", "--path", tiny_dev, "--prompt", PROMPTS[0], "--steps", 3, "--height", SIZE, "--width", SIZE,
            "--seed", 5, "--guidance", 3.5, "--max-sequence-length", 16]
    base = run_cli(*args, "--output", tmp_path / "base.png")
    with_lora = run_cli(*args, "--lora-paths", outcome.adapter, "--output", tmp_path / "lora.png")
    during_training = Image.open(outcome.validation_images[0]).convert("RGB")
    print(f"adapter moves the image by {max_uint8_diff(with_lora, base)} levels; the loaded adapter's image differs "
          f"from the training-time validation image by {max_uint8_diff(with_lora, during_training)}")
    assert max_uint8_diff(with_lora, base) > 20
    assert max_uint8_diff(with_lora, during_training) <= 1


def test_diffusers_loads_the_adapter_and_draws_the_same_image(tiny_dev, tmp_path):
    import torch

    from tests.fixtures.tiny_flux import load_diffusers_pipeline
    from tests.parity import UINT8_TOLERANCE, make_noise, pack

    config = write_config(tmp_path, tiny_dev, training_loop={"steps": 8, "batch_size": 3},
                          optimizer={"learning_rate": 2e-2})
    adapter = train_lora(config).adapter
    noise = make_noise(tmp_path, (1, 4, SIZE // 8, SIZE // 8), seed=3)
    args = ["generate", "--path", tiny_dev, "--prompt", PROMPTS[1], "--steps", 3, "--height", SIZE, "--width", SIZE,
            "--guidance", 3.5, "--init-noise", noise, "--max-sequence-length", 16]
    ours = run_cli(*args, "--lora-paths", adapter, "--output", tmp_path / "ours.png")
    assert max_uint8_diff(ours, run_cli(*args, "--output", tmp_path / "base.png")) > 20  # the LoRA matters here
    pipe = load_diffusers_pipeline(tiny_dev)
    pipe.load_lora_weights(str(adapter))
    with torch.no_grad():
        reference = pipe(PROMPTS[1], height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=3.5,
                         latents=pack(np.load(noise)), max_sequence_length=16, output_type="pil").images[0]
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_a_quantized_base_trains(tiny_dev, tmp_path):
    config = write_config(tmp_path, tiny_dev, quantize=8, training_loop={"steps": 3, "batch_size": 1})
    model = load_base_model(config, tmp_path)
    assert type(model.transformer.transformer_blocks[0].ff.net[2]).__name__ == "QuantizedLinear"
    outcome = train_lora(config)
    assert all(np.isfinite(outcome.losses))
    weights = {k: np.array(v) for k, v in mx.load(str(outcome.adapter)).items()}
    # lora_B starts at zero: every adapter (the one on a quantized layer, and those before it) has learned.
    assert all(np.abs(v).max() > 0 for k, v in weights.items() if k.endswith("lora_B.weight"))


# --- in-context (Fill) training ---------------------------------------------------------------------


def draw_diptychs(folder) -> list[str]:
    """Each example's left panel, and beside it the same picture with its shape in the instruction's colour."""
    draw_examples(folder / "panels")
    names = []
    for index, path in enumerate(sorted((folder / "panels").iterdir())):
        left = Image.open(path).convert("RGB")
        pixels = np.asarray(left).copy()
        shape = np.any(pixels != pixels[0, 0], axis=-1)
        pixels[shape] = (255, 0, 255)
        names.append(f"diptych_{index}.png")
        Image.fromarray(np.concatenate([np.asarray(left), pixels], axis=1)).save(folder / names[-1])
    return names


def in_context_config(folder, model, **changes) -> TrainingConfig:
    names = draw_diptychs(folder / "diptychs")
    prompt = IC_EDIT_TEMPLATE.format(instruction="the shape is magenta")
    return write_config(folder, model, width=2 * SIZE, examples={
        "path": "diptychs", "in_context": True, "images": [{"image": name, "prompt": prompt} for name in names]},
        **changes)


def test_in_context_training_conditions_the_fill_model_as_the_in_context_tools_do_and_learns(tiny_fill, tmp_path):
    config = in_context_config(tmp_path, tiny_fill, training_loop={"steps": 40, "batch_size": 3},
                               optimizer={"learning_rate": 1e-2})
    model = load_base_model(config, tmp_path)
    examples = encode_examples(model, config)
    left = Image.open(config.examples[0].image).crop((0, 0, SIZE, SIZE))
    request = GenerationRequest(prompt=config.examples[0].prompt, width=SIZE, height=SIZE).validated()
    tool = in_context_inputs(model, request, left, None, None, "IC-Edit")
    # The right panel is masked in both (what it shows in training is only the target), the left one kept.
    assert np.allclose(np.array(examples.extra[:1]), np.array(tool.conditioning.extra_channels), atol=1e-6)
    batches = batch_maker(model, config, examples)
    evaluation = [batches(10_000 + i) for i in range(8)]

    def mean_loss():
        return float(np.mean([float(flow_matching_loss(model.transformer, batch)) for batch in evaluation]))

    before = mean_loss()
    outcome = train_lora(config)
    report = add_lora(model.transformer, load_lora_file(outcome.adapter), "trained")
    assert outcome.finished and report.complete
    after = mean_loss()
    print(f"held-out flow-matching loss of the diptychs: {before:.4f} before, {after:.4f} after 40 steps")
    assert after < 0.8 * before


def test_an_in_context_examples_mask_conditions_the_fill_model_as_catvtons_person_mask_does(tiny_fill, tmp_path):
    config = in_context_config(tmp_path, tiny_fill)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[SIZE // 4:SIZE // 2, SIZE // 2:] = 255
    Image.fromarray(mask).save(tmp_path / "diptychs" / "mask.png")
    path = tmp_path / "train.json"
    raw = json.loads(path.read_text())
    raw["examples"]["images"][0]["mask"] = "mask.png"
    path.write_text(json.dumps(raw))
    config = TrainingConfig.from_file(path)
    assert config.examples[0].mask == (tmp_path / "diptychs" / "mask.png").resolve() and config.examples[1].mask is None
    model = load_base_model(config, tmp_path)
    examples = encode_examples(model, config)
    diptych = Image.open(config.examples[0].image)
    garment, person = diptych.crop((0, 0, SIZE, SIZE)), diptych.crop((SIZE, 0, 2 * SIZE, SIZE))
    request = GenerationRequest(prompt=config.examples[0].prompt, width=SIZE, height=SIZE).validated()
    tool = in_context_inputs(model, request, garment, person, Image.fromarray(mask), "CatVTON")
    assert np.allclose(np.array(examples.extra[:1]), np.array(tool.conditioning.extra_channels), atol=1e-6)
    assert not np.allclose(np.array(examples.extra[:1]), np.array(examples.extra[1:2]), atol=1e-3)
    raw["examples"]["in_context"] = False
    path.write_text(json.dumps(raw))
    with pytest.raises(InvalidRequest, match=r"examples\.images\[1\] needs an image file name and a prompt, all text, "
                                             "and nothing else"):
        TrainingConfig.from_file(path)


def test_an_in_context_adapter_paints_in_ic_edit_what_its_validation_showed(tiny_fill, tmp_path):
    config = in_context_config(tmp_path, tiny_fill, training_loop={"steps": 12, "batch_size": 3},
                               optimizer={"learning_rate": 2e-2},
                               instrumentation={**VALIDATION, "validation_prompt": IC_EDIT_TEMPLATE.format(
                                   instruction="the shape is magenta")})
    outcome = train_lora(config)
    validation = Image.open(outcome.validation_images[0]).convert("RGB")
    assert validation.size == (SIZE, SIZE)  # the right panel
    Image.open(config.examples[0].image).crop((0, 0, SIZE, SIZE)).save(tmp_path / "reference.png")
    common = ["--path", tiny_fill, "--steps", 3, "--height", SIZE, "--width", SIZE, "--seed", 5,
              "--max-sequence-length", 16]  # IC-Edit's guidance is the In-Context tool's, which validation used
    edited = run_cli("ic-edit", "--reference-image", tmp_path / "reference.png", "--instruction",
                     "the shape is magenta", "--ic-edit-lora", outcome.adapter, *common,
                     "--output", tmp_path / "edited.png")
    untrained = run_cli("in-context", "--prompt", IC_EDIT_TEMPLATE.format(instruction="the shape is magenta"),
                        "--image-path", tmp_path / "reference.png", *common, "--output", tmp_path / "plain.png")
    print(f"IC-Edit with the trained adapter differs from the training-time validation image by "
          f"{max_uint8_diff(edited, validation)} levels, from the same call without it by "
          f"{max_uint8_diff(edited, untrained)}")
    assert max_uint8_diff(edited, validation) <= 1 and max_uint8_diff(edited, untrained) > 20


def test_in_context_training_needs_a_fill_model_and_a_fill_model_needs_in_context(tiny_dev, tiny_fill, tmp_path):
    with pytest.raises(InvalidRequest, match=r"In-context LoRA training \(examples\.in_context\) needs a FLUX\.1-Fill "
                                             r"model"):
        train_lora(in_context_config(tmp_path / "a", tiny_dev))
    with pytest.raises(InvalidRequest, match=r"is a FLUX\.1-Fill model: train it on diptychs .* with "
                                             r"examples\.in_context set to true"):
        train_lora(write_config(tmp_path / "b", tiny_fill))


# --- bad input -------------------------------------------------------------------------------------


def test_missing_images_are_named(tiny_dev, tmp_path):
    config = write_config(tmp_path, tiny_dev, examples={"path": "images", "images": [
        {"image": "example_0.png", "prompt": "x"}, {"image": "nowhere.png", "prompt": "y"}]})
    with pytest.raises(InvalidRequest, match=r"1 training image\(s\) do not exist: .*nowhere\.png"):
        train_lora(config)


def test_images_of_another_size_are_resized_or_refused_as_configured(tiny_dev, tmp_path):
    draw_examples(tmp_path / "images")
    Image.new("RGB", (96, 48), "red").save(tmp_path / "images" / "example_2.png")
    refuse = write_config(tmp_path, tiny_dev, examples={"path": "images", "resize": False, "images": [
        {"image": f"example_{i}.png", "prompt": p} for i, p in enumerate(PROMPTS)]})
    with pytest.raises(InvalidRequest, match=r"not 64x64: example_2\.png \(96x48\).*examples\.resize"):
        train_lora(refuse)
    resize = write_config(tmp_path, tiny_dev, training_loop={"steps": 1})
    outcome = train_lora(resize)
    assert outcome.notes == ["Resized example_2.png from 96x48 to 64x64 (scaled to cover, centre-cropped)."]


@pytest.mark.parametrize("change, message", [
    ({"learning_rat": 1}, "unknown keys in the top level: learning_rat"),
    ({"optimizer": {"lr": 1e-3}}, "unknown keys in optimizer: lr"),
    ({"lora_layers": {"transformer_blocks": {"blocks": [0], "layer_types": ["attn.to_q"], "rank": 2}}},
     "unknown keys in lora_layers.transformer_blocks: rank"),
    ({"training_loop": {"steps": 3, "num_epochs": 2}}, "exactly one of steps or num_epochs"),
    ({"width": 50}, "width 50 is not a multiple of 16"),
    ({"width": 80, "examples": {"in_context": True}}, r"width \(80\) must be a multiple of 32 with examples\.in_context"),
])
def test_config_mistakes_are_refused(tiny_dev, tmp_path, change, message):
    with pytest.raises(InvalidRequest, match=message):
        write_config(tmp_path, tiny_dev, **change)


def test_mflux_train_json_keys_are_read_as_the_studios(tiny_dev, tmp_path):
    """mflux's shipped example train.json: its top-level steps, instrumentation's generate_image_frequency and
    plot_frequency, each block kind's lora_rank."""
    layers = {kind: {"block_range": {"start": 0, "end": 1}, "layer_types": ["attn.to_q"], "lora_rank": 2}
              for kind in ("transformer_blocks", "single_transformer_blocks")}
    write_config(tmp_path, tiny_dev, steps=3, instrumentation={
        "plot_frequency": 1, "generate_image_frequency": 20, "validation_prompt": "photo of sks dog"})
    mflux_file = json.loads((tmp_path / "train.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps({**mflux_file, "lora_layers": layers}))  # no rank or alpha
    config = TrainingConfig.from_file(tmp_path / "train.json")
    assert (config.validation_steps, config.validation_frequency, config.rank, config.alpha) == (3, 20, 2, 2)
    assert config.raw["steps"] == 3  # what the file says is kept (a checkpoint's identity)
    layers["single_transformer_blocks"]["lora_rank"] = 8
    (tmp_path / "train.json").write_text(json.dumps({**mflux_file, "lora_layers": layers}))
    with pytest.raises(InvalidRequest, match=r"each block kind its own lora_rank .* set lora_layers\.rank"):
        TrainingConfig.from_file(tmp_path / "train.json")


def test_layers_the_model_lacks_are_refused(tiny_dev, tmp_path):
    wrong_type = write_config(tmp_path, tiny_dev, lora_layers={
        "transformer_blocks": {"blocks": [0], "layer_types": ["attn.to_qkv"]}})
    with pytest.raises(InvalidRequest, match="'attn.to_qkv'.*choose from .*attn.to_q"):
        train_lora(wrong_type)
    too_deep = write_config(tmp_path, tiny_dev, lora_layers={
        "single_transformer_blocks": {"block_range": {"start": 0, "end": 5}, "layer_types": ["proj_out"]}})
    with pytest.raises(InvalidRequest, match="names block 4, but this model has 2"):
        train_lora(too_deep)


def test_a_checkpoint_from_another_config_is_refused(tiny_dev, tmp_path):
    first = train_lora(write_config(tmp_path / "a", tiny_dev, training_loop={"steps": 2}))
    longer = write_config(tmp_path / "a", tiny_dev, training_loop={"steps": 3}, save={"output_path": "more"})
    assert train_lora(longer, first.checkpoint).step == 3  # length and output may change
    other = write_config(tmp_path / "a", tiny_dev, training_loop={"steps": 3}, optimizer={"learning_rate": 1e-3})
    with pytest.raises(InvalidRequest, match="another training config: optimizer.learning_rate differ"):
        train_lora(other, first.checkpoint)
    Image.new("RGB", (SIZE, SIZE), "purple").save(tmp_path / "a" / "images" / "example_1.png")
    with pytest.raises(InvalidRequest, match="images or prompts changed"):
        train_lora(longer, first.checkpoint)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InvalidRequest, match="Cannot read the training checkpoint junk.zip"):
        train_lora(longer, tmp_path / "junk.zip")


# --- the web panel (its handler, on the real tiny model; no browser) ---------------------------------


def test_the_train_panel_streams_loss_and_validation_and_stop_keeps_a_checkpoint(tiny_dev, tmp_path):
    import gradio as gr

    from mflux_core.manager import ModelManager
    from webui.jobs import scoped
    from webui.panels.train import run_training, training_inputs
    from webui.studio import Studio, StudioFolders

    with pytest.raises(InvalidRequest, match="path of a training config"):
        training_inputs(" ", "")
    (tmp_path / "tiny-dev").symlink_to(tiny_dev, target_is_directory=True)  # a model of the models folder
    with gr.Blocks():
        outputs = {"status": gr.HTML(), "curve": gr.Image(type="pil"), "validation": gr.Gallery()}
    studio = Studio(manager=ModelManager(models_dir=tmp_path), folders=StudioFolders.default(tmp_path / "studio"))
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    draw_examples(outside)
    for model, change, refused in (
            (tiny_dev, {}, "A model the config names by path"),
            ("tiny-dev", {"save": {"output_path": str(outside / "out")}}, "The config's save.output_path"),
            ("tiny-dev", {"examples": {"path": str(outside), "images": [{"image": "example_0.png", "prompt": "x"}]}},
             "The config's example images")):
        write_config(tmp_path, model, **change)
        with pytest.raises(gr.Error, match=f"{refused}.* must be inside the studio's"):
            list(run_training(studio, outputs, {"config_path": str(tmp_path / "train.json")}, "session"))
    assert not (outside / "out").exists()
    config = write_config(tmp_path, "tiny-dev", training_loop={"steps": 50, "batch_size": 1},
                          save={"checkpoint_frequency": 2},
                          instrumentation={**VALIDATION, "validation_frequency": 2})
    updates = []
    for update in run_training(studio, outputs, {"config_path": str(tmp_path / "train.json")}, "session"):
        updates.append(update)
        if "step 2 of 50" in update.get(outputs["status"], ""):
            assert not studio.jobs.cancel("session")  # another tab's Stop (it stopped the training)
        if "step 3 of 50" in update.get(outputs["status"], ""):
            studio.jobs.cancel(scoped("session", "train"))  # the tab's Stop: the run ends after the step under way
    statuses = [u[outputs["status"]] for u in updates if outputs["status"] in u]
    assert any("step 1 of 50 · loss " in s for s in statuses) and "s/step, about" in statuses[2]
    assert "Stopped at step " in statuses[-1] and "adapter.safetensors" in statuses[-1]
    stopped_at = int(statuses[-1].split("Stopped at step ")[1].split()[0])
    assert 3 <= stopped_at <= 4
    assert (config.output_path / "checkpoints" / f"{stopped_at:07d}_checkpoint.zip").is_file()
    curves = [u[outputs["curve"]] for u in updates if outputs["curve"] in u]
    assert curves and curves[-1].size == (640, 360)
    gallery = [u[outputs["validation"]] for u in updates if outputs["validation"] in u][-1]
    assert [caption for _, caption in gallery][0] == "step 2"


@pytest.mark.parametrize("side", [768])  # at 512 the examples' encoding is the larger phase
def test_the_training_plan_is_within_a_quarter_of_the_measured_step(tmp_path, side):
    """Each block is recomputed in the backward pass and differentiated with MLX's own attention: one step at 768
    px on the demo model took 2.2 GiB with the chunked attention and every block's activations kept, 0.34 now."""
    from mflux_core.memory import MemoryBudget
    from mflux_core.training.lora_training import training_plan

    config = write_config(tmp_path, "demo", width=side, height=side, training_loop={"steps": 1, "batch_size": 1})
    budget = MemoryBudget()
    plan = training_plan(load_base_model(config, tmp_path), config, budget)
    mx.reset_peak_memory()
    train_lora(config, budget=budget)
    measured = mx.get_peak_memory() - plan.weights_bytes
    assert plan.largest_phase[0] == "a training step" and abs(measured / plan.largest_phase[1] - 1) <= 0.25, \
        (measured, plan.summary())


def test_a_training_past_the_budget_is_refused_in_a_sentence_before_its_first_step(tmp_path, capsys):
    """2048x2048 on the 4 MB demo model grew the CLI to 21.7 GB until the kernel killed it."""
    config = write_config(tmp_path, "demo", width=2048, height=2048, training_loop={"steps": 1, "batch_size": 1})
    assert cli_main(["train", "--train-config", str(config.folder / "train.json"), "--memory-budget", "4"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("Error: Training at 2048x2048, 1 image(s) a step needs about ") and \
        "more than the memory budget of 4.0 GB: train at a smaller width and height" in error, error
    assert not (tmp_path / "out").exists()


def test_a_config_without_a_t5_length_trains_at_the_one_generating_uses_on_its_model(tmp_path):
    """The demo generates at 32 T5 tokens (FLUX.1 at 512): trained at 512 with the defaults, a LoRA changed the demo's
    images by 4.2 levels where one trained at 32 changed them by 43.8."""
    from mflux_core.tools.common import default_sequence_length
    from mflux_core.training.lora_training import with_sequence_length

    config = write_config(tmp_path, "demo")
    unstated = TrainingConfig.from_dict({k: v for k, v in config.raw.items() if k != "max_sequence_length"},
                                        config.folder)
    model = load_base_model(unstated, tmp_path)
    assert with_sequence_length(unstated, model).max_sequence_length == \
        default_sequence_length(model.text_encoders, "generate") == 32
    assert with_sequence_length(config, model).max_sequence_length == 16  # as the config says


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_first_step(tiny_dev, tmp_path):
    (tmp_path / "taken").write_text("a file where the output folder would go")
    config = write_config(tmp_path, tiny_dev, save={"output_path": "taken"})
    with pytest.raises(InvalidRequest, match=r"^The output folder .*taken cannot be made or written \(Not a dir"):
        train_lora(config)


def test_a_batch_larger_than_the_examples_takes_each_once(tiny_dev, tmp_path):
    """One image at batch 64 ran 64 copies a step (297 s for 2 steps, 0.5 s at batch 1); kohya caps the batch."""
    config = write_config(tmp_path, tiny_dev, training_loop={"steps": 1, "batch_size": 8})
    assert config.batch_size == len(PROMPTS) == 3
    assert train_lora(config).notes[0] == "batch_size 8 is more than the 3 example(s): 3 a step."

