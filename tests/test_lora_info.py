"""What LoRA files say about themselves (Kohya's ss_* and ModelSpec metadata, key names): family, base model,
trigger words; files for another family refused on load with one sentence, DoRAs named; `mflux-studio loras` and the
page's line under the LoRA picker."""

import json

import mlx.core as mx
import pytest
import torch
from safetensors.torch import load_file, save_file

from mflux_core import cli
from mflux_core.errors import ModelLoadError
from mflux_core.lora.apply import check_lora
from mflux_core.lora.formats import load_lora_file, read_lora
from mflux_core.lora.info import describe_lora_file, family_from_keys, lora_info, read_lora_info
from mflux_core.models.transformer import load_transformer
from tests.fixtures import lora_files as lf

TAGS = {"10_inkstyle": {"inkstyle": 30, "sketch": 12, "portrait": 3}, "5_more": {"sketch": 25, "cat": 4, " ": 9}}
KOHYA_FLUX = {"ss_base_model_version": "flux1", "ss_sd_model_name": "flux1-dev.safetensors",
              "ss_output_name": "inkstyle_v2", "ss_tag_frequency": json.dumps(TAGS)}


def with_metadata(path, metadata: dict, extra_tensors: dict | None = None):
    """Rewrite a LoRA file with this header metadata (and extra tensors)."""
    tensors = {**load_file(str(path)), **(extra_tensors or {})}
    save_file(tensors, str(path), metadata={"format": "pt", **metadata})
    return path


@pytest.fixture
def kohya_flux(tiny_dev, tmp_path):
    path, _ = lf.write_bfl_lora(tmp_path / "inkstyle.safetensors", lf.Dims.of(tiny_dev), "kohya", alpha=2.0)
    return with_metadata(path, KOHYA_FLUX)


def test_kohya_metadata_gives_family_base_model_and_the_most_frequent_tags(kohya_flux):
    info = read_lora_info(kohya_flux)
    assert (info.family, info.base_model, info.trained_on, info.output_name) == (
        "FLUX.1", "flux1", "flux1-dev.safetensors", "inkstyle_v2")
    assert info.trigger_words == ("sketch", "inkstyle", "cat", "portrait")  # summed over folders, blanks dropped
    assert info.other_family is None and not info.dora
    assert describe_lora_file(kohya_flux) == ("made for **FLUX.1** (flux1) · trained on flux1-dev.safetensors · named "
                                              "inkstyle_v2 · trigger words: `sketch`, `inkstyle`, `cat`, `portrait`")
    assert "**" not in describe_lora_file(kohya_flux, markdown=False)
    assert load_lora_file(kohya_flux).targets  # and it loads


@pytest.mark.parametrize("metadata, family", [
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "SDXL"),
    ({"ss_base_model_version": "sd_v1"}, "SD 1.5"),
    ({"ss_base_model_version": "sd_v2"}, "SD 2"),
    ({"ss_base_model_version": "sd3"}, "SD3"),
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "SDXL"),
    ({"modelspec.architecture": "flux-1-dev/lora", "modelspec.trigger_phrase": "ink, sketch"}, "FLUX.1"),
    ({"modelspec.architecture": "flux-2-dev/lora"}, "FLUX.2"),
    ({"modelspec.architecture": "qwen-image/lora"}, "qwen-image/lora"),
    ({}, "FLUX.1"),  # none: its keys name FLUX.1's double blocks
])
def test_the_family_comes_from_the_metadata(metadata, family):
    info = lora_info(metadata, ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"])
    assert info.family == family
    if "modelspec.trigger_phrase" in metadata:
        assert info.trigger_words == ("ink", "sketch")


@pytest.mark.parametrize("keys, family", [
    (["lora_unet_input_blocks_1_1_proj_in.lora_down.weight", "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"],
     "SD 1.5"),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"],
     "SDXL"),
    (["unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight"], "SDXL"),
    (["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"], "SD3"),
    (["transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight"], "FLUX.2"),
    (["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "a text encoder only"),
    # FLUX.1 LoRAs may train CLIP too (Kohya: lora_te1) and T5 (lora_te3): still FLUX.1's
    (["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
      "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], "FLUX.1"),
    (["diffusion_model.single_blocks.3.linear1.lora_A.weight"], "FLUX.1"),  # BFL's names
    (["double_blocks.0.processor.qkv_lora1.down.weight"], "FLUX.1"),  # XLabs'
    (["lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight"], "FLUX.1"),  # OneTrainer's
    (["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"], "FLUX.1"),  # diffusers'
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], None),  # diffusers' double blocks: SD3's names too
])
def test_the_family_comes_from_the_key_names(keys, family):
    assert family_from_keys(keys) == family
    flux = family in (None, "FLUX.1", "a text encoder only")  # FLUX.1's metadata on text-encoder keys: its own
    assert lora_info({"ss_base_model_version": "flux1"}, keys).family == ("FLUX.1" if flux else family)
    assert lora_info({}, keys).family == family
    assert ("family not stated" in lora_info({}, keys).summary()) == (family is None)


def test_a_lora_for_another_family_is_refused_on_load_by_its_metadata(kohya_flux):
    with_metadata(kohya_flux, {"ss_base_model_version": "sdxl_base_v1-0"})  # FLUX.1-shaped keys, SDXL's metadata
    with pytest.raises(ModelLoadError, match=r"^The LoRA inkstyle.safetensors was made for SDXL, not FLUX.1, so it "
                                             r"cannot be applied here.$"):
        load_lora_file(kohya_flux)
    assert "⚠ refused: it was made for SDXL" in describe_lora_file(kohya_flux)


def test_a_dora_is_named_in_its_line_and_its_format(kohya_flux):
    """Applying one is tests/test_lora_dora.py's."""
    rows = load_file(str(kohya_flux))["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape[0]
    with_metadata(kohya_flux, KOHYA_FLUX, {"lora_unet_double_blocks_0_img_attn_qkv.dora_scale": torch.ones(rows, 1)})
    assert "DoRA (weight-decomposed)" in describe_lora_file(kohya_flux) and "refused" not in describe_lora_file(kohya_flux)
    assert load_lora_file(kohya_flux).format == "kohya+kohya DoRA"


def test_a_file_matching_no_layer_is_named_by_its_keys(tiny_dev):
    """Without a header to read (read_lora takes the tensors), the match finds nothing and names the family."""
    weights = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": mx.zeros((4, 8)),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": mx.zeros((24, 4))}
    lora = read_lora(weights, name="sd3.safetensors")
    with pytest.raises(ModelLoadError, match="matches none .* It looks like a LoRA for SD3."):
        check_lora(load_transformer(tiny_dev / "transformer"), lora)


def test_the_loras_command_lists_the_library_with_each_files_line(kohya_flux, tmp_path, capsys):
    (tmp_path / "broken.safetensors").write_bytes(b"not a header")
    assert cli.main(["loras", "--lora-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"inkstyle  ({kohya_flux})\n    made for FLUX.1 (flux1) · trained on flux1-dev.safetensors" in out
    assert "broken  (" in out and "not a readable safetensors file" in out
    (tmp_path / "empty").mkdir()
    assert cli.main(["loras", "--lora-dir", str(tmp_path / "empty")]) == 0
    assert "No LoRA files found" in capsys.readouterr().out
    assert cli.main(["loras", "--lora-dir", str(tmp_path / "nowhere")]) == 1  # a mistyped folder is said
    assert f"--lora-dir {tmp_path / 'nowhere'} is not a folder." in capsys.readouterr().err


def test_the_page_shows_the_line_under_a_picked_lora(kohya_flux, tmp_path):
    from mflux_core.manager import ModelManager
    from webui.app import build_app
    from webui.studio import StudioFolders

    app = build_app(ModelManager(models_dir=tmp_path / "models"),
                    StudioFolders.default(tmp_path / "out", loras=[kohya_flux.parent]))
    lines = {block.elem_id: block for block in app.blocks.values() if (block.elem_id or "").startswith(
        "generate-lora-info-")}
    assert set(lines) == {"generate-lora-info-1", "generate-lora-info-2", "generate-lora-info-3"}
    picker = next(b for b in app.blocks.values() if b.elem_id == "generate-lora-1")
    [event] = [fn for fn in app.fns.values() if picker._id in {block._id for block in fn.inputs}
               and lines["generate-lora-info-1"]._id in {block._id for block in fn.outputs}]
    assert event.fn("inkstyle") == describe_lora_file(kohya_flux) and "trigger words" in event.fn("inkstyle")
    assert event.fn("") == ""


def test_the_users_notes_beside_the_file_give_its_activation_text_and_preferred_weight(kohya_flux, tmp_path):
    a1111_notes = kohya_flux.with_name("inkstyle.json")
    civitai = kohya_flux.with_name("inkstyle.civitai.info")
    civitai.write_text(json.dumps({"trainedWords": ["inkstyle drawing", " ", 3], "baseModel": "Flux.1 D"}))
    assert read_lora_info(kohya_flux).activation_text == "inkstyle drawing"  # Civitai's, without A1111's notes
    a1111_notes.write_text(json.dumps({"description": "", "sd version": "Unknown", "activation text": "ink sketch",
                                       "preferred weight": 0.7, "notes": ""}))
    info = read_lora_info(kohya_flux)
    assert (info.activation_text, info.preferred_weight) == ("ink sketch", 0.7)  # A1111's own notes come first
    assert "activation text: `ink sketch` · preferred weight 0.7 · trigger words" in describe_lora_file(kohya_flux)
    for broken in ("{not json", json.dumps(["a list"]), json.dumps({"preferred weight": float("nan")}),
                   json.dumps({"preferred weight": 0, "activation text": 5})):
        a1111_notes.write_text(broken)
        assert read_lora_info(kohya_flux).preferred_weight is None  # A1111 writes 0 for "not set"

    from mflux_core.manager import ModelManager
    from webui.app import build_app
    from webui.studio import StudioFolders

    a1111_notes.write_text(json.dumps({"preferred weight": 0.7}))
    app = build_app(ModelManager(models_dir=tmp_path / "models"),
                    StudioFolders.default(tmp_path / "out", loras=[kohya_flux.parent]))
    picker = next(b for b in app.blocks.values() if b.elem_id == "generate-lora-1")
    scale = next(b for b in app.blocks.values() if b.elem_id == "generate-lora-scale-1")
    [pick] = [fn for fn in app.fns.values() if [block._id for block in fn.inputs] == [picker._id]
              and [block._id for block in fn.outputs] == [scale._id]]
    assert pick.fn("inkstyle") == 0.7
    a1111_notes.unlink()
    assert pick.fn("inkstyle") == {"__type__": "update"}  # no preferred weight: gradio's skip, the scale stays


@pytest.mark.parametrize("suffixes, algorithm", [(("oft_blocks", "alpha"), "OFT / BOFT"),
                                                 (("a1.weight", "a2.weight", "b1.weight", "b2.weight"), "GLoRA"),
                                                 (("diff", "diff_b"), "full"), (("weight", "on_input"), r"\(IA\)\^3")])
def test_a_lycoris_algorithm_the_studio_does_not_apply_is_named_in_a_sentence(tmp_path, suffixes, algorithm):
    path = tmp_path / "other.safetensors"
    save_file({f"lora_unet_double_blocks_0_img_attn_qkv.{suffix}": torch.ones(2) for suffix in suffixes}, str(path))
    with pytest.raises(ModelLoadError, match=rf"^The LoRA other.safetensors uses LyCORIS' {algorithm}.* algorithm, "
                                             r"which the studio cannot apply \(it applies LoRA, LoKr and LoHa"):
        load_lora_file(path)
    assert "⚠ refused: it uses LyCORIS'" in describe_lora_file(path)


def test_a_lora_that_also_trained_norms_is_applied_where_it_can_be(kohya_flux):
    """LyCORIS' train_norm adds w_norm / b_norm keys beside the LoRA modules: the LoRA applies, the rest is reported."""
    with_metadata(kohya_flux, KOHYA_FLUX, {"lora_unet_double_blocks_0_img_attn_norm_query_norm.w_norm": torch.ones(8)})
    lora = load_lora_file(kohya_flux)
    assert lora.targets and "lora_unet_double_blocks_0_img_attn_norm_query_norm.w_norm" in lora.unreadable_keys
