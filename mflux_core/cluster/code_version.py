"""The studio's code as a fingerprint. A replica whose code is not its front's (one Ray restarted after a `git pull`,
a machine with another checkout) refuses its jobs in a sentence: the requests and results pickled between them would
otherwise fail inside, on fields one side lacks."""

import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # mflux_core: all a replica imports


@cache
def code_fingerprint(package: Path = PACKAGE) -> str:
    """A short hash of every Python file of `package`, by relative path and content."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
