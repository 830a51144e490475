"""Decide whether two component folders hold the same weights, from the files, never from names.

Hugging Face cache snapshots link to content-addressed blobs, so resolving links makes identical
files identical paths. Copies elsewhere are compared by a content sample: each file's size and a
hash of its first and last MiB (a safetensors header lists every tensor's name, shape and offset,
so a different checkpoint differs there).
"""

import hashlib
from pathlib import Path

SAMPLE_BYTES = 1 << 20


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            handle.seek(size - SAMPLE_BYTES)
            digest.update(handle.read(SAMPLE_BYTES))


def fingerprint(*paths: Path) -> str:
    """A content fingerprint of files and folders (recursively), independent of where they live."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root).resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if path.name.startswith("."):
                continue
            digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            _file_digest(path.resolve(), digest)
    return digest.hexdigest()[:24]
