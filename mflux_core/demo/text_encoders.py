"""The demo's text side: tokenizers built from the caption vocabulary, and CLIP and T5 trained
together with the base transformer (then frozen for every later stage)."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.demo import family
from mflux_core.demo.tokenizers import T5_MAX_LENGTH, write_tokenizers
from mflux_core.training.loop import MODEL_FILE

TEXT_ENCODER_SEED = 2
ENCODER_STAGE = "base"  # the stage that trains the encoders; its checkpoint holds them beside the transformer


class CaptionedTransformer(nn.Module):
    """The base transformer with the CLIP and T5 encoders that read its captions, trained as one.
    Measured against encoders frozen at their random initialisation (README's demo section), the
    trained pair gave the base truer shape colours."""

    def __init__(self, transformer: nn.Module, clip: nn.Module, t5: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.clip = clip
        self.t5 = t5

    def embed(self, t5_ids: mx.array, clip_ids: mx.array) -> tuple[mx.array, mx.array]:
        return embed(self.clip, self.t5, t5_ids, clip_ids)


def embed(clip: nn.Module, t5: nn.Module, t5_ids: mx.array, clip_ids: mx.array) -> tuple[mx.array, mx.array]:
    """(T5 states, CLIP pooled output) of tokenized captions."""
    return t5(t5_ids), clip(clip_ids)[1]


def component_weights(checkpoint: Path, component: str) -> list[tuple[str, mx.array]]:
    """One module's weights out of a CaptionedTransformer checkpoint, under the module's own names."""
    prefix = f"{component}."
    return [(name[len(prefix):], value) for name, value in mx.load(str(checkpoint)).items()
            if name.startswith(prefix)]


def shared_folder(run: Path) -> Path:
    return run / "shared"


def seeded_text_encoders(run: Path) -> tuple[nn.Module, nn.Module]:
    """CLIP and T5 at their seeded random initialisation (where the encoder stage starts)."""
    vocab = json.loads((shared_folder(run) / "vocab_sizes.json").read_text())
    clip = family.seeded(TEXT_ENCODER_SEED, family.build_clip, family.clip_config(vocab["clip"]))
    t5 = family.seeded(TEXT_ENCODER_SEED + 1000, family.build_t5, family.t5_config(vocab["t5"]))
    return clip, t5


def text_encoders(run: Path) -> tuple[nn.Module, nn.Module]:
    """CLIP and T5 as the encoder stage left them (seeded, before it has a checkpoint)."""
    clip, t5 = seeded_text_encoders(run)
    checkpoint = run / ENCODER_STAGE / MODEL_FILE
    if checkpoint.is_file():
        clip.load_weights(component_weights(checkpoint, "clip"))
        t5.load_weights(component_weights(checkpoint, "t5"))
        mx.eval(clip.parameters(), t5.parameters())
    return clip, t5


def caption_tokens(run: Path, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T5 ids (N, T5_MAX_LENGTH), CLIP ids (N, up to 77)) int32, tokenized as the pipelines tokenize.

    CLIP is causal and FLUX.1 reads only its pooled output, taken at the highest id (the eos), so
    the padding after the longest caption's eos changes nothing it returns: the ids stop there,
    which makes training the encoder several times cheaper."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tokenizer = CLIPTokenizer.from_pretrained(shared_folder(run) / "tokenizer")
    t5_tokenizer = T5TokenizerFast.from_pretrained(shared_folder(run) / "tokenizer_2")
    texts = list(captions)
    t5_ids = t5_tokenizer(texts, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True, return_tensors="np")
    clip_ids = clip_tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                              return_tensors="np").input_ids.astype(np.int32)
    used = int(clip_ids.argmax(axis=1).max()) + 1
    return t5_ids.input_ids.astype(np.int32), clip_ids[:, :used]


def encode_captions(run: Path, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T5 states (N, T5_MAX_LENGTH, 64), CLIP pooled (N, 64)) through the run's current encoders."""
    clip, t5 = text_encoders(run)
    t5_ids, clip_ids = caption_tokens(run, captions)
    states, pooled = [], []
    for start in range(0, len(captions), 256):
        text, pool = embed(clip, t5, mx.array(t5_ids[start : start + 256]), mx.array(clip_ids[start : start + 256]))
        states.append(np.array(text))
        pooled.append(np.array(pool))
    return np.concatenate(states), np.concatenate(pooled)


def prepare_shared(run: Path) -> None:
    """Tokenizers (deterministic) and their vocab sizes, once per run."""
    sizes = shared_folder(run) / "vocab_sizes.json"
    if not sizes.is_file():
        clip_vocab, t5_vocab = write_tokenizers(shared_folder(run))
        sizes.write_text(json.dumps({"clip": clip_vocab, "t5": t5_vocab}))
