"""Our tokenizers (built with `tokenizers`, no transformers import) give transformers' ids exactly.

Compared on the tiny fixture's tokenizer folders, in both file layouts the published FLUX.1 repos
use (CLIP: tokenizer.json or vocab.json + merges.txt; T5: tokenizer.json, or only spiece.model,
which transformers converts), and with tokenizer configs shaped like the published ones (added
tokens declared in `added_tokens_decoder`, CLIP's normalised end tokens, T5's sentinel list).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mflux_core.errors import ModelLoadError
from mflux_core.models.prompt_tokenizers import load_clip_tokenizer, load_t5_tokenizer

PROMPTS = [
    "a small red house beside a lake at dawn", "", " ", "  leading and trailing  ", "UPPER Case Words",
    "tabs\tand\nnewlines\r\n here", "naïve café déjà vu", "ﬁ ligature Ｆｕｌｌｗｉｄｔｈ", "emoji 🐱‍👤 and 日本語のテキスト",
    "don't won't they're I'm we'll he'd it's", "numbers 12345 and 3.14159, punctuation!!! ??? ...",
    "<|endoftext|> inside <|startoftext|> text", "<|ENDOFTEXT|>", "</s> <pad> <unk> <extra_id_0> <extra_id_99>",
    "a" * 300, " ".join(["word"] * 200), "\u00a0nbsp\u2009thin\u3000ideographic", "\x00control\x07chars",
    "quotes “double” ‘single” «guillemets» — dashes –",
]
LENGTHS = (77, 512, 3)


def reference(kind: str, folder: Path):
    from transformers import CLIPTokenizer, T5TokenizerFast

    return {"clip": CLIPTokenizer, "t5": T5TokenizerFast}[kind].from_pretrained(folder, local_files_only=True)


def assert_same_ids(ours, theirs):
    assert (ours.model_max_length, ours.eos_token_id, ours.pad_token_id) == \
        (theirs.model_max_length, theirs.eos_token_id, theirs.pad_token_id)
    for prompt in PROMPTS:
        assert ours(prompt).input_ids == list(theirs(prompt).input_ids), prompt
        for length in LENGTHS:
            options = {"padding": "max_length", "max_length": length, "truncation": True, "return_tensors": "np"}
            ids = ours([prompt], **options).input_ids
            expected = theirs([prompt], **options).input_ids
            assert ids.dtype == expected.dtype and np.array_equal(ids, expected), (prompt, length)


def copy_folder(source: Path, destination: Path, drop: str) -> Path:
    shutil.copytree(source, destination)
    (destination / drop).unlink()
    return destination


def edit_config(folder: Path, edit) -> Path:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return folder


def published_clip_config(config: dict, vocab: dict) -> None:
    config.pop("backend", None)
    config["added_tokens_decoder"] = {
        str(vocab[token]): {"content": token, "lstrip": False, "normalized": True, "rstrip": False,
                            "single_word": False, "special": True}
        for token in ("<|startoftext|>", "<|endoftext|>")
    }


def published_t5_config(config: dict, added_tokens: list[dict]) -> None:
    config.pop("backend", None)
    config.pop("extra_special_tokens", None)
    config["additional_special_tokens"] = [f"<extra_id_{i}>" for i in range(100)]
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    config["added_tokens_decoder"] = {str(token["id"]): {k: token[k] for k in keys} for token in added_tokens}


def test_clip_ids_match_transformers_from_either_file_set(tiny_dev, tmp_path):
    folder = tiny_dev / "tokenizer"
    assert_same_ids(load_clip_tokenizer(folder), reference("clip", folder))
    vocab_and_merges = copy_folder(folder, tmp_path / "clip", drop="tokenizer.json")
    assert_same_ids(load_clip_tokenizer(vocab_and_merges), reference("clip", folder))


def test_clip_ids_match_transformers_with_a_published_style_config(tiny_dev, tmp_path):
    folder = copy_folder(tiny_dev / "tokenizer", tmp_path / "clip", drop="tokenizer.json")
    vocab = json.loads((folder / "vocab.json").read_text())
    edit_config(folder, lambda config: published_clip_config(config, vocab))
    assert_same_ids(load_clip_tokenizer(folder), reference("clip", folder))


def test_t5_ids_match_transformers(tiny_dev, tmp_path):
    folder = tiny_dev / "tokenizer_2"
    assert_same_ids(load_t5_tokenizer(folder), reference("t5", folder))
    published = shutil.copytree(folder, tmp_path / "t5")
    added = json.loads((published / "tokenizer.json").read_text())["added_tokens"]
    edit_config(published, lambda config: published_t5_config(config, added))
    assert_same_ids(load_t5_tokenizer(published), reference("t5", published))


def test_t5_folder_with_only_spiece_model_is_converted_by_transformers(tiny_dev, tmp_path):
    folder = copy_folder(tiny_dev / "tokenizer_2", tmp_path / "t5", drop="tokenizer.json")
    assert_same_ids(load_t5_tokenizer(folder), reference("t5", tiny_dev / "tokenizer_2"))


def test_missing_or_broken_tokenizer_files_are_a_model_load_error(tiny_dev, tmp_path):
    with pytest.raises(ModelLoadError, match="missing or incomplete"):
        load_clip_tokenizer(tmp_path)
    broken = shutil.copytree(tiny_dev / "tokenizer_2", tmp_path / "t5")
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="Cannot read the tokenizer"):
        load_t5_tokenizer(broken)
