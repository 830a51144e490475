"""SwarmUI's, InvokeAI's and Draw Things' settings restore into the studio's (ComfyUI's graph:
test_comfy_workflow.py), as do A1111's in a JPEG's or WebP's EXIF: what each app writes for a FLUX.1 image, its names
mapped to ours, limits applied as for A1111's, and JSON that is no use refused in a sentence (a SwarmUI PNG's JSON was
read as an A1111 text before, its whole JSON becoming the prompt)."""

import json
from xml.sax.saxutils import escape

import pytest
from PIL import ExifTags, Image, PngImagePlugin

from mflux_core.presets import PresetError, settings_from_png

PROMPT = "a lighthouse at dusk, film photo"


def png(tmp_path, key: str, value) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    path = tmp_path / f"{key}.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)


def swarm(**changes) -> dict:
    """What SwarmUI writes into "parameters" for a FLUX.1-dev image (list values as text, as it writes them)."""
    params = {"prompt": PROMPT, "negativeprompt": "", "model": "flux1-dev", "seed": 305223794, "steps": 25,
              "cfgscale": 1.0, "aspectratio": "Custom", "width": 832, "height": 1216, "sampler": "euler",
              "scheduler": "simple", "fluxguidancescale": 3.5, "loras": ["Flux/ink-style", "detail"],
              "loraweights": ["0.8", "1.2"], "swarm_version": "0.9.6.2", "date": "2026-11-30"}
    return {"sui_image_params": {**params, **changes}, "sui_extra_data": {"date": "2026-11-30"}}


def invoke(**changes) -> dict:
    """InvokeAI's core metadata of a FLUX.1 image."""
    metadata = {"generation_mode": "flux_txt2img", "positive_prompt": PROMPT, "negative_prompt": "", "width": 1024,
                "height": 768, "seed": 1234, "steps": 30, "cfg_scale": 1.0, "guidance": 4.0, "scheduler": "euler",
                "model": {"key": "abc", "hash": "blake3:00", "name": "FLUX Dev", "base": "flux", "type": "main"},
                "loras": [{"model": {"key": "k", "hash": "h", "name": "ink-style", "base": "flux", "type": "lora"},
                           "weight": 0.75}],
                "app_version": "5.4.0"}
    return {**metadata, **changes}


def test_a_swarmui_png_restores_its_settings(tmp_path):
    settings = settings_from_png(png(tmp_path, "parameters", swarm()))
    assert settings == {"prompt": PROMPT, "seed": 305223794, "steps": 25, "width": 832, "height": 1216,
                        "sampler": "euler", "schedule": "simple", "guidance": 3.5,
                        "lora_paths": ["ink-style", "detail"], "lora_scales": [0.8, 1.2]}
    other = settings_from_png(png(tmp_path, "parameters", swarm(
        negativeprompt="blurry", cfgscale=4.0, sampler="dpmpp_2m", scheduler="karras", initimagecreativity=0.6,
        seed=2**40, loras=[], width=1000)))
    assert other["negative_prompt"] == "blurry" and other["true_cfg_scale"] == 4.0
    assert (other["sampler"], other["schedule"], other["image_strength"]) == ("dpm++2m", "karras", 0.4)
    assert "seed" not in other and "lora_paths" not in other and other["width"] == 992  # SwarmUI's 64-bit seed


def test_an_invokeai_png_restores_its_settings(tmp_path):
    settings = settings_from_png(png(tmp_path, "invokeai_metadata", invoke()))
    assert settings == {"prompt": PROMPT, "seed": 1234, "steps": 30, "width": 1024, "height": 768,
                        "sampler": "euler", "guidance": 4.0, "lora_paths": ["ink-style"], "lora_scales": [0.75]}
    img2img = settings_from_png(png(tmp_path, "invokeai_metadata", invoke(
        generation_mode="flux_img2img", strength=0.7, scheduler="dpmpp_2m_k", negative_prompt="text", cfg_scale=3)))
    assert img2img["image_strength"] == 0.3 and (img2img["sampler"], img2img["schedule"]) == ("dpm++2m", "karras")
    assert img2img["negative_prompt"] == "text" and img2img["true_cfg_scale"] == 3.0


@pytest.mark.parametrize("key, text, message", [
    ("parameters", '{"sui_image_params": [1]}', "The SwarmUI settings in the image cannot be read: it has no "
                                                "sui_image_params."),
    ("parameters", '{"sui_image_params": ' + "[" * 50_000, "The SwarmUI settings in the image cannot be read: it is "
                                                            "not valid JSON."),
    ("invokeai_metadata", "[1, 2]", "The InvokeAI settings in the image cannot be read: it is not a JSON object."),
])
def test_settings_that_are_no_use_are_refused_in_a_sentence(tmp_path, key, text, message):
    with pytest.raises(PresetError, match=f"^{message}$"):
        settings_from_png(png(tmp_path, key, text))


def test_values_of_the_wrong_kind_are_left_out(tmp_path):
    settings = settings_from_png(png(tmp_path, "invokeai_metadata", invoke(
        seed="1", steps=-3, width=1024, height=None, guidance=float("nan"), scheduler=7, loras=[{"model": 3}, 5])))
    assert settings == {"prompt": PROMPT}


def draw_things(**changes) -> dict:
    """The JSON Draw Things writes for a FLUX.1 [dev] image: short keys, and its whole configuration under "v2"."""
    params = {"c": PROMPT, "uc": "blurry", "model": "flux_1_dev_q8p.ckpt", "sampler": "Euler A Trailing",
              "scale": 3.5, "seed": 4279116933, "seed_mode": "Scale Alike", "shift": 3.16, "size": "1024x768",
              "steps": 20, "strength": 1, "mask_blur": 1.5,
              "v2": {"guidanceEmbed": 3.5, "guidanceScale": 3.5, "speedUpWithGuidanceEmbed": True, "width": 1024,
                     "height": 768, "sampler": 15, "seedMode": 2,
                     "loras": [{"file": "ink_style_lora_f16.ckpt", "weight": 0.8, "mode": "all"}]}}
    return {**params, **changes}


def draw_things_xmp(params: dict, as_attribute: bool = False) -> str:
    """Draw Things' XMP packet: the A1111-like summary in dc:description, the JSON in exif:UserComment (or, as XMP
    also allows, the comment as an attribute of rdf:Description)."""
    comment = escape(json.dumps(params), {'"': "&quot;"})
    summary = f"{escape(PROMPT)}&#xA;-blurry&#xA;Steps: 20, Sampler: Euler A Trailing, Guidance Scale: 3.5, Seed: 1"
    attribute = f' exif:UserComment="{comment}"' if as_attribute else ""
    element = "" if as_attribute else (f'<exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">{comment}</rdf:li>'
                                       "</rdf:Alt></exif:UserComment>")
    return f"""<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 6.0.0">
   <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <rdf:Description rdf:about=""
            xmlns:dc="http://purl.org/dc/elements/1.1/"
            xmlns:xmp="http://ns.adobe.com/xap/1.0/"
            xmlns:exif="http://ns.adobe.com/exif/1.0/"{attribute}>
         <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{summary}</rdf:li></rdf:Alt></dc:description>
         <xmp:CreatorTool>Draw Things</xmp:CreatorTool>
         {element}
      </rdf:Description>
   </rdf:RDF>
</x:xmpmeta>"""


def image_with_xmp(tmp_path, name: str, xmp: str) -> str:
    path = tmp_path / name
    if name.endswith(".png"):
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    else:
        Image.new("RGB", (8, 8)).save(path, xmp=xmp.encode())
    return str(path)


@pytest.mark.parametrize("name", ["dt.png", "dt.jpg", "dt.webp"])
def test_a_draw_things_image_restores_its_settings(tmp_path, name):
    settings = settings_from_png(image_with_xmp(tmp_path, name, draw_things_xmp(draw_things())))
    # its default speed-up runs without CFG: the text guidance is FLUX.1's, the negative prompt had no effect
    assert settings == {"prompt": PROMPT, "seed": 4279116933, "steps": 20, "width": 1024, "height": 768,
                        "guidance": 3.5, "sampler": "euler_a", "lora_paths": ["ink_style"], "lora_scales": [0.8]}


def test_draw_things_guidance_embed_true_cfg_strength_and_older_keys(tmp_path):
    params = draw_things(scale=4.5, sampler="DPM++ 2M Karras", strength=0.65, size=None,
                         lora=[{"model": "detail.safetensors", "weight": 1.25}],
                         v2={**draw_things()["v2"], "speedUpWithGuidanceEmbed": False, "guidanceEmbed": 2.5,
                             "width": 832, "height": 1216})
    settings = settings_from_png(image_with_xmp(tmp_path, "cfg.png", draw_things_xmp(params, as_attribute=True)))
    assert settings == {"prompt": PROMPT, "negative_prompt": "blurry", "true_cfg_scale": 4.5, "guidance": 2.5,
                        "seed": 4279116933, "steps": 20, "width": 832, "height": 1216, "sampler": "dpm++2m",
                        "schedule": "karras", "image_strength": 0.35, "lora_paths": ["detail"],
                        "lora_scales": [1.25]}
    unknown = settings_from_png(image_with_xmp(tmp_path, "tcd.png", draw_things_xmp(draw_things(
        sampler="TCD Trailing", size="1024xx768", seed=2**40, v2={"width": "1024"}))))
    assert "sampler" not in unknown and "width" not in unknown and "seed" not in unknown


@pytest.mark.parametrize("xmp, message", [
    (draw_things_xmp(draw_things())[:-20], "its XMP is not valid XML"),
    (draw_things_xmp(draw_things()).replace('{&quot;c', '[{&quot;c').replace("}</rdf:li>", "}]</rdf:li>"),
     "it is not a JSON object"),
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "Draw Things UserComment">]><x>&a;</x>', "its XMP declares a DTD"),
    ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><!-- Draw Things wrote no UserComment --></x:xmpmeta>',
     "its XMP has no exif:UserComment"),
])
def test_draw_things_xmp_that_is_no_use_is_refused_in_a_sentence(tmp_path, xmp, message):
    with pytest.raises(PresetError, match=f"^The Draw Things settings in the image cannot be read: {message}.$"):
        settings_from_png(image_with_xmp(tmp_path, "bad.png", xmp))


def test_xmp_of_another_app_carries_no_settings(tmp_path):
    photoshop = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                 '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Adobe Photoshop"/>'
                 "</rdf:RDF></x:xmpmeta>")
    with pytest.raises(PresetError, match="carries no settings"):
        settings_from_png(image_with_xmp(tmp_path, "photo.jpg", photoshop))


A1111_TEXT = ("a red fox in snow, <lora:ink-style:0.6>\nNegative prompt: blur\nSteps: 12, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 77, Size: 896x1152, "
              "Model: flux1-dev")


@pytest.mark.parametrize("name, encoding", [("a.jpg", "utf-16-be"), ("a.webp", "utf-16-be"), ("le.jpg", "utf-16-le"),
                                            ("ascii.jpg", "ascii")])
def test_an_a1111_jpeg_or_webp_restores_as_its_png_does(tmp_path, name, encoding):
    """A1111 and Forge save JPEG and WebP with their text in the EXIF UserComment (piexif: "UNICODE", UTF-16
    big-endian); some tools write it little-endian or as ASCII."""
    exif = Image.Exif()
    prefix = b"ASCII\0\0\0" if encoding == "ascii" else b"UNICODE\0"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = prefix + A1111_TEXT.encode(encoding)
    Image.new("RGB", (8, 8)).save(tmp_path / name, exif=exif)
    expected = settings_from_png(png(tmp_path, "parameters", A1111_TEXT))
    assert expected["prompt"].startswith("a red fox in snow") and expected["lora_paths"] == ["ink-style"]
    assert settings_from_png(tmp_path / name) == expected
