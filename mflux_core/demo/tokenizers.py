"""Tokenizers for the demo models, built from the caption vocabulary and saved in the real formats.

CLIP: a byte-level BPE (vocab.json + merges.txt, CLIPTokenizer's files) whose merges are learned
here until every caption word is one token. T5: a SentencePiece unigram model (spiece.model, plus
the tokenizer.json that T5TokenizerFast writes) with T5's special ids (pad 0, eos 1, unk 2) and
its 100 <extra_id_*> tokens. Both are deterministic: a rerun writes the same files.
"""

import collections
import io
import json
from pathlib import Path

from mflux_core.demo.shapes import COLOURS, REGION_NAMES, SHAPES, Scene, Shape, caption, region_centre

CLIP_MAX_LENGTH = 77
# The demo models are trained on this many T5 tokens: the tokenizer's model_max_length, which the
# engine uses as the model's default --max-sequence-length (every caption fits in 22).
T5_MAX_LENGTH = 32
START, END = "<|startoftext|>", "<|endoftext|>"


def caption_corpus() -> list[str]:
    """Every caption and instruction form the demo data uses, in a fixed order."""
    lines = []
    for kind in SHAPES:
        for colour in COLOURS:
            for region in REGION_NAMES:
                shape = Shape(kind, colour, *region_centre(region), 0.1)
                for background in COLOURS:
                    lines.append(caption(Scene(background, (shape,))))
                lines.append(caption(Scene("red", (shape,)), with_background=False))
            lines.append(caption(Scene(colour, (Shape(kind, colour, 0.5, 0.5, 0.1),)), with_region=False))
            lines.append(f"make the {kind} {colour}")
            lines.append(f"make the background {colour}")
        for region in REGION_NAMES:
            lines.append(f"move the {kind} to the {region}")
    return lines


def byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 and CLIP's byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def learn_bpe_merges(words: collections.Counter) -> list[tuple[str, str]]:
    """Merge the most frequent adjacent pair (ties: the larger pair) until every word is one symbol."""
    pieces = {word: tuple(word[:-1]) + (word[-1] + "</w>",) for word in words}
    merges = []
    while True:
        pairs = collections.Counter()
        for word, parts in pieces.items():
            for pair in zip(parts, parts[1:]):
                pairs[pair] += words[word]
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        for word, parts in pieces.items():
            merged, i = [], 0
            while i < len(parts):
                if parts[i : i + 2] == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            pieces[word] = tuple(merged)


def write_clip_tokenizer(folder: Path, corpus: list[str]) -> int:
    """vocab.json + merges.txt (+ the tokenizer configs CLIPTokenizer writes); returns the vocab size."""
    from transformers import CLIPTokenizer

    words = collections.Counter(word for line in corpus for word in line.lower().split())
    merges = learn_bpe_merges(words)
    symbols = list(byte_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges] + [START, END]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=CLIP_MAX_LENGTH, pad_token=END)
    tokenizer.save_pretrained(folder)
    return len(vocab)


def write_t5_tokenizer(folder: Path, corpus: list[str], pieces: int = 200) -> int:
    """spiece.model (unigram, T5's special ids) + tokenizer.json; returns the vocab size with extra ids."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=pieces, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, minloglevel=2, hard_vocab_limit=False, character_coverage=1.0,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5TokenizerFast.from_pretrained(folder, extra_ids=100, model_max_length=T5_MAX_LENGTH)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def write_tokenizers(model_folder: Path) -> tuple[int, int]:
    """tokenizer/ (CLIP) and tokenizer_2/ (T5) of a FLUX.1 folder; returns their vocab sizes."""
    corpus = caption_corpus()
    return (write_clip_tokenizer(Path(model_folder) / "tokenizer", corpus),
            write_t5_tokenizer(Path(model_folder) / "tokenizer_2", corpus))
