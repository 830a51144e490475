"""LoRA files in every format: whole images equal diffusers' (float32, uint8 max |diff| <= 2).

Where diffusers loads the format, the reference is `pipe.load_lora_weights(file)`; where it cannot
(AI-toolkit's `diffusion_model.*` with lora_A/B, diffusers keys without the `transformer.` prefix,
Kohya files with single-block or global layers, whose sizes diffusers hard-codes or drops) the
reference is diffusers' transformer with W += scale * up @ down merged in by the test, from the
fixture's own reading of the format.
"""

import logging

import numpy as np
import pytest
import torch

from mflux_core.errors import ModelLoadError
from mflux_core.lora.apply import add_lora
from mflux_core.lora.formats import load_lora_file
from mflux_core.lora.library import resolve_lora_path
from mflux_core.manager import ModelManager
from mflux_core.models.transformer import load_transformer
from mflux_core.request import GenerationRequest
from tests.fixtures import lora_files as lf
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

HEIGHT, WIDTH, STEPS, GUIDANCE = 64, 64, 3, 3.5
PROMPT = "a small red house by a lake"
MIN_LORA_EFFECT = 20  # a LoRA must move the image by more than this many levels, or the test proves nothing


@pytest.fixture(scope="module")
def dims(tiny_dev):
    return lf.Dims.of(tiny_dev)


@pytest.fixture(scope="module")
def noise(tiny_dev, tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("noise"), (1, 4, HEIGHT // 8, WIDTH // 8), seed=11)


def our_image(folder, out, noise, *extra):
    return run_cli("generate", "--path", folder, "--prompt", PROMPT, "--steps", STEPS, "--height", HEIGHT,
                   "--width", WIDTH, "--guidance", GUIDANCE, "--init-noise", noise, "--dtype", "float32",
                   "--output", out, *extra)


def diffusers_image(folder, noise, lora_file=None, scale=1.0, merged: list[tuple[dict, float]] = ()):
    pipe = load_diffusers_pipeline(folder)
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file), adapter_name="tested")
        pipe.set_adapters(["tested"], adapter_weights=[scale])
    for deltas, delta_scale in merged:
        lf.merge_into(pipe.transformer, deltas, delta_scale)
    return pipe(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=pack(np.load(noise)), output_type="pil").images[0]


@pytest.fixture(scope="module")
def base_image(tiny_dev, noise, tmp_path_factory):
    return our_image(tiny_dev, tmp_path_factory.mktemp("base") / "base.png", noise)


# name -> writer(path, dims) -> (file, deltas at scale 1)
DIFFUSERS_LOADS = {
    "peft": lambda p, d: lf.write_diffusers_lora(p, d, seed=1),
    "peft-alpha-keys": lambda p, d: lf.write_diffusers_lora(p, d, seed=2, alpha=2.0, magnitude=1.0),
    "peft-metadata-alpha": lambda p, d: lf.write_diffusers_lora(p, d, seed=3, metadata_alpha=8.0, magnitude=0.25),
    "peft-lora-down-up": lambda p, d: lf.write_diffusers_lora(p, d, seed=4, spelling=("lora_down", "lora_up")),
    "kohya-double-blocks": lambda p, d: lf.write_bfl_lora(
        p, d, "kohya", seed=5, alpha=8.0, magnitude=0.5,
        modules=[m for m in lf.bfl_modules(d) if m.startswith("double_blocks.")]),
    "xlabs": lambda p, d: lf.write_xlabs_lora(p, d, seed=6),
}
MERGED_REFERENCE = {
    "peft-without-prefix": lambda p, d: lf.write_diffusers_lora(p, d, seed=7, prefix=""),
    # lora_down/lora_up with alpha keys: alpha / rank as Kohya defines it (diffusers drops these alphas)
    "peft-lora-down-up-alpha": lambda p, d: lf.write_diffusers_lora(
        p, d, seed=8, spelling=("lora_down", "lora_up"), alpha=2.0, magnitude=1.0),
    "kohya-all-layers": lambda p, d: lf.write_bfl_lora(p, d, "kohya", seed=9, alpha=2.0, magnitude=1.0),
    "kohya-no-alpha": lambda p, d: lf.write_bfl_lora(p, d, "kohya", seed=10),
    "ai-toolkit": lambda p, d: lf.write_bfl_lora(p, d, "ai-toolkit", seed=11, alpha=8.0, magnitude=0.25),
    "ai-toolkit-no-alpha": lambda p, d: lf.write_bfl_lora(p, d, "ai-toolkit", seed=12),
}


@pytest.mark.parametrize("case", list(DIFFUSERS_LOADS))
def test_format_matches_diffusers_load_lora_weights(case, tiny_dev, dims, noise, base_image, tmp_path):
    lora_file, _ = DIFFUSERS_LOADS[case](tmp_path / f"{case}.safetensors", dims)
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, "--lora-paths", lora_file, "--lora-scales", 0.8)
    reference = diffusers_image(tiny_dev, noise, lora_file, scale=0.8)
    assert max_uint8_diff(ours, base_image) > MIN_LORA_EFFECT
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


@pytest.mark.parametrize("case", list(MERGED_REFERENCE))
def test_format_matches_merged_weights(case, tiny_dev, dims, noise, base_image, tmp_path):
    lora_file, deltas = MERGED_REFERENCE[case](tmp_path / f"{case}.safetensors", dims)
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, "--lora-paths", lora_file, "--lora-scales", 0.8)
    reference = diffusers_image(tiny_dev, noise, merged=[(deltas, 0.8)])
    assert max_uint8_diff(ours, base_image) > MIN_LORA_EFFECT
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_every_format_reads_to_the_same_weight_changes(dims, tmp_path):
    """File level: each format's adapters give exactly the fixture's deltas, on exactly those layers."""
    for case, write in {**DIFFUSERS_LOADS, **MERGED_REFERENCE}.items():
        lora_file, deltas = write(tmp_path / f"{case}.safetensors", dims)
        lora = load_lora_file(lora_file)
        got = {f"{path}.weight": np.array(w.scale * (w.up @ w.down)) for path, w in lora.targets.items()}
        assert set(got) == set(deltas), case
        worst = max(float(np.abs(got[k] - deltas[k]).max() / np.abs(deltas[k]).max()) for k in got)
        assert worst <= 1e-6, (case, worst)
        assert not lora.unreadable_keys, case


def test_several_loras_equal_their_summed_deltas(tiny_dev, dims, noise, tmp_path):
    kohya, kohya_deltas = lf.write_bfl_lora(tmp_path / "k.safetensors", dims, "kohya", seed=20, alpha=2.0, magnitude=1.0)
    xlabs, xlabs_deltas = lf.write_xlabs_lora(tmp_path / "x.safetensors", dims, seed=21)
    peft, peft_deltas = lf.write_diffusers_lora(tmp_path / "p.safetensors", dims, seed=22)
    scales = (0.7, -0.4, 0.5)
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, "--lora-paths", kohya, xlabs, peft,
                     "--lora-scales", *scales)
    reference = diffusers_image(
        tiny_dev, noise, merged=list(zip((kohya_deltas, xlabs_deltas, peft_deltas), scales)))
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_remove_restores_the_base_and_rescale_equals_a_fresh_load(tiny_dev, dims, noise, tmp_path):
    lora_file, _ = lf.write_bfl_lora(tmp_path / "k.safetensors", dims, "kohya", seed=30, alpha=2.0, magnitude=1.0)
    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=STEPS, height=HEIGHT, width=WIDTH,
                                guidance=GUIDANCE, init_noise_path=str(noise), dtype="float32")
    with_lora = request.with_(lora_paths=(str(lora_file),), lora_scales=(1.0,))
    manager = ModelManager()
    base = manager.generate(request).image
    full = manager.generate(with_lora).image
    rescaled = manager.generate(with_lora.with_(lora_scales=(0.3,))).image
    removed = manager.generate(request).image
    fresh = ModelManager().generate(with_lora.with_(lora_scales=(0.3,))).image

    assert manager.resident.load_counts["transformer"] == 1  # the base weights were loaded once
    assert max_uint8_diff(full, base) > MIN_LORA_EFFECT
    assert max_uint8_diff(rescaled, full) > MIN_LORA_EFFECT / 4
    assert max_uint8_diff(removed, base) == 0
    assert np.array_equal(np.asarray(rescaled), np.asarray(fresh))


def test_partial_match_is_reported_with_counts(tiny_dev, dims, noise, tmp_path, caplog):
    path, _ = lf.write_diffusers_lora(tmp_path / "p.safetensors", dims, seed=40,
                                      layers=["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2"])
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors["transformer.transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(4, 32)  # no block 7 here
    tensors["transformer.transformer_blocks.7.attn.to_q.lora_B.weight"] = torch.zeros(32, 4)
    tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 32)
    save_file(tensors, str(path))

    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=1, height=32, width=32,
                                lora_paths=(str(path),), dtype="float32")
    manager = ModelManager()
    with caplog.at_level(logging.WARNING):
        manager.generate(request)
    (report,) = manager.loras.reports
    assert (report.matched_keys, report.total_keys, report.layers) == (4, 7, 2)
    assert report.unmatched == ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                                "transformer.transformer_blocks.7.attn.to_q.lora_A.weight",
                                "transformer.transformer_blocks.7.attn.to_q.lora_B.weight")
    assert "4/7 keys matched" in caplog.text
    assert "4/7 keys matched" in manager.status()["loras"][0]


def test_lora_for_another_architecture_is_refused(tiny_dev, tmp_path, capsys):
    from safetensors.torch import save_file

    sdxl = tmp_path / "sdxl_style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(sdxl))
    args = ["generate", "--path", tiny_dev, "--prompt", "x", "--steps", 1, "--height", 32, "--width", 32,
            "--output", tmp_path / "x.png", "--lora-paths", sdxl]
    from mflux_core.cli import main

    assert main([str(a) for a in args]) == 1
    message = capsys.readouterr().err
    assert "matches none of this FLUX.1 transformer's layers (0/3 keys" in message
    assert "Stable Diffusion" in message

    transformer = load_transformer(tiny_dev / "transformer")
    wider = lf.Dims(**{**lf.Dims.of(tiny_dev).__dict__, "hidden": 64})
    path, _ = lf.write_diffusers_lora(tmp_path / "wide.safetensors", wider, seed=41)
    with pytest.raises(ModelLoadError, match="does not fit this model.*made for a model of another size"):
        add_lora(transformer, load_lora_file(path), "wide")


def test_names_resolve_through_the_library_and_the_hf_cache(dims, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "styles" / "deep").mkdir(parents=True)
    second.mkdir()
    wanted, _ = lf.write_xlabs_lora(first / "styles" / "deep" / "watercolor.safetensors", dims)
    lf.write_xlabs_lora(second / "watercolor.safetensors", dims, seed=1)
    monkeypatch.setenv("LORA_LIBRARY_PATH", f"{first}:{second}")
    assert resolve_lora_path("watercolor") == wanted.resolve()
    assert resolve_lora_path("watercolor.safetensors") == wanted.resolve()

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-lora" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    in_cache, _ = lf.write_xlabs_lora(snapshot / "lora.safetensors", dims)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_lora_path("someone/tiny-lora") == in_cache.resolve()
    assert resolve_lora_path("someone/tiny-lora/lora.safetensors") == in_cache.resolve()
    with pytest.raises(ModelLoadError, match="not found.*LORA_LIBRARY_PATH"):
        resolve_lora_path("nobody/nothing")
