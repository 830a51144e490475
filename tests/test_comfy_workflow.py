"""A ComfyUI PNG's settings: the graph in its "prompt" chunk (ComfyUI's API format, as its SaveImage writes it) read
back along the links from its first sampler, in the layouts FLUX.1 users share (ComfyUI's own FLUX.1 examples, a
checkpoint with KSampler, true CFG, a second hires pass, image-to-image, LoRA loaders), and graphs that are no use
refused in a sentence."""

import json

import pytest
from PIL import Image, PngImagePlugin

from mflux_core.presets import PresetError, settings_from_png

PROMPT = "a red fox in the snow, photograph"


def flux_dev_example(seed: int = 972054013131368) -> dict:
    """ComfyUI's FLUX.1-dev example as its API format: a diffusion model, SamplerCustomAdvanced, FluxGuidance; a LoRA
    loaded on the model."""
    return {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["11", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                          "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["25", 0], "guider": ["22", 0],
                                                                 "sampler": ["16", 0], "sigmas": ["17", 0],
                                                                 "latent_image": ["27", 0]}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 20, "denoise": 1,
                                                          "model": ["30", 0]}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "30": {"class_type": "ModelSamplingFlux", "inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": 1024,
                                                             "height": 768, "model": ["40", 0]}},
        "40": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "flux/Ink Style.safetensors",
                                                               "strength_model": 0.8, "model": ["12", 0]}},
    }


def checkpoint_example() -> dict:
    """ComfyUI's FLUX.1 checkpoint example: KSampler at CFG 1, FluxGuidance, an empty negative; here the prompt comes
    from a primitive node, the seed is past the studio's range and two LoRA loaders are chained."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}},
        "5": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": PROMPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["5", 0], "clip": ["41", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["41", 1]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1020, "height": 1000, "batch_size": 1}},
        "31": {"class_type": "KSampler", "inputs": {"seed": 2**40, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                                    "scheduler": "beta", "denoise": 1, "model": ["41", 0],
                                                    "positive": ["35", 0], "negative": ["7", 0],
                                                    "latent_image": ["27", 0]}},
        "35": {"class_type": "FluxGuidance", "inputs": {"guidance": 2.5, "conditioning": ["6", 0]}},
        "40": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "strength_model": 0.7,
                                                      "strength_clip": 0.4, "model": ["4", 0], "clip": ["4", 1]}},
        "41": {"class_type": "Power Lora Loader (rgthree)", "inputs": {
            "lora_1": {"on": True, "lora": "styles\\watercolor.safetensors", "strength": 1.2},
            "lora_2": {"on": False, "lora": "off.safetensors", "strength": 1},
            "model": ["40", 0], "clip": ["40", 1]}},
    }


def png_with(tmp_path, chunks: dict) -> str:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    path = tmp_path / "comfy.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)


def restored(tmp_path, graph) -> dict:
    text = graph if isinstance(graph, str) else json.dumps(graph)
    return settings_from_png(png_with(tmp_path, {"prompt": text, "workflow": json.dumps({"nodes": []})}))


def test_comfyuis_flux_dev_example_restores_its_settings(tmp_path):
    settings = restored(tmp_path, flux_dev_example(seed=1234))
    assert settings == {"prompt": PROMPT, "guidance": 3.5, "seed": 1234, "steps": 20, "sampler": "euler",
                        "schedule": "simple", "width": 1024, "height": 768, "lora_paths": ["Ink Style"],
                        "lora_scales": [0.8]}


def test_a_checkpoint_graph_with_primitives_and_chained_lora_loaders(tmp_path):
    settings = restored(tmp_path, checkpoint_example())
    assert "seed" not in settings  # ComfyUI's 64-bit seed: the studio's noise differs anyway, and its seeds are 32-bit
    assert settings["prompt"] == PROMPT and settings["guidance"] == 2.5 and settings["schedule"] == "beta"
    assert (settings["width"], settings["height"]) == (1024, 992)  # the nearest multiples of 16
    assert "negative_prompt" not in settings and "true_cfg_scale" not in settings  # CFG 1: no true CFG
    assert settings["lora_paths"] == ["detail", "watercolor"] and settings["lora_scales"] == [0.7, 1.2]
    assert settings["lora_text_encoder_scales"] == [0.4, 1.2]


def test_true_cfg_a_second_pass_and_comfyuis_sampler_names(tmp_path):
    graph = checkpoint_example()
    graph["7"]["inputs"]["text"] = "blurry, lowres"
    graph["31"]["inputs"].update(cfg=3.0, sampler_name="dpmpp_2m", scheduler="karras", seed=77)
    graph["50"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["31", 0], "scale_by": 1.5,
                                                                "upscale_method": "nearest-exact"}}
    graph["2"] = {"class_type": "KSampler", "inputs": {  # the hires pass: a lower node id, fed by the first sampler
        "seed": 78, "steps": 10, "cfg": 1.0, "sampler_name": "deis", "scheduler": "normal", "denoise": 0.4,
        "model": ["41", 0], "positive": ["35", 0], "negative": ["7", 0], "latent_image": ["50", 0]}}
    settings = restored(tmp_path, graph)
    assert (settings["seed"], settings["steps"], settings["sampler"], settings["schedule"]) == (77, 28, "dpm++2m",
                                                                                                "karras")
    assert settings["negative_prompt"] == "blurry, lowres" and settings["true_cfg_scale"] == 3.0
    graph["31"]["inputs"].update(sampler_name="deis", scheduler="ddim_uniform")  # ComfyUI's own: left out
    assert not {"sampler", "schedule"} & set(restored(tmp_path, graph))


def test_image_to_image_and_clip_text_encode_flux(tmp_path):
    graph = flux_dev_example()
    graph["27"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["60", 0], "vae": ["10", 0]}}
    graph["60"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    graph["17"]["inputs"]["denoise"] = 0.65
    graph["6"] = {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip_l": "fox", "t5xxl": PROMPT, "guidance": 4.0,
                                                                 "clip": ["11", 0]}}
    graph["22"]["inputs"]["conditioning"] = ["6", 0]
    settings = restored(tmp_path, graph)
    assert settings["image_strength"] == 0.35 and "width" not in settings  # the image's size
    assert settings["prompt"] == PROMPT and settings["guidance"] == 4.0


@pytest.mark.parametrize("graph, reason", [
    ("{not json", "it is not valid JSON"),
    ("[1, 2]", "it is not a ComfyUI graph"),
    (json.dumps({"1": {"class_type": "SaveImage", "inputs": {}}}), "it has no sampler the studio reads"),
    (json.dumps({"1": {"inputs": {}}}), "it holds no ComfyUI nodes"),
    ("[" * 100_000 + "]" * 100_000, "it is not valid JSON"),
])
def test_a_graph_that_is_no_use_is_refused_in_a_sentence(tmp_path, graph, reason):
    with pytest.raises(PresetError, match=f"^The ComfyUI workflow in the image cannot be read: {reason}"):
        restored(tmp_path, graph)


def test_links_that_loop_or_point_nowhere_end(tmp_path):
    graph = {"1": {"class_type": "KSampler", "inputs": {"seed": ["2", 0], "steps": 4, "positive": ["3", 0],
                                                        "model": ["4", 0], "latent_image": ["5", 0]}},
             "2": {"class_type": "Primitive", "inputs": {"value": ["2", 0]}},  # a primitive linking to itself
             "3": {"class_type": "FluxGuidance", "inputs": {"guidance": 2.0, "conditioning": ["3", 0]}},
             "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "a.safetensors", "model": ["4", 0]}},
             "5": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0]}}}
    settings = restored(tmp_path, graph)
    assert settings["steps"] == 4 and settings["guidance"] == 2.0
    assert "seed" not in settings and "prompt" not in settings
    assert settings["lora_paths"] == ["a"]  # found once, not once per loop
