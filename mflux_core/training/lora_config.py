"""The LoRA (DreamBooth) training config: a JSON file in the spirit of mflux's train.json.

    {
      "model": "dev", "base_model": null, "quantize": null, "seed": 42,
      "width": 512, "height": 512, "guidance": 1.0, "max_sequence_length": 512,
      "training_loop": {"num_epochs": 50, "batch_size": 1},          (or "steps": 400)
      "optimizer": {"name": "AdamW", "learning_rate": 1e-4, "weight_decay": 0.01},
      "save": {"output_path": "train_output", "checkpoint_frequency": 50},
      "instrumentation": {"validation_prompt": "photo of sks dog", "validation_frequency": 50,
                          "validation_steps": 20, "validation_seed": 42},
      "lora_layers": {
        "rank": 16, "alpha": 16,
        "transformer_blocks": {"block_range": {"start": 0, "end": 19},
                               "layer_types": ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]},
        "single_transformer_blocks": {"blocks": [30, 31, 32], "layer_types": ["proj_out", "proj_mlp"]}
      },
      "examples": {"path": "images/", "resize": true,
                   "images": [{"image": "dog1.jpg", "prompt": "photo of sks dog"}]}
    }

Paths (model folder, output, examples) are relative to the config file. Every section refuses keys
it does not know, so a typo is an error, never a silently ignored setting. `block_range` ends are
exclusive, as in mflux. `examples.resize`: true scales each image to cover the training size and
crops the centre (and says which images it changed); false refuses images of another size.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.request import MAX_SEED, MAX_SIDE, QUANTIZE_BITS

BLOCK_KINDS = ("transformer_blocks", "single_transformer_blocks")
OPTIMIZERS = ("AdamW",)


def _known(section: dict, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(section, dict):
        raise InvalidRequest(f"The training config's {where} must be a JSON object.")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise InvalidRequest(f"The training config has unknown keys in {where}: {', '.join(unknown)} "
                             f"(known: {', '.join(allowed)}).")
    return section


def _number(section: dict, key: str, where: str, default=None, kind=float, low=None, high=None):
    value = section.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        wanted = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"The training config's {where}.{key} must be {wanted}, not {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequest(f"The training config's {where}.{key} is {value}; use {low} to {high}.")
    return kind(value)


@dataclass(frozen=True)
class LayerSelection:
    kind: str  # transformer_blocks or single_transformer_blocks
    blocks: tuple[int, ...] | None  # explicit indices, or None with block_range
    block_range: tuple[int, int] | None  # (start, end), end exclusive
    layer_types: tuple[str, ...]  # module paths inside a block: attn.to_q, proj_mlp, ...

    @classmethod
    def from_dict(cls, kind: str, section: dict) -> "LayerSelection":
        where = f"lora_layers.{kind}"
        _known(section, ("blocks", "block_range", "layer_types"), where)
        if ("blocks" in section) == ("block_range" in section):
            raise InvalidRequest(f"The training config's {where} needs exactly one of blocks (a list of indices) "
                                 "or block_range ({\"start\": a, \"end\": b}).")
        blocks = block_range = None
        if "blocks" in section:
            blocks = section["blocks"]
            if not isinstance(blocks, list) or not blocks or not all(isinstance(i, int) and i >= 0 for i in blocks):
                raise InvalidRequest(f"The training config's {where}.blocks must be a list of block indices from 0.")
            blocks = tuple(sorted(set(blocks)))
        else:
            span = _known(section["block_range"], ("start", "end"), f"{where}.block_range")
            start = _number(span, "start", f"{where}.block_range", kind=int, low=0, high=10_000)
            end = _number(span, "end", f"{where}.block_range", kind=int, low=1, high=10_000)
            if start is None or end is None or start >= end:
                raise InvalidRequest(f"The training config's {where}.block_range needs start < end (end exclusive).")
            block_range = (start, end)
        types = section.get("layer_types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
            raise InvalidRequest(f"The training config's {where}.layer_types must list module names such as attn.to_q.")
        return cls(kind, blocks, block_range, tuple(dict.fromkeys(types)))

    def block_indices(self, depth: int) -> tuple[int, ...]:
        indices = self.blocks if self.blocks is not None else tuple(range(*self.block_range))
        if indices[-1] >= depth:
            raise InvalidRequest(f"The training config's lora_layers.{self.kind} names block {indices[-1]}, but this "
                                 f"model has {depth} of them (0 to {depth - 1}).")
        return indices


@dataclass(frozen=True)
class Example:
    image: Path
    prompt: str


@dataclass(frozen=True)
class TrainingConfig:
    folder: Path  # where the config file is: relative paths start here
    model: str
    base_model: str | None
    quantize: int | None
    seed: int
    width: int
    height: int
    guidance: float
    max_sequence_length: int
    steps: int | None  # exactly one of steps / num_epochs
    num_epochs: int | None
    batch_size: int
    learning_rate: float
    weight_decay: float
    output_path: Path
    checkpoint_frequency: int
    validation_prompt: str | None
    validation_frequency: int | None
    validation_steps: int | None  # None: the model's default
    validation_seed: int
    rank: int
    alpha: float
    layers: tuple[LayerSelection, ...]
    resize_images: bool
    examples: tuple[Example, ...]
    raw: dict  # the JSON as read, for the checkpoint

    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return self.num_epochs * self.steps_per_epoch()

    def steps_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def model_reference(self) -> str:
        """The model as given, or the folder it names relative to the config file."""
        local = self.folder / self.model
        return str(local) if not Path(self.model).is_absolute() and local.exists() else self.model

    def identity(self) -> dict:
        """What decides the training trajectory: all but its length, where it is saved and the validation."""
        raw = json.loads(json.dumps(self.raw))
        for key in ("save", "instrumentation"):
            raw.pop(key, None)
        loop = raw.get("training_loop", {})
        for key in ("steps", "num_epochs"):
            loop.pop(key, None)
        return raw

    @classmethod
    def from_file(cls, path: Path) -> "TrainingConfig":
        path = Path(path).expanduser()
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidRequest(f"The training config {path} does not exist.") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidRequest(f"Cannot read the training config {path} ({error}).") from None
        except json.JSONDecodeError as error:
            raise InvalidRequest(
                f"The training config {path} is not valid JSON ({error.msg}, line {error.lineno}).") from None
        return cls.from_dict(raw, path.resolve().parent)

    @classmethod
    def from_dict(cls, raw: dict, folder: Path) -> "TrainingConfig":
        top = _known(raw, ("model", "base_model", "quantize", "seed", "width", "height", "guidance",
                           "max_sequence_length", "training_loop", "optimizer", "save", "instrumentation",
                           "lora_layers", "examples"), "the top level")
        model = top.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("The training config needs a model (an alias such as dev, a repo id or a folder).")
        quantize = top.get("quantize")
        if quantize is not None and quantize not in QUANTIZE_BITS:
            raise InvalidRequest(f"The training config's quantize must be one of {QUANTIZE_BITS}, not {quantize!r}.")
        size = {key: _number(top, key, "top level", 512, int, 16, MAX_SIDE) for key in ("width", "height")}
        for key, value in size.items():
            if value % 16:
                raise InvalidRequest(f"The training config's {key} {value} is not a multiple of 16.")

        loop = _known(top.get("training_loop", {}), ("steps", "num_epochs", "batch_size"), "training_loop")
        if ("steps" in loop) == ("num_epochs" in loop):
            raise InvalidRequest("The training config's training_loop needs exactly one of steps or num_epochs.")
        optimizer = _known(top.get("optimizer", {}), ("name", "learning_rate", "weight_decay"), "optimizer")
        if optimizer.get("name", "AdamW") not in OPTIMIZERS:
            raise InvalidRequest(f"The training config's optimizer.name must be one of {', '.join(OPTIMIZERS)}.")
        save = _known(top.get("save", {}), ("output_path", "checkpoint_frequency"), "save")
        output = save.get("output_path", "train_output")
        if not isinstance(output, str) or not output:
            raise InvalidRequest("The training config's save.output_path must be a folder name.")
        watch = _known(top.get("instrumentation", {}), ("validation_prompt", "validation_frequency",
                                                         "validation_steps", "validation_seed"), "instrumentation")
        prompt = watch.get("validation_prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequest("The training config's instrumentation.validation_prompt must be text.")
        lora = _known(top.get("lora_layers", {}), ("rank", "alpha", *BLOCK_KINDS), "lora_layers")
        layers = tuple(LayerSelection.from_dict(kind, lora[kind]) for kind in BLOCK_KINDS if kind in lora)
        if not layers:
            raise InvalidRequest("The training config's lora_layers must choose transformer_blocks and/or "
                                 "single_transformer_blocks to adapt.")
        rank = _number(lora, "rank", "lora_layers", 16, int, 1, 1024)
        examples, resize = cls._examples(top.get("examples"), folder)
        return cls(
            folder=folder, model=model, base_model=top.get("base_model"), quantize=quantize,
            seed=_number(top, "seed", "top level", 0, int, 0, MAX_SEED), width=size["width"], height=size["height"],
            guidance=_number(top, "guidance", "top level", 1.0, float, 0, 100),
            max_sequence_length=_number(top, "max_sequence_length", "top level", 512, int, 1, 512),
            steps=_number(loop, "steps", "training_loop", None, int, 1, 10**7),
            num_epochs=_number(loop, "num_epochs", "training_loop", None, int, 1, 10**6),
            batch_size=_number(loop, "batch_size", "training_loop", 1, int, 1, 64),
            learning_rate=_number(optimizer, "learning_rate", "optimizer", 1e-4, float, 0, 1),
            weight_decay=_number(optimizer, "weight_decay", "optimizer", 0.01, float, 0, 1),
            output_path=(folder / Path(output).expanduser()).resolve(),
            checkpoint_frequency=_number(save, "checkpoint_frequency", "save", 100, int, 1, 10**7),
            validation_prompt=prompt,
            validation_frequency=_number(watch, "validation_frequency", "instrumentation", None, int, 1, 10**7),
            validation_steps=_number(watch, "validation_steps", "instrumentation", None, int, 1, 500),
            validation_seed=_number(watch, "validation_seed", "instrumentation", 42, int, 0, MAX_SEED),
            rank=rank, alpha=_number(lora, "alpha", "lora_layers", rank, float, 1e-6, 1e6), layers=layers,
            resize_images=resize, examples=examples, raw=raw,
        )

    @staticmethod
    def _examples(section, folder: Path) -> tuple[tuple[Example, ...], bool]:
        section = _known(section if section is not None else {}, ("path", "resize", "images"), "examples")
        base = folder / section.get("path", ".")
        images = section.get("images")
        if not isinstance(images, list) or not images:
            raise InvalidRequest("The training config's examples.images must list at least one "
                                 "{\"image\": file, \"prompt\": text}.")
        examples = []
        for number, item in enumerate(images, start=1):
            _known(item, ("image", "prompt"), f"examples.images[{number}]")
            if not isinstance(item.get("image"), str) or not isinstance(item.get("prompt"), str):
                raise InvalidRequest(f"The training config's examples.images[{number}] needs an image file name and "
                                     "a prompt, both text.")
            examples.append(Example((base / item["image"]).resolve(), item["prompt"]))
        resize = section.get("resize", True)
        if not isinstance(resize, bool):
            raise InvalidRequest("The training config's examples.resize must be true or false.")
        return tuple(examples), resize
