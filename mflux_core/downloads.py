"""Getting a repo from the Hugging Face Hub into its cache: the files it needs and whether they fit on the cache's
disk, one download job per repo that later requests join, a Stop that ends the transfer, a token saved with
huggingface_hub's own login, and one sentence per failure, worded for the page and for the command line.

huggingface_hub lists the repo, authenticates and makes the HTTP requests; hub_blobs writes each missing file into
the cache's blobs/ through a partial file with a stable name, so a download that was stopped, lost its network or had
its process killed continues inside the file it was writing (a Range request for the bytes still missing), and the
progress starts at the bytes already on disk. A finished file is linked into its snapshot by hf_hub_download, and the
snapshot gets its ref (refs/main) and cached file list from snapshot_download only when every file is there: until
then `local_files_only` fails, so a partial download is never taken for a model (the Models tab shows it as partial).
"""

import errno
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import constants

from mflux_core.errors import Cancelled, InvalidRequest, StudioError, WordedTwice
from mflux_core.hub_blobs import CorruptDownload, HubFile, QuietBars, blob_path, fetch_blob, partial_bytes
from mflux_core.memory import gb_text

log = logging.getLogger("mflux_studio.downloads")

# on_download(bytes on disk, bytes of the files still missing when the download started): the first report counts
# what an interrupted download left on disk. A StudioError it raises (Cancelled) stops the download and reaches the
# caller as it is.
DownloadCallback = Callable[[int, int], None]

# Files transferred at once, each on its own connection (snapshot_download runs 8): one connection rarely fills a line.
PARALLEL_FILES = 4

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
    elif isinstance(error, CorruptDownload):
        lead = (f"{error.file.path} of {repo_id} arrived damaged (its sha256 does not match the one Hugging Face "
                "lists), so its partial file was deleted: ")
        return HubError(lead + "download again to fetch that file anew.", lead + "run the command again to fetch "
                        "that file anew.")
    else:
        text = (f"Could not download {repo_id} from {constants.ENDPOINT} ({type(error).__name__}): check the network "
                "connection and try again; what was downloaded so far is kept and the download continues from there.")
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
    """What a repo download still fetches (after SKIPPED_DOWNLOADS) at one commit."""

    repo_id: str
    commit: str
    missing: list  # HubFile: one per blob not in the cache, smallest first
    partial_bytes: int  # of the missing files, bytes an interrupted download left on disk

    @property
    def missing_bytes(self) -> int:
        return sum(file.size for file in self.missing)


def plan_download(repo_id: str) -> DownloadPlan:
    """The hub's file list for a repo, read with the saved token; a refusal becomes a HubError."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=constants.ENDPOINT)
    try:
        commit = api.repo_info(repo_id, revision=constants.DEFAULT_REVISION).sha
        entries = [e for e in api.list_repo_tree(repo_id, recursive=True, revision=commit) if isinstance(e, RepoFile)]
    except Exception as error:  # every hub failure gets its sentence
        raise hub_error(repo_id, error) from None
    kept = filter_repo_objects(entries, ignore_patterns=ignored_files(repo_id), key=lambda e: e.path)
    files = (HubFile.listed(entry) for entry in kept)
    blobs = {file.etag: file for file in files if not blob_path(repo_id, file).exists()}  # one per identical content
    missing = sorted(blobs.values(), key=lambda file: file.size)
    return DownloadPlan(repo_id, commit, missing, sum(partial_bytes(repo_id, file) for file in missing))


def check_space(plan: DownloadPlan) -> None:
    needed = plan.missing_bytes - plan.partial_bytes
    if needed > free_bytes(hf_cache_dir()):
        raise disk_full(plan.repo_id, needed)


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
    try:
        fetch_missing(plan, on_download or (lambda done, total: None))
        # every file is in blobs/ now: huggingface_hub links the rest, writes refs/main and the cached file list
        return Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), ignore_patterns=ignored_files(repo_id),
                                      tqdm_class=QuietBars))
    except StudioError:  # raised by on_download, e.g. Cancelled: what is on disk stays for the next try
        raise
    except Exception as error:  # network, authentication, disk full, a damaged file
        raise hub_error(repo_id, error) from None


class FilesProgress:
    """The bytes on disk of a download's files, reported together; once a file fails the others stop at their next
    chunk."""

    def __init__(self, plan: DownloadPlan, on_download: DownloadCallback):
        self.on_download, self.total = on_download, plan.missing_bytes
        self.on_disk = {file.etag: partial_bytes(plan.repo_id, file) for file in plan.missing}
        self.lock, self.failed = threading.Lock(), threading.Event()

    def report(self, file: HubFile, on_disk: int) -> None:
        if self.failed.is_set():
            raise Cancelled(f"Stopped downloading {file.path}.")
        with self.lock:  # files download on several threads; reports stay in order
            self.on_disk[file.etag] = on_disk
            self.on_download(sum(self.on_disk.values()), self.total)


def fetch_missing(plan: DownloadPlan, on_download: DownloadCallback) -> None:
    """Fetch the plan's missing files into blobs/ a few at a time, linking each into the snapshot as it ends."""
    from huggingface_hub import hf_hub_download

    progress = FilesProgress(plan, on_download)
    progress.on_download(sum(progress.on_disk.values()), progress.total)

    def fetch(file: HubFile) -> None:
        fetch_blob(plan.repo_id, plan.commit, file, lambda on_disk: progress.report(file, on_disk))
        hf_hub_download(plan.repo_id, file.path, revision=plan.commit, cache_dir=hf_cache_dir(),
                        tqdm_class=QuietBars)  # finds the blob: links it, fetches nothing

    with ThreadPoolExecutor(PARALLEL_FILES, thread_name_prefix=f"download {plan.repo_id}") as pool:
        futures = [pool.submit(fetch, file) for file in plan.missing]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:  # the first failure (Ctrl-C included) is the download's; the other files stop
            progress.failed.set()
            for future in futures:
                future.cancel()
            raise


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
    resumed_bytes: int = 0  # on disk from an earlier, interrupted download: not part of the speed

    @property
    def bytes_per_second(self) -> float:
        return (self.done_bytes - self.resumed_bytes) / self.seconds if self.seconds > 0 else 0.0

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
            if self._first is None:
                self._first = done
            self._state = DownloadState(self.repo_id, "running", done, total, time.monotonic() - self._started,
                                        resumed_bytes=self._first)

    def _finish(self, state: str, message: str, folder: Path | None = None) -> None:
        with self._lock:
            old = self._state
            self._state = DownloadState(self.repo_id, state, old.done_bytes, old.total_bytes,
                                        time.monotonic() - self._started, message, folder, old.resumed_bytes)
        self.finished.set()

    def _run(self) -> None:
        try:
            folder = self._fetch(self.repo_id, on_download=self._report)
        except Cancelled:
            self._finish("stopped", f"Stopped downloading {self.repo_id}: what was downloaded is kept, the file cut "
                         "short included; download it again to continue from there.")
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
