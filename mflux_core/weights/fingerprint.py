"""Decide whether two component folders hold the same weights, from the files, never from names.

Hugging Face cache snapshots link to content-addressed blobs, so resolving links makes identical
files identical paths. Copies elsewhere are compared by a content sample: each file's size and a
hash of its first and last MiB (a safetensors header lists every tensor's name, shape and offset,
so a different checkpoint differs there).

The manager fingerprints a request's model folders on every generate; a file's sample is read once
and reused while its stat (size, modification and change times, inode) stays the same.
"""

import hashlib
from functools import lru_cache
from pathlib import Path

SAMPLE_BYTES = 1 << 20


def _file_sample_digest(path: Path) -> bytes:
    status = path.stat()
    return _sample_digest(str(path), status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


@lru_cache(maxsize=4096)
def _sample_digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bytes:
    """The digest of a file's size and sampled bytes; the stat fields after `size` only key the cache."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            handle.seek(size - SAMPLE_BYTES)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.digest()


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
            digest.update(_file_sample_digest(path.resolve()))
    return digest.hexdigest()[:24]
