"""The demo training recipe end to end at toy scale: stages run, resume, export, and the engine loads the result."""

import json
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mflux_core.demo import export, train
from mflux_core.demo.loss_weights import shape_weights, token_weights
from mflux_core.demo.family import NATIVE_SIZE
from mflux_core.demo.flow_stages import base_transformer, step_rows
from mflux_core.demo.guidance_stages import distillation_loss, empty_caption, train_guidance
from mflux_core.demo.recipe import STAGES, scaled
from mflux_core.demo.restore import restore_run
from mflux_core.demo.text_encoders import caption_tokens, prepare_shared, seeded_text_encoders, text_encoders
from mflux_core.demo.token_reading import (SHIPPED_BASE, STAGE as TOKEN_READING, shows_redux_layout,
                                          token_reading_batches)
from mflux_core.demo.tokenizers import T5_MAX_LENGTH
from mflux_core.demo.vae_stages import trained_vae, vae_sample
from mflux_core.manager import ModelManager
from mflux_core.models.controlnet import load_controlnet
from mflux_core.models.transformer import load_transformer
from mflux_core.native_sizes import read_native_sizes
from mflux_core.request import GenerationRequest
from mflux_core.training.loop import MODEL_FILE, STATE_FILE
from mflux_core.weights.resolve import demo_models_dir


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo-run")
    train.main([str(run), "--stages", "vae,decoder,sharpen,base,teacher,guidance,fill,canny,upscale",
                "--scale-steps", "0.0005", "--batch", "2"])
    return run


def test_each_stage_leaves_a_checkpoint_and_a_loss_curve(toy_run):
    for stage in ("vae", "decoder", "sharpen", "base", "teacher", "guidance", "fill", "canny", "upscale"):
        state = json.loads((toy_run / stage / "state.json").read_text())
        assert state["step"] >= 1 and all(np.isfinite(state["losses"]))
        assert (toy_run / stage / "loss.png").is_file()
    assert not (toy_run / "depth").exists()


def test_a_finished_run_is_skipped_on_the_next_call(toy_run):
    before = (toy_run / "base" / "model.safetensors").stat().st_mtime_ns
    train.main([str(toy_run), "--stages", "vae,base", "--scale-steps", "0.0005", "--batch", "2"])
    assert (toy_run / "base" / "model.safetensors").stat().st_mtime_ns == before


def test_the_exported_folders_generate_through_the_engine(toy_run, tmp_path):
    folders = export.export_run(toy_run, tmp_path / "models")
    assert [f.name for f in folders] == ["demo", "demo-fill", "demo-canny", "demo-upscaler"]
    controlnet = load_controlnet(folders[2])
    assert np.abs(np.array(controlnet.controlnet_blocks[0].weight)).max() > 0  # trained away from its zero init
    vae_config = json.loads((folders[0] / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] > 0 and vae_config["shift_factor"] != 0.0
    manager = ModelManager(models_dir=tmp_path / "models")
    result = manager.generate(GenerationRequest(model="demo", prompt="a red circle on a blue background",
                                                width=64, height=64, steps=1, max_sequence_length=32))
    assert result.image.size == (64, 64)
    assert manager.resident.load_counts["vae"] == 1


def test_the_base_stage_trains_the_text_encoders_and_the_export_ships_them(toy_run, tmp_path):
    (seeded_clip, seeded_t5), (clip, t5) = seeded_text_encoders(toy_run), text_encoders(toy_run)
    for seeded, trained in ((seeded_clip, clip), (seeded_t5, t5)):
        pairs = zip(tree_flatten(seeded.parameters()), tree_flatten(trained.parameters()))
        moved = [name for (name, a), (_, b) in pairs if not np.array_equal(np.array(a), np.array(b))]
        assert moved
    folder = export.export_run(toy_run, tmp_path / "models")[0]
    shipped = mx.load(str(folder / "text_encoder_2" / "model.safetensors"))
    for name, value in tree_flatten(t5.parameters()):
        np.testing.assert_allclose(np.array(shipped[name].astype(mx.float32)), np.array(value), rtol=1e-3, atol=1e-3)


def test_the_transformers_learn_the_latents_of_the_vae_as_shipped(toy_run):
    """trained_vae rounds the VAE to the shipped dtype, so the latents the stages train on are the ones
    the exported float16 encoder gives the tools."""
    vae, _ = trained_vae(toy_run, vae_sample(toy_run, STAGES["vae"], workers=1))
    for _, value in tree_flatten(vae.parameters()):
        assert mx.array_equal(value, value.astype(mx.float16).astype(mx.float32))


def test_the_sharpen_stage_moves_the_decoder_alone_and_the_family_ships_it(toy_run):
    """It starts from the decoder stage's weights rounded as shipped and leaves the encoder (and so
    every latent the transformers learn) as the VAE stage made it."""
    vae, _ = trained_vae(toy_run, vae_sample(toy_run, STAGES["vae"], workers=1))
    shipped = dict(tree_flatten(vae.parameters()))
    before = mx.load(str(toy_run / "decoder" / "model.safetensors"))
    sharpened = mx.load(str(toy_run / "sharpen" / "model.safetensors"))
    for name in ("encoder.conv_in.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"):
        assert mx.array_equal(sharpened[name], before[name].astype(mx.float16).astype(mx.float32))
    name = "decoder.conv_out.weight"
    assert not mx.array_equal(sharpened[name], before[name].astype(mx.float16).astype(mx.float32))
    assert mx.array_equal(shipped[name], sharpened[name].astype(mx.float16).astype(mx.float32))


def test_shape_weights_mark_the_shape_and_its_rim():
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, 6:9, 6:9] = 200
    weights = shape_weights(images)[0, ..., 0]
    assert weights[7, 7] == weights[5, 7] == 10.0 and weights[4, 7] == weights[0, 0] == 1.0


def test_token_weights_follow_the_share_of_shape_pixels_in_each_token():
    before = np.zeros((1, 64, 64, 3), np.uint8)
    after = before.copy()
    before[0, 1:7, 1:7] = 200  # 36 pixels and a rim of 24 (4-neighbours), all in the first 16x16 token
    after[0, 36:44, 36:44] = 200  # 64 pixels and a rim of 32, all in token (2, 2)
    hole = np.zeros((1, 64, 64), bool)
    hole[0, :, 63] = True  # the last column: 16 pixels of each right-hand token
    weights = token_weights(before, after, extra=hole)[0].reshape(4, 4)
    assert weights[0, 0] == pytest.approx(1 + 9 * 60 / 256)
    assert weights[2, 2] == pytest.approx(1 + 9 * 96 / 256)
    assert weights[1, 3] == pytest.approx(1 + 9 * 16 / 256) and weights[1, 1] == 1.0


def test_caption_tokens_stop_after_the_eos_without_changing_the_pooled_output(toy_run):
    captions = np.array(["a red circle in the top left on a blue background", "make the star green", ""])
    t5_ids, clip_ids = caption_tokens(toy_run, captions)
    clip, _ = seeded_text_encoders(toy_run)
    assert t5_ids.shape == (3, T5_MAX_LENGTH) and clip_ids.shape[1] < 77
    padded = np.pad(clip_ids, ((0, 0), (0, 77 - clip_ids.shape[1])), constant_values=clip_ids.max())
    np.testing.assert_allclose(np.array(clip(mx.array(clip_ids))[1]), np.array(clip(mx.array(padded))[1]),
                               rtol=1e-5, atol=1e-6)


def test_a_run_restored_from_the_shipped_family_holds_its_weights(tmp_path):
    """restore.py's run gives the later stages the shipped VAE, text encoders and transformer, unchanged."""
    from mflux_core.demo.flow_stages import base_transformer
    from mflux_core.demo.pools import cached_pool
    from mflux_core.demo.restore import SHIPPED_BASE, restore_run
    from mflux_core.demo.size_stages import BASE_STAGE
    from mflux_core.models.clip import load_clip_text_model
    from mflux_core.models.t5 import load_t5_encoder
    from mflux_core.models.transformer import load_transformer
    from mflux_core.models.vae import load_vae
    from mflux_core.weights.resolve import demo_models_dir

    restore_run(tmp_path, demo_models_dir())
    cached_pool(tmp_path, "text_to_image", STAGES["vae"].seed, 16)  # the VAE's statistics: a few scenes will do
    shipped = demo_models_dir() / SHIPPED_BASE
    clip, t5 = text_encoders(tmp_path)
    pairs = [(trained_vae(tmp_path, vae_sample(tmp_path, STAGES["vae"], workers=1))[0], load_vae(shipped / "vae")),
             (base_transformer(tmp_path, "guidance"), load_transformer(shipped / "transformer")),
             (base_transformer(tmp_path, BASE_STAGE), load_transformer(shipped / "transformer")),  # ControlNets' base
             (clip, load_clip_text_model(shipped / "text_encoder")), (t5, load_t5_encoder(shipped / "text_encoder_2"))]
    for restored, original in pairs:
        restored, original = dict(tree_flatten(restored.parameters())), dict(tree_flatten(original.parameters()))
        assert restored.keys() == original.keys()
        assert all(mx.array_equal(restored[name], original[name]) for name in restored)
    assert caption_tokens(tmp_path, np.array(["a red circle"]))[0].shape == (1, T5_MAX_LENGTH)


def test_the_sizes_stages_tune_a_restored_family_and_its_export_makes_every_size(tmp_path):
    """size_stages.py at toy scale on a run restored from demo_models/: each stage trains on pools of every size,
    and the export ships a tuned member with the sizes its stage lists as its native sizes, an untuned one at 64x64
    only."""
    run = tmp_path / "run"
    restore_run(run, demo_models_dir())
    train.main([str(run), "--stages", "teacher-sizes,guidance-sizes,fill-sizes,canny-sizes", "--scale-steps",
                "0.0005", "--batch", "2"])
    sizes = STAGES["teacher-sizes"].sizes
    assert len(list(run.glob("examples-base-13-*.npz"))) == len(sizes)  # one pool per size (64x64 named as before)
    folders = {folder.name: folder for folder in export.export_run(run, tmp_path / "models")}
    assert set(folders) == {"demo", "demo-fill", "demo-depth", "demo-kontext", "demo-canny", "demo-upscaler"}
    assert read_native_sizes(folders["demo"]) == STAGES["guidance-sizes"].sizes == sizes
    assert read_native_sizes(folders["demo-fill"]) == STAGES["fill-sizes"].sizes
    assert read_native_sizes(folders["demo-depth"]) == ((64, 64),)
    tuned, shipped = load_controlnet(folders["demo-canny"]), load_controlnet(demo_models_dir() / "demo-canny")
    assert not mx.array_equal(tuned.controlnet_blocks[0].weight, shipped.controlnet_blocks[0].weight)
    manager = ModelManager(models_dir=tmp_path / "models")
    result = manager.generate(GenerationRequest(model="demo", prompt="a red circle on a blue background",
                                                width=80, height=48, steps=1, max_sequence_length=32))
    assert result.image.size == (80, 48) and not result.notes


def test_a_sizes_stage_draws_its_share_of_steps_at_the_native_size_and_the_64_px_recipe_draws_as_before():
    settings = STAGES["teacher-sizes"]
    drawn = [step_rows(settings, step, {size: 10 for size in settings.sizes})[1] for step in range(2000)]
    assert set(drawn) == set(settings.sizes)
    assert abs(drawn.count(NATIVE_SIZE) / len(drawn) - settings.native_share) < 0.03
    base = STAGES["base"]
    _, size, rows = step_rows(base, 7, {NATIVE_SIZE: 100})
    assert size == NATIVE_SIZE
    assert np.array_equal(rows, np.random.default_rng([base.seed, 7]).integers(0, 100, base.batch))


def test_the_retuned_base_is_taught_its_anchors_own_velocity_at_the_native_size(tmp_path):
    """A student that starts as its anchor has nothing to learn at 64x64; taught the teacher's guided velocity
    instead, the same start has."""
    run = tmp_path / "run"
    restore_run(run, demo_models_dir())
    prepare_shared(run)
    recipe = scaled(STAGES, 0.0005, batch=2)
    vae, _ = trained_vae(run, vae_sample(run, recipe["vae"], workers=1))
    first_losses = {}
    for checkpoint, anchor in (("anchored", "guidance"), ("taught", None)):
        train_guidance(run, replace(recipe["guidance"], steps=1), recipe["base"], vae, workers=1, max_seconds=None,
                       teacher_stage="guidance", checkpoint=checkpoint, anchor=anchor)
        first_losses[checkpoint] = json.loads((run / checkpoint / STATE_FILE).read_text())["losses"][0]
    assert first_losses["anchored"] < 1e-8 < first_losses["taught"]



def test_the_token_reading_round_shows_captions_as_redux_tokens_and_ships_with_the_bases_sizes(tmp_path):
    """token_reading.py at toy scale on a run restored from demo_models/: a step that shows the captions as prompts
    is taught the shipped base's own velocity (nothing to learn at the start), a step that shows them as Redux shows
    its tokens (after the empty prompt's T5 tokens, with its pooled vector) is taught that same velocity (something
    to learn); the export ships the round's base with every size it trained at."""
    run = tmp_path / "run"
    restore_run(run, demo_models_dir())
    train.main([str(run), "--stages", TOKEN_READING, "--scale-steps", "0.0005", "--batch", "2"])
    settings = scaled(STAGES, 0.0005, batch=2)[TOKEN_READING]
    vae, _ = trained_vae(run, vae_sample(run, STAGES["vae"], workers=1))
    batches, shipped = token_reading_batches(run, settings, vae, workers=1), base_transformer(run, SHIPPED_BASE)
    _, empty_pooled = empty_caption(run, settings.batch)
    first_losses = {}
    for step in range(20):
        flow, target = batches(step)
        as_redux = shows_redux_layout(settings, step)
        assert flow.text.shape[1] == (2 if as_redux else 1) * T5_MAX_LENGTH
        assert mx.array_equal(flow.pooled, empty_pooled) == as_redux
        first_losses.setdefault(as_redux, distillation_loss(shipped, (flow, target)).item())
    assert first_losses[False] < 1e-8 < 1e-4 < first_losses[True], first_losses

    folders = {folder.name: folder for folder in export.export_run(run, tmp_path / "models")}
    assert read_native_sizes(folders["demo"]) == settings.sizes == STAGES["guidance-sizes"].sizes
    trained = dict(mx.load(str(run / TOKEN_READING / MODEL_FILE)))
    exported = dict(tree_flatten(load_transformer(folders["demo"] / "transformer").parameters()))
    assert all(mx.array_equal(exported[name], trained[name].astype(mx.float16).astype(exported[name].dtype))
               for name in trained)
    shipped_weights = dict(tree_flatten(shipped.parameters()))
    assert not all(mx.array_equal(trained[name], shipped_weights[name]) for name in trained)
