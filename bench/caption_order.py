"""How much a model's T5 tells the transformer which caption of a two-caption prompt a word is in (what an In-Context
prompt, "[IMAGE1] A; [IMAGE2] B", needs: the transformer's text tokens all share one position). For held-out pairs of
demo captions, the cosine between each word's T5 state in the first caption of "[IMAGE1] A; [IMAGE2] B" and in the
second of "[IMAGE1] B; [IMAGE2] A": near 1, the word reads the same in either caption.
`python -m bench.caption_order [--models-dir DIR] [--model demo] [--pairs N]`. Prints the mean and the most frequent
words' means; no peer (a quality measure of one model, as bench.demo_quality)."""

import argparse
from collections import defaultdict
from pathlib import Path

import mlx.core as mx
import numpy as np

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
from mflux_core.demo import dataset, evaluate
from mflux_core.loader import load_flux_model
from mflux_core.tools.in_context_lora import PROMPT_MARKERS
from mflux_core.weights.resolve import ModelSource

T5_TOKENS = 64  # an In-Context prompt's T5 length on the demo family


def word_cosines(model, tokenizer, first: str, second: str) -> dict[str, float]:
    """token -> cosine of its T5 state as the first caption's word and as the second's (empty when the second
    caption is cut off at T5_TOKENS)."""
    left, right = PROMPT_MARKERS[0]
    as_first, as_second = f"{left} {first}; {right} {second}", f"{left} {second}; {right} {first}"
    states = [np.array(model.text_encoders.encode(text, T5_TOKENS).t5)[0] for text in (as_first, as_second)]
    ids = [tokenizer(text)["input_ids"][:T5_TOKENS] for text in (as_first, as_second)]
    words = tokenizer(first, add_special_tokens=False)["input_ids"]
    starts = [[j for j in range(len(row)) if row[j:j + len(words)] == words] for row in ids]
    if not starts[0] or not starts[1]:
        return {}
    a, b = states[0][starts[0][0]:][:len(words)], states[1][starts[1][-1]:][:len(words)]
    cosines = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return dict(zip(tokenizer.convert_ids_to_tokens(words), cosines.tolist()))


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("demo_models"))
    parser.add_argument("--model", default="demo")
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    folder = args.models_dir / args.model
    model = load_flux_model(ModelSource(folder), mx.float32, args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer_2")
    by_word = defaultdict(list)
    for index in range(args.pairs):
        first, second = (dataset.text_to_image_example(evaluate.EVALUATION_SEED, 2 * index + i, held_out=True).caption
                         for i in (0, 1))
        for word, cosine in word_cosines(model, tokenizer, first, second).items():
            by_word[word].append(cosine)
    every = [cosine for values in by_word.values() for cosine in values]
    print(f"{folder}: a word's T5 state in the first vs the second caption, mean cosine {np.mean(every):.3f} over "
          f"{len(every)} words of {args.pairs} held-out pairs")
    common = sorted(by_word.items(), key=lambda item: -len(item[1]))[:20]
    print("  ".join(f"{word} {np.mean(values):.2f}" for word, values in common))  # T5's pieces, "▁" starting a word


if __name__ == "__main__":
    main()
