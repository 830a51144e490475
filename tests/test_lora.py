"""LoRA files in every format: whole images equal diffusers' (float32, uint8 max |diff| <= 2).

Where diffusers loads the format, the reference is `pipe.load_lora_weights(file)`; where it cannot
(AI-toolkit's `diffusion_model.*` with lora_A/B, diffusers keys without the `transformer.` prefix,
Kohya files with single-block or global layers, whose sizes diffusers hard-codes or drops) the
reference is diffusers' transformer with W += scale * up @ down merged in by the test, from the
fixture's own reading of the format.
"""

import logging

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from huggingface_hub import constants
from mlx.utils import tree_flatten

from mflux_core.errors import ModelLoadError
from mflux_core.lora.apply import add_lora, lora_layers, remove_lora
from mflux_core.lora.formats import load_lora_file, read_lora
from mflux_core.lora.layers import LoRALinear
from mflux_core.lora.library import resolve_lora_path
from mflux_core.manager import ModelManager
from mflux_core.models.transformer import load_transformer
from mflux_core.request import GenerationRequest
from tests.fixtures import lora_files as lf
from tests.fixtures import lycoris_files as lyf
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
    "onetrainer": lambda p, d: lf.write_onetrainer_lora(p, d, seed=20, alpha=2.0, magnitude=1.0),
    # LyCORIS, against lycoris-lora's own diff_weight (diffusers' FLUX.1 loader reads neither LoKr nor LoHa)
    "lokr-kohya": lambda p, d: lyf.write_lycoris_lora(p, d, "lokr", rank=2, alpha=1.0, seed=13),  # w1 full, w2 = a @ b
    "lokr-ai-toolkit-both-factorised": lambda p, d: lyf.write_lycoris_lora(
        p, d, "lokr", style="ai-toolkit", rank=1, alpha=0.5, decompose_both=True, seed=14),
    # both sides stored full: LyCORIS ignores the alpha
    "lokr-full-matrices": lambda p, d: lyf.write_lycoris_lora(p, d, "lokr", rank=16, alpha=3.0, seed=15),
    "loha-kohya": lambda p, d: lyf.write_lycoris_lora(p, d, "loha", rank=4, alpha=2.0, seed=16),
    "loha-rank-past-the-layer": lambda p, d: lyf.write_lycoris_lora(p, d, "loha", rank=8, alpha=4.0, seed=17),
    "lokr-lycoris-wrapper-names": lambda p, d: lyf.write_lycoris_lora(p, d, "lokr", style="lycoris", rank=2, seed=18),
    "loha-lycoris-wrapper-names": lambda p, d: lyf.write_lycoris_lora(
        p, d, "loha", style="lycoris", rank=2, alpha=1.0, seed=19),
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


SEVERAL_AT_ONCE = {  # name -> (writers(path, dims) -> (file, deltas), scales)
    "lora-formats": ((lambda p, d: lf.write_bfl_lora(p, d, "kohya", seed=20, alpha=2.0, magnitude=1.0),
                      lambda p, d: lf.write_xlabs_lora(p, d, seed=21),
                      lambda p, d: lf.write_diffusers_lora(p, d, seed=22)), (0.7, -0.4, 0.5)),
    "lokr-loha-and-lora": ((lambda p, d: lyf.write_lycoris_lora(p, d, "lokr", rank=2, seed=23),
                            lambda p, d: lyf.write_lycoris_lora(p, d, "loha", rank=4, alpha=2.0, seed=24),
                            lambda p, d: lf.write_bfl_lora(p, d, "kohya", seed=25, alpha=2.0, magnitude=1.0)),
                           (0.7, -0.5, 0.6)),
}


@pytest.mark.parametrize("case", list(SEVERAL_AT_ONCE))
def test_several_loras_equal_their_summed_deltas(case, tiny_dev, dims, noise, tmp_path):
    writers, scales = SEVERAL_AT_ONCE[case]
    files, deltas = zip(*(write(tmp_path / f"{i}.safetensors", dims) for i, write in enumerate(writers)))
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, "--lora-paths", *files, "--lora-scales", *scales)
    reference = diffusers_image(tiny_dev, noise, merged=list(zip(deltas, scales)))
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


REMOVED_AND_RESCALED = {
    "kohya-lora": (lambda p, d: lf.write_bfl_lora(p, d, "kohya", seed=30, alpha=2.0, magnitude=1.0),),
    "lokr-and-loha": (lambda p, d: lyf.write_lycoris_lora(p, d, "lokr", rank=2, seed=31, magnitude=1.0),
                      lambda p, d: lyf.write_lycoris_lora(p, d, "loha", rank=4, alpha=2.0, seed=32)),
}


@pytest.mark.parametrize("case", list(REMOVED_AND_RESCALED))
def test_remove_restores_the_base_and_rescale_equals_a_fresh_load(case, tiny_dev, dims, noise, tmp_path):
    files = [str(write(tmp_path / f"{i}.safetensors", dims)[0]) for i, write in enumerate(REMOVED_AND_RESCALED[case])]
    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=STEPS, height=HEIGHT, width=WIDTH,
                                guidance=GUIDANCE, init_noise_path=str(noise), dtype="float32")
    with_lora = request.with_(lora_paths=tuple(files), lora_scales=(1.0,) * len(files))
    manager = ModelManager()
    base = manager.generate(request).image
    full = manager.generate(with_lora).image
    rescaled = manager.generate(with_lora.with_(lora_scales=(0.3,) * len(files))).image
    removed = manager.generate(request).image
    fresh = ModelManager().generate(with_lora.with_(lora_scales=(0.3,) * len(files))).image

    assert manager.resident.load_counts["transformer"] == 1  # the base weights were loaded once
    assert max_uint8_diff(full, base) > MIN_LORA_EFFECT
    assert max_uint8_diff(rescaled, full) > MIN_LORA_EFFECT / 4
    assert max_uint8_diff(removed, base) == 0
    assert np.array_equal(np.asarray(rescaled), np.asarray(fresh))


def test_removing_lycoris_files_restores_bit_identical_weights(tiny_dev, dims, tmp_path):
    transformer = load_transformer(tiny_dev / "transformer")
    before = dict(tree_flatten(transformer.parameters()))
    for i, kind in enumerate(("lokr", "loha")):
        path, _ = lyf.write_lycoris_lora(tmp_path / f"{kind}.safetensors", dims, kind, rank=2, seed=50 + i)
        add_lora(transformer, load_lora_file(path), kind, scale=0.7)
    assert lora_layers(transformer)
    remove_lora(transformer, "lokr")
    remove_lora(transformer, "loha")
    after = dict(tree_flatten(transformer.parameters()))
    assert not lora_layers(transformer) and after.keys() == before.keys()
    assert all(np.array_equal(np.array(after[key]), np.array(before[key])) for key in before)


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_lycoris_on_a_quantized_layer_adds_exactly_lycoris_delta(kind):
    generator = torch.Generator().manual_seed(60)
    factors = (lyf.lokr_factors(96, 128, 2, generator, decompose_both=True) if kind == "lokr"
               else lyf.loha_factors(96, 128, 4, generator))
    expected_delta = lyf.lycoris_delta(factors, alpha=1.5).numpy()
    lora = read_lora({f"lora_unet_img_in.{key}": mx.array(t.numpy()) for key, t in factors.items()}
                     | {"lora_unet_img_in.alpha": mx.array(1.5)})
    quantized = nn.QuantizedLinear.from_linear(nn.Linear(128, 96), group_size=64, bits=4)
    layer = LoRALinear(quantized)
    layer.add(kind, lora.targets["x_embedder"], scale=0.8)
    x = mx.array(np.random.default_rng(0).standard_normal((2, 7, 128)).astype(np.float32))
    expected = np.array(quantized(x)) + 0.8 * np.array(x) @ expected_delta.T
    assert np.abs(np.array(layer(x)) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_lycoris_on_a_quantized_model_is_removed_without_reloading(tiny_dev, dims, noise, tmp_path):
    """8 bits in groups of 64 reach this tiny model's 128-wide MLP outputs, which the LoKr adapts too."""
    lokr, _ = lyf.write_lycoris_lora(tmp_path / "lokr.safetensors", dims, "lokr", rank=2, seed=61, magnitude=1.0)
    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=STEPS, height=HEIGHT, width=WIDTH,
                                guidance=GUIDANCE, init_noise_path=str(noise), dtype="float32", quantize=8)
    manager = ModelManager()
    base = manager.generate(request).image
    with_lokr = manager.generate(request.with_(lora_paths=(str(lokr),))).image
    removed = manager.generate(request).image
    assert manager.resident.load_counts["transformer"] == 1
    assert max_uint8_diff(with_lokr, base) > MIN_LORA_EFFECT
    assert max_uint8_diff(removed, base) == 0


def test_lycoris_files_made_for_convolutions_or_missing_factors_are_refused(tiny_dev, dims, tmp_path):
    path, _ = lyf.write_lycoris_lora(tmp_path / "lokr.safetensors", dims, "lokr", modules=["img_in"])
    tensors = mx.load(str(path))
    convolution = {**tensors, "lora_unet_img_in.lokr_w2": mx.zeros((4, 4, 3, 3))}
    convolution.pop("lora_unet_img_in.lokr_w2_a"), convolution.pop("lora_unet_img_in.lokr_w2_b")
    with pytest.raises(ModelLoadError, match="lora_unet_img_in holds convolution factors .*only linear layers"):
        read_lora(convolution)

    half = {key: value for key, value in tensors.items() if not key.endswith("lokr_w1")}
    transformer = load_transformer(tiny_dev / "transformer")
    with pytest.raises(ModelLoadError, match="matches none of this FLUX.1 transformer's layers"):
        add_lora(transformer, read_lora(half), "half")


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
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280)}, str(sdxl))
    args = ["generate", "--path", tiny_dev, "--prompt", "x", "--steps", 1, "--height", 32, "--width", 32,
            "--output", tmp_path / "x.png", "--lora-paths", sdxl]
    from mflux_core.cli import main

    assert main([str(a) for a in args]) == 1
    message = capsys.readouterr().err
    assert "The LoRA sdxl_style.safetensors was made for SDXL, not FLUX.1, so it cannot be applied here." in message
    save_file({}, str(tmp_path / "empty.safetensors"))
    assert main([str(a) for a in args[:-1]] + [str(tmp_path / "empty.safetensors")]) == 1
    assert "The LoRA empty.safetensors holds no tensors" in capsys.readouterr().err

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

    snapshot = tmp_path / "hub" / "models--someone--tiny-lora" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    in_cache, _ = lf.write_xlabs_lora(snapshot / "lora.safetensors", dims)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_lora_path("someone/tiny-lora") == in_cache.resolve()
    assert resolve_lora_path("someone/tiny-lora/lora.safetensors") == in_cache.resolve()
    with pytest.raises(ModelLoadError, match="not found in the LoRA folders") as missing:
        resolve_lora_path("nowhere")
    assert "LORA_LIBRARY_PATH" in missing.value.cli_text and "LORA_LIBRARY_PATH" not in str(missing.value)
    mistyped = tmp_path / "lorsa" / "ink.safetensors"  # a path: never tried as a repo id, nothing downloaded
    with pytest.raises(ModelLoadError, match=f"^The LoRA file {mistyped} does not exist"):
        resolve_lora_path(str(mistyped))
    (tmp_path / "peft").mkdir()  # a folder: its one file, as diffusers and PEFT save one
    with pytest.raises(ModelLoadError, match=f"^The folder {tmp_path / 'peft'} holds no LoRA file"):
        resolve_lora_path(str(tmp_path / "peft"))
    lf.write_xlabs_lora(tmp_path / "peft" / "adapter_model.safetensors", dims)
    assert resolve_lora_path(str(tmp_path / "peft")) == (tmp_path / "peft" / "adapter_model.safetensors").resolve()


def test_the_models_folder_loras_are_part_of_the_library_and_offline_misses_say_where_to_put_the_file(
        dims, tmp_path, monkeypatch):
    monkeypatch.delenv("LORA_LIBRARY_PATH", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    models = tmp_path / "models"
    (models / "loras" / "someone" / "tiny-lora").mkdir(parents=True)
    wanted, _ = lf.write_xlabs_lora(models / "loras" / "ink.safetensors", dims)
    assert resolve_lora_path("ink", models) == wanted.resolve()
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_lora_path("ink")  # without the models folder, only LORA_LIBRARY_PATH (here unset)

    repo_file = "someone/tiny-lora/lora.safetensors"
    with pytest.raises(ModelLoadError) as offline:
        resolve_lora_path(repo_file, models)
    page_text = str(offline.value)
    assert "downloads are off" in page_text and str(models / "loras" / repo_file) in page_text
    assert "LORA_LIBRARY_PATH" in offline.value.cli_text and "--" not in page_text
    put, _ = lf.write_xlabs_lora(models / "loras" / repo_file, dims)  # where the sentence says
    assert resolve_lora_path(repo_file, models) == put.resolve()
