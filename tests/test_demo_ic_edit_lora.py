"""The demo IC-Edit LoRA run (mflux_core.demo.ic_edit_lora): an ordinary in-context training config on demo-fill whose
adapter IC-Edit then takes, at the T5 length IC-Edit resolves there (its template's tokens on top of demo-fill's 32)."""

import numpy as np
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.ic_edit_lora import PANEL, TRAINING_SEED, ic_edit_sequence_length, write_config
from mflux_core.metadata import read_metadata_file
from mflux_core.tools.specs import IC_EDIT_TEMPLATE
from mflux_core.training.lora_training import train_lora
from tests.parity import run_cli


def test_the_run_trains_diptychs_of_edits_that_ic_edit_then_takes(tmp_path):
    length = ic_edit_sequence_length()
    assert length > 32 + 64  # demo-fill's default plus the template's ~100 tokens
    config = write_config(tmp_path / "run", steps=2, count=3, sequence_length=length, batch_size=2,
                          learning_rate=1e-3, rank=4)
    assert config.in_context and (config.width, config.height) == (2 * PANEL, PANEL)
    assert config.max_sequence_length == length
    first = dataset.kontext_example(TRAINING_SEED, 0, PANEL, height=PANEL)
    assert config.examples[0].prompt == IC_EDIT_TEMPLATE.format(instruction=first.instruction)
    diptych = np.asarray(Image.open(config.examples[0].image).convert("RGB"))
    assert np.array_equal(diptych, np.concatenate([first.before, first.after], axis=1))

    outcome = train_lora(config)
    assert outcome.finished and outcome.adapter.is_file()
    Image.fromarray(first.before).save(tmp_path / "before.png")
    edited = run_cli("ic-edit", "--model", "demo-fill", "--reference-image", tmp_path / "before.png",
                     "--instruction", first.instruction, "--ic-edit-lora", outcome.adapter, "--seed", 1,
                     "--output", tmp_path / "edited.png")
    assert edited.size == (PANEL, PANEL)  # IC-Edit's 512 px panel, made at the panel of demo-fill's 128x64
    recorded = read_metadata_file(tmp_path / "edited.png")["request"]
    assert recorded["max_sequence_length"] == length  # the resolved default, recorded so the edit replays
