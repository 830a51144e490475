"""The demo diptych LoRA runs (mflux_core.demo.diptych_lora): ordinary in-context training configs on demo-fill
whose adapters the tools then take, at the T5 length each tool resolves there (IC-Edit: its template's tokens on
top of demo-fill's 32; In-Context: room for two panels' captions)."""

import numpy as np
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.diptych_lora import PANEL, TRAINING_SEED, sequence_length, write_config
from mflux_core.demo.shapes import caption
from mflux_core.metadata import read_metadata_file
from mflux_core.tools.specs import IC_EDIT_TEMPLATE
from mflux_core.training.lora_training import train_lora
from tests.parity import run_cli


def test_each_kind_captions_the_same_edits_as_its_tool_reads_them(tmp_path):
    first = dataset.kontext_example(TRAINING_SEED, 0, PANEL, height=PANEL)
    in_context = write_config(tmp_path / "in-context", "in-context", steps=1, count=2, batch_size=1,
                              learning_rate=1e-3, rank=4)
    assert in_context.examples[0].prompt == (f"[IMAGE1] {caption(first.before_scene)}; "
                                             f"[IMAGE2] {caption(first.after_scene)}")
    assert in_context.examples[1].prompt.startswith("[LEFT] ")  # the published markers, in turn
    assert in_context.max_sequence_length == sequence_length("in-context") == 2 * 32
    ic_edit = write_config(tmp_path / "ic-edit", "ic-edit", steps=1, count=1, batch_size=1, learning_rate=1e-3,
                           rank=4)
    assert ic_edit.examples[0].prompt == IC_EDIT_TEMPLATE.format(instruction=first.instruction)
    assert ic_edit.max_sequence_length == sequence_length("ic-edit") > 32 + 64  # the template's ~100 tokens


def test_the_ic_edit_run_trains_diptychs_of_edits_that_ic_edit_then_takes(tmp_path):
    length = sequence_length("ic-edit")
    config = write_config(tmp_path / "run", "ic-edit", steps=2, count=3, batch_size=2, learning_rate=1e-3, rank=4)
    assert config.in_context and (config.width, config.height) == (2 * PANEL, PANEL)
    first = dataset.kontext_example(TRAINING_SEED, 0, PANEL, height=PANEL)
    diptych = np.asarray(Image.open(config.examples[0].image).convert("RGB"))
    assert np.array_equal(diptych, np.concatenate([first.before, first.after], axis=1))

    outcome = train_lora(config)
    assert outcome.finished and outcome.adapter.is_file()
    Image.fromarray(first.before).save(tmp_path / "before.png")
    edited = run_cli("ic-edit", "--model", "demo-fill", "--reference-image", tmp_path / "before.png",
                     "--instruction", first.instruction, "--ic-edit-lora", outcome.adapter, "--seed", 1,
                     "--output", tmp_path / "edited.png")
    assert edited.size == (PANEL, PANEL)  # on a demo Fill the reference's size (RiverZ's LoRA: 512 px wide)
    recorded = read_metadata_file(tmp_path / "edited.png")["request"]
    assert recorded["max_sequence_length"] == length  # the resolved default, recorded so the edit replays
    assert recorded["lora_paths"] == []  # the tool's own LoRA comes from --ic-edit-lora again on a replay
