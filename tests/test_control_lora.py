"""BFL's control LoRAs (FLUX.1-Depth-dev-lora, FLUX.1-Canny-dev-lora): a base model with one does what the control
model does. The file, in BFL's names as BFL ships it (a widened `img_in`, `lora_B.bias` keys, whole q/k norm
scales), through the Depth tool equals diffusers' FluxControlPipeline with the same LoRA loaded by
`load_lora_weights` (its own names: diffusers' converter hard-codes FLUX.1's full size), float32, uint8 max
|diff| <= 2. Taking it off gives the base model back; a base model without one is refused by the Depth tool, and
text-to-image is refused while one is on, each in a sentence.
"""

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from PIL import Image
from safetensors.torch import save_file

from mflux_core.cli import main as cli_main
from mflux_core.lora.apply import add_lora, remove_lora
from mflux_core.lora.formats import load_lora_file
from mflux_core.lora.info import describe_lora_file
from mflux_core.models.transformer import load_transformer
from tests.fixtures import lora_files as lf
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, random_image, run_cli, save

HEIGHT, WIDTH, STEPS, GUIDANCE = 48, 64, 3, 10.0
PROMPT = "a red house by a lake"
LINEAR_MODULES = ("img_in", "double_blocks.0.img_attn.qkv", "double_blocks.1.txt_mlp.0", "single_blocks.0.linear1",
                  "single_blocks.1.linear2", "final_layer.adaLN_modulation.1", "time_in.in_layer")
NORMS = {"double_blocks.0.img_attn.norm.query_norm": "transformer_blocks.0.attn.norm_q",
         "double_blocks.0.txt_attn.norm.key_norm": "transformer_blocks.0.attn.norm_added_k",
         "single_blocks.1.norm.query_norm": "single_transformer_blocks.1.attn.norm_q"}


def control_lora(folder, tiny_dev, seed: int = 3):
    """(BFL-named file, the same LoRA in diffusers' names for load_lora_weights)."""
    d = lf.Dims.of(tiny_dev)
    rng = np.random.default_rng(seed)
    bfl, ours = {}, {}
    for module in LINEAR_MODULES:
        targets, (out_dim, in_dim) = lf.bfl_modules(d)[module]
        in_dim *= 2 if module == "img_in" else 1  # the control image's latents beside the noise
        down = (rng.standard_normal((4, in_dim)) / np.sqrt(in_dim)).astype(np.float32)
        up = (rng.standard_normal((out_dim, 4)) * 0.5).astype(np.float32)
        bfl |= {f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up}
        for target, part in lf.bfl_delta_to_diffusers(module, targets, up, d).items():
            ours |= {f"transformer.{target.removesuffix('.weight')}.lora_A.weight": down,
                     f"transformer.{target.removesuffix('.weight')}.lora_B.weight": part}
        bias = (0.3 * rng.standard_normal(out_dim)).astype(np.float32)  # every up matrix has one (PEFT's
        bfl[f"{module}.lora_B.bias"] = bias  # lora_bias is all or none)
        for target, part in lf.bfl_delta_to_diffusers(module, targets, bias[:, None], d).items():
            ours[f"transformer.{target.removesuffix('.weight')}.lora_B.bias"] = part[:, 0]
    head_dim = d.hidden // 2
    for bfl_name, name in NORMS.items():
        scale = (1 + 0.5 * rng.standard_normal(head_dim)).astype(np.float32)
        bfl[f"{bfl_name}.scale"] = scale
        ours[f"transformer.{name}.weight"] = scale
    path = folder / "flux1-depth-dev-lora.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in bfl.items()}, str(path))
    return path, {k: torch.from_numpy(v) for k, v in ours.items()}


@pytest.fixture
def posterior_mean(monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)


def test_a_base_model_with_a_control_lora_makes_diffusers_depth_image(tiny_dev, tmp_path, posterior_mean):
    from diffusers import FluxControlPipeline

    lora, diffusers_names = control_lora(tmp_path, tiny_dev)
    depth = random_image(WIDTH, HEIGHT, seed=5).convert("L").convert("RGB")
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=6)
    ours = run_cli("depth", "--path", tiny_dev, "--lora-paths", lora, "--prompt", PROMPT, "--depth-image-path",
                   save(depth, tmp_path / "d.png"), "--steps", STEPS, "--height", HEIGHT, "--width", WIDTH,
                   "--guidance", GUIDANCE, "--init-noise", noise, "--output", tmp_path / "ours.png")

    pipe = FluxControlPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)
    pipe.load_lora_weights(diffusers_names, adapter_name="control")
    assert pipe.transformer.config.in_channels == 32  # widened by diffusers too

    def reference(control):
        return pipe(PROMPT, control_image=control, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE, latents=pack(np.load(noise)), output_type="pil").images[0]

    expected = reference(depth)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(depth.transpose(0))) > 3 * UINT8_TOLERANCE  # the map steers it


def test_taking_a_control_lora_off_gives_the_base_model_back(tiny_dev, tmp_path):
    lora, _ = control_lora(tmp_path, tiny_dev)
    transformer = load_transformer(tiny_dev / "transformer", dtype=mx.float32)
    before = {k: np.asarray(v) for k, v in tree_flatten(transformer.parameters())}
    report = add_lora(transformer, load_lora_file(lora), "control", 0.8)
    assert report.complete and report.format == "ai-toolkit+control"
    assert "control LoRA: use it on the Depth tool" in describe_lora_file(lora)
    norm = np.asarray(transformer.transformer_blocks[0].attn.norm_q.weight)
    assert not np.array_equal(norm, before["transformer_blocks.0.attn.norm_q.weight"])
    remove_lora(transformer, "control")
    after = dict(tree_flatten(transformer.parameters()))
    assert after.keys() == before.keys() and all(np.array_equal(np.asarray(after[k]), v) for k, v in before.items())


def test_tools_say_what_a_control_lora_is_for(tiny_dev, tmp_path, capsys):
    lora, _ = control_lora(tmp_path, tiny_dev)
    depth = save(random_image(64, 64, seed=7).convert("L"), tmp_path / "d.png")
    common = ["--path", str(tiny_dev), "--prompt", PROMPT, "--steps", "1", "--output", str(tmp_path / "o.png")]
    assert cli_main(["depth", *common, "--depth-image-path", str(depth)]) == 1
    assert ("takes 16 input channels per token; Depth needs a FLUX.1-Depth or -Canny (or dev with BFL's Depth or "
            "Canny LoRA) model (32 channels).") in capsys.readouterr().err
    assert cli_main(["generate", *common, "--lora-paths", str(lora)]) == 1
    assert ("takes 32 input channels per token with its control LoRA (use that on the Depth tool); text-to-image "
            "needs a base") in capsys.readouterr().err
    assert cli_main(["save", "--path", str(tmp_path / "saved"), "--model-path", str(tiny_dev), "--lora-paths",
                     str(lora)]) == 1
    assert "is a control LoRA (it widens the image input to 32 channels)" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()


def test_canny_edges_of_a_photo_steer_a_canny_control_model_as_diffusers(tiny_dev, tmp_path, posterior_mean):
    """`--canny-edges`: the photo's OpenCV Canny edges at the output size are the control image (FLUX.1-Canny-dev,
    or dev with BFL's Canny LoRA: the same files' shape as the Depth LoRA's)."""
    from diffusers import FluxControlPipeline

    from mflux_core.images.canny import canny_edges

    lora, diffusers_names = control_lora(tmp_path, tiny_dev, seed=4)
    photo = random_image(96, 72, seed=8)  # resized (crop and resize) to the output size before the edges
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=9)
    ours = run_cli("depth", "--path", tiny_dev, "--lora-paths", lora, "--prompt", PROMPT, "--image-path",
                   save(photo, tmp_path / "photo.png"), "--canny-edges", "--canny-low", 50, "--canny-high", 150,
                   "--steps", STEPS, "--height", HEIGHT, "--width", WIDTH, "--guidance", GUIDANCE, "--init-noise",
                   noise, "--output", tmp_path / "ours.png")
    pipe = FluxControlPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)
    pipe.load_lora_weights(diffusers_names, adapter_name="control")
    edges = canny_edges(photo.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS), 50, 150)  # 96x72 -> 64x48: no crop
    expected = pipe(PROMPT, control_image=edges, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE, latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, pipe(PROMPT, control_image=photo.resize((WIDTH, HEIGHT)), height=HEIGHT,
                                         width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                                         latents=pack(np.load(noise)), output_type="pil").images[0]) > 6


def test_norm_scales_alone_are_not_a_lora(tiny_dev, tmp_path):
    from mflux_core.errors import ModelLoadError

    path = tmp_path / "norms.safetensors"
    save_file({f"{name}.scale": torch.ones(16) for name in NORMS}, str(path))
    with pytest.raises(ModelLoadError, match="matches none of this FLUX.1 transformer's layers"):
        add_lora(load_transformer(tiny_dev / "transformer", dtype=mx.float32), load_lora_file(path), "norms")
