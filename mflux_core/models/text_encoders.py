"""FLUX.1 prompt encoding: CLIP's pooled vector and T5's token embeddings, as diffusers' FluxPipeline makes them."""

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mflux_core.lora.layers import linear_shapes
from mflux_core.models.clip import CLIPTextModel, load_clip_text_model
from mflux_core.models.prompt_tokenizers import load_clip_tokenizer, load_t5_tokenizer
from mflux_core.models.t5 import T5Encoder, load_t5_encoder
from mflux_core.prompt_weights import is_weighted, plain_text, weighted_chunks
from mflux_core.request import MAX_SEQUENCE_LENGTH
from mflux_core.weights.float8_loading import load_held_in_fp8


@dataclass(frozen=True)
class PromptEmbeddings:
    t5: mx.array  # (1, sequence length, t5 d_model): the transformer's text tokens
    pooled: mx.array  # (1, clip hidden size): the transformer's pooled text vector


# a FLUX.1 folder's: CLIP's and T5's weights, their tokenizers
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


class TextEncoders:
    """Tokenizers and encoders of one FLUX.1 model. `release()` frees the encoder weights;
    the next `encode` loads them again."""

    def __init__(self, clip_path: Path, t5_path: Path, clip_tokenizer, t5_tokenizer, dtype: mx.Dtype = mx.float32,
                 bits: int | None = None):
        self.clip_path, self.t5_path = Path(clip_path), Path(t5_path)  # a component folder or file each
        self.clip_tokenizer = clip_tokenizer
        self.t5_tokenizer = t5_tokenizer
        self.dtype = dtype
        self.bits = bits  # what a bitsandbytes T5's layers become (weights/bnb_layers.py)
        self._clip: CLIPTextModel | None = None
        self._t5: T5Encoder | None = None
        self.linear_shapes: dict[str, dict[str, tuple[int, int]]] = {}  # kept when the weights are released

    @classmethod
    def from_paths(cls, clip_path: Path, t5_path: Path, clip_tokenizer: Path, t5_tokenizer: Path,
                   dtype: mx.Dtype = mx.float32, bits: int | None = None) -> "TextEncoders":
        encoders = cls(clip_path, t5_path, load_clip_tokenizer(clip_tokenizer), load_t5_tokenizer(t5_tokenizer), dtype,
                       bits)
        encoders.load()
        return encoders

    @classmethod
    def from_folder(cls, model_folder: Path, dtype: mx.Dtype = mx.float32) -> "TextEncoders":
        return cls.from_paths(*(Path(model_folder) / name for name in TEXT_COMPONENTS), dtype)

    @classmethod
    def tokenizers_of(cls, model_folder: Path) -> "TextEncoders":
        """A FLUX.1 folder's tokenizers alone (the encoders load when first used)."""
        clip, t5, clip_tokenizer, t5_tokenizer = (Path(model_folder) / name for name in TEXT_COMPONENTS)
        return cls(clip, t5, load_clip_tokenizer(clip_tokenizer), load_t5_tokenizer(t5_tokenizer))

    def load(self) -> None:
        """Load whichever encoder is not resident."""
        if self._clip is None:  # FP8 files' layers held in FP8 (weights/float8.py)
            self._clip = load_held_in_fp8(partial(load_clip_text_model, self.clip_path, self.dtype), self.clip_path,
                                          "text_encoder")
        if self._t5 is None:
            self._t5 = load_held_in_fp8(partial(load_t5_encoder, self.t5_path, self.dtype, bits=self.bits,
                                                fp8_scales=True), self.t5_path, "text_encoder_2")
        if not self.linear_shapes:
            self.linear_shapes = {component: linear_shapes(root) for component, root in self.components().items()}

    def components(self) -> dict[str, nn.Module]:
        """The loaded encoders by their folder's name in a FLUX.1 model (what LoRA files call them)."""
        return {"text_encoder": self._clip, "text_encoder_2": self._t5}

    def release(self) -> None:
        """Drop both encoders' weights (the tokenizers stay)."""
        self._clip = None
        self._t5 = None

    @property
    def loaded(self) -> bool:
        return self._clip is not None and self._t5 is not None

    def clip_token_ids(self, prompt: str) -> mx.array:
        """(1, 77): padded to the tokenizer's model_max_length and truncated, as diffusers does."""
        tokens = self.clip_tokenizer(
            [prompt], padding="max_length", max_length=self.clip_tokenizer.model_max_length,
            truncation=True, return_tensors="np",
        )
        return mx.array(tokens.input_ids, dtype=mx.int32)

    @property
    def default_sequence_length(self) -> int:
        """T5 tokens when a request sets none: the T5 tokenizer's model_max_length (512 in FLUX.1's
        folders; transformers reports a huge number when the config has none), at most 512."""
        return max(1, min(MAX_SEQUENCE_LENGTH, int(self.t5_tokenizer.model_max_length)))

    def sequence_length(self, max_sequence_length: int | None) -> int:
        """The T5 token count an encode with this setting uses."""
        return self.default_sequence_length if max_sequence_length is None else max_sequence_length

    def t5_token_count(self, text: str) -> int:
        """Tokens `text` takes in T5, its end token included (no padding, no truncation)."""
        return len(self.t5_tokenizer(text).input_ids)

    def t5_token_ids(self, prompt: str, max_sequence_length: int) -> mx.array:
        """(1, max_sequence_length): padded and truncated, as diffusers does."""
        tokens = self.t5_tokenizer(
            [prompt], padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="np"
        )
        return mx.array(tokens.input_ids, dtype=mx.int32)

    def weighted_t5_token_ids(self, chunks: list[tuple[str, float]],
                              max_sequence_length: int) -> tuple[mx.array, mx.array]:
        """(1, max_sequence_length) token ids of the chunks' texts one after another, each tokenized on its own (as
        Forge does), cut to leave room for the end token, padded as diffusers pads; and each token's weight."""
        ids: list[int] = []
        weights: list[float] = []
        for text, weight in chunks:
            tokens = self.t5_tokenizer(text).input_ids
            tokens = tokens[:-1] if tokens and tokens[-1] == self.t5_tokenizer.eos_token_id else tokens
            ids += tokens
            weights += [weight] * len(tokens)
        ids = ids[:max_sequence_length - 1] + [self.t5_tokenizer.eos_token_id]
        weights = weights[:max_sequence_length - 1] + [1.0]
        padding = max_sequence_length - len(ids)
        ids += [self.t5_tokenizer.pad_token_id] * padding
        weights += [1.0] * padding
        return mx.array([ids], dtype=mx.int32), mx.array(weights, dtype=mx.float32)

    def encode(self, prompt: str, max_sequence_length: int | None = None) -> PromptEmbeddings:
        """Both embeddings, evaluated (so the encoders can be released right after); None: the default length.
        A1111's attention syntax ((word:1.2), [word]) weighs T5's token embeddings as Forge does: multiplied by their
        weights, then rescaled to the unweighted mean (A1111's "Original" emphasis); CLIP reads the bare words."""
        self.load()
        length = self.sequence_length(max_sequence_length)
        chunks = weighted_chunks(prompt)
        text = plain_text(chunks)
        _, pooled = self._clip(self.clip_token_ids(text))
        if is_weighted(chunks):
            ids, weights = self.weighted_t5_token_ids(chunks, length)
            unweighted = self._t5(ids)
            weighted = unweighted * weights[None, :, None].astype(unweighted.dtype)
            weighted_mean = mx.mean(weighted).item()
            usable = weighted_mean != 0 and math.isfinite(weighted_mean)  # (word:0) alone: nothing to rescale
            t5 = weighted * (mx.mean(unweighted) / weighted_mean) if usable else weighted
        else:
            t5 = self._t5(self.t5_token_ids(text, length))
        mx.eval(t5, pooled)
        return PromptEmbeddings(t5=t5, pooled=pooled)
