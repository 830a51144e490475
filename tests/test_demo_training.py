"""The demo training recipe end to end at toy scale: stages run, resume, export, and the engine loads the result."""

import json

import numpy as np
import pytest

from mflux_core.demo import export, train
from mflux_core.demo.loss_weights import shape_weights, token_weights
from mflux_core.manager import ModelManager
from mflux_core.models.controlnet import load_controlnet
from mflux_core.request import GenerationRequest


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo-run")
    train.main([str(run), "--stages", "vae,decoder,base,teacher,guidance,fill,canny", "--scale-steps", "0.0005",
                "--batch", "2"])
    return run


def test_each_stage_leaves_a_checkpoint_and_a_loss_curve(toy_run):
    for stage in ("vae", "decoder", "base", "teacher", "guidance", "fill", "canny"):
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
    assert [f.name for f in folders] == ["demo", "demo-fill", "demo-canny"]
    controlnet = load_controlnet(folders[2])
    assert np.abs(np.array(controlnet.controlnet_blocks[0].weight)).max() > 0  # trained away from its zero init
    vae_config = json.loads((folders[0] / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] > 0 and vae_config["shift_factor"] != 0.0
    manager = ModelManager(models_dir=tmp_path / "models")
    result = manager.generate(GenerationRequest(model="demo", prompt="a red circle on a blue background",
                                                width=64, height=64, steps=1, max_sequence_length=32))
    assert result.image.size == (64, 64)
    assert manager.load_counts["vae"] == 1


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
