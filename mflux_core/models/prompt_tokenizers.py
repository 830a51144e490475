"""FLUX.1's two tokenizers, built directly with the `tokenizers` library.

Importing transformers costs about 1.1 s per process (most of a tiny model's whole run), so the
CLIP byte-level BPE and the T5 SentencePiece unigram are assembled here from the folder's files,
the way transformers 5's CLIPTokenizer and T5Tokenizer assemble them: same model, normaliser,
pre-tokeniser, end tokens and special tokens, so the ids are the same (tests/test_prompt_tokenizers.py
compares them with transformers). A T5 folder with only `spiece.model` (no tokenizer.json) is
still converted by transformers.
"""

import base64
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram

from mflux_core.errors import ModelLoadError

# Either file set is a complete tokenizer (the published FLUX repos ship both kinds of folders).
CLIP_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
T5_TOKENIZER_FILES = (("tokenizer.json",), ("spiece.model",))
UNBOUNDED_LENGTH = int(1e30)  # transformers' model_max_length when the config sets none
CLIP_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
T5_UNKNOWN_ID = 2  # transformers' T5Tokenizer fixes it, whatever the file says


@dataclass(frozen=True)
class TokenIds:
    input_ids: list | np.ndarray


class PromptTokenizer:
    """A `tokenizers.Tokenizer` called like a transformers tokenizer, for the calls the engine makes:
    `tok(text).input_ids` and `tok([text], padding="max_length", max_length=n, truncation=True,
    return_tensors="np").input_ids` (padding and truncation on the right)."""

    def __init__(self, backend: Tokenizer, config: dict, pad_token: str, eos_token: str, bos_token: str | None = None):
        self.backend = backend
        self.model_max_length = int(config.get("model_max_length") or UNBOUNDED_LENGTH)
        self.pad_token = pad_token
        self.pad_token_id = backend.token_to_id(pad_token)
        self.eos_token_id = backend.token_to_id(eos_token)
        self.bos_token_id = None if bos_token is None else backend.token_to_id(bos_token)
        self._lock = threading.Lock()  # padding and truncation are settings of the shared backend

    def __call__(self, text: str | list[str], padding: bool | str = False, max_length: int | None = None,
                 truncation: bool = False, return_tensors: str | None = None) -> TokenIds:
        if padding not in (False, "max_length") or return_tensors not in (None, "np"):
            raise ValueError(f"Unsupported tokenizer call: padding={padding!r}, return_tensors={return_tensors!r}.")
        length = max_length or self.model_max_length
        texts = [text] if isinstance(text, str) else list(text)
        with self._lock:
            self.backend.no_truncation()
            self.backend.no_padding()
            if truncation:
                self.backend.enable_truncation(length)
            if padding:
                self.backend.enable_padding(length=length, pad_id=self.pad_token_id, pad_token=self.pad_token)
            ids = [encoding.ids for encoding in self.backend.encode_batch(texts)]
        if return_tensors == "np":
            return TokenIds(np.array(ids, dtype=np.int64))
        return TokenIds(ids[0] if isinstance(text, str) else ids)


def read_tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def token_text(value: str | dict) -> str:
    """A token as configs write it: a string, or an AddedToken's dict."""
    return value["content"] if isinstance(value, dict) else str(value)


def token_name(config: dict, key: str, default: str) -> str:
    return token_text(config.get(key, default))


def add_special_tokens(backend: Tokenizer, config: dict, names: list[str]) -> None:
    """The config's added tokens (with their own flags), then the named special tokens not among them."""
    declared = [AddedToken(entry["content"], single_word=entry.get("single_word", False),
                           lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                           normalized=entry.get("normalized", not entry.get("special", False)),
                           special=entry.get("special", False))
                for _, entry in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0]))]
    contents = {token.content for token in declared}
    special = [token for token in declared if token.special]
    special += [AddedToken(name, special=True) for name in dict.fromkeys(names) if name not in contents]
    backend.add_special_tokens(special)
    backend.add_tokens([token for token in declared if not token.special])


def read_bpe_files(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, from tokenizer.json or else vocab.json + merges.txt."""
    if (folder / "tokenizer.json").is_file():
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return model["vocab"], merges
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    return vocab, [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]


def build_clip_tokenizer(folder: Path) -> PromptTokenizer:
    config = read_tokenizer_config(folder)
    unk = token_name(config, "unk_token", "<|endoftext|>")
    bos = token_name(config, "bos_token", "<|startoftext|>")
    eos = token_name(config, "eos_token", "<|endoftext|>")
    pad = token_name(config, "pad_token", "<|endoftext|>")
    vocab, merges = read_bpe_files(folder)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    add_special_tokens(backend, config, [bos, eos, unk, pad])
    backend.post_processor = processors.RobertaProcessing(
        (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)), trim_offsets=False, add_prefix_space=False)
    return PromptTokenizer(backend, config, pad, eos, bos)


def precompiled_charsmap(normalizer: dict | None) -> bytes | None:
    """The SentencePiece normalisation table saved in tokenizer.json (alone or inside a Sequence)."""
    if not normalizer:
        return None
    parts = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer]
    charsmap = next((part["precompiled_charsmap"] for part in parts if part.get("type") == "Precompiled"), None)
    return None if charsmap is None else base64.b64decode(charsmap)


def build_t5_tokenizer(folder: Path) -> PromptTokenizer:
    config = read_tokenizer_config(folder)
    eos = token_name(config, "eos_token", "</s>")
    unk = token_name(config, "unk_token", "<unk>")
    pad = token_name(config, "pad_token", "<pad>")
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    backend = Tokenizer(Unigram([tuple(piece) for piece in saved["model"]["vocab"]], unk_id=T5_UNKNOWN_ID,
                                byte_fallback=False))
    charsmap = precompiled_charsmap(saved.get("normalizer"))
    if charsmap is not None:
        backend.normalizer = normalizers.Precompiled(charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    extras = [f"<extra_id_{i}>" for i in range(int(config.get("extra_ids", 100)))]
    listed = [token_text(token) for key in ("additional_special_tokens", "extra_special_tokens")
              for token in (config.get(key) or [])]
    add_special_tokens(backend, config, [eos, unk, pad, *extras, *listed])
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", backend.token_to_id(eos))])
    return PromptTokenizer(backend, config, pad, eos)


def check_tokenizer_files(folder: Path, required: tuple[tuple[str, ...], ...]) -> None:
    """transformers 5 would silently build an empty tokenizer from a folder without them."""
    if not any(all((folder / name).is_file() for name in names) for names in required):
        options = " or ".join(" + ".join(names) for names in required)
        raise ModelLoadError(f"Tokenizer folder {folder} is missing or incomplete (needs {options}).")


def load_tokenizer(tokenizer_class, folder: Path, required: tuple[tuple[str, ...], ...]):
    """A transformers tokenizer class from a local folder (slow: imports transformers)."""
    check_tokenizer_files(folder, required)
    try:
        return tokenizer_class.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # transformers and tokenizers raise many kinds for a bad file
        raise ModelLoadError(f"Cannot read the tokenizer in {folder} ({error}).") from None


def load_clip_tokenizer(folder: Path) -> PromptTokenizer:
    check_tokenizer_files(folder, CLIP_TOKENIZER_FILES)
    try:
        return build_clip_tokenizer(folder)
    except Exception as error:  # malformed JSON, missing keys, merges naming unknown tokens
        raise ModelLoadError(f"Cannot read the tokenizer in {folder} ({error}).") from None


def load_t5_tokenizer(folder: Path):
    """A PromptTokenizer, or transformers' T5TokenizerFast for a folder with only spiece.model."""
    check_tokenizer_files(folder, T5_TOKENIZER_FILES)
    if not (folder / "tokenizer.json").is_file():
        try:
            from transformers import T5TokenizerFast
        except ImportError:
            raise ModelLoadError(f"The T5 tokenizer in {folder} has only spiece.model; reading it needs the "
                                 "'convert' extra (.venv/bin/pip install -e '.[convert]').") from None
        return load_tokenizer(T5TokenizerFast, folder, T5_TOKENIZER_FILES)
    try:
        return build_t5_tokenizer(folder)
    except Exception as error:  # malformed JSON, missing keys
        raise ModelLoadError(f"Cannot read the tokenizer in {folder} ({error}).") from None
