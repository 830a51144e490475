"""Face fix (A1111's and Forge's ADetailer extension): after a text-to-image or image-to-image run, each face found
in the image (images/faces.py) is inpainted again at the model's own size, as Fill's "Only masked" does on a base
model (tools/fill.py: the box around the face and its padding cut out, regenerated image-to-image at the face fix's
denoising strength with the face prompt or the image's own, pasted back over the mask's blur), largest face first.
A small face in a large picture gets a whole model-sized pass of detail, which is what ADetailer is used for.

Settings (request.extra, tools/specs.py): FACE_FIX on, FACE_FIX_PROMPT (empty: the image's prompt),
FACE_FIX_STRENGTH (A1111's denoising strength, ADetailer's default 0.4), FACE_FIX_PADDING (its "inpaint only
masked padding", 32 px as A1111's).
"""

import time
from typing import TYPE_CHECKING, Callable

from mflux_core.errors import InvalidRequest
from mflux_core.events import Report, passes_report
from mflux_core.images.faces import face_boxes, face_mask
from mflux_core.images.masks import soft_mask
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import (
    DEFAULT_FACE_FIX_STRENGTH, MAX_FACE_FIX_PADDING, MAX_PROMPT_CHARS, ONLY_MASKED_PADDING,
)
from mflux_core.tools.fill import masked_area_inputs
from mflux_core.tools.specs import FACE_FIX, FACE_FIX_PADDING, FACE_FIX_PROMPT, FACE_FIX_STRENGTH, FACE_FIX_TOOLS

if TYPE_CHECKING:
    from mflux_core.manager import GenerationResult, ModelManager

MASK_BLUR = 4  # ADetailer's ad_mask_blur
MAX_FACES = 8


def wants_face_fix(request: GenerationRequest) -> bool:
    return bool(request.extra.get(FACE_FIX))


def face_fix_settings(request: GenerationRequest) -> tuple[str, float, int]:
    """(prompt, denoising strength, padding), refused in a sentence when out of range."""
    if request.tool not in FACE_FIX_TOOLS:
        raise InvalidRequest(f"The face fix follows text-to-image and image-to-image (Generate, ControlNet), not "
                             f"{request.tool}.")
    prompt = request.extra.get(FACE_FIX_PROMPT) or ""
    strength = request.extra.get(FACE_FIX_STRENGTH, DEFAULT_FACE_FIX_STRENGTH)
    padding = request.extra.get(FACE_FIX_PADDING, ONLY_MASKED_PADDING)  # ADetailer's inpaint padding is A1111's
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The face fix prompt must be text of at most {MAX_PROMPT_CHARS} characters.")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InvalidRequest(f"The face fix denoising strength must be above 0 and at most 1, not {strength!r}.")
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= MAX_FACE_FIX_PADDING:
        raise InvalidRequest(f"The face fix padding must be a whole number of pixels from 0 to "
                             f"{MAX_FACE_FIX_PADDING}, not {padding!r}.")
    return prompt, float(strength), padding


def face_fix_request(request: GenerationRequest) -> GenerationRequest:
    """The Fill request each face is inpainted with: the image's model, seed, steps, sampler and LoRAs; the face
    prompt; "Only masked" at the face fix's padding and strength; nothing of the first run's own tool."""
    prompt, strength, padding = face_fix_settings(request)
    return GenerationRequest(
        tool="fill", model=request.model, base_model=request.base_model, modules=request.modules,
        prompt=prompt or request.prompt,
        seed=request.seed, steps=request.steps, guidance=request.guidance, lora_paths=request.lora_paths,
        lora_scales=request.lora_scales, lora_text_encoder_scales=request.lora_text_encoder_scales,
        quantize=request.quantize, dtype=request.dtype, max_sequence_length=request.max_sequence_length,
        vae_tiling=request.vae_tiling, vae_tile_size=request.vae_tile_size, sampler=request.sampler,
        schedule=request.schedule,
        image_strength=round(1 - strength, 6) or None, keep_unmasked=True, only_masked_padding=padding,
        mask_blur=MASK_BLUR,
    ).validated()


def face_fixed(manager: "ModelManager", result: "GenerationResult", report: Report | None,
               cancelled: Callable[[], bool] | None) -> "GenerationResult":
    """`result` with its faces inpainted again (with the manager's lock held by the caller); the image before the
    fix is the result's `before`. No face found: the image as it was, with a note."""
    request = result.request
    fix = face_fix_request(request)
    boxes = face_boxes(result.image)[:MAX_FACES]
    model = manager._prepared_model(request, cancelled)
    started = (time.perf_counter() - result.seconds, manager.run_started()[1])
    image, plan = result.image, None
    for index, box in enumerate(boxes, 1):
        inputs = masked_area_inputs(model, fix, image, soft_mask(face_mask(image.size, box), MASK_BLUR))
        plan = manager.resident.plan_run(model, inputs)
        steps = inputs.request.steps or model.default_steps
        with manager.resident.budget.holding(plan):
            image = manager.run_inputs(model, inputs, passes_report(report, 0, steps,
                                                                    f"face fix {index} of {len(boxes)}"), cancelled)
    note = f"Face fix: {len(boxes)} face{'s' * (len(boxes) != 1)} inpainted again." if boxes else \
        "Face fix: no face found (it finds upright, roughly frontal faces of at least a 16th of the shorter side)."
    kept = {key: value for key, value in result.metadata.items()
            if key not in ("format", "request", "steps", "guidance", "notes")}
    return manager.finished(image, request, model, result.metadata.get("guidance"), plan, started,
                            before=result.image if boxes else result.before, notes=(*result.notes, note),
                            recorded=kept)
