"""The tool registry: one ToolSpec per tool. The CLI's sub-commands, the page's shared controls, request
validation and the list of tools the APIs offer are all derived from it.

Adding a tool = its module in mflux_core/tools/ (with `build_inputs(model, request, engine) -> ToolInputs`)
plus one ToolSpec here, plus a panel in webui/panels/ for its page layout.

This module holds data only and imports no tool module (each is imported on first use), so
mflux_core.request can take the tool names from it without an import cycle.
"""

import importlib
from dataclasses import dataclass
from pathlib import Path

from mflux_core.controlnet_units import MAX_UNITS
from mflux_core.settings_schema import (
    MASKED_CONTENTS, MAX_HIRES_SCALE, ONLY_MASKED_PADDING, PNG_INFO_FIELDS, UNION_CONTROL_TYPES,
)
from mflux_core.images.resize_modes import RESIZE_MODES

REQUEST, EXTRA, COMMAND = "request", "extra", "command"  # where a flag's value goes (Flag.into)
KONTEXT_AUTO_RESIZE = "kontext_auto_resize"  # request.extra's key for --kontext-auto-resize
# the upscale tool's request.extra keys: tiles tile_size px wide and tile_height (absent: as many) px high
TILE_SIZE, TILE_HEIGHT, TILE_OVERLAP, UPSCALER = "tile_size", "tile_height", "tile_overlap", "upscaler"
UPSCALE_FACTOR = "upscale_factor"  # the upscale tool's: without a size, the output is the input's size times it
UPSCALER_ONLY = "upscaler_only"  # the upscale tool's: the upscaler's image alone (mflux_core/upscaler_only.py)
MASKED_CONTENT = "masked_content"  # Fill's: what the masked area starts from with an image strength
# the face fix after Generate and ControlNet (mflux_core/face_fix.py), request.extra keys
FACE_FIX, FACE_FIX_PROMPT, FACE_FIX_STRENGTH, FACE_FIX_PADDING = (
    "face_fix", "face_fix_prompt", "face_fix_strength", "face_fix_padding")
FACE_FIX_TOOLS = ("generate", "controlnet")  # the tools it follows: their model is a base model, which can inpaint
BASE_KINDS = ("base", "single-file")  # registry.ModelEntry kinds that text-to-image models have


@dataclass(frozen=True)
class Flag:
    """One input of a tool, as a CLI flag: its value goes into a GenerationRequest field (REQUEST), a key of
    request.extra (EXTRA), or stays with the command (COMMAND, e.g. an extra file to write)."""

    flag: str  # "--image-path"
    help: str
    into: str = REQUEST
    field: str = ""  # the request field or extra key; default: the flag's name ("--image-path" -> "image_path")
    kind: str = "text"  # text, number, paths, numbers, switch, toggle (--x / --no-x), whole, region,
    #                     region_mask, controlnet_unit
    choices: tuple[str, ...] = ()
    bare: int | None = None  # the value of the flag given without one (a "whole" flag whose value is optional)
    hidden: bool = False  # accepted for mflux compatibility, not listed in --help
    aliases: tuple[str, ...] = ()  # other spellings of the flag (mflux's newer names)

    @property
    def name(self) -> str:
        return self.field or self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    summary: str  # one line, for the CLI's help
    module: str  # mflux_core.tools.<module> has build_inputs
    model: str  # the FLUX.1 model (alias) it is made for
    model_kinds: tuple[str, ...]  # the registry.ModelEntry kinds it can run on
    guidance: float  # its default guidance, for models with a guidance embedding
    flags: tuple[Flag, ...] = ()
    demo_model: str | None = None  # the shipped demo model it falls back to offline, if one fits
    sized_by_input: bool = False  # no width/height: the tool sizes the output from an input image
    prompt_optional: bool = False  # the tool supplies a prompt when none is given
    true_cfg: bool = False  # negative prompt and true CFG scale, where the diffusers pipeline it follows has them
    prompt_template: str = ""  # the tool wraps the user's words in it ({instruction}); see default_sequence_length
    prompt_pictures: int = 1  # pictures its prompt describes (a diptych's two panels); see default_sequence_length
    # kinds it also runs on, never its default model: base models, with a control LoRA (Depth) or by keeping the image's
    # latents outside the mask at every step (Fill: diffusers' FluxInpaintPipeline)
    also_kinds: tuple[str, ...] = ()
    base_guidance: float | None = None  # its default guidance on a model of also_kinds (None: `guidance`)

    def build_inputs(self, model, request, engine):
        """The tool's ToolInputs for a resolved request (mflux_core.generation.ToolInputs)."""
        return importlib.import_module(f"mflux_core.tools.{self.module}").build_inputs(model, request, engine)


# The ten LoRAs published in ali-vilab/In-Context-LoRA: style -> file in that repo (as mflux's in_context_loras.py).
IN_CONTEXT_LORA_STYLES = {
    "couple": "couple-profile.safetensors",
    "storyboard": "film-storyboard.safetensors",
    "font": "font-design.safetensors",
    "home": "home-decoration.safetensors",
    "illustration": "portrait-illustration.safetensors",
    "portrait": "portrait-photography.safetensors",
    "ppt": "ppt-templates.safetensors",
    "sandstorm": "sandstorm-visual-effect.safetensors",
    "sparklers": "sparklers-visual-effect.safetensors",
    "identity": "visual-identity-design.safetensors",
}
# IC-Edit's diptych prompt, as its LoRA was trained (River-Zhang/ICEdit; mflux's generate_in_context_edit.py).
IC_EDIT_TEMPLATE = ("A diptych with two side-by-side images of the same scene. "
                    "On the right, the scene is exactly the same as on the left but {instruction}")
FULL_DIPTYCH = Flag("--save-full-image", "also write the whole diptych (context left, result right) as "
                    "<output>_full.png, as mflux does (the page's 'Keep the whole diptych' shows it instead)",
                    into=EXTRA, kind="switch")


def controlnet_flags(default_name: str, default_strength: float, default_type: str) -> tuple[Flag, ...]:
    return (Flag("--controlnet-path", f"the ControlNet: folder, alias or repo id (default: {default_name})",
                 into=EXTRA),
            Flag("--controlnet-strength", f"how strongly the ControlNet steers, 0 to 2 (default {default_strength})",
                 kind="number"),
            Flag("--controlnet-mode", f"a Union ControlNet's control type (default {default_type})", into=EXTRA,
                 choices=UNION_CONTROL_TYPES))


HIRES_FLAGS = (
    Flag("--hires-scale", f"hires fix: upscale the image this many times (1 to {MAX_HIRES_SCALE}), then run an "
         "image-to-image pass at that size (default: off)", kind="number"),
    Flag("--hires-steps", "hires fix: steps of the second pass (default: the first pass's)", kind="whole"),
    Flag("--hires-strength", "hires fix: A1111's denoising strength of the second pass, above 0 to 1 (default 0.5)",
         kind="number"),
    Flag("--hires-upscaler", "hires fix: how the image is upscaled (default Lanczos; 'ControlNet upscaler' also "
         "steers the second pass through jasperai's Upscaler ControlNet, which must be on disk; or the name of an "
         "upscaler model in the models folder's upscalers/, e.g. 4x-UltraSharp: `mflux-studio upscalers` lists them)"),
    Flag("--hires-prompt", "hires fix: the second pass's prompt (default: the prompt)"),
)

FACE_FIX_FLAGS = (
    Flag("--face-fix", "then inpaint each face again at the model's own size, as A1111's ADetailer does (faces found "
         "by OpenCV's frontal-face detector)", into=EXTRA, kind="switch"),
    Flag("--face-fix-prompt", "the face fix's prompt (default: the prompt)", into=EXTRA),
    Flag("--face-fix-strength", "the face fix's denoising strength, above 0 to 1 (default 0.4)", into=EXTRA,
         kind="number"),
    Flag("--face-fix-padding", "pixels of context around each face (default 32)", into=EXTRA, kind="whole"),
)

RESIZE_FLAG = Flag("--resize-mode", "an input image of another size than the output: 'crop and resize' (default: "
                   "scale to cover, centre-crop), 'just resize' (stretch) or 'resize and fill' (scale to fit, "
                   "stretch the edges into the rest), as A1111's resize modes",
                   choices=RESIZE_MODES)
CANNY_FLAGS = (Flag("--canny-low", "Canny low threshold, OpenCV's units (default 100)", into=EXTRA, kind="number"),
               Flag("--canny-high", "Canny high threshold, OpenCV's units (default 200)", into=EXTRA, kind="number"))
FILL_KINDS = ("fill",)
PNG_INFO_FLAGS = tuple(label.lower().replace(" ", "-") for label in PNG_INFO_FIELDS)  # "negative-prompt"


def batch_flags(what: str) -> tuple[Flag, ...]:
    """A tool's flags for a batch of input images (A1111's img2img "Batch"; mflux_core/image_batch.py)."""
    return (Flag("--image-dir", f"A1111's {what} on each image directly in this folder, by name, all with the same "
                 "seed, each saved as <output>_<image name>.png", into=COMMAND),
            Flag("--png-info", "with --image-dir, take these from each image's PNG info (its prompts are added after "
                 "--prompt's)", into=COMMAND, kind="paths", choices=PNG_INFO_FLAGS))


TOOL_SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in (
    ToolSpec("generate", "text-to-image, or image-to-image with --image-path", "generate", "schnell", BASE_KINDS,
             guidance=3.5, demo_model="demo", true_cfg=True, flags=(
                 Flag("--image-path", "input image for image-to-image"),
                 Flag("--image-strength", "how much of the input image is kept, 0 to below 1 (default 0.4)",
                      kind="number"),
                 *batch_flags("img2img batch: image-to-image"),
                 Flag("--region", "regional prompt 'x,y,w,h[,weight]:prompt' (fractions of the image when all "
                      "four are at most 1, else pixels); repeat for up to 4 regions", field="regions", kind="region"),
                 Flag("--region-mask", "regional prompt 'MASK.png[,weight]:prompt' (white = the region)",
                      field="regions", kind="region_mask"),
                 Flag("--region-strength", "how strictly regions keep apart in attention, 0 to 1 (default 1)",
                      kind="number"),
                 RESIZE_FLAG, *HIRES_FLAGS, *FACE_FIX_FLAGS)),
    ToolSpec("fill", "inpaint inside a mask or outpaint a padded canvas (FLUX.1-Fill, or any base model)", "fill",
             "fill", FILL_KINDS, guidance=30.0, demo_model="demo-fill", sized_by_input=True, also_kinds=BASE_KINDS,
             base_guidance=3.5, flags=(
                 Flag("--image-path", "the image to fill"),
                 Flag("--image-strength", "start from the image instead of pure noise, keeping this much of it "
                      "(default: off)", kind="number"),
                 Flag("--masked-content", "with --image-strength, what the masked area starts from: 'original' (the "
                      "image as it is, default) or 'fill' (painted from the colours around it), as A1111's masked "
                      "content", into=EXTRA, choices=MASKED_CONTENTS),
                 Flag("--masked-image-path", "mask image: white = regenerate"),
                 *batch_flags("inpaint batch: Fill"),
                 Flag("--mask-dir", "with --image-dir, the masks: each found by its image's name (frame1.png's is "
                      "frame1.png, .jpg, ...), or the one mask in the folder for every image", into=COMMAND),
                 Flag("--outpaint-padding", "outpaint: padding top,right,bottom,left in px or %% ('0,30%%,20%%,0'); "
                      "the output is the padded canvas, or --width/--height with the canvas resized to them"),
                 Flag("--keep-unmasked", "paste the original back outside a feathered mask (off: the image equals "
                      "diffusers')", kind="switch"),
                 Flag("--only-masked", "inpaint only the masked area and this many pixels of context around it "
                      f"(A1111's 'Only masked'; given bare: {ONLY_MASKED_PADDING}), at --width/--height (default: its "
                      "shape at the model's native area), pasted back into the image at the image's size", kind="whole",
                      field="only_masked_padding", bare=ONLY_MASKED_PADDING),
                 Flag("--mask-blur", "blur the mask by this many pixels (A1111's mask blur): a smoother area to paint "
                      "and, with --keep-unmasked or --only-masked, a softer paste", kind="whole"),
                 RESIZE_FLAG)),
    ToolSpec("depth", "restyle with the layout of a depth map or of Canny edges (FLUX.1-Depth / -Canny, or dev "
             "with BFL's Depth / Canny LoRA)", "depth", "depth", ("depth",), guidance=10.0, demo_model="demo-depth",
             sized_by_input=True, also_kinds=("base",), flags=(
                 Flag("--depth-image-path", "the control image: a depth map (near = bright), or for a Canny model an "
                      "edge map"),
                 Flag("--image-path", "a photo to estimate the depth map from (or to take Canny edges from)"),
                 Flag("--canny-edges", "take the photo's Canny edges instead of its depth map (FLUX.1-Canny-dev, or "
                      "dev with BFL's Canny LoRA)", into=EXTRA, kind="switch"), *CANNY_FLAGS, RESIZE_FLAG)),
    ToolSpec("kontext", "edit a reference image by instruction (FLUX.1-Kontext)", "kontext", "kontext", ("kontext",),
             guidance=2.5, demo_model="demo-kontext", sized_by_input=True, true_cfg=True, flags=(
                 Flag("--image-path", "the reference image"),
                 Flag("--image-paths", "several reference images (after --image-path's, if given), side by side at "
                      "the first one's height as one reference, as ComfyUI stitches them for Kontext", kind="paths",
                      field="reference_image_paths"),
                 Flag("--kontext-auto-resize", "read the reference at the resolution Kontext was trained on closest "
                      "to its shape (about 1 MP; the output's size unless one is given), as diffusers and ComfyUI do; "
                      "--no-kontext-auto-resize: at its own size; neither (default): resize only a reference larger "
                      "than that resolution", field=KONTEXT_AUTO_RESIZE, into=EXTRA, kind="toggle"))),
    ToolSpec("controlnet", "follow the Canny edges of a control image (FLUX.1 ControlNet on dev or schnell)",
             "controlnet", "dev", BASE_KINDS, guidance=3.5, demo_model="demo", sized_by_input=True, true_cfg=True,
             flags=(
                 *controlnet_flags("canny (InstantX/FLUX.1-dev-Controlnet-Canny)", 0.4, "canny"),
                 Flag("--controlnet-image-path", "the control image; its Canny edges steer the layout (a Union "
                      "ControlNet's depth: a photo, its depth map estimated)"),
                 Flag("--image-path", "an input image to start from (image-to-image, steered by the edges)"),
                 Flag("--image-strength", "how much of the input image is kept, 0 to below 1 (default 0.4)",
                      kind="number"),
                 Flag("--controlnet-save-canny", "also save what the ControlNet saw (the edges; a Union "
                      "ControlNet's control image) as <output>_controlnet_<type>.png", into=COMMAND, kind="switch"),
                 Flag("--controlnet-skip-canny", "hand the control image to the ControlNet as it is (e.g. an edge "
                      "map made elsewhere)", into=EXTRA, kind="switch"),
                 *CANNY_FLAGS, RESIZE_FLAG, *HIRES_FLAGS, *FACE_FIX_FLAGS,
                 Flag("--controlnet-unit", "one more ControlNet at the same time, with its own control image: "
                      "IMAGE[,mode=TYPE][,strength=N][,path=CONTROLNET][,canny-low=N][,canny-high=N][,skip-canny] "
                      f"(defaults as above); repeat for up to {MAX_UNITS - 1}", kind="controlnet_unit",
                      field="controlnet_units"))),
    ToolSpec("upscale", "regenerate an image at a larger size (FLUX.1 upscaler ControlNet), whole or in tiles",
             "upscale", "dev", BASE_KINDS, guidance=3.5, demo_model="demo", sized_by_input=True, true_cfg=True, flags=(
                 *controlnet_flags("upscaler (jasperai/Flux.1-dev-Controlnet-Upscaler); demo-upscaler on a demo "
                                  "model", 0.6, "tile"),
                 Flag("--image-path", "the image to upscale (--controlnet-image-path works too)"),
                 Flag("--controlnet-image-path", "", hidden=True),
                 Flag("--upscale-factor", "without --width/--height: the output is the input's size times this "
                      "(default 2)", into=EXTRA, kind="number"),
                 Flag("--upscaler", "'ControlNet upscaler' (default: the ControlNet steers), 'Lanczos' (the image "
                      "resampled, then regenerated image-to-image only, as A1111's SD upscale) or an upscaler model "
                      "of the models folder's upscalers/ (ESRGAN, 4x-UltraSharp, ...: the image upscaled by it, then "
                      "regenerated image-to-image)", into=EXTRA),
                 Flag("--image-strength", "start from the resampled image, keeping this much of it, 0 to below 1 "
                      "(default: off with the ControlNet upscaler in one piece, else 0.65)", kind="number"),
                 Flag("--tile-size", "upscale in tiles of this many px a side (a multiple of 16; given bare: the "
                      "model's own, 1024 for FLUX.1), each regenerated on its own and blended: outputs past one "
                      "pass's memory, as A1111's SD upscale / Ultimate SD Upscale", into=EXTRA, kind="whole", bare=0),
                 Flag("--tile-height", "with --tile-size, tiles this many px high (default: square; A1111's SD "
                      "upscale tiles are its width x height)", into=EXTRA, kind="whole"),
                 Flag("--tile-overlap", "px the tiles share with their neighbours (default an eighth of the tile, at "
                      "least 16)", into=EXTRA, kind="whole"),
                 Flag("--upscaler-only", "the upscaler's image itself, no FLUX.1 pass and no model loaded (A1111's "
                      "Extras): with an upscaler model, or Lanczos", into=EXTRA, kind="switch"), RESIZE_FLAG)),
    ToolSpec("redux", "variations of reference images, steered by the prompt (FLUX.1-Redux)", "redux", "dev",
             BASE_KINDS, guidance=2.5, demo_model="demo", true_cfg=True, flags=(
                 Flag("--redux-image-paths", "one or more reference images", kind="paths"),
                 Flag("--redux-image-strengths", "one weight per reference image for its tokens (default 1.0 each)",
                      kind="numbers"),
                 Flag("--redux-path", "the Redux weights: folder, alias or repo id (default: redux, "
                      "black-forest-labs/FLUX.1-Redux-dev; demo-redux on a demo model)", into=EXTRA))),
    ToolSpec("in-context", "In-Context LoRA: the reference on the left, a related image generated on the right "
             "(FLUX.1-Fill diptych)", "in_context_lora", "fill", FILL_KINDS, guidance=30.0, demo_model="demo-fill",
             sized_by_input=True, prompt_pictures=2,
             flags=(Flag("--image-path", "the reference image (left panel)", aliases=("--reference-image",)),
                    Flag("--lora-style", "one of ali-vilab/In-Context-LoRA's LoRAs (from the Hugging Face cache or "
                         "downloaded)", into=EXTRA, choices=tuple(IN_CONTEXT_LORA_STYLES)),
                    FULL_DIPTYCH)),
    ToolSpec("catvton", "virtual try-on: a garment (left) put on a person (right) inside the person mask "
             "(FLUX.1-Fill diptych)", "catvton", "fill", FILL_KINDS, guidance=30.0, demo_model="demo-fill",
             sized_by_input=True,
             prompt_optional=True, flags=(
                 Flag("--garment-image", "the garment (left panel, kept as is)", into=EXTRA,
                      field="garment_image_path"),
                 Flag("--person-image", "the person (right panel)", field="image_path"),
                 Flag("--person-mask", "mask on the person image: white = where the garment goes",
                      field="masked_image_path"),
                 Flag("--keep-unmasked", "paste the person back outside a feathered mask (off: the image equals "
                      "diffusers')", kind="switch"),
                 FULL_DIPTYCH)),
    ToolSpec("ic-edit", "IC-Edit: edit an image by instruction (RiverZ/normal-lora on FLUX.1-Fill, applied "
             "automatically)", "ic_edit", "fill", FILL_KINDS, guidance=30.0, demo_model="demo-fill",
             sized_by_input=True, prompt_template=IC_EDIT_TEMPLATE,
             prompt_optional=True, flags=(
                 Flag("--reference-image", "the image to edit (left panel; resized to 512 px wide, on a demo Fill "
                      "kept at its size)", field="image_path"),
                 Flag("--instruction", "the edit, e.g. 'make the sky pink' (wrapped in the diptych prompt)",
                      into=EXTRA),
                 Flag("--ic-edit-lora", "another IC-Edit LoRA file or name (default RiverZ/normal-lora; on a demo "
                      "Fill its own)", into=EXTRA),
                 FULL_DIPTYCH)),
)}
TOOL_NAMES = tuple(TOOL_SPECS)


def tool_spec(name: str) -> ToolSpec:
    return TOOL_SPECS[name]


def on_disk_or_demo(model: str, demo: str | None, models_dir: Path | None = None) -> str:
    """`model` when it is on disk (HF cache or models folder), else `demo` when there is one on disk, else `model`
    (downloaded on first use)."""
    from mflux_core.registry import on_disk

    if demo is not None and not on_disk(model, models_dir) and on_disk(demo):
        return demo
    return model


def default_model_for(tool: str, models_dir: Path | None = None) -> str:
    """The model a tool uses when the request names none: its FLUX.1 model when on disk, else its demo model."""
    spec = TOOL_SPECS[tool]
    return on_disk_or_demo(spec.model, spec.demo_model, models_dir)


DEPTH_ESTIMATOR, DEMO_DEPTH_ESTIMATOR = "depth-estimator", "demo-depth-estimator"


def default_depth_estimator(models_dir: Path | None = None) -> str:
    """Depth-Anything-V2-Small when on disk, else the demo estimator (trained on the demo's shapes world)."""
    return on_disk_or_demo(DEPTH_ESTIMATOR, DEMO_DEPTH_ESTIMATOR, models_dir)
