"""One file of a Hub repo into the Hugging Face cache's blobs/, continuing inside the file after a Stop, a dropped
connection or a killed process.

huggingface_hub (2.4) writes each file under a name unique to the attempt and deletes it on any error, so a file cut
short starts over. Here a file's partial copy has one stable name, blobs/<etag>.incomplete (the name older
huggingface_hub versions used), is appended to through huggingface_hub's own `http_get` with a Range request, and is
kept on any error. With all its bytes it is checked (its size, and the sha256 the hub lists for LFS files) and renamed
to blobs/<etag>; linking it into snapshots/ is left to huggingface_hub, so a partial file is never a snapshot file.
The transfer holds huggingface_hub's lock for the blob, so two processes never append to one partial file.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import constants
from tqdm.auto import tqdm


@dataclass(frozen=True)
class HubFile:
    """A file of a repo as the hub lists it."""

    path: str
    size: int
    etag: str  # its blob's name in the cache: the LFS sha256, else the git blob id (what the hub's ETag says)
    sha256: str | None  # listed for LFS files only

    @classmethod
    def listed(cls, entry) -> "HubFile":
        """From a huggingface_hub RepoFile of `list_repo_tree`."""
        sha256 = entry.lfs.sha256 if entry.lfs is not None else None
        return cls(entry.path, entry.size, sha256 or entry.blob_id, sha256)


class CorruptDownload(OSError):
    """A file whose bytes do not match the hub's checksum; its partial copy has been deleted."""

    def __init__(self, file: HubFile):
        super().__init__(f"{file.path} does not match its sha256 {file.sha256}")
        self.file = file


class QuietBars(tqdm):
    """A `tqdm_class` for huggingface_hub's calls that draws nothing: the studio shows its own progress."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "disable": True})


def repo_folder(repo_id: str) -> Path:
    """The repo's folder in the HF cache (every snapshot and blob is under it), whether or not it exists."""
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def blob_path(repo_id: str, file: HubFile) -> Path:
    return repo_folder(repo_id) / "blobs" / file.etag


def partial_path(repo_id: str, file: HubFile) -> Path:
    return repo_folder(repo_id) / "blobs" / f"{file.etag}.incomplete"


def partial_bytes(repo_id: str, file: HubFile) -> int:
    """Bytes of the file an earlier, interrupted download left on disk (none when they are more than the file)."""
    path = partial_path(repo_id, file)
    size = path.stat().st_size if path.is_file() else 0
    return size if size <= file.size else 0


def partial_files_bytes(repo_id: str) -> int:
    """Bytes of every partial file of a repo in the cache: what interrupted downloads left on disk."""
    return sum(path.stat().st_size for path in (repo_folder(repo_id) / "blobs").glob("*.incomplete"))


class ReportingFile:
    """The partial file as `http_get` writes it: each write reaches the disk and then reports the bytes on disk, so
    a report that raises (Stop) keeps every byte received, and a process killed later loses none of them."""

    def __init__(self, file, report: Callable[[int], None]):
        self._file, self._report = file, report

    def write(self, chunk: bytes) -> int:
        written = self._file.write(chunk)
        self._file.flush()
        self._report(self._file.tell())
        return written

    def __getattr__(self, name):  # seek, tell, truncate: http_get starts over when a server ignores the Range
        return getattr(self._file, name)


def fetch_blob(repo_id: str, commit: str, file: HubFile, report: Callable[[int], None]) -> None:
    """Make blobs/<etag> hold `file` at `commit`: continue its partial copy, check it, rename it into place.
    `report(bytes on disk)` is called before the transfer and after every chunk; an error it raises ends the transfer
    and keeps the partial copy. A copy that does not match the hub's sha256 is deleted (CorruptDownload)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    blob, partial = blob_path(repo_id, file), partial_path(repo_id, file)
    lock = Path(constants.HF_HUB_CACHE) / ".locks" / repo_folder(repo_id).name / f"{file.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if blob.exists():  # another process finished it while this one waited for the lock
            report(file.size)
            return
        done = partial_bytes(repo_id, file)
        with partial.open("r+b" if done else "wb") as out:
            out.seek(done)
            report(done)
            http_get(hf_hub_url(repo_id, file.path, revision=commit), ReportingFile(out, report), resume_size=done,
                     headers=build_hf_headers(), expected_size=file.size, tqdm_class=QuietBars)
        if file.sha256 is not None and file_sha256(partial) != file.sha256:
            partial.unlink()
            raise CorruptDownload(file)
        os.replace(partial, blob)


def file_sha256(path: Path, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()  # read in chunks: hashlib.file_digest needs Python 3.11, the studio supports 3.10
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
