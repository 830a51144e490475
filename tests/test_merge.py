"""`mflux-studio merge` (A1111's Checkpoint Merger): every written tensor is the method's formula over the source
files' tensors (computed here in numpy, float32), the folder loads in diffusers and makes the image ours makes,
and what cannot be merged is refused in one sentence before anything is written."""

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mflux_core.cli import main as cli_main
from mflux_core.errors import InvalidRequest
from mflux_core.weights.merge import check_merge, model_sources, merge_transformers, transformer_bytes
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux, load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli


def transformer_tensors(folder) -> dict[str, np.ndarray]:
    tensors = {}
    for path in sorted((folder / "transformer").glob("*.safetensors")):
        tensors.update({key: value.astype(np.float32) for key, value in load_file(str(path)).items()})
    return tensors


def merge(*args) -> int:
    return cli_main(["merge", "--dtype", "float32", *map(str, args)])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny FLUX.1 64 wide: another architecture than the shared 32-wide ones, and one that quantizes."""
    spec = TinyFluxSpec(heads=2, head_dim=32, axes_dims_rope=(8, 12, 12), text_dim=64, pooled_dim=64, seed=3)
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-64"), spec)


def test_a_weighted_sum_of_dev_and_schnell_keeps_devs_guidance_and_loads_in_diffusers(tiny_dev, tiny_schnell,
                                                                                       tmp_path, capsys):
    out = tmp_path / "merged"
    assert merge("--model-a", tiny_dev, "--model-b", tiny_schnell, "--multiplier", 0.3, "--path", out) == 0
    dev, schnell, merged = (transformer_tensors(folder) for folder in (tiny_dev, tiny_schnell, out))
    assert merged.keys() == dev.keys()
    only_dev = dev.keys() - schnell.keys()
    assert only_dev and all(key.startswith("time_text_embed.guidance_embedder.") for key in only_dev)
    for key, value in merged.items():
        expected = dev[key] if key in only_dev else dev[key] * 0.7 + schnell[key] * 0.3
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=key)
    assert f"{len(dev) - len(only_dev)} tensors merged, {len(only_dev)} only in A, kept" in capsys.readouterr().out
    assert json.loads((out / "transformer" / "config.json").read_text())["guidance_embeds"] is True

    noise = make_noise(tmp_path, (1, 4, 4, 4), seed=2)
    ours = run_cli("generate", "--path", out, "--prompt", "a red house", "--steps", 2, "--width", 32, "--height", 32,
                   "--guidance", 3.5, "--init-noise", noise, "--dtype", "float32", "--output", tmp_path / "o.png")
    pipe = load_diffusers_pipeline(out)
    theirs = pipe("a red house", height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                  latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours, theirs) <= UINT8_TOLERANCE


def test_add_difference_gives_fill_a_finetunes_change_on_its_leading_input_columns(tiny_fill, tiny_dev, tiny_schnell,
                                                                                   tmp_path, capsys):
    """FLUX.1-Fill + (finetune - dev): Fill's image input takes the mask and masked image beside the latents; only
    the columns the others have are merged, the rest are Fill's."""
    out = tmp_path / "fill-finetune"
    assert merge("--model-a", tiny_fill, "--model-b", tiny_schnell, "--model-c", tiny_dev, "--method",
                 "add-difference", "-M", 1.5, "--path", out) == 0
    fill, schnell, dev, merged = (transformer_tensors(folder) for folder in (tiny_fill, tiny_schnell, tiny_dev, out))
    for key, value in merged.items():
        if key not in schnell:
            np.testing.assert_array_equal(value, fill[key], err_msg=key)
            continue
        width = schnell[key].shape[-1]
        expected = fill[key].copy()
        expected[..., :width] = fill[key][..., :width] + (schnell[key] - dev[key]) * 1.5
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-6, err_msg=key)
    assert merged["x_embedder.weight"].shape[1] > schnell["x_embedder.weight"].shape[1]
    assert "1 of them on A's leading input columns only" in capsys.readouterr().out
    assert run_cli("fill", "--path", out, "--prompt", "a cat", "--image-path", _picture(tmp_path),
                   "--masked-image-path", _picture(tmp_path, mask=True), "--steps", 1,
                   "--output", tmp_path / "filled.png").size == (32, 32)  # still a Fill model


def test_a_merge_holds_about_one_transformer_however_many_it_reads(tiny_fill, tiny_dev, tiny_schnell):
    """The sources are read a tensor at a time: three models merged peak near one transformer, not three."""
    sources = model_sources([str(tiny_fill), str(tiny_schnell), str(tiny_dev)], None)
    one = transformer_bytes(sources[0][1], mx.float32)
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()  # what earlier tests left alive
    transformer, _ = merge_transformers("add-difference", 1.0, sources, mx.float32)
    mx.eval(transformer.parameters())
    assert mx.get_peak_memory() - before < 1.3 * one, (mx.get_peak_memory() - before, one)


def _picture(tmp_path, mask=False):
    from PIL import Image

    path = tmp_path / ("mask.png" if mask else "picture.png")
    image = Image.new("L" if mask else "RGB", (32, 32), 0 if mask else (90, 120, 200))
    if mask:
        image.paste(255, (8, 8, 24, 24))
    image.save(path)
    return path


def test_what_cannot_be_merged_is_refused_in_one_sentence_before_anything_is_written(tiny_dev, tiny_schnell, wide,
                                                                                     tmp_path, capsys):
    out = tmp_path / "never"
    cases = [
        (("--model-a", tiny_dev, "--model-b", wide), "are different architectures: their "),
        (("--model-a", tiny_dev, "--model-b", tiny_schnell, "-M", "nan"), "The multiplier M must be a number from"),
        (("--model-a", tiny_dev, "--model-b", tiny_schnell, "--method", "add-difference"),
         "Add difference takes three models: A + (B - C) x M."),
        (("--model-a", tiny_dev, "--model-b", tiny_schnell, "--model-c", tiny_dev),
         "A weighted sum takes two models, A and B (and no C)"),
        (("--model-a", tiny_dev, "--model-b", tmp_path / "nowhere"), "nowhere does not exist"),
    ]
    for args, sentence in cases:
        assert merge(*args, "--path", out) == 1
        error = capsys.readouterr().err
        assert sentence in error and "Traceback" not in error, (args, error)
        assert not out.exists()
    sources = model_sources([str(tiny_dev), str(tiny_schnell)], None)
    with pytest.raises(InvalidRequest, match=r"^Writing the merged model needs about 1 MB \(its transformer\) "
                                             r"but the memory budget leaves 0 MB: close other tools or raise the "
                                             r"memory budget, or merge in bfloat16.$"):
        check_merge("weighted-sum", 0.5, sources, mx.float32, 1000)
    quantized = tmp_path / "wide-q8"
    assert cli_main(["save", "--model-path", str(wide), "--path", str(quantized), "-q", "8"]) == 0
    assert merge("--model-a", wide, "--model-b", quantized, "--path", out) == 1
    assert "wide-q8 is quantized: use full (unquantized) models, then quantize the result." in \
        capsys.readouterr().err
    assert not out.exists()
