"""A ComfyUI PNG's settings: the graph in its "prompt" chunk (ComfyUI's API format, as its SaveImage writes it) read
back along the links from its first sampler, in the layouts FLUX.1 users share (ComfyUI's own FLUX.1 examples, a
checkpoint with KSampler, true CFG, a second hires pass, image-to-image, LoRA loaders), and graphs that are no use
refused in a sentence. The other way, our text-to-image PNGs carry a graph made of ComfyUI's core nodes with their
inputs as ComfyUI declares them (ComfyUI itself is not installable here, so its node signatures are written out
below), which reads back as the request's settings."""

import json

import pytest
from PIL import Image, PngImagePlugin

from mflux_core.comfy_workflow import read_comfy_prompt
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
    ("[1, 2]", "it is not a JSON object"),
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


def test_odd_node_ids_and_values_are_read_past():
    graph = flux_dev_example(seed=5)
    graph["²"] = graph.pop(next(iter(graph)))  # an id str.isdigit() passes and int() refuses
    graph["9" * 5000] = {"class_type": "Note", "inputs": {}}  # an id past the digits Python reads
    sampler = next(node for node in graph.values() if node["class_type"] == "KSamplerSelect")
    sampler["inputs"]["sampler_name"] = ["not", "a", "name"]
    settings = read_comfy_prompt(json.dumps(graph)).settings
    assert settings["seed"] == 5 and "sampler" not in settings


# ----- the other way: our PNGs carry a graph ComfyUI opens ------------------------------------------

# ComfyUI's inputs of the nodes the studio writes (its nodes.py and comfy_extras), and how many outputs each has
COMFY_NODES = {
    "UNETLoader": ({"unet_name", "weight_dtype"}, 1), "DualCLIPLoader": ({"clip_name1", "clip_name2", "type"}, 1),
    "VAELoader": ({"vae_name"}, 1),
    "LoraLoader": ({"model", "clip", "lora_name", "strength_model", "strength_clip"}, 2),
    "CLIPTextEncode": ({"text", "clip"}, 1), "FluxGuidance": ({"conditioning", "guidance"}, 1),
    "EmptySD3LatentImage": ({"width", "height", "batch_size"}, 1), "LoadImage": ({"image"}, 2),
    "VAEEncode": ({"pixels", "vae"}, 1), "VAEDecode": ({"samples", "vae"}, 1),
    "KSampler": ({"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                  "latent_image", "denoise"}, 1),
    "ImageScaleBy": ({"image", "upscale_method", "scale_by"}, 1), "SaveImage": ({"images", "filename_prefix"}, 0),
    "ImageScale": ({"image", "upscale_method", "width", "height", "crop"}, 1),
}
COMFY_SAMPLERS = {"euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc"}  # in KSampler's list
COMFY_SCHEDULERS = {"simple", "beta", "karras", "exponential"}


def check_comfy_graph(graph: dict) -> None:
    """Every node one of ComfyUI's with exactly its inputs, every link to an output that node has."""
    for node in graph.values():
        inputs, _ = COMFY_NODES[node["class_type"]]
        assert set(node["inputs"]) == inputs, node
        for value in node["inputs"].values():
            if isinstance(value, list):
                source, index = value
                assert index < COMFY_NODES[graph[source]["class_type"]][1], (node, value)
        if node["class_type"] == "KSampler":
            assert node["inputs"]["sampler_name"] in COMFY_SAMPLERS
            assert node["inputs"]["scheduler"] in COMFY_SCHEDULERS


@pytest.mark.parametrize("fields", [
    dict(model="dev", prompt=PROMPT, seed=9, steps=20, width=1024, height=768, guidance=3.5),
    dict(model="my-finetune", prompt=PROMPT, seed=9, steps=8, width=512, height=512, guidance=2.0,
         lora_paths=("ink", "v2.style"), lora_scales=(0.7, 1.1), lora_text_encoder_scales=(0.5, 1.1),
         sampler="dpm++2m", schedule="karras", negative_prompt="blurry", true_cfg_scale=2.5,
         modules=("text_encoders/t5xxl_fp8_e4m3fn.safetensors", "vae/flux_vae.safetensors")),
    dict(model="dev", prompt=PROMPT, seed=9, steps=20, width=1024, height=1024, guidance=3.5, hires_scale=1.5,
         hires_strength=0.4, hires_prompt="sharper"),
    dict(model="dev", prompt=PROMPT, seed=9, steps=20, width=512, height=512, guidance=3.5,
         image_path="/outputs/inputs/img2img-1.png", image_strength=0.3, sampler="euler_a", schedule="beta"),
])
def test_our_text_to_image_pngs_carry_a_comfyui_graph_that_reads_back_as_their_settings(tmp_path, fields):
    from mflux_core.metadata import png_text_chunks
    from mflux_core.request import GenerationRequest

    request = GenerationRequest(tool="generate", **fields)
    chunks = png_text_chunks(request)
    graph = json.loads(chunks["prompt"])
    check_comfy_graph(graph)
    settings = restored(tmp_path, graph)
    expected = {key: value for key, value in fields.items() if key in ("prompt", "seed", "steps", "guidance", "sampler",
                                                                       "schedule", "negative_prompt", "true_cfg_scale",
                                                                       "image_strength")}
    expected.update(lora_paths=list(fields.get("lora_paths", ())), lora_scales=list(fields.get("lora_scales", ())))
    if "image_path" not in fields:
        expected.update(width=fields["width"], height=fields["height"])
    if "lora_text_encoder_scales" in fields:
        expected["lora_text_encoder_scales"] = list(fields["lora_text_encoder_scales"])
    assert {key: settings.get(key, []) for key in expected} == expected
    files = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert files["UNETLoader"]["unet_name"] == ("flux1-dev.safetensors" if fields["model"] == "dev" else
                                                "my-finetune.safetensors")
    loaders = (files["DualCLIPLoader"]["clip_name1"], files["DualCLIPLoader"]["clip_name2"],
               files["VAELoader"]["vae_name"])
    assert loaders == (("clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "flux_vae.safetensors")
                       if "modules" in fields else ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"))
    if "image_path" in fields:
        assert files["LoadImage"]["image"] == "img2img-1.png"  # ComfyUI's input folder holds it by name
        assert {key: files["ImageScale"][key] for key in ("width", "height", "crop")} == {
            "width": 512, "height": 512, "crop": "center"}  # crop and resize: scaled to cover, centre-cropped
    if "hires_scale" in fields:
        second = [node["inputs"] for node in graph.values() if node["class_type"] == "KSampler"][1]
        assert second["denoise"] == 0.4 and files["ImageScaleBy"] == {
            "image": files["ImageScaleBy"]["image"], "upscale_method": "lanczos", "scale_by": 1.5}


def test_what_comfyuis_core_nodes_do_not_say_the_same_gets_no_graph():
    from mflux_core.metadata import png_text_chunks
    from mflux_core.request import GenerationRequest

    base = GenerationRequest(tool="generate", model="dev", prompt=PROMPT, seed=1, steps=4, width=64, height=64)
    assert "prompt" in png_text_chunks(base)
    for other in (base.with_(tool="fill", image_path="a.png", masked_image_path="m.png"),
                  base.with_(variation_seed=5, variation_strength=0.3),
                  base.with_(hires_scale=2.0, hires_upscaler="4x-UltraSharp"),
                  base.with_(image_path="a.png", image_strength=0.5, resize_mode="resize and fill"),
                  base.with_(regions=({"box": [0, 0, 0.5, 1], "prompt": "a cat", "weight": 1.0},))):
        assert "prompt" not in png_text_chunks(other)


def test_the_cli_starts_from_a_comfyui_png_and_leaves_out_loras_it_does_not_have(tmp_path, capsys):
    from mflux_core.metadata import read_metadata_file
    from tests.parity import run_cli

    path = png_with(tmp_path, {"prompt": json.dumps(flux_dev_example(seed=5))})
    run_cli("generate", "--config-from-metadata", path, "--model", "demo", "--steps", 2, "--output", tmp_path / "o.png")
    request = read_metadata_file(tmp_path / "o.png")["request"]
    assert (request["prompt"], request["seed"], request["guidance"], request["steps"]) == (PROMPT, 5, 3.5, 2)
    assert request["lora_paths"] == [] and request["model"] == "demo"  # the flags given win
    assert "The LoRA 'Ink Style' in comfy.png is not in the LoRA library; it was left out." in capsys.readouterr().err


def test_the_cli_starts_from_a_forge_png_and_leaves_out_files_and_an_upscaler_it_does_not_have(tmp_path, capsys):
    """Every Forge FLUX.1 infotext names its VAE and text encoder files; most hires ones an upscaler model: the
    models folder lacking them refused the whole image (the page left them out)."""
    from mflux_core.metadata import read_metadata_file
    from tests.parity import run_cli

    path = png_with(tmp_path, {"parameters": "a lighthouse\nSteps: 20, Sampler: Euler, Distilled CFG Scale: 3.5, "
                                             "Seed: 12, Size: 64x64, Model: flux1-dev, Hires upscale: 2, Hires "
                                             "upscaler: 4x-UltraSharp, Module 1: ae, Module 2: clip_l, Module 3: "
                                             "t5xxl_fp16"})
    run_cli("generate", "--config-from-metadata", path, "--model", "demo", "--steps", 1, "--output", tmp_path / "o.png",
            "--models-dir", tmp_path / "models")
    request = read_metadata_file(tmp_path / "o.png")["request"]
    assert (request["seed"], request["hires_scale"], request["hires_upscaler"], request["modules"]) == \
        (12, 2, "Lanczos", [])
    err = capsys.readouterr().err
    assert "The upscaler '4x-UltraSharp' is not in the models folder's upscalers/; Lanczos takes its place." in err
    assert "The VAE / text encoder file 't5xxl_fp16' in comfy.png is not in the models folder; it was left out." in err
