"""The status strip: backend, resident models and their memory, the last swap, a download, busy or idle."""

import re
from pathlib import Path

from mflux_core.memory import gb_text

KIND_LABELS = {"transformer": "transformer", "vae": "VAE", "text encoders": "text encoders", "auxiliary": "side model"}
COMPONENT_FOLDERS = {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"}
_PATH = re.compile(r"(?<![^\s(])\(?([^\s()]*/[^\s()]+)\)?")  # absolute, or relative as the default models folder
# is; tried from a word's start only, linear in a long word


def size_text(count: int) -> str:
    return f"{count / 2**20:,.1f} MB" if count < 2**30 else f"{count / 2**30:,.2f} GB"


def model_name(path: str) -> str:
    """A model's folder name for a path to it or to one of its component folders."""
    path = Path(path)
    return path.parent.name if path.name in COMPONENT_FOLDERS else path.name


def short_label(label: str) -> str:
    """The manager's load label with paths cut to model names and repeated words dropped."""
    words = _PATH.sub(lambda match: model_name(match.group(1)), label).split()
    return " ".join(dict.fromkeys(words))


def resident_text(entry: dict) -> str:
    kind = KIND_LABELS.get(entry["kind"], entry["kind"])
    label = short_label(entry.get("name") or "")
    if not label.lower().startswith(kind.lower()):
        label = f"{kind} {label}".strip()
    return f"{label} {size_text(entry['bytes'])}"


def status_markdown(status: dict) -> str:
    """One line of Markdown from ModelManager.status() (one per replica on a cluster)."""
    if "replicas" in status:
        return cluster_markdown(status)
    resident = status.get("resident") or []
    if resident:
        models = f"{', '.join(map(resident_text, resident))} (total {size_text(status.get('resident_bytes', 0))})"
    else:
        models = "none (the next run loads them)"
    parts = [f"**Backend** {status.get('backend', '?')}", f"**Resident** {models}"]
    if status.get("memory_budget_bytes"):
        parts.append(f"**Memory budget** {gb_text(status['memory_budget_bytes'])}")
    swap, last = status.get("last_swap"), status.get("last_load")
    if swap:
        before = short_label(swap.get("from") or "nothing")
        parts.append(f"**Last swap** {before} → {short_label(swap['to'])} in {swap['seconds']:.2f} s")
    elif last:
        parts.append(f"**Last load** {short_label(last['what'])} in {last['seconds']:.2f} s")
    download = status.get("download")
    if download:
        parts.append(f"**Downloading** {download['model']}: {size_text(download['done_bytes'])} of "
                     f"{size_text(download['total_bytes'])}")
    parts.append(f"**Engine** {'generating' if status.get('busy') else 'idle'}")
    return " · ".join(parts)


def cluster_markdown(status: dict) -> str:
    """One line per replica of a cluster engine's status (ClusterEngine.status())."""
    replicas = status.get("replicas") or []
    if not replicas:
        return f"**Backend** {status.get('backend', '?')}: no replica has reported yet"
    lines = [f"**Replica {r['replica']}** on {r.get('host', '?')} · {status_markdown(r)}"
             + (f" · **Last job** {r['last_job']}" if r.get("last_job") else "")
             + (f" · ⚠ {r['warning']}" if r.get("warning") else "") for r in replicas]
    return "\n\n".join(lines)
