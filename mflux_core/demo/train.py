"""Train the demo family: `python -m mflux_core.demo.train RUN_DIR [--stages vae,decoder,sharpen,base,...]`.

Stages run in order and each one resumes from its checkpoint in RUN_DIR/<stage>/ (a stage that
is done is skipped), so a run cut short by --max-minutes continues where it stopped. The VAE is
trained first (pixels only; vae_stages.py), its decoder then sharpened twice with the encoder
fixed (decoder and sharpen stages), then the base transformer together with the CLIP and
T5 encoders, then Fill, Depth and Kontext fine-tuned from it (flow_stages.py) and the canny
ControlNet beside it (controlnet_stage.py; the upscaler ControlNet trains beside the distilled base, and
can start from a run restored from the shipped family: restore.py); the shipped base is then guidance-distilled from it as
FLUX.1-dev was (teacher and guidance stages; guidance_stages.py); later rounds tune the shipped family at
more sizes (size_stages.py) and teach its base to read captions from T5 tokens alone (token_reading.py). After
the base stage the encoders are frozen (the family shares one VAE and one pair of text encoders, as FLUX.1's
does), so every later stage encodes its captions once. The stages' order, steps, batches and seeds are in recipe.py.
`python -m mflux_core.demo.export RUN_DIR demo_models` writes the model folders.
"""

import argparse
import json
import time
from pathlib import Path

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
from mflux_core.demo.controlnet_stage import CONTROLNET_STAGES, train_controlnet
from mflux_core.demo.flow_stages import train_base, train_flow_stage
from mflux_core.demo.guidance_stages import train_guidance, train_teacher
from mflux_core.demo.recipe import STAGES, StageSettings, scaled
from mflux_core.demo.size_stages import SIZES_STAGES, train_at_sizes
from mflux_core.demo.text_encoders import prepare_shared
from mflux_core.demo.token_reading import STAGE as TOKEN_READING, train_token_reading
from mflux_core.demo.vae_stages import train_decoder, train_sharpen, train_vae, trained_vae, vae_sample
from mflux_core.training.loop import STATE_FILE


def stage_done(run: Path, stage: str, settings: StageSettings) -> bool:
    state = run / stage / STATE_FILE
    return state.is_file() and json.loads(state.read_text())["step"] >= settings.steps


def train_stage(run: Path, stage: str, recipe: dict[str, StageSettings], workers: int, max_seconds: float | None,
                compile: bool) -> bool:
    """Train (or resume) one stage; True when it finished."""
    settings = recipe[stage]
    if stage == "vae":
        return train_vae(run, settings, workers, max_seconds, compile)
    if stage == "decoder":
        return train_decoder(run, settings, recipe["vae"], workers, max_seconds, compile)
    if stage == "sharpen":
        return train_sharpen(run, settings, recipe["vae"], workers, max_seconds, compile)
    vae, _ = trained_vae(run, vae_sample(run, recipe["vae"], workers))
    if stage == "teacher":
        return train_teacher(run, settings, recipe["base"], vae, workers, max_seconds, compile)
    if stage == "guidance":
        return train_guidance(run, settings, recipe["base"], vae, workers, max_seconds, compile)
    if stage == "base":
        return train_base(run, settings, vae, workers, max_seconds, compile)
    if stage in SIZES_STAGES:
        return train_at_sizes(run, stage, recipe, vae, workers, max_seconds, compile)
    if stage == TOKEN_READING:
        return train_token_reading(run, settings, vae, workers, max_seconds, compile)
    if stage in CONTROLNET_STAGES:
        return train_controlnet(run, stage, settings, vae, workers, max_seconds, compile)
    return train_flow_stage(run, stage, settings, vae, workers, max_seconds, compile)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder for pools, checkpoints and loss curves")
    parser.add_argument("--stages", default=",".join(name for name in STAGES
                                                     if name not in SIZES_STAGES and name != TOKEN_READING),
                        help="comma-separated; default: the 64 px recipe (the sizes stages, size_stages.py, and "
                             "token-reading, token_reading.py, follow it by name)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--workers", type=int, default=2, help="processes that render the example pools")
    parser.add_argument("--scale-steps", type=float, default=1.0,
                        help="multiply every stage's steps and pool (quick tries, not the shipped recipe)")
    parser.add_argument("--batch", type=int, default=None, help="override every stage's batch (quick tries)")
    parser.add_argument("--compile", action="store_true", help="mx.compile each step (much faster on a GPU)")
    args = parser.parse_args(argv)
    recipe = scaled(STAGES, args.scale_steps, args.batch)
    started = time.perf_counter()
    run = args.run
    run.mkdir(parents=True, exist_ok=True)
    prepare_shared(run)
    for stage in args.stages.split(","):
        if stage_done(run, stage, recipe[stage]):
            continue
        left = None if args.max_minutes is None else args.max_minutes * 60 - (time.perf_counter() - started)
        if left is not None and left <= 0:
            break
        print(f"stage {stage}", flush=True)
        if not train_stage(run, stage, recipe, args.workers, left, args.compile):
            break
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
