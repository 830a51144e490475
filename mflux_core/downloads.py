"""Getting a repo from the Hugging Face Hub into its cache: the files it needs and whether they fit on the cache's
disk, one download job per repo that later requests join, a Stop that ends the transfer, a token saved with
huggingface_hub's own login, and one sentence per failure, worded for the page and for the command line.

huggingface_hub does the transfer: snapshot_download keeps every finished file, so a download that was stopped,
lost its network or had its process killed continues from the files on disk (a file cut short restarts; within
one run huggingface_hub itself resumes a dropped connection with a Range request), and its cached file list makes
a snapshot with missing files fail `local_files_only`, so a partial download is never taken for a model.
A file cut short by Stop or a killed process cannot continue inside the file: huggingface_hub (2.4) writes each file
into an `.incomplete` file with a name unique to that attempt, deletes it in a `finally` on any error (a Stop raised
from the progress callback included), and never opens one left by an earlier process.
"""

import errno
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import constants

from mflux_core.errors import Cancelled, InvalidRequest, StudioError, WordedTwice
from mflux_core.memory import gb_text

log = logging.getLogger("mflux_studio.downloads")

# on_download(bytes written so far, bytes of the files started so far): the total grows as files start.
# A StudioError it raises (Cancelled) stops the download and reaches the caller as it is.
DownloadCallback = Callable[[int, int], None]

# BFL repos ship both a diffusers layout and single-file checkpoints; we read the diffusers layout.
SKIPPED_DOWNLOADS = {"black-forest-labs/": ["flux1-*.safetensors", "ae.safetensors"]}


class HubError(WordedTwice):
    """A download failure, worded for the page and for the CLI."""


def hf_cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """Whether downloads are off: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported."""
    return constants.HF_HUB_OFFLINE


def free_bytes(folder: Path) -> int:
    """Free space on the disk holding `folder` (or its nearest existing parent). The one place the studio reads
    free space: tests replace this module function to pretend a small disk."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def ignored_files(repo_id: str) -> list[str] | None:
    return next((patterns for prefix, patterns in SKIPPED_DOWNLOADS.items() if repo_id.startswith(prefix)), None)


def repo_page(repo_id: str) -> str:
    return f"{constants.ENDPOINT}/{repo_id}"


def hub_error(repo_id: str, error: Exception) -> HubError:
    """One sentence for a failed hub request: gated, unknown or private, a refused token, or the network."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    tokens = f"{constants.ENDPOINT}/settings/tokens"
    in_page = (f"then paste a read token from {tokens} into the Hugging Face token field of the Models tab, save it "
               "and download again.")
    in_cli = f"then run `hf auth login` (or set HF_TOKEN) with a read token from {tokens} and run the command again."
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError):
        lead = (f"{repo_id} is a gated repository: accept its licence at {repo_page(repo_id)} while signed in to "
                "Hugging Face, ")
    elif isinstance(error, RepositoryNotFoundError):
        lead = (f"{repo_id} was not found on Hugging Face, or it is private or gated and needs a token: check the "
                f"name; if it is gated, accept its licence at {repo_page(repo_id)}, ")
    elif isinstance(error, HfHubHTTPError) and status in (401, 403):
        lead = (f"Hugging Face refused the saved token for {repo_id} (invalid, expired or without read access): "
                f"accept the licence at {repo_page(repo_id)} if the repository is gated, make a new token, ")
    elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return disk_full(repo_id)
    else:
        text = (f"Could not download {repo_id} from {constants.ENDPOINT} ({type(error).__name__}): check the network "
                "connection and try again; the files downloaded so far are kept and the download continues from them.")
        return HubError(text)
    return HubError(lead + in_page, lead + in_cli)


def disk_full(repo_id: str, needed: int | None = None) -> HubError:
    cache = hf_cache_dir()
    free = free_bytes(cache)
    amount = f"needs {gb_text(needed)} more" if needed is not None else "does not fit"
    lead = f"{repo_id} {amount} on the disk of the Hugging Face cache ({cache}), which has {gb_text(free)} free: "
    return HubError(lead + "delete models you no longer use in the Models tab, or free space on that disk, "
                    "then download again.",
                    lead + "delete cached models you no longer use (`hf cache delete`), or free space on that disk, "
                    "then run the command again.")


def offline_error(repo_id: str) -> HubError:
    """One sentence: what is missing, and the two ways to get it (in the page's terms, or the command line's)."""
    cache = hf_cache_dir()
    online = f"or download it once online (`hf download {repo_id}` puts it into {cache})"
    return HubError(f"{repo_id} is not on this machine and downloads are off: put its folder into the models "
                    f"folder, {online}.",
                    f"{repo_id} is not on this machine and downloads are off (HF_HUB_OFFLINE): put its folder into "
                    f"the models folder (--models-dir) or pass it with --path, {online}.")


def repo_id_of(name: str) -> str:
    """The Hugging Face repo behind a name typed in the Models tab or given to `mflux-studio download`."""
    from mflux_core.weights.resolve import ALIASES, DEMO_MODELS  # here: resolve imports this module

    name = (name or "").strip()
    if not name:
        raise InvalidRequest("Pick a model in the list or type an alias or a repo id (owner/name) first.")
    if name in DEMO_MODELS:
        raise InvalidRequest(f"{name} is a built-in demo model: it ships with the studio, so there is nothing to "
                             "download or delete.")
    repo = ALIASES.get(name, name)
    if repo.count("/") != 1 or repo.startswith(("/", ".")):
        raise InvalidRequest(f"{name} is not an alias or a Hugging Face repo id (owner/name): only those download, "
                             "and only the Hugging Face cache is deleted from here.")
    return repo


@dataclass(frozen=True)
class DownloadPlan:
    """The files a repo download fetches (after SKIPPED_DOWNLOADS), their sizes, and what is not cached yet."""

    repo_id: str
    files: dict  # path in the repo -> size in bytes
    missing_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def plan_download(repo_id: str) -> DownloadPlan:
    """The hub's file list for a repo, read with the saved token; a refusal becomes a HubError."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    try:
        entries = [e for e in HfApi(endpoint=constants.ENDPOINT).list_repo_tree(repo_id, recursive=True)
                   if isinstance(e, RepoFile)]
    except Exception as error:  # every hub failure gets its sentence
        raise hub_error(repo_id, error) from None
    kept = filter_repo_objects(entries, ignore_patterns=ignored_files(repo_id), key=lambda e: e.path)
    files = {entry.path: entry.size for entry in kept}
    cached = {path for path in files if isinstance(try_to_load_from_cache(repo_id, path, cache_dir=hf_cache_dir()), str)}
    return DownloadPlan(repo_id, files, sum(size for path, size in files.items() if path not in cached))


def check_space(plan: DownloadPlan) -> None:
    if plan.missing_bytes > free_bytes(hf_cache_dir()):
        raise disk_full(plan.repo_id, plan.missing_bytes)


def cached_repo_folder(repo_id: str) -> Path | None:
    """The repo's snapshot folder when every file of it is in the cache (huggingface_hub checks its cached file
    list), else None: a partial download is not a model."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hf_cache_dir(),
                                      ignore_patterns=ignored_files(repo_id)))
    except Exception:  # not cached, or cached incompletely
        return None


def fetch_repo(repo_id: str, on_download: DownloadCallback | None = None) -> Path:
    """The snapshot folder of a repo: from the cache when complete, else downloaded after the space check."""
    from huggingface_hub import snapshot_download

    folder = cached_repo_folder(repo_id)
    if folder is not None:
        return folder
    if is_offline():
        raise offline_error(repo_id)
    plan = plan_download(repo_id)
    check_space(plan)
    tqdm_class = None
    if on_download is not None:  # the total from the hub's file list, not only the files started so far
        tqdm_class = download_progress_class(lambda done, total: on_download(done, max(total, plan.missing_bytes)))
    try:
        return Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), ignore_patterns=ignored_files(repo_id),
                                      tqdm_class=tqdm_class))
    except StudioError:  # raised by on_download, e.g. Cancelled: the files so far stay for the next try
        raise
    except Exception as error:  # network, authentication, disk full
        raise hub_error(repo_id, error) from None


def download_progress_class(on_download: DownloadCallback):
    """A tqdm class for snapshot_download's `tqdm_class` hook that reports bytes instead of drawing bars.

    huggingface_hub makes three bars from it: files fetched (unit "it"), bytes received from the
    network ("Downloading bytes") and bytes written to disk; the last one is the download's progress
    (the network count differs for Xet transfers). tests/test_manager.py and tests/test_downloads.py run real
    downloads from a local server, so a change in huggingface_hub's bars shows up there.
    """
    from tqdm.auto import tqdm

    lock = threading.Lock()  # files download on several threads; reports stay in order

    class DownloadProgress(tqdm):
        def __init__(self, *args, **kwargs):
            description = str(kwargs.get("desc") or "")
            self.reports_bytes = kwargs.get("unit") == "B" and not description.startswith("Downloading bytes")
            self.done = int(kwargs.get("initial") or 0)
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n=1):
            with lock:
                self.done += int(n or 0)
                if self.reports_bytes:
                    on_download(self.done, max(int(self.total or 0), self.done))
            return super().update(n)

    return DownloadProgress


def save_token(token: str) -> None:
    """Check a token with the hub and store it in huggingface_hub's token file (what `hf auth login` writes).
    The token is never part of a message."""
    from huggingface_hub import login

    token = (token or "").strip()
    if not token:
        raise StudioError("Paste a Hugging Face access token first (it starts with hf_).")
    if is_offline():
        raise StudioError("Downloads are off (HF_HUB_OFFLINE), so a token cannot be checked with Hugging Face now.")
    try:
        login(token=token, add_to_git_credential=False)
    except Exception as error:  # a refused token, the network: the sentence must not carry the token
        raise StudioError(f"Hugging Face did not accept this token ({type(error).__name__}): copy a read token from "
                          f"{constants.ENDPOINT}/settings/tokens and save it again.") from None


def has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


@dataclass(frozen=True)
class DownloadState:
    repo_id: str
    state: str  # running, done, stopped, failed
    done_bytes: int
    total_bytes: int
    seconds: float
    message: str = ""
    folder: Path | None = None

    @property
    def bytes_per_second(self) -> float:
        return self.done_bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        speed = self.bytes_per_second
        return (self.total_bytes - self.done_bytes) / speed if speed > 0 else None


class DownloadJob:
    """One repo downloading on its own thread; `stop()` ends the transfer at its next chunk."""

    def __init__(self, repo_id: str, fetch: Callable[..., Path]):
        self.repo_id, self._fetch = repo_id, fetch
        self._cancel, self.finished = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._first: int | None = None  # bytes already on disk at the first report (not counted in the speed)
        self._state = DownloadState(repo_id, "running", 0, 0, 0.0)
        threading.Thread(target=self._run, name=f"download {repo_id}", daemon=True).start()

    def _report(self, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"Stopped downloading {self.repo_id}.")
        with self._lock:
            self._state = DownloadState(self.repo_id, "running", done, total, time.monotonic() - self._started)

    def _finish(self, state: str, message: str, folder: Path | None = None) -> None:
        with self._lock:
            old = self._state
            self._state = DownloadState(self.repo_id, state, old.done_bytes, old.total_bytes,
                                        time.monotonic() - self._started, message, folder)
        self.finished.set()

    def _run(self) -> None:
        try:
            folder = self._fetch(self.repo_id, on_download=self._report)
        except Cancelled:
            self._finish("stopped", f"Stopped downloading {self.repo_id}: the files finished so far are kept; "
                         "download it again to continue.")
        except StudioError as error:
            self._finish("failed", str(error))
        except Exception as error:  # a bug: its traceback goes to the log, a summary to the page
            log.exception("download of %s failed", self.repo_id)
            self._finish("failed", f"The download of {self.repo_id} failed ({type(error).__name__}: {error}).")
        else:
            self._finish("done", f"Downloaded {self.repo_id} into {folder}.", folder)

    def stop(self) -> None:
        self._cancel.set()

    def state(self) -> DownloadState:
        with self._lock:
            return self._state

    def wait(self, timeout: float | None = None) -> DownloadState:
        self.finished.wait(timeout)
        return self.state()


class Downloads:
    """The studio's downloads, one job per repo: starting a repo that is downloading joins its job."""

    def __init__(self, fetch: Callable[..., Path] = fetch_repo):
        self._fetch = fetch
        self._lock = threading.Lock()
        self._jobs: dict[str, DownloadJob] = {}

    def start(self, repo_id: str) -> DownloadJob:
        if is_offline():
            raise StudioError("Downloads are off: the studio runs offline (HF_HUB_OFFLINE=1).")
        with self._lock:
            job = self._jobs.get(repo_id)
            if job is None or job.finished.is_set():
                job = self._jobs[repo_id] = DownloadJob(repo_id, self._fetch)
            return job

    def job(self, repo_id: str) -> DownloadJob | None:
        with self._lock:
            return self._jobs.get(repo_id)

    def running(self) -> list[DownloadState]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [job.state() for job in jobs if not job.finished.is_set()]

    def stop(self, repo_id: str) -> bool:
        job = self.job(repo_id)
        if job is None or job.finished.is_set():
            return False
        job.stop()
        return True
