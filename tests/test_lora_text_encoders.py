"""LoRAs that also adapt the text encoders (CLIP-L, T5): whole images equal diffusers' (float32, uint8 max |diff| <= 2).

Where diffusers loads the file (Kohya's `lora_te1_` CLIP layers beside double blocks, PEFT's `text_encoder.` keys)
the reference is `pipe.load_lora_weights(file)`; for T5, which diffusers' FLUX.1 loader does not adapt, the
reference is transformers' T5 with W += scale * up @ down merged in by the test.
"""

import numpy as np
import pytest

from mflux_core.errors import ModelLoadError
from mflux_core.lora.apply import add_lora, lora_layers
from mflux_core.lora.formats import load_lora_file
from mflux_core.lora.info import describe_lora_file
from mflux_core.manager import ModelManager
from mflux_core.models.transformer import load_transformer
from mflux_core.request import GenerationRequest
from tests.fixtures import lora_files as lf
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

HEIGHT, WIDTH, STEPS, GUIDANCE, SCALE = 64, 64, 3, 3.5, 0.8
PROMPT = "a small red house by a lake"
MIN_TEXT_ENCODER_EFFECT = 10  # the text encoders' adapters must move the image by more than this, or nothing is shown


@pytest.fixture(scope="module")
def noise(tiny_dev, tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("noise"), (1, 4, HEIGHT // 8, WIDTH // 8), seed=11)


@pytest.fixture(scope="module")
def transformer_lora(tiny_dev, tmp_path_factory):
    """A Kohya transformer LoRA on the double blocks (the part diffusers' Kohya reader takes at the tiny size)."""
    dims = lf.Dims.of(tiny_dev)
    return lf.write_bfl_lora(tmp_path_factory.mktemp("transformer") / "unet.safetensors", dims, "kohya", seed=5,
                             alpha=8.0, modules=[m for m in lf.bfl_modules(dims) if m.startswith("double_blocks.")])


@pytest.fixture(scope="module")
def peft_transformer_lora(tiny_dev, tmp_path_factory):
    return lf.write_diffusers_lora(tmp_path_factory.mktemp("peft") / "peft.safetensors", lf.Dims.of(tiny_dev), seed=6)


def our_image(folder, out, noise, lora):
    return run_cli("generate", "--path", folder, "--prompt", PROMPT, "--steps", STEPS, "--height", HEIGHT,
                   "--width", WIDTH, "--guidance", GUIDANCE, "--init-noise", noise, "--dtype", "float32",
                   "--output", out, "--lora-paths", lora, "--lora-scales", SCALE)


def diffusers_image(folder, noise, lora_file=None, merged_transformer=None, merged_text_encoders=None, weights=SCALE):
    pipe = load_diffusers_pipeline(folder)
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file), adapter_name="tested")
        pipe.set_adapters(["tested"], adapter_weights=[weights])
    if merged_transformer:
        lf.merge_into(pipe.transformer, merged_transformer, SCALE)
    for component, deltas in (merged_text_encoders or {}).items():
        encoder = getattr(pipe, component)
        names = dict(encoder.named_parameters())  # transformers 5's CLIPTextModel has no `text_model.` level
        lf.merge_into(encoder, {name if name in names else name.removeprefix("text_model."): delta
                                for name, delta in deltas.items()}, SCALE)
    return pipe(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=pack(np.load(noise)), output_type="pil").images[0]


@pytest.fixture(scope="module")
def transformer_only_image(tiny_dev, noise, transformer_lora, tmp_path_factory):
    return our_image(tiny_dev, tmp_path_factory.mktemp("unet") / "unet.png", noise, transformer_lora[0])


@pytest.mark.parametrize("style", ["kohya", "diffusers"])
def test_clip_adapters_match_diffusers_load_lora_weights(style, tiny_dev, noise, transformer_lora,
                                                         peft_transformer_lora, transformer_only_image, tmp_path):
    kohya = style == "kohya"
    lora, _ = lf.write_text_encoder_lora(tmp_path / f"{style}.safetensors", tiny_dev, style, ("text_encoder",),
                                         seed=30, alpha=2.0 if kohya else None,
                                         beside=(transformer_lora if kohya else peft_transformer_lora)[0])
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, lora)
    reference = diffusers_image(tiny_dev, noise, lora)
    if kohya:
        assert max_uint8_diff(ours, transformer_only_image) > MIN_TEXT_ENCODER_EFFECT
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_a_flux_lora_that_adapts_the_text_encoders_alone_applies_as_diffusers_loads_it(tiny_dev, noise, tmp_path):
    """sd-scripts' --network_train_text_encoder_only: CLIP keys alone, FLUX.1 in its metadata (without it, a file of
    text-encoder keys alone is refused as not known to be FLUX.1's)."""
    from safetensors.torch import load_file, save_file

    lora, _ = lf.write_text_encoder_lora(tmp_path / "clip.safetensors", tiny_dev, "kohya", ("text_encoder",), seed=37,
                                         alpha=8.0)
    with pytest.raises(ModelLoadError, match="made for a text encoder only"):
        ModelManager().generate(GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=1, height=32, width=32,
                                                  lora_paths=(str(lora),)))
    save_file(load_file(str(lora)), str(lora), metadata={"format": "pt", "ss_base_model_version": "flux1"})
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, lora)
    assert max_uint8_diff(ours, diffusers_image(tiny_dev, noise, lora)) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours, diffusers_image(tiny_dev, noise)) > MIN_TEXT_ENCODER_EFFECT
    assert "adapts the text encoders too" in describe_lora_file(lora) and "refused" not in describe_lora_file(lora)


def test_a_text_encoder_scale_of_its_own_matches_diffusers_per_component_weights(tiny_dev, noise, transformer_lora,
                                                                                tmp_path):
    """ComfyUI's strength_clip beside strength_model, diffusers' set_adapters with {component: weight}; A1111's
    `<lora:name:te:unet>` tag in the prompt makes the same image."""
    lora, _ = lf.write_text_encoder_lora(tmp_path / "te.safetensors", tiny_dev, "kohya", ("text_encoder",), seed=34,
                                         alpha=2.0, beside=transformer_lora[0])
    flags = ("generate", "--path", tiny_dev, "--steps", STEPS, "--height", HEIGHT, "--width", WIDTH, "--guidance",
             GUIDANCE, "--init-noise", noise, "--dtype", "float32")
    ours = run_cli(*flags, "--prompt", PROMPT, "--output", tmp_path / "ours.png", "--lora-paths", lora,
                   "--lora-scales", SCALE, "--lora-text-encoder-scales", 0.2)
    reference = diffusers_image(tiny_dev, noise, lora, weights={"transformer": SCALE, "text_encoder": 0.2})
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours, our_image(tiny_dev, tmp_path / "same.png", noise, lora)) > MIN_TEXT_ENCODER_EFFECT
    tagged = run_cli(*flags, "--prompt", f"{PROMPT} <lora:{lora}:0.2:{SCALE}>", "--output", tmp_path / "tag.png")
    assert max_uint8_diff(tagged, ours) == 0


@pytest.mark.parametrize("style", ["kohya", "kohya-te2-t5", "diffusers", "comfyui"])
def test_clip_and_t5_adapters_match_merged_weights(style, tiny_dev, noise, transformer_lora, transformer_only_image,
                                                  tmp_path):
    transformer_file, transformer_deltas = transformer_lora
    lora, deltas = lf.write_text_encoder_lora(tmp_path / f"{style}.safetensors", tiny_dev, style, seed=31,
                                              alpha=1.0, beside=transformer_file)
    ours = our_image(tiny_dev, tmp_path / "ours.png", noise, lora)
    reference = diffusers_image(tiny_dev, noise, merged_transformer=transformer_deltas, merged_text_encoders=deltas)
    assert max_uint8_diff(ours, transformer_only_image) > MIN_TEXT_ENCODER_EFFECT
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_the_report_counts_text_encoder_layers_and_a_saved_model_says_they_were_not_baked(tiny_dev, transformer_lora,
                                                                                           tmp_path):
    lora, deltas = lf.write_text_encoder_lora(tmp_path / "both.safetensors", tiny_dev, "kohya", seed=32,
                                              beside=transformer_lora[0])
    text_encoder_layers = sum(len(parts) for parts in deltas.values())
    assert "adapts the text encoders too" in describe_lora_file(lora)
    assert "text encoders" not in describe_lora_file(transformer_lora[0])
    manager = ModelManager()
    manager.generate(GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=1, height=32, width=32,
                                       lora_paths=(str(lora),), dtype="float32"))
    (report,) = manager.loras.reports
    assert report.complete and report.text_encoder_layers == text_encoder_layers
    assert f"({text_encoder_layers} in the text encoders)" in manager.status()["loras"][0]

    # the transformer alone (what a saved, fused model keeps): the text encoders' keys are named as not used
    transformer_report = add_lora(load_transformer(tiny_dev / "transformer"), load_lora_file(lora), "alone")
    assert transformer_report.text_encoder_layers == 0
    assert transformer_report.total_keys - transformer_report.matched_keys == 2 * text_encoder_layers
    assert transformer_report.unmatched[0].startswith("lora_te1_text_model_encoder_layers_0_")


@pytest.mark.parametrize("low_ram", [False, True])
def test_adapters_follow_each_request_and_key_the_prompt_cache(low_ram, tiny_dev, transformer_lora, tmp_path):
    """One resident studio: with the LoRA, without it, at another scale and with it again, each image equals a fresh
    process's; the encoders carry exactly the request's adapters (also when released and reloaded between
    prompts)."""
    lora, _ = lf.write_text_encoder_lora(tmp_path / "te.safetensors", tiny_dev, "kohya", seed=33,
                                         beside=transformer_lora[0])

    def request(scales):
        return GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=2, height=32, width=32, seed=4,
                                 dtype="float32", lora_paths=(str(lora),) * bool(scales), lora_scales=scales)

    def pixels(manager, scales):
        return np.asarray(manager.generate(request(scales)).image, dtype=np.int16)

    resident = ModelManager(low_ram=low_ram)
    sequence = [(0.8,), (), (0.3,), (0.8,)]
    images = [pixels(resident, scales) for scales in sequence]
    for scales, image in zip(sequence, images):
        assert np.array_equal(image, pixels(ModelManager(), scales)), scales
    assert np.abs(images[0] - images[1]).max() > MIN_TEXT_ENCODER_EFFECT
    encoders = resident.resident._text_encoders.values()[0]
    if not low_ram:
        assert {len(layer.names) for root in encoders.components().values()
                for layer in lora_layers(root).values()} == {1}
        resident.generate(request(()).with_(prompt="a new prompt"))  # adapters change when a prompt is encoded
        assert not any(lora_layers(root) for root in encoders.components().values())


def test_a_text_encoder_adapter_of_another_width_is_refused_before_anything_changes(tiny_dev, transformer_lora,
                                                                                     tmp_path):
    from safetensors.torch import load_file, save_file

    lora, _ = lf.write_text_encoder_lora(tmp_path / "te.safetensors", tiny_dev, "kohya", ("text_encoder",), seed=34,
                                         beside=transformer_lora[0])
    tensors = load_file(str(lora))
    tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = tensors[
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"][:, :-1].contiguous()
    save_file(tensors, str(lora))
    manager = ModelManager()
    with pytest.raises(ModelLoadError, match="does not fit this model: its text_encoder.encoder.layers.0.mlp.fc1 "
                                             "adapter"):
        manager.generate(GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=1, height=32, width=32,
                                           lora_paths=(str(lora),), dtype="float32"))
    assert not lora_layers(manager.resident._transformers.values()[0])  # its transformer part was not put on
    assert manager.generate(GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=1, height=32, width=32,
                                              dtype="float32")).image.size == (32, 32)


def test_a_saved_model_bakes_the_text_encoder_adapters_in(tiny_dev, noise, transformer_lora, tmp_path, capsys):
    """`save --lora-paths` fuses CLIP's and T5's adapters as well as the transformer's: the saved folder makes the
    image the LoRA makes live, and diffusers loads it."""
    from mflux_core.cli import main as cli_main

    lora, _ = lf.write_text_encoder_lora(tmp_path / "te.safetensors", tiny_dev, "kohya", seed=36,
                                         beside=transformer_lora[0])
    saved = tmp_path / "saved"
    assert cli_main(["save", "--model-path", str(tiny_dev), "--path", str(saved), "--lora-paths", str(lora),
                     "--lora-scales", str(SCALE)]) == 0
    assert "in the text encoders)" in capsys.readouterr().out
    live = our_image(tiny_dev, tmp_path / "live.png", noise, lora)
    baked = run_cli("generate", "--path", saved, "--prompt", PROMPT, "--steps", STEPS, "--height", HEIGHT, "--width",
                    WIDTH, "--guidance", GUIDANCE, "--init-noise", noise, "--dtype", "float32", "--output",
                    tmp_path / "baked.png")
    assert max_uint8_diff(baked, live) <= UINT8_TOLERANCE
    assert max_uint8_diff(diffusers_image(saved, noise), baked) <= UINT8_TOLERANCE

    # a text-encoder scale of its own is baked as it applies live
    assert cli_main(["save", "--model-path", str(tiny_dev), "--path", str(tmp_path / "own"), "--lora-paths", str(lora),
                     "--lora-scales", str(SCALE), "--lora-text-encoder-scales", "0.2"]) == 0
    flags = ("--prompt", PROMPT, "--steps", STEPS, "--height", HEIGHT, "--width", WIDTH, "--guidance", GUIDANCE,
             "--init-noise", noise, "--dtype", "float32")
    live = run_cli("generate", "--path", tiny_dev, *flags, "--output", tmp_path / "live-own.png", "--lora-paths", lora,
                   "--lora-scales", SCALE, "--lora-text-encoder-scales", 0.2)
    baked = run_cli("generate", "--path", tmp_path / "own", *flags, "--output", tmp_path / "baked-own.png")
    assert max_uint8_diff(baked, live) <= UINT8_TOLERANCE
