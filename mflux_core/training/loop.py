"""The generic MLX training loop: any model, any loss, bounded runs that resume bit for bit.

`train(model, loss_fn, batch_for_step, optimizer, steps, ...)` runs `loss_fn(model, batch)` under
`nn.value_and_grad` for the parameters `trainable` selects, with the optimizer's update, until
`steps` steps are done or `max_seconds` have passed. Batches come from `batch_for_step(step)`, a pure
function of the step index that carries every random draw (noise, timesteps), so a run resumed
from a checkpoint sees exactly what an uninterrupted run would have seen. A checkpoint holds the
parameters, the optimizer state and the loss history; resuming restores all three, and the
weights after resuming equal those of an uninterrupted run bit for bit.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from mflux_core.training.plot import save_loss_curve

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LOSS_CURVE_FILE = "loss.png"


@dataclass
class TrainResult:
    step: int  # steps done in total, across resumes
    losses: list[float]  # one per step, across resumes
    finished: bool  # False when stopped by max_seconds before `steps`
    seconds: float  # time spent in this call


def select_trainable(model: nn.Module, trainable: Callable[[str], bool] | None) -> int:
    """Freeze every parameter whose dotted name `trainable` rejects (None: train all); returns the count trained."""
    model.unfreeze()
    if trainable is not None:
        model.freeze()
        for prefix, module in model.named_modules():
            keys = [key for key, _ in tree_flatten(module.parameters()) if "." not in key]
            chosen = [key for key in keys if trainable(f"{prefix}.{key}" if prefix else key)]
            if chosen:
                module.unfreeze(recurse=False, keys=chosen)
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def save_checkpoint(folder: Path, model: nn.Module, optimizer: optim.Optimizer, step: int, losses: list[float]) -> None:
    """Write the three files under temporary names, then rename: a crash never leaves a torn checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        MODEL_FILE: lambda path: mx.save_safetensors(path, dict(tree_flatten(model.parameters()))),
        OPTIMIZER_FILE: lambda path: mx.save_safetensors(path, dict(tree_flatten(optimizer.state))),
        STATE_FILE: lambda path: Path(path).write_text(json.dumps({"step": step, "losses": losses})),
    }
    for name, write in files.items():
        temporary = folder / f".{name}.partial{Path(name).suffix}"
        write(str(temporary))
    # state.json goes last: it is what marks the checkpoint as complete.
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        os.replace(folder / f".{name}.partial{Path(name).suffix}", folder / name)


def load_checkpoint(folder: Path, model: nn.Module, optimizer: optim.Optimizer) -> tuple[int, list[float]]:
    """Restore parameters and optimizer state; returns (step, losses). (0, []) if there is none."""
    if not (folder / STATE_FILE).is_file():
        return 0, []
    state = json.loads((folder / STATE_FILE).read_text())
    model.load_weights(list(mx.load(str(folder / MODEL_FILE)).items()), strict=True)
    optimizer.state = tree_unflatten(list(mx.load(str(folder / OPTIMIZER_FILE)).items()))
    mx.eval(model.parameters(), optimizer.state)
    return int(state["step"]), [float(x) for x in state["losses"]]


def split_batch(batch):
    """A batch as (tree of arrays for mx.compile, skeleton that rebuilds its dataclasses)."""
    if is_dataclass(batch):
        names = [f.name for f in fields(batch)]
        parts = [split_batch(getattr(batch, name)) for name in names]
        return [tree for tree, _ in parts], (type(batch), names, [skeleton for _, skeleton in parts])
    if isinstance(batch, (tuple, list)):
        parts = [split_batch(value) for value in batch]
        return [tree for tree, _ in parts], (type(batch), None, [skeleton for _, skeleton in parts])
    return batch, None


def join_batch(tree, skeleton):
    if skeleton is None:
        return tree
    kind, names, children = skeleton
    values = [join_batch(value, child) for value, child in zip(tree, children)]
    return kind(**dict(zip(names, values))) if names is not None else kind(values)


def compiled_update(update: Callable, state: list) -> Callable:
    """mx.compile(update) for batches that may hold dataclasses (compile takes trees of arrays only)."""
    skeleton = {}

    def from_tree(tree):
        return update(join_batch(tree, skeleton["current"]))

    compiled = mx.compile(from_tree, inputs=state, outputs=state)

    def run(batch):
        tree, skeleton["current"] = split_batch(batch)
        return compiled(tree)

    return run


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], mx.array],
    batch_for_step: Callable[[int], Any],
    optimizer: optim.Optimizer,
    steps: int,
    trainable: Callable[[str], bool] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 100,
    max_seconds: float | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], bool | None] | None = None,
    compile: bool = False,
) -> TrainResult:
    """Train until `steps` steps are done in total (resuming from `checkpoint_dir` when it holds a
    checkpoint) or `max_seconds` have passed; a checkpoint and loss curve are written every
    `checkpoint_every` steps and at the end. `on_step(step, loss)` runs after each step (and after
    that step's checkpoint); returning True stops the run there, like `max_seconds`.

    `compile=True` fuses each step with mx.compile (far fewer kernel launches on a GPU); a batch of
    a new shape compiles anew, so keep the set of batch shapes small."""
    started = time.perf_counter()
    select_trainable(model, trainable)
    optimizer.init(model.trainable_parameters())
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    step, losses = load_checkpoint(checkpoint_dir, model, optimizer) if checkpoint_dir else (0, [])

    value_and_grad = nn.value_and_grad(model, loss_fn)

    def update(batch):
        loss, grads = value_and_grad(model, batch)
        optimizer.update(model, grads)
        return loss

    if compile:
        update = compiled_update(update, [model.state, optimizer.state])

    def checkpoint():
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, model, optimizer, step, losses)
            save_loss_curve(losses, checkpoint_dir / LOSS_CURVE_FILE)

    bar = tqdm(total=steps, initial=step, unit="step", disable=not progress, file=sys.stderr,
               mininterval=1 if sys.stderr.isatty() else 10)
    smoothed = None
    saved_at = step
    while step < steps:
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        loss = update(batch_for_step(step))
        mx.eval(loss, model.parameters(), optimizer.state)
        step += 1
        losses.append(float(loss))
        smoothed = losses[-1] if smoothed is None else 0.95 * smoothed + 0.05 * losses[-1]
        bar.set_postfix(smoothed_loss=f"{smoothed:.4f}", refresh=False)  # the summary gives raw losses
        bar.update()
        if step % checkpoint_every == 0:
            checkpoint()
            saved_at = step
        if on_step is not None and on_step(step, losses[-1]):
            break
    bar.close()
    if saved_at != step:
        checkpoint()
    return TrainResult(step, losses, step >= steps, time.perf_counter() - started)
