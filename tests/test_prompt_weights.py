"""A1111's attention syntax ((word:1.2), (word)) read as A1111 reads it, and weighed as Forge weighs FLUX.1's T5:
a whole image equals diffusers' FluxPipeline given the prompt embeddings that transformers' T5 and CLIP make from
the same tokens with A1111's "Original" emphasis applied (float32)."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from mflux_core.prompt_weights import weighted_chunks
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

# A1111's own examples (its parse_prompt_attention's doctests), square brackets kept as text (see prompt_weights)
A1111_CHUNKS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # A1111: [on] at 1.1 / 1.1
     [("a ", 1.0), ("house", 1.573), (" [on] a ", 1.1), ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641),
      (".", 1.1)]),
    ("[IMAGE1] a red mug; [IMAGE2] (the same mug:1.2)",  # In-Context LoRAs' panel markers
     [("[IMAGE1] a red mug; [IMAGE2] ", 1.0), ("the same mug", 1.2)]),
]


@pytest.mark.parametrize("prompt, a1111", A1111_CHUNKS, ids=[p for p, _ in A1111_CHUNKS])
def test_the_weights_are_a1111s(prompt, a1111):
    ours = weighted_chunks(prompt)
    assert [text for text, _ in ours] == [text for text, _ in a1111]
    assert np.allclose([weight for _, weight in ours], [weight for _, weight in a1111])


def reference_embeddings(folder, chunks, length):
    """transformers' T5 on the chunks' tokens (each chunk tokenized on its own, then the end token, padded), its
    output multiplied by the token weights and rescaled to the unweighted mean; CLIP's pooled vector of the words."""
    t5_tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer_2")
    ids, weights = [], []
    for text, weight in chunks:
        tokens = t5_tokenizer(text, add_special_tokens=False).input_ids
        ids, weights = ids + tokens, weights + [weight] * len(tokens)
    ids, weights = ids[:length - 1] + [t5_tokenizer.eos_token_id], weights[:length - 1] + [1.0]
    padding = length - len(ids)
    ids, weights = ids + [t5_tokenizer.pad_token_id] * padding, weights + [1.0] * padding
    t5 = T5EncoderModel.from_pretrained(folder / "text_encoder_2", torch_dtype=torch.float32)
    with torch.no_grad():
        plain = t5(torch.tensor([ids])).last_hidden_state
        weighted = plain * torch.tensor(weights)[None, :, None]
        weighted = weighted * (plain.mean() / weighted.mean())
        clip_tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        words = clip_tokenizer(["".join(text for text, _ in chunks)], padding="max_length", max_length=77,
                               truncation=True, return_tensors="pt").input_ids
        pooled = CLIPTextModel.from_pretrained(folder / "text_encoder")(words).pooler_output
    return weighted, pooled


def test_a_weighted_prompt_makes_diffusers_image_from_forges_weighted_embeddings(tiny_dev, tmp_path):
    prompt, size, steps, length = "(a red circle:3) in the ((top left)) on a (blue background:0.1)", 32, 3, 64
    noise_path = make_noise(tmp_path, (1, 4, size // 8, size // 8), seed=21)
    ours = run_cli("generate", "--path", tiny_dev, "--prompt", prompt, "--steps", steps, "--height", size,
                   "--width", size, "--max-sequence-length", length, "--init-noise", noise_path, "--guidance", 3.5,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny_dev)

    def reference(prompt_embeds, pooled):
        return pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, height=size, width=size,
                    num_inference_steps=steps, guidance_scale=3.5, latents=pack(np.load(noise_path)),
                    max_sequence_length=length, output_type="pil").images[0]

    expected = reference(*reference_embeddings(tiny_dev, weighted_chunks(prompt), length))
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    bare = "a red circle in the top left on a blue background"
    unweighted = reference(*pipe.encode_prompt(bare, None, max_sequence_length=length)[:2])
    assert max_uint8_diff(expected, unweighted) > 3 * UINT8_TOLERANCE  # the weights move the image


def test_a_prompt_without_weights_is_read_as_diffusers_reads_it(tiny_dev, tmp_path):
    from mflux_core.models.text_encoders import TextEncoders

    encoders = TextEncoders.from_folder(tiny_dev)
    escaped = encoders.encode(r"a sign saying \(open\)", 32)
    literal = encoders.encode("a sign saying (open)", 32)
    pipe = load_diffusers_pipeline(tiny_dev)
    t5, pooled = pipe.encode_prompt("a sign saying (open)", None, max_sequence_length=32)[:2]
    assert np.allclose(np.asarray(escaped.t5), t5.detach().numpy(), atol=1e-5)  # escaped: the characters
    assert np.allclose(np.asarray(escaped.pooled), pooled.detach().numpy(), atol=1e-5)
    assert not np.allclose(np.asarray(literal.t5), t5.detach().numpy(), atol=1e-3)  # unescaped: a weight of 1.1


def test_extreme_weights_and_nesting_stay_finite_and_quick(tiny_dev):
    from mflux_core.models.text_encoders import TextEncoders
    from mflux_core.prompt_schedule import prompt_schedule

    deep = "(" * 800 + "red" + ")" * 800 + " circle"
    assert weighted_chunks(deep) == [("red", 100.0), (" circle", 1.0)]  # 1.1^800 kept within the bound
    assert len(prompt_schedule("[" * 5000 + "a:b:2" + "]" * 5000, 10)) == 2  # read, the brackets past 64 as text
    assert weighted_chunks("a" + " " * 19_000 + "BREAK b") == [("a b", 1.0)]  # a long space run read once
    encoders = TextEncoders.from_folder(tiny_dev)
    for prompt in (deep, "(a red circle:0)", "[" * 3000 + "cat"):
        assert np.isfinite(np.asarray(encoders.encode(prompt, 32).t5)).all()
