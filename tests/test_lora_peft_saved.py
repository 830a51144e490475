"""A LoRA as PEFT's save_pretrained writes it (a folder: adapter_model.safetensors under `base_model.model.` names, its
alpha in adapter_config.json) and a LoRA folder as diffusers' save_lora_weights writes it: picked by the folder or by
the file, each makes the image of the same LoRA in diffusers' file layout with its adapter metadata (checked against
PEFT's merge elsewhere), its alpha read from the config (alpha 8 at rank 4: twice the change of alpha = rank)."""

import json

import torch
from safetensors.torch import save_file

from tests.parity import make_noise, max_uint8_diff, run_cli

RANK, ALPHA = 4, 8
MIN_LORA_EFFECT = 10  # levels the LoRA must move the image by, or the test proves nothing


def test_peft_save_pretrained_and_a_lora_folder_load_as_the_same_lora(tiny_dev, tmp_path):
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(tiny_dev / "transformer")
    model = get_peft_model(transformer, LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False,
                                                   target_modules=["to_q", "to_k", "to_v", "x_embedder"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(tmp_path / "peft")
    state = {f"transformer.{key.removeprefix('base_model.model.')}": value.contiguous()
             for key, value in get_peft_model_state_dict(model).items()}
    (tmp_path / "diffusers").mkdir()
    save_file(state, tmp_path / "diffusers" / "pytorch_lora_weights.safetensors",
              metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": ALPHA, "r": RANK})})
    noise = make_noise(tmp_path, (1, 4, 8, 8), seed=4)

    def image(name: str, *lora: str):
        return run_cli("generate", "--path", tiny_dev, "--prompt", "a red house", "--steps", 2, "--width", 64,
                       "--height", 64, "--guidance", 3.5, "--init-noise", noise, *lora, "--output",
                       tmp_path / f"{name}.png")

    expected = image("expected", "--lora-paths", tmp_path / "diffusers" / "pytorch_lora_weights.safetensors")
    assert max_uint8_diff(expected, image("plain")) > MIN_LORA_EFFECT
    for name, lora in (("peft-file", tmp_path / "peft" / "adapter_model.safetensors"), ("peft-folder", tmp_path / "peft"),
                       ("diffusers-folder", tmp_path / "diffusers")):
        assert max_uint8_diff(image(name, "--lora-paths", lora), expected) == 0, name
    (tmp_path / "peft" / "adapter_config.json").unlink()  # alpha = rank then: half the change
    assert max_uint8_diff(image("no-config", "--lora-paths", tmp_path / "peft"), expected) > 0
