"""`mflux-studio extract-lora`: a tuned model made by baking a known rank-4 LoRA into tiny FLUX.1-dev gives back a
LoRA that, on the base, makes the tuned model's image, in the studio and in diffusers' load_lora_weights (float32,
uint8 max |diff| <= 2); a lower rank keeps part of the change and says how much; what cannot be extracted is
refused in one sentence."""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mflux_core.cli import main as cli_main
from tests.fixtures import lora_files as lf
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

PROMPT, STEPS, SIZE = "a red house by a lake", 2, 32


@pytest.fixture(scope="module")
def tuned(tiny_dev, tmp_path_factory):
    """tiny dev with a rank-4 LoRA on every linear layer baked in (`save --lora-paths`): a 'finetune'."""
    folder = tmp_path_factory.mktemp("tuned")
    lora, _ = lf.write_diffusers_lora(folder / "known.safetensors", lf.Dims.of(tiny_dev), rank=4, seed=50)
    assert cli_main(["save", "--model-path", str(tiny_dev), "--path", str(folder / "model"), "--lora-paths",
                     str(lora), "--dtype", "float32"]) == 0
    return folder / "model"


def image(folder, out, noise, *extra):
    return run_cli("generate", "--path", folder, "--prompt", PROMPT, "--steps", STEPS, "--height", SIZE, "--width",
                   SIZE, "--guidance", 3.5, "--init-noise", noise, "--dtype", "float32", "--output", out, *extra)


def extract(*args) -> int:
    return cli_main(["extract-lora", "--dtype", "float32", *map(str, args)])


@pytest.mark.parametrize("rank", [4, 32])  # 32: past x_embedder's 16 inputs and proj_out's 16 outputs
def test_the_extracted_lora_makes_the_tuned_models_image_on_the_base(tiny_dev, tuned, tmp_path, capsys, rank):
    lora = tmp_path / "extracted.safetensors"
    assert extract("--model-tuned", tuned, "--model-base", tiny_dev, "--rank", rank, "--output", lora) == 0
    assert "keeping 100.0% of the change" in capsys.readouterr().out
    # one rank for every layer, narrower ones padded: diffusers reads per-layer alphas by short name, so a top-level
    # proj_out of another rank would rescale every single block's proj_out
    assert {value.shape[0] for key, value in load_file(str(lora)).items() if key.endswith("lora_A.weight")} == {rank}
    noise = make_noise(tmp_path, (1, 4, SIZE // 8, SIZE // 8), seed=4)
    tuned_image = image(tuned, tmp_path / "tuned.png", noise)
    assert max_uint8_diff(image(tiny_dev, tmp_path / "base.png", noise), tuned_image) > 20  # the tuning shows
    assert max_uint8_diff(image(tiny_dev, tmp_path / "ours.png", noise, "--lora-paths", lora), tuned_image) <= \
        UINT8_TOLERANCE
    pipe = load_diffusers_pipeline(tiny_dev)
    pipe.load_lora_weights(str(lora))
    theirs = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5,
                  latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(theirs, tuned_image) <= UINT8_TOLERANCE


def test_a_lower_rank_keeps_part_of_the_change_and_a_norm_change_is_named(tiny_dev, tuned, tmp_path, capsys):
    changed = tmp_path / "changed"
    assert cli_main(["save", "--model-path", str(tuned), "--path", str(changed), "--dtype", "float32"]) == 0
    [weights_file] = (changed / "transformer").glob("*.safetensors")
    tensors = load_file(str(weights_file))
    tensors["transformer_blocks.0.attn.norm_q.weight"] = tensors["transformer_blocks.0.attn.norm_q.weight"] * 1.5
    save_file(tensors, str(weights_file), metadata={"format": "pt"})
    assert extract("--model-tuned", changed, "--model-base", tiny_dev, "--rank", 2, "--output",
                   tmp_path / "r2.safetensors") == 0
    printed = capsys.readouterr().out
    kept = float(printed.split("keeping ")[1].split("%")[0])
    assert 30 < kept < 99.9, printed
    assert "1 other tensors differ (biases or norms), which a LoRA cannot carry" in printed
    file_tensors = load_file(str(tmp_path / "r2.safetensors"))
    assert {value.shape[0] for key, value in file_tensors.items() if key.endswith("lora_A.weight")} == {2}


def test_what_cannot_be_extracted_is_refused_in_one_sentence(tiny_dev, tuned, tmp_path, capsys):
    from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux

    wider = build_tiny_flux(tmp_path / "wide", TinyFluxSpec(heads=2, head_dim=32, axes_dims_rope=(8, 12, 12),
                                                            text_dim=64, pooled_dim=64, seed=3))
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"x")
    cases = [
        (("--model-tuned", tiny_dev, "--model-base", tiny_dev), "have the same linear layers: there is no change"),
        (("--model-tuned", wider, "--model-base", tiny_dev), "are different architectures: their "),
        (("--model-tuned", tuned, "--model-base", tiny_dev, "--rank", 0), "The LoRA's rank must be a whole number"),
        (("--model-tuned", tuned, "--model-base", tiny_dev, "--output", existing), "exists.safetensors already exists"),
        (("--model-tuned", tuned, "--model-base", tiny_dev, "--output", tmp_path / "lora.pt"),
         "Give the LoRA a .safetensors file name, not lora.pt."),
    ]
    for args, sentence in cases:
        output = () if "--output" in args else ("--output", tmp_path / "never.safetensors")
        assert extract(*args, *output) == 1
        error = capsys.readouterr().err
        assert sentence in error and "Traceback" not in error, (args, error)
    assert not (tmp_path / "never.safetensors").exists()


def test_extraction_reads_a_layer_at_a_time(tiny_dev, tuned):
    import mlx.core as mx

    from mflux_core.lora.extract import extract_lora
    from mflux_core.weights.merge import model_sources, transformer_bytes

    sources = model_sources([str(tuned), str(tiny_dev)], None, whole_first=False)
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    extract_lora(sources, 4, mx.float32)
    assert mx.get_peak_memory() - before < 0.6 * transformer_bytes(sources[0][1], mx.float32)  # not two models
