"""Prompt embeddings cached across requests: the same prompt on the same text encoders (with the same LoRA adapters)
is encoded once."""

import mlx.core as mx

from mflux_core.lora.text_encoders import TextEncoderAdapters
from mflux_core.lru import LRU
from mflux_core.models.text_encoders import PromptEmbeddings, TextEncoders
from mflux_core.weights.quantize import quantize_text_encoders


class CachedTextEncoders:
    """TextEncoders with an LRU of prompt embeddings, keyed by the encoders' fingerprint."""

    def __init__(self, encoders: TextEncoders, key: str, cache: LRU, low_ram: bool, quantize: int | None = None):
        self.encoders = encoders
        self.key = key
        self.cache = cache
        self.low_ram = low_ram
        self.quantize = quantize
        self.adapters = TextEncoderAdapters()  # the request's LoRA adapters on the encoders (lora/resident.py)

    @property
    def default_sequence_length(self) -> int:
        return self.encoders.default_sequence_length

    def t5_token_count(self, text: str) -> int:
        return self.encoders.t5_token_count(text)

    def encode(self, prompt: str, max_sequence_length: int | None = None) -> PromptEmbeddings:
        max_sequence_length = self.encoders.sequence_length(max_sequence_length)  # None and 512 share an entry
        cache_key = (self.key, self.adapters.key, prompt, max_sequence_length)
        cached = self.cache.get(cache_key)
        if cached is None:
            if not self.encoders.loaded:  # released after the last prompt (low_ram): reload as configured
                self.encoders.load()
                quantize_text_encoders(self.encoders, self.quantize)
            self.adapters.put_on(self.encoders.components())
            cached = self.encoders.encode(prompt, max_sequence_length)
            mx.eval(cached.t5, cached.pooled)
            self.cache.put(cache_key, cached)
            if self.low_ram:
                self.encoders.release()
        return cached
