"""LoRA training checkpoints: one zip that holds everything a resumed run needs to continue bit for bit.

    checkpoint.json     step, total steps, where the config was, the examples' fingerprint, RNG state
    config.json         the training config as written
    adapter.safetensors the LoRA so far, in the diffusers / PEFT format (--lora-paths reads it)
    loop/               the generic training loop's own checkpoint: the adapter's matrices,
                        the AdamW state (moments and step count), the loss history
    loss.png            the loss curve so far

Every random draw of step s (which examples, their noise and timesteps) comes from numpy's PCG64
seeded with [seed, s] (the example order per epoch with [seed, epoch, 1]), and the adapter's
initial values from MLX keyed by the seed: the RNG state is the seed and the next step, and it is
written as such.
"""

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.training.loop import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE

FORMAT = 1
META_FILE = "checkpoint.json"
CONFIG_FILE = "config.json"
ADAPTER_FILE = "adapter.safetensors"
LOSS_FILE = "loss.png"
LOOP_FOLDER = "loop"
CHECKPOINTS_FOLDER = "checkpoints"  # inside the run's output folder
LOOP_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
RNG_SCHEME = ("numpy PCG64: step s draws its examples' noise and timesteps from default_rng([seed, s]); "
              "epoch e orders the examples with default_rng([seed, e, 1]); the adapter starts from MLX key(seed)")


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    config: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config_folder(self) -> Path:
        return Path(self.meta["config_folder"])

    @property
    def run_folder(self) -> Path:
        """Where resuming from this checkpoint alone writes: the output folder whose checkpoints/ holds it, else the
        folder it lies in, so that a copy taken elsewhere (a branch, a backup) leaves the original run as it was."""
        folder = self.path.resolve().parent
        return folder.parent if folder.name == CHECKPOINTS_FOLDER else folder

    def extract_loop_state(self, folder: Path) -> None:
        """Unpack the training loop's files where `train(checkpoint_dir=folder)` resumes from them."""
        with zipfile.ZipFile(self.path) as archive:
            for name in LOOP_FILES:
                with archive.open(f"{LOOP_FOLDER}/{name}") as source, open(Path(folder) / name, "wb") as target:
                    shutil.copyfileobj(source, target)


def checkpoint_name(step: int) -> str:
    return f"{step:07d}_checkpoint.zip"


def write_checkpoint(path: Path, *, step: int, total_steps: int, seed: int, config_raw: dict, config_folder: Path,
                     examples_fingerprint: str, adapter_file: Path, loop_folder: Path,
                     loss_curve: Path | None) -> Path:
    """Zip the checkpoint under a temporary name, then rename it into place."""
    meta = {"format": FORMAT, "step": step, "total_steps": total_steps, "config_folder": str(config_folder),
            "examples_fingerprint": examples_fingerprint,
            "rng": {"seed": seed, "next_step": step, "scheme": RNG_SCHEME}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(descriptor)
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(META_FILE, json.dumps(meta, indent=2))
            archive.writestr(CONFIG_FILE, json.dumps(config_raw, indent=2))
            archive.write(adapter_file, ADAPTER_FILE)
            for name in LOOP_FILES:
                archive.write(Path(loop_folder) / name, f"{LOOP_FOLDER}/{name}")
            if loss_curve is not None and Path(loss_curve).is_file():
                archive.write(loss_curve, LOSS_FILE)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"The training checkpoint {path} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            needed = {META_FILE, CONFIG_FILE, ADAPTER_FILE, *(f"{LOOP_FOLDER}/{name}" for name in LOOP_FILES)}
            missing = sorted(needed - names)
            if missing:
                raise InvalidRequest(f"{path.name} is not an mflux-studio training checkpoint (it lacks "
                                     f"{', '.join(missing)}).")
            meta = json.loads(archive.read(META_FILE))
            config = json.loads(archive.read(CONFIG_FILE))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as error:
        raise InvalidRequest(f"Cannot read the training checkpoint {path.name} ({error}).") from None
    if meta.get("format") != FORMAT:
        raise InvalidRequest(f"The training checkpoint {path.name} has format {meta.get('format')!r}; "
                             f"this version reads format {FORMAT}.")
    return Checkpoint(path, meta, config)


def differing_settings(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two config dicts."""
    names = []
    for key in sorted(set(a) | set(b), key=str):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            names += differing_settings(left, right, f"{prefix}{key}.")
        elif left != right:
            names.append(f"{prefix}{key}")
    return names
