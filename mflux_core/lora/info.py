"""What a LoRA file says about itself, read from its safetensors header without loading a tensor: the model family
it was made for, its trigger words, the model it was trained on, and whether it is a DoRA.

Trainers write it as metadata: Kohya's sd-scripts (and the Civitai trainer, built on it) `ss_*` keys
(`ss_base_model_version` such as "flux1" or "sdxl_base_v1-0", `ss_sd_model_name`, `ss_output_name`,
`ss_tag_frequency`: per dataset folder, how often each caption tag occurred), and the ModelSpec keys
(`modelspec.architecture` such as "flux-1-dev/lora" or "stable-diffusion-xl-v1-base/lora",
`modelspec.trigger_phrase`). Without metadata the key names still tell the family: Stable Diffusion UNets have
`down_blocks` / `input_blocks`, SD3 `joint_blocks`, FLUX.2 its fused `to_qkv_mlp_proj` and shared modulations, and
FLUX.1 its double and single blocks (in BFL's, Kohya's, XLabs', OneTrainer's and diffusers' spellings).

Users' own notes sit beside the file, as A1111 keeps them: `<name>.json` (its extra networks' "activation text" and
"preferred weight"), or Civitai's model page as the Civitai Helper extension saves it, `<name>.civitai.info`
("trainedWords").
"""

import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors import SafetensorError, safe_open

from mflux_core.settings_schema import MAX_LORA_SCALE

FLUX1 = "FLUX.1"
TOP_TRIGGER_WORDS = 5
MAX_NOTES_BYTES = 1 << 20  # a sidecar larger than this is not notes
# (pattern in the lowercased metadata value, family): the first that matches names it
METADATA_FAMILIES = (
    (r"flux[-_. ]?1|^flux$", FLUX1), (r"flux[-_. ]?2", "FLUX.2"), (r"sdxl|stable-diffusion-xl|xl[-_]base", "SDXL"),
    (r"sd[-_ ]?3|stable-diffusion-3", "SD3"), (r"sd[-_ ]?v?1|stable-diffusion-v1", "SD 1.5"),
    (r"sd[-_ ]?v?2|stable-diffusion-v2", "SD 2"),
)
UNET_KEYS = ("lora_unet_input_blocks", "lora_unet_down_blocks", "lora_unet_mid_block", "input_blocks.",
             "down_blocks.", "mid_block.")  # Stable Diffusion UNets (Kohya's and diffusers' names)
# SDXL: a second CLIP text encoder (Kohya's lora_te2; FLUX's is T5, lora_te3), or deeper transformer stacks
SDXL_KEYS = re.compile(r"lora_te2_|text_encoder_2\.text_model|transformer_blocks[._][1-9]")
OTHER_TRANSFORMER_KEYS = (("joint_blocks", "SD3"),
                          ("to_qkv_mlp_proj", "FLUX.2"), ("double_stream_modulation", "FLUX.2"),
                          ("single_stream_modulation", "FLUX.2"), (".ff.linear_in", "FLUX.2"))
# FLUX.1's own blocks (FLUX.2's share some names: its keys are looked for first); diffusers' double blocks are
# `transformer_blocks`, as SD3's, so they tell nothing alone
FLUX1_KEYS = ("double_blocks", "single_blocks", "single_transformer_blocks")
TEXT_ENCODER_KEYS = ("lora_te", "text_model.", "text_encoder")
TEXT_ENCODER_ONLY = "a text encoder only"  # the family of a file whose every key adapts a text encoder
DORA_KEYS = ("dora_scale", "lora_magnitude_vector")  # Kohya / LyCORIS, and PEFT
CONTROL_KEY = "query_norm.scale"  # only BFL's control LoRAs carry norm scales (diffusers tells them by it too)
APPLIED_KEYS = ("lora_down", "lora_up", "lora_A", "lora_B", ".down.weight", ".up.weight", "lokr_", "hada_")
# LyCORIS algorithms other than LoRA, LoKr and LoHa, by the keys only they write (lycoris/modules/*.py)
OTHER_LYCORIS_KEYS = ((".oft_blocks", "OFT / BOFT"), (".oft_diag", "OFT / BOFT"), (".a1.weight", "GLoRA"),
                      (".b1.weight", "GLoRA"), (".diff", "full (a whole weight difference)"),
                      (".diff_b", "full (a whole weight difference)"), (".on_input", "(IA)^3"),
                      (".w_norm", "norm"), (".b_norm", "norm"))


@dataclass(frozen=True)
class LoraInfo:
    family: str | None  # FLUX1, another family's name, or None when nothing says
    base_model: str | None  # as the metadata spells it ("flux1", "flux-1-dev/lora", ...)
    trained_on: str | None  # ss_sd_model_name
    output_name: str | None  # ss_output_name
    trigger_words: tuple[str, ...]
    dora: bool
    other_algorithm: str | None = None  # a LyCORIS algorithm the studio does not apply
    control: bool = False  # BFL's control LoRA (Depth / Canny: whole q/k norm scales beside the adapters)
    activation_text: str | None = None  # the user's notes: A1111's "activation text", or Civitai's trained words
    preferred_weight: float | None = None  # A1111's "preferred weight": the scale a pick starts at
    text_encoders: bool = False  # it also adapts the text encoders (CLIP-L, T5)

    @property
    def other_family(self) -> str | None:
        """The family it was made for when that is not FLUX.1."""
        return self.family if self.family not in (None, FLUX1) else None

    def summary(self, markdown: bool = True) -> str:
        """One short line: for the page (Markdown) and `mflux-studio loras` (plain)."""
        mark = (lambda text, sign: f"{sign}{text}{sign}") if markdown else (lambda text, _: text)  # noqa: E731
        parts = [f"made for {mark(self.family, '**')}" if self.family else "family not stated"]
        if self.base_model:
            parts[0] += f" ({self.base_model})"
        if self.trained_on:
            parts.append(f"trained on {self.trained_on}")
        if self.output_name:
            parts.append(f"named {self.output_name}")
        if self.activation_text:
            parts.append(f"activation text: {mark(self.activation_text, '`')}")
        if self.preferred_weight is not None:
            parts.append(f"preferred weight {self.preferred_weight:g}")
        if self.trigger_words:
            parts.append("trigger words: " + ", ".join(mark(word, "`") for word in self.trigger_words))
        if self.dora:
            parts.append("DoRA (weight-decomposed)")
        if self.text_encoders:
            parts.append("adapts the text encoders too")
        if self.control:
            parts.append("control LoRA: use it on the Depth tool (BFL's Depth / Canny)")
        why = problem(self)
        if why:
            parts.append(f"⚠ refused: it {why}")
        return " · ".join(parts)


def other_lycoris_algorithm(keys: list[str]) -> str | None:
    """The LyCORIS algorithm of a file with no LoRA, LoKr or LoHa module, when it is one the studio does not apply
    (a file mixing them, as LyCORIS' train_norm makes, is applied where it can be and reported)."""
    if any(marker in key for key in keys for marker in APPLIED_KEYS):
        return None
    return next((name for suffix, name in OTHER_LYCORIS_KEYS if any(key.endswith(suffix) for key in keys)), None)


def _family_from_metadata(value: str) -> str:
    lowered = value.lower()
    return next((family for pattern, family in METADATA_FAMILIES if re.search(pattern, lowered)), value)


def family_from_keys(keys) -> str | None:
    """The family whose names the keys are (FLUX1 for FLUX.1's blocks; None: nothing tells)."""
    keys = list(keys)
    if any(fragment in key for key in keys for fragment in UNET_KEYS):
        return "SDXL" if any(SDXL_KEYS.search(key) for key in keys) else "SD 1.5"
    for fragment, family in OTHER_TRANSFORMER_KEYS:
        if any(fragment in key for key in keys):
            return family
    if keys and all(any(fragment in key for fragment in TEXT_ENCODER_KEYS) for key in keys):
        return TEXT_ENCODER_ONLY
    return FLUX1 if any(fragment in key for key in keys for fragment in FLUX1_KEYS) else None


def trigger_words(metadata: dict) -> tuple[str, ...]:
    """The most frequent caption tags over all dataset folders in ss_tag_frequency, else modelspec's phrase."""
    counts: Counter = Counter()
    try:
        folders = json.loads(metadata.get("ss_tag_frequency") or "{}")
        for tags in folders.values() if isinstance(folders, dict) else ():
            for tag, count in tags.items() if isinstance(tags, dict) else ():
                if isinstance(count, (int, float)) and str(tag).strip():
                    counts[str(tag).strip()] += count
    except (json.JSONDecodeError, RecursionError):
        pass
    if counts:
        return tuple(tag for tag, _ in counts.most_common(TOP_TRIGGER_WORDS))
    phrase = (metadata.get("modelspec.trigger_phrase") or "").strip()
    return tuple(part.strip() for part in phrase.split(",") if part.strip())[:TOP_TRIGGER_WORDS]


def lora_info(metadata: dict | None, keys) -> LoraInfo:
    metadata = metadata or {}
    keys = list(keys)
    base = metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture") or None
    family = _family_from_metadata(base) if base else None
    if family in (None, FLUX1):  # names for another family outweigh a missing or copied-over base model
        keyed = family_from_keys(keys)
        # a FLUX.1 LoRA may train the text encoders alone (sd-scripts' --network_train_text_encoder_only)
        family = family if keyed == TEXT_ENCODER_ONLY and family == FLUX1 else keyed or family
    return LoraInfo(family=family, base_model=base, trained_on=metadata.get("ss_sd_model_name") or None,
                    output_name=metadata.get("ss_output_name") or None, trigger_words=trigger_words(metadata),
                    dora=any(dora in key for key in keys for dora in DORA_KEYS),
                    other_algorithm=other_lycoris_algorithm(keys),
                    control=any(key.endswith(CONTROL_KEY) for key in keys),
                    text_encoders=any(fragment in key for key in keys for fragment in TEXT_ENCODER_KEYS))


def describe_lora_file(path: Path | None, markdown: bool = True) -> str:
    """The summary line of a LoRA file (empty for no file)."""
    if path is None:
        return ""
    info = read_lora_info(path)
    return info.summary(markdown) if info else "not a readable safetensors file"


def read_lora_info(path: Path) -> LoraInfo | None:
    """The header's information and the user's notes beside the file; None when the file is not a readable
    safetensors file."""
    try:
        with safe_open(str(path), framework="numpy") as weights:
            info = lora_info(weights.metadata(), weights.keys())
    except (OSError, SafetensorError):
        return None
    return replace(info, **user_notes(Path(path)))


def user_notes(path: Path) -> dict:
    """activation_text and preferred_weight from A1111's `<name>.json`, else the trained words of Civitai's
    `<name>.civitai.info`; what is missing or unreadable is left out."""
    a1111 = _json_beside(path, ".json")
    notes = {}
    text = a1111.get("activation text")
    if isinstance(text, str) and text.strip():
        notes["activation_text"] = text.strip()
    else:
        words = _json_beside(path, ".civitai.info").get("trainedWords")
        words = [word.strip() for word in words if isinstance(word, str) and word.strip()] \
            if isinstance(words, list) else []
        if words:
            notes["activation_text"] = ", ".join(words)
    weight = a1111.get("preferred weight")
    if isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0 < abs(weight) <= MAX_LORA_SCALE:
        notes["preferred_weight"] = float(weight)  # A1111 writes 0 for "not set"
    return notes


def _json_beside(path: Path, suffix: str) -> dict:
    sidecar = path.with_name(path.stem + suffix)
    try:
        if sidecar.stat().st_size > MAX_NOTES_BYTES:
            return {}
        value = json.loads(sidecar.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def problem(info: LoraInfo) -> str | None:
    """Why this FLUX.1 studio cannot apply the LoRA (made for another family, or by a LyCORIS algorithm it does not
    apply), as a phrase; None when it can."""
    if info.other_family:
        return f"was made for {info.other_family}, not FLUX.1, so it cannot be applied here"
    if info.other_algorithm:
        return (f"uses LyCORIS' {info.other_algorithm} algorithm, which the studio cannot apply (it applies LoRA, "
                "LoKr and LoHa, and their DoRA forms)")
    return None


def refusal(info: LoraInfo, name: str) -> str | None:
    """One sentence refusing the LoRA `name` (see `problem`); None when it can be applied."""
    phrase = problem(info)
    return f"The LoRA {name} {phrase}." if phrase else None
