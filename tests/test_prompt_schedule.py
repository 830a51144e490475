"""A1111's prompt editing ([from:to:when]) and alternation ([a|b]): the steps each text covers, as A1111's
prompt_parser gives them, and a whole image whose prompt switches mid-way equal to diffusers' FluxPipeline with its
prompt embeddings switched after the same step (float32)."""

import numpy as np
import pytest
import torch

from mflux_core.prompt_schedule import for_the_second_pass, prompt_at_step, prompt_schedule
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

# A1111's own examples (its prompt_parser's doctests, 10 steps): (prompt, [[last step, text], ...])
A1111_SCHEDULES = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[step, "a" if step % 2 else "(b:1.1)"] for step in range(1, 11)]),
    ("[fe|]male", [[step, "female" if step % 2 else "male"] for step in range(1, 11)]),
    ("[fe|||]male", [[step, "female" if step % 4 == 1 else "male"] for step in range(1, 11)]),
]


def per_step(schedule, steps: int) -> list[str]:
    """The text each step (0-based) sees, given [(last step, text), ...] as A1111 hands it to the sampler."""
    return [next((text for last, text in schedule if step <= last), schedule[-1][1]) for step in range(steps)]


@pytest.mark.parametrize("prompt, a1111", A1111_SCHEDULES, ids=[p for p, _ in A1111_SCHEDULES])
def test_each_step_sees_the_text_a1111_gives_it(prompt, a1111):
    ours = prompt_schedule(prompt, 10)
    assert per_step(ours, 10) == per_step(a1111, 10)
    assert [prompt_at_step(ours, step) for step in range(10)] == per_step(a1111, 10)


def test_text_without_editing_is_used_exactly_as_typed():
    for prompt in ("smiley :) and (cat:1.2), [dim] words", r"escaped \[a:b:2\]", "a cat: sitting | standing"):
        assert prompt_schedule(prompt, 20) == [(20, prompt)]


def test_the_hires_pass_counts_edits_on_from_the_first_pass_as_a1111_does():
    def second_pass(prompt: str, first_steps: int = 10, hires_steps: int = 10):
        return [[last, text] for last, text in prompt_schedule(for_the_second_pass(prompt, first_steps), hires_steps)]

    assert second_pass("a [b:.5] c") == [[10, "a b c"]]  # A1111's doctests (10 + 10 steps)
    assert second_pass("a [b:1.5] c") == [[5, "a  c"], [10, "a b c"]]
    assert second_pass("a [b:15] c") == [[5, "a  c"], [10, "a b c"]]
    assert second_pass("a [b:15] c", first_steps=20) == [[10, "a b c"]]
    assert second_pass("[x:[y:z:1.5]:12]", hires_steps=8) == [[2, "x"], [4, "y"], [8, "z"]]
    assert for_the_second_pass("a [cat:dog:0.5] [red|blue] x", 10) == "a dog [red|blue] x"
    assert for_the_second_pass("[from::4] y", 10) == " y"
    assert for_the_second_pass("plain (a:1.1)", 10) == "plain (a:1.1)"


# Past CLIP's 77 tokens the two prompts read the same to CLIP, so only T5's tokens switch: what diffusers' step
# callback can switch (its `prompt_embeds`), where the pooled vector stays.
HEAD = "a " * 78  # 78 CLIP tokens, 78 T5 tokens


def test_a_prompt_edit_switches_the_t5_tokens_after_its_step_as_diffusers_callback_does(tiny_dev, tmp_path):
    steps, switch, size, length = 4, 1, 32, 128
    noise_path = make_noise(tmp_path, (1, 4, size // 8, size // 8), seed=11)
    before, after = f"{HEAD} a yellow star", f"{HEAD} a green square"
    ours = run_cli("generate", "--path", tiny_dev, "--prompt", f"{HEAD} a [yellow star:green square:{switch}]",
                   "--steps", steps, "--height", size, "--width", size, "--max-sequence-length", length,
                   "--init-noise", noise_path, "--guidance", 3.5, "--output", tmp_path / "ours.png")

    pipe = load_diffusers_pipeline(tiny_dev)
    embeds = {text: pipe.encode_prompt(text, None, max_sequence_length=length)[:2] for text in (before, after)}
    assert torch.equal(embeds[before][1], embeds[after][1])  # the same pooled vector
    assert not torch.equal(embeds[before][0], embeds[after][0])

    def switched(pipeline, step, timestep, tensors):
        return {"prompt_embeds": embeds[after][0]} if step >= switch else {}

    def reference(callback):
        return pipe(before, height=size, width=size, num_inference_steps=steps, guidance_scale=3.5,
                    latents=pack(np.load(noise_path)), max_sequence_length=length, output_type="pil",
                    callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]

    expected = reference(switched)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(None)) > 3 * UINT8_TOLERANCE  # the switch changes the image


def test_edits_reach_regional_prompts_and_the_negative_prompt(tiny_dev, tmp_path):
    common = ["generate", "--path", tiny_dev, "--steps", 3, "--height", 32, "--width", 32, "--seed", 2]
    regional = ["--region", "0,0,0.5,0.5:a yellow star"]
    plain = run_cli(*common, "--prompt", "a red circle", *regional, "--output", tmp_path / "a.png")
    edited = run_cli(*common, "--prompt", "a [red circle:green square:1]", *regional, "--output", tmp_path / "b.png")
    assert max_uint8_diff(plain, edited) > UINT8_TOLERANCE
    cfg = ["--prompt", "a red circle", "--true-cfg-scale", 3]
    negative = run_cli(*common, *cfg, "--negative-prompt", "blue", "--output", tmp_path / "c.png")
    alternating = run_cli(*common, *cfg, "--negative-prompt", "[blue|green]", "--output", tmp_path / "d.png")
    assert max_uint8_diff(negative, alternating) > UINT8_TOLERANCE


def test_a_regions_own_edits_switch_its_tokens_at_their_steps(tiny_dev, tmp_path):
    common = ["generate", "--path", tiny_dev, "--steps", 3, "--height", 32, "--width", 32, "--seed", 2, "--prompt",
              "a red circle"]

    def with_region(prompt: str, name: str):
        return np.asarray(run_cli(*common, "--region", f"0,0,0.5,0.5:{prompt}", "--output", tmp_path / name))

    star, square = with_region("a yellow star", "star.png"), with_region("a green square", "square.png")
    assert np.array_equal(with_region("a [yellow star:green square:3]", "late.png"), star)  # after the last step
    assert np.array_equal(with_region("a [yellow star:green square:0]", "early.png"), square)  # from the first
    switched = with_region("a [yellow star:green square:1]", "switched.png")
    assert not np.array_equal(switched, star) and not np.array_equal(switched, square)


def test_each_step_sees_the_prompt_and_every_region_as_they_stand_then():
    import mlx.core as mx

    from mflux_core.sampling.conditioning import Conditioning, PromptChange
    from mflux_core.tools.regional import with_region_texts

    def tokens(value):
        return mx.full((1, 2, 3), value)

    base = Conditioning(text=tokens(0), pooled=mx.full((1, 3), 10), guidance=None,
                        changes=(PromptChange(2, tokens(1), mx.full((1, 3), 11)),))
    region_a = ((tokens(5), None), (PromptChange(1, tokens(6), None),))
    region_b = ((tokens(8), None), ())
    combined = with_region_texts(base, [region_a, region_b])

    def values(text):
        return [int(text[0, 2 * part, 0].item()) for part in range(3)]

    assert values(combined.text) == [0, 5, 8]
    assert [(change.step, values(change.text), int(change.pooled[0, 0].item())) for change in combined.changes] == [
        (1, [0, 6, 8], 10), (2, [1, 6, 8], 11)]
