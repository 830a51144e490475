"""Wildcards: {a|b} alternatives and __name__ files, drawn from the seed, in the CLI and the page's requests."""

import json

import pytest
from PIL import Image

from mflux_core.cli import main
from mflux_core.errors import InvalidRequest
from mflux_core.metadata import JSON_KEY
from mflux_core.wildcards import expand_prompt
from webui.requests import InputStore, RequestContext, requests_from_settings


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "animals").mkdir(parents=True)
    (folder / "colour.txt").write_text("# colours\nred\n\ngreen\nblue\n")
    (folder / "animals" / "cats.txt").write_text("a __colour__ cat\n")
    (folder / "loop.txt").write_text("__loop__\n")
    return folder


def test_a_seed_replays_its_choices_and_other_seeds_vary(wildcards):
    prompt = "a {small|large|tiny} __colour__ {circle|square}"
    assert expand_prompt(prompt, 7, wildcards) == expand_prompt(prompt, 7, wildcards)
    drawn = {expand_prompt(prompt, seed, wildcards) for seed in range(40)}
    assert len(drawn) > 5
    for text in drawn:
        size, colour, shape = text.split()[1:]
        assert size in ("small", "large", "tiny") and colour in ("red", "green", "blue")
        assert shape in ("circle", "square")


def test_nested_alternatives_subfolders_and_wildcards_inside_lines(wildcards):
    assert expand_prompt("{a|{b|b}}", 3, wildcards) in ("a", "b")
    assert expand_prompt("__animals/cats__", 1, wildcards) in {f"a {c} cat" for c in ("red", "green", "blue")}


def test_prompts_without_wildcards_are_untouched_even_with_braces():
    assert expand_prompt('a sign saying {"hello"} and snake_case', 1, None) == 'a sign saying {"hello"} and snake_case'
    unclosed = "{" + "a|" * 9_000  # never closed: read in one pass, not once per way to split it
    assert expand_prompt(unclosed, 1, None) == unclosed


@pytest.mark.parametrize("prompt, sentence", [
    ("a __missing__ dog", "has no file missing.txt"),
    ("a __loop__", "still expand after"),
    ("a __/etc/passwd__", "outside the wildcards folder"),
])
def test_bad_wildcards_are_refused_with_a_sentence(wildcards, prompt, sentence):
    with pytest.raises(InvalidRequest, match=sentence):
        expand_prompt(prompt, 1, wildcards)


def test_a_wildcard_without_a_folder_says_so():
    with pytest.raises(InvalidRequest, match="no wildcards folder"):
        expand_prompt("a __colour__ dog", 1, None)


def test_the_page_draws_each_image_of_a_batch_from_its_own_seed(tmp_path, wildcards):
    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), wildcards=wildcards)
    settings = {"tool": "generate", "prompt": "a __colour__ {circle|square}", "seed": 10, "batch_count": 4}
    requests = requests_from_settings(settings, context)
    assert [r.prompt for r in requests] == [expand_prompt(settings["prompt"], s, wildcards) for s in (10, 11, 12, 13)]


def test_the_cli_records_the_drawn_prompt_and_a_seed_replays_it(tmp_path, wildcards):
    outputs = []
    for run in ("first", "again"):
        output = tmp_path / run / "out_{seed}.png"
        assert main(["generate", "--prompt", "a __colour__ {circle|square}", "--seed", "3", "4", "--steps", "1",
                     "--wildcards-dir", str(wildcards), "--output", str(output)]) == 0
        outputs.append([json.loads(Image.open(str(output).replace("{seed}", str(s))).info[JSON_KEY])["request"]
                        ["prompt"] for s in (3, 4)])
    assert outputs[0] == outputs[1] == [expand_prompt("a __colour__ {circle|square}", s, wildcards) for s in (3, 4)]


def test_dynamic_prompts_variant_options_weights_counts_separators_and_globs(wildcards):
    """Dynamic Prompts' variant syntax: `N$$` distinct choices joined by ", " (or `N$$sep$$`), count ranges,
    `weight::` options, and `*` in a wildcard's name."""
    def drawn(prompt, seeds=range(200)):
        return [expand_prompt(prompt, seed, wildcards) for seed in seeds]

    for text in drawn("{2$$red|green|blue}"):
        parts = text.split(", ")
        assert len(parts) == 2 and len(set(parts)) == 2 and set(parts) <= {"red", "green", "blue"}, text
    assert all(" and " in text and ", " not in text for text in drawn("{2$$ and $$red|green|blue}"))
    assert {len(text.split(", ")) for text in drawn("{1-3$$a|b|c|d}")} == {1, 2, 3}
    assert {len(text.split(", ")) for text in drawn("{2-$$a|b|c}")} == {2, 3}
    assert {len(text.split(", ")) for text in drawn("{-2$$a|b|c}")} == {1, 2}
    weighted = drawn("{1::red|9::blue}")
    assert set(weighted) == {"red", "blue"} and weighted.count("blue") > 150  # about 9 in 10
    assert drawn("{0::red|1::blue}", range(20)) == ["blue"] * 20
    assert drawn("a {red|green} cat", range(3)) == [expand_prompt("a {red|green} cat", s, wildcards) for s in range(3)]
    (wildcards / "animals").mkdir(exist_ok=True)
    (wildcards / "animals" / "cats.txt").write_text("tabby\nsiamese\n")
    (wildcards / "animals" / "dogs.txt").write_text("poodle\n")
    assert set(drawn("__animals/*__")) == {"tabby", "siamese", "poodle"}
    with pytest.raises(InvalidRequest, match="matches no file"):
        expand_prompt("__birds/*__", 1, wildcards)
    (wildcards / "animals" / "away.txt").symlink_to(wildcards.parent / "outside.txt")
    (wildcards.parent / "outside.txt").write_text("secret\n")
    with pytest.raises(InvalidRequest, match="outside the wildcards folder"):  # a link out of the folder
        expand_prompt("__animals/*__", 1, wildcards)