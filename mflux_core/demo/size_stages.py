"""The sizes stages: the finished 64 px family tuned on pictures of the sizes their recipe lists (recipe.py:
TUNED_SIZES), each stage with the loss of the 64 px stage it extends. Trained at 64 px only, the transformers
paint noise at any other size (their RoPE positions and token counts never seen); position rescaling was
measured and did not generalise (README, Demo models).

A run restored from demo_models/ (restore.py) holds every member's checkpoint, so these stages tune the
shipped family without retraining it: the shipped (distilled) base learns to be a teacher again at every
size, is distilled again from it (taught the shipped base's own velocity at 64x64), Fill, Depth and the
ControlNets are tuned from their shipped weights (the ControlNets beside the new base), and so is Kontext (whose
first round learned its edits again from the sized base). export.py writes a member from its sizes stage once
that stage is done, and lists the stage's sizes as its "_native_sizes" (less those it makes worse than the nearest
listed size).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from mflux_core.demo.controlnet_stage import train_controlnet
from mflux_core.demo.flow_stages import train_flow_stage
from mflux_core.demo.guidance_stages import train_guidance, train_teacher
from mflux_core.demo.recipe import StageSettings

SUFFIX = "-sizes"
SIZES_FILE = "sizes.json"  # written beside a sizes stage's checkpoint when the stage has finished
SHIPPED_BASE = "guidance"  # the 64 px recipe's distilled base, as restore.py restores the shipped one
BASE_STAGE = SHIPPED_BASE + SUFFIX  # the base the tuned ControlNets run beside
# The teacher starts from the shipped, distilled base, whose velocity at guidance 1 is the unguided conditional
# one a teacher gives: it trains (and teaches) there. Trained over the tools' guidance range (1 to 35, as the
# 64 px teacher, which started undistilled, was) its first losses were guided velocities of up to scale 9.5,
# and 1,000 steps left it and the base distilled from it painting blobs even at 64x64 (colour / region 0.62 /
# 0.52 of 50 held-out captions, against 0.88 / 1.00 shipped).
UNGUIDED = 1.0


@dataclass(frozen=True)
class SizesStage:
    extends: str  # the 64 px stage whose loss and kind of examples it uses
    start: str  # the checkpoint it starts from
    unlisted: tuple[tuple[int, int], ...] = ()  # trained at, not listed: measured worse than the nearest listed size


SIZES_STAGES = {
    "teacher" + SUFFIX: SizesStage("teacher", start=SHIPPED_BASE),  # the shipped base, unguided again
    BASE_STAGE: SizesStage("guidance", start="teacher" + SUFFIX),
    "fill" + SUFFIX: SizesStage("fill", start="fill"),
    "depth" + SUFFIX: SizesStage("depth", start="depth"),
    # Kontext's first round learned its edits again from the sized base (BASE_STAGE; tuned from the 64 px Kontext,
    # it had lost 64x64 and applied fewer edits elsewhere than that one snapped to 64x64); this second round tunes
    # the first's shipped weights to 128 px (README, "Sizes stages")
    "kontext" + SUFFIX: SizesStage("kontext", start="kontext", unlisted=((48, 48), (48, 112), (48, 128))),
    "canny" + SUFFIX: SizesStage("canny", start="canny"),
    "upscale" + SUFFIX: SizesStage("upscale", start="upscale"),
}


def train_at_sizes(run: Path, stage: str, recipe: dict[str, StageSettings], vae, workers: int,
                   max_seconds: float | None, compile: bool) -> bool:
    """Train (or resume) one sizes stage; True when it finished, and then its checkpoint folder lists the
    sizes it makes (finished_sizes: the recipe's sizes)."""
    settings, plan = recipe[stage], SIZES_STAGES[stage]
    common = dict(vae=vae, workers=workers, max_seconds=max_seconds, compile=compile, sizes=settings.sizes)
    if plan.extends == "teacher":
        finished = train_teacher(run, settings, settings, start=plan.start, checkpoint=stage,
                                 guidance_range=(UNGUIDED, UNGUIDED), **common)
    elif plan.extends == "guidance":
        finished = train_guidance(run, settings, recipe[plan.start], teacher_stage=plan.start, checkpoint=stage,
                                  teacher_guidance=UNGUIDED, anchor=SHIPPED_BASE, **common)
    elif plan.extends in ("canny", "upscale"):
        finished = train_controlnet(run, plan.extends, settings, start=plan.start, beside=BASE_STAGE,
                                    checkpoint=stage, **common)
    else:
        finished = train_flow_stage(run, plan.extends, settings, start=plan.start, checkpoint=stage, **common)
    if finished:
        (run / stage / SIZES_FILE).write_text(json.dumps([list(size) for size in listed_sizes(stage, settings)]))
    return finished


def listed_sizes(stage: str, settings: StageSettings) -> tuple[tuple[int, int], ...]:
    """The sizes a sizes stage's member lists: those it trains at, less its unlisted ones."""
    return tuple(size for size in settings.sizes if size not in SIZES_STAGES[stage].unlisted)


def finished_sizes(run: Path, stage: str) -> tuple[tuple[int, int], ...]:
    """The sizes a finished sizes stage's checkpoint makes; () while the stage has not finished."""
    path = run / stage / SIZES_FILE
    return tuple((int(w), int(h)) for w, h in json.loads(path.read_text())) if path.is_file() else ()
