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

`max_sequence_length` left out: the T5 length the tool the adapter is for uses on the model (512 on FLUX.1, 32 on
the demo models), so training sees the prompts as generating will. mflux's own keys are read too
(with_mflux_keys). Paths (model folder, output, examples) are relative to the config file. Every section refuses
keys it does not know, so a typo is an error, never a silently ignored setting. `block_range` ends are
exclusive, as in mflux. `examples.resize`: true scales each image to cover the training size and
crops the centre (and says which images it changed); false refuses images of another size.
`examples.in_context`: true trains a FLUX.1-Fill model on diptychs, as IC-Edit and the In-Context LoRAs were
trained: each image holds the context in its left half and the result in its right half, `width` is the whole
diptych's, and the right half is masked (generated) while the left one is kept, exactly as the in-context
tools (tools/in_context.py) build it at inference; an example's optional "mask" (an image file, white = generate,
over the right panel) masks only that part of it, as CatVTON's person mask does.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.settings_schema import (
    GUIDANCE, QUANTIZE, SEED, SEQUENCE_LENGTH, STEPS, Setting, choice, number, parsed, schema, side, switch, text,
)

BLOCK_KINDS = ("transformer_blocks", "single_transformer_blocks")
OPTIMIZERS = ("AdamW",)
OBJECT = Setting("", dict, "a JSON object")  # a section: it is read on its own
LIST = Setting("", list, "a list")  # checked item by item where it is read
SECTIONS = ("training_loop", "optimizer", "save", "instrumentation", "lora_layers", "examples")


class Section:
    """One JSON object of the config: its settings (the request's own where a request has the same setting) and
    their defaults. Messages name a setting by where it is ("optimizer.learning_rate"); a key it does not
    know is an error, never a silently ignored setting."""

    def __init__(self, where: str, settings: dict[str, Setting], defaults: dict):
        self.where = where
        prefix = f"The training config's {where + '.' if where else ''}"
        self.settings = {key: replace(setting, label=prefix + key) for key, setting in settings.items()}
        self.model = schema(f"TrainingConfig {where or 'top level'}", settings, defaults)

    def read(self, values) -> dict:
        """The section's values, with defaults for those not given; InvalidRequest names the first problem."""
        where = self.where or "the top level"
        if not isinstance(values, dict):
            raise InvalidRequest(f"The training config's {where} must be a JSON object.")
        unknown = sorted(set(values) - set(self.settings))
        if unknown:
            raise InvalidRequest(f"The training config has unknown keys in {where}: {', '.join(unknown)} "
                                 f"(known: {', '.join(self.settings)}).")
        return parsed(self.model, values, self.settings)


def _count(high: int) -> Setting:
    return number("", 1, high, whole=True)


# Settings are labelled by the Section that holds them, so they are made here without a label ("").
TOP = Section("", {
    "model": text("").optional(), "base_model": text("").optional(), "quantize": QUANTIZE.optional(), "seed": SEED,
    "width": side(""), "height": side(""), "guidance": GUIDANCE, "max_sequence_length": SEQUENCE_LENGTH.optional(),
    **dict.fromkeys(SECTIONS, OBJECT),
}, {"model": None, "base_model": None, "quantize": None, "seed": 0, "width": 512, "height": 512, "guidance": 1.0,
    "max_sequence_length": None, **dict.fromkeys(SECTIONS, {})})  # None: what the tool uses on the model
LOOP = Section("training_loop", {"steps": _count(10**7).optional(), "num_epochs": _count(10**6).optional(),
                                 "batch_size": _count(64)},
               {"steps": None, "num_epochs": None, "batch_size": 1})
OPTIMIZER = Section("optimizer", {"name": choice("", OPTIMIZERS), "learning_rate": number("", 0, 1),
                                  "weight_decay": number("", 0, 1)},
                    {"name": "AdamW", "learning_rate": 1e-4, "weight_decay": 0.01})
SAVE = Section("save", {"output_path": text(""), "checkpoint_frequency": _count(10**7)},
               {"output_path": "train_output", "checkpoint_frequency": 100})
WATCH = Section("instrumentation", {"validation_prompt": text("").optional(),
                                    "validation_frequency": _count(10**7).optional(),
                                    "validation_steps": STEPS.optional(), "validation_seed": SEED},
                {"validation_prompt": None, "validation_frequency": None, "validation_steps": None,
                 "validation_seed": 42})
LORA = Section("lora_layers", {"rank": _count(1024), "alpha": number("", 1e-6, 10**6).optional(),
                               **dict.fromkeys(BLOCK_KINDS, OBJECT.optional())},
               {"rank": 16, "alpha": None, **dict.fromkeys(BLOCK_KINDS)})
LAYERS = {kind: Section(f"lora_layers.{kind}", {"blocks": LIST.optional(), "block_range": OBJECT.optional(),
                                                "layer_types": LIST.optional()},
                        dict.fromkeys(("blocks", "block_range", "layer_types")))
          for kind in BLOCK_KINDS}
SPANS = {kind: Section(f"lora_layers.{kind}.block_range", {"start": number("", 0, 10_000, whole=True).optional(),
                                                           "end": number("", 1, 10_000, whole=True).optional()},
                       {"start": None, "end": None})
         for kind in BLOCK_KINDS}
EXAMPLES = Section("examples", {"path": text(""), "resize": switch(""), "in_context": switch(""),
                               "images": LIST.optional()},
                   {"path": ".", "resize": True, "in_context": False, "images": None})
PANEL_MULTIPLE = 16  # each half of an in-context diptych is a whole number of packed latent tokens


def with_mflux_keys(raw) -> dict:
    """mflux's train.json (its shipped example) read as ours: its top-level "steps" (the validation images' steps)
    is instrumentation.validation_steps, generate_image_frequency is validation_frequency, each block kind's
    lora_rank is lora_layers.rank (one for both); plot_frequency has no counterpart: the loss curve is drawn with
    every checkpoint."""
    if not isinstance(raw, dict):
        return raw
    raw = json.loads(json.dumps(raw))  # a copy: the config keeps what the file says
    watch, lora = raw.get("instrumentation"), raw.get("lora_layers")
    if isinstance(watch, dict):
        watch.pop("plot_frequency", None)
        if "generate_image_frequency" in watch:
            watch.setdefault("validation_frequency", watch.pop("generate_image_frequency"))
        if "steps" in raw:
            watch.setdefault("validation_steps", raw.pop("steps"))
    if isinstance(lora, dict):
        ranks = {kind: lora[kind].pop("lora_rank") for kind in BLOCK_KINDS
                 if isinstance(lora.get(kind), dict) and "lora_rank" in lora[kind]}
        if len(set(ranks.values())) > 1:
            raise InvalidRequest(f"The training config gives each block kind its own lora_rank ({ranks}); the studio "
                                 "trains one rank: set lora_layers.rank.")
        if ranks:
            lora.setdefault("rank", next(iter(ranks.values())))
    return raw


@dataclass(frozen=True)
class LayerSelection:
    kind: str  # transformer_blocks or single_transformer_blocks
    blocks: tuple[int, ...] | None  # explicit indices, or None with block_range
    block_range: tuple[int, int] | None  # (start, end), end exclusive
    layer_types: tuple[str, ...]  # module paths inside a block: attn.to_q, proj_mlp, ...

    @classmethod
    def from_dict(cls, kind: str, section: dict) -> "LayerSelection":
        where = f"lora_layers.{kind}"
        LAYERS[kind].read(section)
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
            start, end = SPANS[kind].read(section["block_range"]).values()
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
    mask: Path | None = None  # in-context only: where the right panel is generated (white); None: all of it


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
    max_sequence_length: int | None  # None until the model is loaded: the length its generate / in-context uses
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
    in_context: bool  # diptychs for a Fill model, right half masked (examples.in_context)
    examples: tuple[Example, ...]
    raw: dict  # the JSON as read, for the checkpoint
    notes: tuple[str, ...] = ()  # what was read otherwise than written, each said once

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
        top = TOP.read(with_mflux_keys(raw))
        if not top["model"]:
            raise InvalidRequest("The training config needs a model (an alias such as dev, a repo id or a folder).")
        loop = LOOP.read(top["training_loop"])
        if (loop["steps"] is None) == (loop["num_epochs"] is None):
            raise InvalidRequest("The training config's training_loop needs exactly one of steps or num_epochs.")
        optimizer, save = OPTIMIZER.read(top["optimizer"]), SAVE.read(top["save"])
        watch = WATCH.read(top["instrumentation"])
        if not save["output_path"]:
            raise InvalidRequest("The training config's save.output_path must be a folder name.")
        lora = LORA.read(top["lora_layers"])
        layers = tuple(LayerSelection.from_dict(kind, lora[kind]) for kind in BLOCK_KINDS if lora[kind] is not None)
        if not layers:
            raise InvalidRequest("The training config's lora_layers must choose transformer_blocks and/or "
                                 "single_transformer_blocks to adapt.")
        examples, resize, in_context = cls._examples(top["examples"], folder)
        batch = min(loop["batch_size"], len(examples))  # as kohya: a batch repeated its images, at their cost
        notes = (f"batch_size {loop['batch_size']} is more than the {len(examples)} example(s): {batch} a step.",) \
            if batch < loop["batch_size"] else ()
        if in_context and top["width"] % (2 * PANEL_MULTIPLE):
            raise InvalidRequest(f"The training config's width ({top['width']}) must be a multiple of "
                                 f"{2 * PANEL_MULTIPLE} with examples.in_context: it holds two panels side by side.")
        return cls(
            folder=folder, model=top["model"], base_model=top["base_model"], quantize=top["quantize"],
            seed=top["seed"], width=top["width"], height=top["height"], guidance=top["guidance"],
            max_sequence_length=top["max_sequence_length"], steps=loop["steps"], num_epochs=loop["num_epochs"],
            batch_size=batch, learning_rate=optimizer["learning_rate"],
            weight_decay=optimizer["weight_decay"],
            output_path=(folder / Path(save["output_path"]).expanduser()).resolve(),
            checkpoint_frequency=save["checkpoint_frequency"], validation_prompt=watch["validation_prompt"],
            validation_frequency=watch["validation_frequency"], validation_steps=watch["validation_steps"],
            validation_seed=watch["validation_seed"], rank=lora["rank"],
            alpha=lora["rank"] if lora["alpha"] is None else lora["alpha"], layers=layers, resize_images=resize,
            in_context=in_context, examples=examples, raw=raw, notes=notes,
        )

    @staticmethod
    def _examples(section, folder: Path) -> tuple[tuple[Example, ...], bool, bool]:
        section = EXAMPLES.read(section)
        base = folder / section["path"]
        images = section["images"]
        if not isinstance(images, list) or not images:
            raise InvalidRequest("The training config's examples.images must list at least one "
                                 "{\"image\": file, \"prompt\": text}.")
        examples = []
        keys = {"image", "prompt", "mask"} if section["in_context"] else {"image", "prompt"}
        for index, item in enumerate(images, start=1):
            if not isinstance(item, dict) or not {"image", "prompt"} <= set(item) <= keys or not all(
                    isinstance(value, str) for value in item.values()):
                mask = ", an optional mask file name" if section["in_context"] else ""
                raise InvalidRequest(f"The training config's examples.images[{index}] needs an image file name and "
                                     f"a prompt{mask}, all text, and nothing else.")
            mask = (base / item["mask"]).resolve() if "mask" in item else None
            examples.append(Example((base / item["image"]).resolve(), item["prompt"], mask))
        return tuple(examples), section["resize"], section["in_context"]
