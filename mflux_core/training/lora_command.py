"""`mflux-studio train --train-config train.json [--train-checkpoint ckpt.zip]`: LoRA (DreamBooth) training."""

import argparse
import sys
from pathlib import Path


def add_train_parser(tools, add_models_dir_flag) -> None:
    text = ("train a LoRA on your own images (DreamBooth); every checkpoint zip resumes the run exactly "
            "(--train-checkpoint alone uses the config inside it)")
    train = tools.add_parser("train", help=text, description=text)
    train.add_argument("--train-config", "--config", help="the training config (JSON); paths in it are relative to it")
    train.add_argument("--train-checkpoint", "--resume", help="a checkpoint zip to resume from")
    add_models_dir_flag(train)


def print_progress(step) -> None:
    """The files a TrainingStep wrote (the loop draws its own progress bar)."""
    for what, path in (("checkpoint", step.checkpoint), ("validation image", step.validation_image)):
        if path is not None:
            print(f"step {step.step}: saved {what} {path}", file=sys.stderr, flush=True)


def run_train(args: argparse.Namespace):
    from mflux_core.memory import MemoryBudget
    from mflux_core.training.lora_config import TrainingConfig
    from mflux_core.training.lora_training import train_lora

    budget = MemoryBudget(args.memory_budget)
    config = TrainingConfig.from_file(Path(args.train_config)) if args.train_config else None
    checkpoint = Path(args.train_checkpoint) if args.train_checkpoint else None
    outcome = train_lora(config, checkpoint, report=print_progress, models_dir=Path(args.models_dir),
                         progress_bar=True, budget=budget)
    for note in outcome.notes:
        print(f"Note: {note}", file=sys.stderr)
    first, last = (outcome.losses[0], outcome.losses[-1]) if outcome.losses else (float("nan"),) * 2
    print(f"{'Finished' if outcome.finished else 'Stopped'} at step {outcome.step} of {outcome.total} "
          f"(loss {first:.4f} at the first step, {last:.4f} at the last)")
    print(f"Saved {outcome.adapter} (use it with --lora-paths)")
    print(f"Saved {outcome.checkpoint}")
    print(f"Saved {outcome.loss_curve}")
    return outcome
