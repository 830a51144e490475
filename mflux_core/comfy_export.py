"""A text-to-image or image-to-image request as a ComfyUI graph (its API format, the "prompt" chunk ComfyUI's
SaveImage writes), so that a studio PNG dropped onto ComfyUI opens as the workflow that makes it there: FLUX.1 as
ComfyUI's own examples load it (UNETLoader, DualCLIPLoader, VAELoader under BFL's file names, or the VAE and text
encoder files the request chose), the LoRAs as
LoraLoader nodes, CLIPTextEncode with FluxGuidance, KSampler with the seed, steps, sampler and scheduler (CFG 1, or
the true CFG scale with the negative prompt), an empty latent of the size or the input image brought to it (scaled
and centre-cropped, or stretched) and encoded at the image strength, and a hires fix as a Lanczos upscale and a
second KSampler. ComfyUI's noise is not ours: the graph makes the same kind of image, not the same pixels.

What ComfyUI's core nodes do not express the same way (other tools, regional prompts, variation seeds, a hires fix
by an upscaler model or the ControlNet upscaler, A1111's "resize and fill") gets no graph. comfy_workflow.py reads
such graphs back.
"""

from pathlib import PurePath

from mflux_core.app_metadata import COMFY_SAMPLERS as SAMPLERS_OF_COMFY
from mflux_core.images.resize_modes import CROP_AND_RESIZE, JUST_RESIZE
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import DEFAULT_HIRES_STRENGTH, HIRES_UPSCALERS

COMFY_SAMPLERS = {ours: theirs for theirs, ours in SAMPLERS_OF_COMFY.items()}
MODEL_FILES = {"schnell": "flux1-schnell.safetensors", "dev": "flux1-dev.safetensors",
               "krea-dev": "flux1-krea-dev.safetensors"}  # BFL's file names for the aliases
TEXT_ENCODER_FILES = ("clip_l.safetensors", "t5xxl_fp16.safetensors")  # ComfyUI's FLUX.1 examples' names
VAE_FILE = "ae.safetensors"
COMFY_CROPS = {CROP_AND_RESIZE: "center", JUST_RESIZE: "disabled"}  # ImageScale's crop for our resize modes


def exportable(request: GenerationRequest) -> bool:
    return request.tool == "generate" and not request.regions and not request.variation_strength \
        and request.hires_upscaler in (None, HIRES_UPSCALERS[0]) \
        and (request.image_path is None or request.resize_mode in COMFY_CROPS)


def loader_files(modules: tuple[str, ...]) -> tuple[str, str, str]:
    """The CLIP-L, T5 and VAE file names of the loaders: the request's chosen files (told apart by their names, as
    people name them: clip_l..., t5xxl...; this module reads no file), else ComfyUI's examples' names."""
    names = [PurePath(module).name for module in modules]
    clip_l = next((name for name in names if "clip" in name.lower()), TEXT_ENCODER_FILES[0])
    t5 = next((name for name in names if "t5" in name.lower()), TEXT_ENCODER_FILES[1])
    vae = next((name for name in names if name not in (clip_l, t5)), VAE_FILE)
    return clip_l, t5, vae


def comfy_graph(request: GenerationRequest, steps: int, guidance: float | None) -> dict | None:
    """The request's graph in ComfyUI's API format, with the steps and guidance it ran (a request may leave them to
    the model); None when ComfyUI's core nodes cannot express it."""
    if not exportable(request):
        return None
    graph = _Graph()
    model = graph.add("UNETLoader", unet_name=model_file(request.model), weight_dtype="default"), 0
    clip_l, t5, vae_file = loader_files(request.modules)
    clip = graph.add("DualCLIPLoader", clip_name1=clip_l, clip_name2=t5, type="flux"), 0
    vae = graph.add("VAELoader", vae_name=vae_file)
    scales = request.lora_scales or (1.0,) * len(request.lora_paths)
    for path, scale, te_scale in zip(request.lora_paths, scales, request.lora_text_encoder_scales or scales):
        lora = graph.add("LoraLoader", lora_name=safetensors_name(path), strength_model=scale,
                         strength_clip=te_scale, model=model, clip=clip)
        model, clip = (lora, 0), (lora, 1)

    def conditioning(text: str) -> tuple[str, int]:
        encoded = graph.add("CLIPTextEncode", text=text, clip=clip)
        if guidance is None:  # a model without a guidance embedding (schnell)
            return encoded, 0
        return graph.add("FluxGuidance", guidance=guidance, conditioning=(encoded, 0)), 0

    positive = conditioning(request.prompt)
    negative = graph.add("CLIPTextEncode", text=request.negative_prompt if request.uses_true_cfg else "", clip=clip), 0
    cfg = request.true_cfg_scale if request.uses_true_cfg else 1.0
    sampling = dict(model=model, seed=request.seed, sampler_name=COMFY_SAMPLERS.get(request.sampler, "euler"),
                    scheduler=request.schedule, cfg=cfg, negative=negative)
    if request.image_path:
        image = graph.add("LoadImage", image=PurePath(request.image_path).name)
        sized = graph.add("ImageScale", image=(image, 0), upscale_method="lanczos", width=request.width,
                          height=request.height, crop=COMFY_CROPS[request.resize_mode])
        latent = graph.add("VAEEncode", pixels=(sized, 0), vae=(vae, 0))
        denoise = 1 - (request.image_strength or 0.0)
    else:
        latent = graph.add("EmptySD3LatentImage", width=request.width, height=request.height, batch_size=1)
        denoise = 1.0
    sampled = graph.add("KSampler", steps=steps, denoise=denoise, positive=positive, latent_image=(latent, 0),
                        **sampling)
    decoded = graph.add("VAEDecode", samples=(sampled, 0), vae=(vae, 0))
    if request.hires_scale is not None:
        upscaled = graph.add("ImageScaleBy", image=(decoded, 0), upscale_method="lanczos", scale_by=request.hires_scale)
        encoded = graph.add("VAEEncode", pixels=(upscaled, 0), vae=(vae, 0))
        second = conditioning(request.hires_prompt) if request.hires_prompt else positive
        sampled = graph.add("KSampler", steps=request.hires_steps or steps, positive=second,
                            denoise=request.hires_strength or DEFAULT_HIRES_STRENGTH, latent_image=(encoded, 0),
                            **sampling)
        decoded = graph.add("VAEDecode", samples=(sampled, 0), vae=(vae, 0))
    graph.add("SaveImage", images=(decoded, 0), filename_prefix="mflux-studio")
    return graph.nodes


def model_file(model: str | None) -> str:
    """The file ComfyUI would load for the studio's model: BFL's name for an alias, else the model's own name."""
    name = PurePath(model or "schnell").name
    return MODEL_FILES.get(name) or safetensors_name(name)


def safetensors_name(name: str) -> str:
    """A model's or LoRA's name (or path) as the file name ComfyUI lists it by."""
    name = PurePath(name).name
    return name if name.lower().endswith(".safetensors") else f"{name}.safetensors"


class _Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        """A node; an input given as (node id, output index) is a link."""
        key = str(len(self.nodes) + 1)
        self.nodes[key] = {"class_type": class_type,
                           "inputs": {name: list(value) if isinstance(value, tuple) else value
                                      for name, value in inputs.items()}}
        return key
