"""The demo's text side: tokenizers built from the caption vocabulary, and CLIP and T5 frozen at
their seeded random initialisation."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from mflux_core.demo import family
from mflux_core.demo.tokenizers import T5_MAX_LENGTH, write_tokenizers

TEXT_ENCODER_SEED = 2


def shared_folder(run: Path) -> Path:
    return run / "shared"


def text_encoders(run: Path):
    """CLIP and T5 frozen at their seeded random initialisation: the transformers learn to read
    them (random embeddings keep every token distinct), and a frozen encoder lets each caption be
    encoded once per run instead of once per step."""
    vocab = json.loads((shared_folder(run) / "vocab_sizes.json").read_text())
    clip = family.seeded(TEXT_ENCODER_SEED, family.build_clip, family.clip_config(vocab["clip"]))
    t5 = family.seeded(TEXT_ENCODER_SEED + 1000, family.build_t5, family.t5_config(vocab["t5"]))
    return clip, t5


def encode_captions(run: Path, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T5 states (N, T5_MAX_LENGTH, 64), CLIP pooled (N, 64)), tokenized as the pipelines tokenize."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tokenizer = CLIPTokenizer.from_pretrained(shared_folder(run) / "tokenizer")
    t5_tokenizer = T5TokenizerFast.from_pretrained(shared_folder(run) / "tokenizer_2")
    clip, t5 = text_encoders(run)
    states, pooled = [], []
    for start in range(0, len(captions), 256):
        chunk = list(captions[start : start + 256])
        clip_ids = clip_tokenizer(chunk, padding="max_length", max_length=77, truncation=True, return_tensors="np")
        t5_ids = t5_tokenizer(chunk, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                              return_tensors="np")
        states.append(np.array(t5(mx.array(t5_ids.input_ids.astype(np.int32)))))
        pooled.append(np.array(clip(mx.array(clip_ids.input_ids.astype(np.int32)))[1]))
    return np.concatenate(states), np.concatenate(pooled)


def prepare_shared(run: Path) -> None:
    """Tokenizers (deterministic) and their vocab sizes, once per run."""
    sizes = shared_folder(run) / "vocab_sizes.json"
    if not sizes.is_file():
        clip_vocab, t5_vocab = write_tokenizers(shared_folder(run))
        sizes.write_text(json.dumps({"clip": clip_vocab, "t5": t5_vocab}))
