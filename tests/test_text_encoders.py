"""Parity of the MLX CLIP and T5 encoders and of prompt encoding with transformers / diffusers.

Tolerance: max abs error <= 1e-4 x the reference's max abs value (float32). The fixture's random T5
attends with large unscaled logits, so float32 torch itself sits ~1e-5 (relative) from float64.
"""

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from mflux_core.errors import ModelLoadError
from mflux_core.models.clip import LEGACY_EOS_TOKEN_ID, load_clip_text_model
from mflux_core.models.t5 import load_t5_encoder, relative_position_buckets
from mflux_core.models.text_encoders import PromptEmbeddings, TextEncoders
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.fixtures.tokenizers import caption_corpus

RELATIVE_TOLERANCE = 1e-4

CAPTIONS = caption_corpus(30, seed=7)
PROMPTS = {
    "empty": "",
    "short": "a photo of a red cat in the top left",
    "unknown_words": "zebra quokka!? 42",
    # ~140 T5 tokens: spans the exact buckets, the log buckets and past max_distance (128).
    "past_max_distance": " ".join(CAPTIONS[:3]),
    # 614 CLIP tokens, 1378 T5 tokens: both tokenizers truncate.
    "long": " ".join(CAPTIONS),
}


def assert_close(ours, reference, what: str):
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, what
    scale = float(np.abs(reference).max())
    error = float(np.abs(ours - reference).max())
    assert error <= RELATIVE_TOLERANCE * scale, f"{what}: max abs error {error:.3g} vs reference scale {scale:.3g}"


@pytest.fixture(scope="module")
def tokenizers(tiny_dev):
    from transformers import CLIPTokenizer, T5TokenizerFast

    return (CLIPTokenizer.from_pretrained(tiny_dev / "tokenizer"),
            T5TokenizerFast.from_pretrained(tiny_dev / "tokenizer_2"))


@pytest.fixture(scope="module")
def torch_clip(tiny_dev):
    from transformers import CLIPTextModel

    model, info = CLIPTextModel.from_pretrained(tiny_dev / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def torch_t5(tiny_dev):
    from transformers import T5EncoderModel

    model, info = T5EncoderModel.from_pretrained(tiny_dev / "text_encoder_2", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def text_encoders(tiny_dev):
    return TextEncoders.from_folder(tiny_dev)


def token_ids(tokenizer, prompts, max_length=None) -> np.ndarray:
    padding = {"padding": "max_length", "max_length": max_length} if max_length else {}
    return tokenizer(prompts, truncation=True, return_tensors="np", **padding).input_ids.astype(np.int32)


def run_torch_clip(model, ids):
    with torch.no_grad():
        output = model(torch.from_numpy(ids).long())
    return output.last_hidden_state.numpy(), output.pooler_output.numpy()


def test_reference_models_really_load_the_fixture_files(tiny_dev, torch_clip, torch_t5):
    """The `text_model.` prefix and the T5 shards reach transformers (no silently random weights)."""
    clip_file = load_file(tiny_dev / "text_encoder" / "model.safetensors")
    name = "encoder.layers.1.self_attn.q_proj.weight"
    np.testing.assert_array_equal(clip_file[f"text_model.{name}"], torch_clip.state_dict()[name].numpy())
    index = json.loads((tiny_dev / "text_encoder_2" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for name in ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 "encoder.final_layer_norm.weight"):
        stored = load_file(tiny_dev / "text_encoder_2" / index["weight_map"][name])[name]
        np.testing.assert_array_equal(stored, torch_t5.state_dict()[name].numpy())


def test_clip_matches_transformers(tiny_dev, tokenizers, torch_clip):
    clip_tokenizer, _ = tokenizers
    ids = token_ids(clip_tokenizer, list(PROMPTS.values()), max_length=77)
    hidden, pooled = load_clip_text_model(tiny_dev / "text_encoder")(mx.array(ids))
    reference_hidden, reference_pooled = run_torch_clip(torch_clip, ids)
    assert_close(hidden, reference_hidden, "CLIP last_hidden_state")
    assert_close(pooled, reference_pooled, "CLIP pooled")


@pytest.mark.parametrize("max_length", [None, 77, 512])
def test_t5_matches_transformers(tiny_dev, tokenizers, torch_t5, max_length):
    """Unpadded (lengths 1 .. 512) and padded sequences, so the position bias is checked at many lengths."""
    _, t5_tokenizer = tokenizers
    model = load_t5_encoder(tiny_dev / "text_encoder_2")
    for name, prompt in PROMPTS.items():
        ids = token_ids(t5_tokenizer, [prompt], max_length=max_length)
        with torch.no_grad():
            reference = torch_t5(torch.from_numpy(ids).long()).last_hidden_state.numpy()
        assert_close(model(mx.array(ids)), reference, f"T5 {name} ({ids.shape[1]} tokens)")


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gelu", "gated-silu"])
def test_t5_feed_forward_variants_match_transformers(tmp_path, feed_forward_proj):
    """The original T5's plain feed-forward (wi, wo), as small test encoders have, and other activations."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(3)
    reference = T5EncoderModel(T5Config(
        vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj=feed_forward_proj, dropout_rate=0.0,
    )).eval()
    reference.save_pretrained(tmp_path / "t5")
    ids = np.random.default_rng(0).integers(0, 99, (2, 23)).astype(np.int32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert_close(load_t5_encoder(tmp_path / "t5")(mx.array(ids)), expected, f"T5 with {feed_forward_proj}")


def test_a_t5_config_naming_no_feed_forward_is_read_as_transformers_reads_it(tmp_path):
    """T5 v1.0's configs name no feed_forward_proj: transformers reads relu (it was read as gated-gelu, and the
    checkpoint refused for missing wi_0 / wi_1)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(4)
    T5EncoderModel(T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                            feed_forward_proj="relu", dropout_rate=0.0)).save_pretrained(tmp_path / "t5")
    config_path = tmp_path / "t5" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("feed_forward_proj", "dense_act_fn", "is_gated_act"):
        config.pop(key, None)
    config_path.write_text(json.dumps(config))
    reference = T5EncoderModel.from_pretrained(tmp_path / "t5").eval()
    ids = np.random.default_rng(1).integers(0, 99, (1, 17)).astype(np.int32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert_close(load_t5_encoder(tmp_path / "t5")(mx.array(ids)), expected, "T5 whose config names no feed-forward")


def test_t5_in_float16_survives_activations_past_its_range(tmp_path):
    """T5 v1.1 XXL's feed-forward outputs pass float16's 65,504 (transformers keeps `wo` in float32 for it); here
    a small T5 whose `wo` is scaled up 30,000x does the same. Its float16 hidden states were NaN; they now run in
    float32 from float16 weights: 1.3e-3 of the largest value off float32 (transformers' own float16: 1.8e-3)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(5)
    reference = T5EncoderModel(T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
                                        feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval()
    with torch.no_grad():
        for block in reference.encoder.block:
            block.layer[1].DenseReluDense.wo.weight.mul_(30_000.0)
    reference.save_pretrained(tmp_path / "t5")
    ids = np.random.default_rng(0).integers(0, 99, (1, 12)).astype(np.int32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    ours = np.array(load_t5_encoder(tmp_path / "t5", mx.float16)(mx.array(ids)).astype(mx.float32))
    assert np.isfinite(ours).all() and np.abs(ours - expected).max() <= 5e-3 * np.abs(expected).max()


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    length = 1100
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    for num_buckets, max_distance in [(32, 128), (64, 256), (16, 20)]:
        expected = T5Attention._relative_position_bucket(relative, True, num_buckets, max_distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(length, num_buckets, max_distance), expected)


def clip_variant(tiny_dev: Path, folder: Path, weights=None, **config_changes) -> Path:
    """A copy of the tiny CLIP with a changed config.json and, optionally, other weights."""
    shutil.copytree(tiny_dev / "text_encoder", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_clip_pooling_rules(tiny_dev, tokenizers, tmp_path):
    """Legacy eos_token_id 2: the highest token id; otherwise the first eos_token_id position."""
    from transformers import CLIPTextModel

    clip_tokenizer, _ = tokenizers
    eos, bos = clip_tokenizer.eos_token_id, clip_tokenizer.bos_token_id
    other = 300
    prompt_ids = token_ids(clip_tokenizer, [PROMPTS["short"], PROMPTS["empty"]], max_length=77)
    hand_made = np.full((2, 77), eos, dtype=np.int32)
    hand_made[0, :8] = [bos, 10, other, 20, eos, other, 30, eos]  # first `other` at 2, first eos (= max id) at 4
    hand_made[1, :4] = [bos, 10, 20, eos]  # no `other`: transformers falls back to position 0
    expected_positions = {
        LEGACY_EOS_TOKEN_ID: ([4, 3], prompt_ids.argmax(-1)),
        eos: ([4, 3], prompt_ids.argmax(-1)),
        other: ([2, 0], (prompt_ids == other).argmax(-1)),
    }
    for eos_token_id, (hand_made_positions, prompt_positions) in expected_positions.items():
        folder = clip_variant(tiny_dev, tmp_path / f"eos-{eos_token_id}", eos_token_id=eos_token_id)
        reference_model = CLIPTextModel.from_pretrained(folder).eval()
        model = load_clip_text_model(folder)
        for ids, positions in [(hand_made, hand_made_positions), (prompt_ids, prompt_positions)]:
            hidden, pooled = model(mx.array(ids))
            reference_hidden, reference_pooled = run_torch_clip(reference_model, ids)
            assert_close(hidden, reference_hidden, f"CLIP hidden, eos_token_id {eos_token_id}")
            assert_close(pooled, reference_pooled, f"CLIP pooled, eos_token_id {eos_token_id}")
            np.testing.assert_array_equal(pooled, np.asarray(hidden)[np.arange(2), positions])


def test_clip_with_exact_gelu(tiny_dev, tokenizers, tmp_path):
    from transformers import CLIPTextModel

    folder = clip_variant(tiny_dev, tmp_path / "gelu", hidden_act="gelu")
    ids = token_ids(tokenizers[0], [PROMPTS["short"]], max_length=77)
    hidden, pooled = load_clip_text_model(folder)(mx.array(ids))
    reference_hidden, reference_pooled = run_torch_clip(CLIPTextModel.from_pretrained(folder).eval(), ids)
    assert_close(hidden, reference_hidden, "CLIP (gelu) hidden")
    quick_gelu_hidden, _ = load_clip_text_model(tiny_dev / "text_encoder")(mx.array(ids))
    assert float(np.abs(np.asarray(quick_gelu_hidden) - reference_hidden).max()) > 1e-3  # the activation matters


def test_clip_accepts_unprefixed_keys_and_position_ids(tiny_dev, tmp_path):
    stored = load_file(tiny_dev / "text_encoder" / "model.safetensors")
    unprefixed = {name.removeprefix("text_model."): value for name, value in stored.items()}
    unprefixed["embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    folder = clip_variant(tiny_dev, tmp_path / "unprefixed", weights=unprefixed)
    ids = mx.array([[662, 40, 50, 663, 663]], dtype=mx.int32)
    expected = load_clip_text_model(tiny_dev / "text_encoder")(ids)
    for ours, reference in zip(load_clip_text_model(folder)(ids), expected):
        np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("keep_shared", [True, False])
def test_t5_accepts_embed_tokens(tiny_dev, tmp_path, keep_shared):
    """encoder.embed_tokens.weight is used when shared.weight is absent and dropped otherwise."""
    folder = tmp_path / "t5"
    folder.mkdir()
    shutil.copy(tiny_dev / "text_encoder_2" / "config.json", folder)
    weights = {}
    for shard in (tiny_dev / "text_encoder_2").glob("*.safetensors"):
        weights.update(load_file(shard))
    shared = weights["shared.weight"] if keep_shared else weights.pop("shared.weight")
    weights["encoder.embed_tokens.weight"] = shared.copy()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    ids = mx.array([[5, 17, 42, 1]], dtype=mx.int32)
    expected = load_t5_encoder(tiny_dev / "text_encoder_2")(ids)
    np.testing.assert_array_equal(load_t5_encoder(folder)(ids), expected)


@pytest.mark.parametrize("max_sequence_length", [512, 64])
def test_encode_matches_diffusers_flux_pipeline(tiny_dev, text_encoders, max_sequence_length):
    pipeline = load_diffusers_pipeline(tiny_dev)
    for name, prompt in PROMPTS.items():
        with torch.no_grad():
            prompt_embeds, pooled_embeds, _ = pipeline.encode_prompt(
                prompt, prompt_2=None, max_sequence_length=max_sequence_length
            )
        ours = text_encoders.encode(prompt, max_sequence_length=max_sequence_length)
        assert isinstance(ours, PromptEmbeddings)
        assert_close(ours.t5, prompt_embeds.numpy(), f"T5 embeddings of {name!r}")
        assert_close(ours.pooled, pooled_embeds.numpy(), f"pooled CLIP of {name!r}")


def test_release_and_reload(text_encoders):
    before = text_encoders.encode(PROMPTS["short"], max_sequence_length=32)
    text_encoders.release()
    assert not text_encoders.loaded
    after = text_encoders.encode(PROMPTS["short"], max_sequence_length=32)
    assert text_encoders.loaded
    np.testing.assert_array_equal(after.t5, before.t5)
    np.testing.assert_array_equal(after.pooled, before.pooled)


def copy_model_folder(tiny_dev: Path, folder: Path) -> Path:
    """The text half of a FLUX.1 folder (tokenizers and encoders)."""
    folder.mkdir()
    for part in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"):
        shutil.copytree(tiny_dev / part, folder / part)
    return folder


def truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_weights_are_a_model_load_error(tiny_dev, tmp_path):
    clip_broken = copy_model_folder(tiny_dev, tmp_path / "clip-broken")
    truncate(clip_broken / "text_encoder" / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        TextEncoders.from_folder(clip_broken)

    t5_broken = copy_model_folder(tiny_dev, tmp_path / "t5-broken")
    shard = sorted((t5_broken / "text_encoder_2").glob("*.safetensors"))[-1]
    truncate(shard)
    with pytest.raises(ModelLoadError, match=re.escape(shard.name)):
        load_t5_encoder(t5_broken / "text_encoder_2")


@pytest.mark.parametrize("tokenizer_folder", ["tokenizer", "tokenizer_2"])
def test_missing_tokenizer_is_a_model_load_error(tiny_dev, tmp_path, tokenizer_folder):
    folder = copy_model_folder(tiny_dev, tmp_path / "model")
    shutil.rmtree(folder / tokenizer_folder)
    with pytest.raises(ModelLoadError, match=re.escape(str(folder / tokenizer_folder))):
        TextEncoders.from_folder(folder)
    (folder / tokenizer_folder).mkdir()  # present but empty: transformers would build an empty tokenizer
    with pytest.raises(ModelLoadError, match=re.escape(str(folder / tokenizer_folder))):
        TextEncoders.from_folder(folder)
