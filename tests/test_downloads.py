"""Downloads through the real huggingface_hub client against a local fake hub (tests/fixtures/fake_hub.py):
progress, Stop and continue inside a file, a killed process, a dropped connection, a damaged partial file, gated /
unknown repos, tokens, disk space, the CLI."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mflux_core import downloads
from mflux_core.cli import main as cli_main
from mflux_core.downloads import Downloads, HubError, cached_repo_folder, fetch_repo
from mflux_core.errors import StudioError
from tests.fixtures.fake_hub import BIG_FILE, CHUNK, REPO, digests, hub, source  # noqa: F401 (fixtures)

TOKEN = "hf_fake_token_for_tests_1234567890"


def blobs(tmp_path) -> Path:
    return tmp_path / "home" / "hub" / "models--acme--tiny-flux" / "blobs"


def blob_name(source, name: str) -> str:
    """A file's blob name in the cache: the hub's ETag, the sha256 for LFS files (tests/fixtures/fake_hub.py)."""
    body = (source / name).read_bytes()
    return (hashlib.sha256 if name.endswith(".safetensors") else hashlib.sha1)(body).hexdigest()


def big_partial(tmp_path, source) -> Path:
    """Where the big file's bytes wait until it is complete: its LFS sha256 + .incomplete, one name for every try."""
    return blobs(tmp_path) / f"{blob_name(source, BIG_FILE)}.incomplete"


def kept_bytes(tmp_path, source) -> dict[str, int]:
    """Repo file -> bytes of it an interrupted download left in its partial file."""
    partials = {path.name: path.stat().st_size for path in blobs(tmp_path).glob("*.incomplete")}
    return {name: partials[f"{blob_name(source, name)}.incomplete"] for name in digests(source)
            if f"{blob_name(source, name)}.incomplete" in partials}


def wait_for_bytes(path: Path, size: int, process=None) -> None:
    for _ in range(1200):  # a deadline for a hung transfer, not a speed claim
        if path.is_file() and path.stat().st_size >= size or (process and process.poll() is not None):
            return
        time.sleep(0.05)


def test_a_download_reports_growing_progress_and_gives_the_repo_byte_for_byte(hub, source):
    reports = []
    folder = fetch_repo(REPO, on_download=lambda done, total: reports.append((done, total)))
    assert digests(folder) == digests(source)
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert len(reports) > 2 and [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert reports[-1] == (total, total) and all(done <= t for done, t in reports)


def test_stop_ends_the_transfer_and_the_next_download_continues_inside_the_file(hub, source, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub.hold_at[BIG_FILE] = 4 * CHUNK
    jobs = Downloads()
    job = jobs.start(REPO)
    assert jobs.start(REPO) is job  # a second download of the same repo joins the first
    partial = big_partial(tmp_path, source)
    wait_for_bytes(partial, 4 * CHUNK)
    assert jobs.stop(REPO)
    hub.release.set()
    stopped = job.wait(60)
    assert stopped.state == "stopped" and "download it again to continue" in stopped.message
    kept = kept_bytes(tmp_path, source)
    assert 0 < partial.stat().st_size < (source / BIG_FILE).stat().st_size  # the file cut short stays on disk
    assert cached_repo_folder(REPO) is None  # what is on disk is not taken for the model, nor for one file of it
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, BIG_FILE, local_files_only=True)
    assert not list((tmp_path / "home" / "hub").rglob(f"snapshots/*/{BIG_FILE}"))
    fetched_before = [name for name, _ in hub.ranges]

    hub.hold_at.clear()
    hub.ranges.clear()
    done = jobs.start(REPO).wait(60)
    assert done.state == "done", done.message
    assert digests(done.folder) == digests(source) and cached_repo_folder(REPO) == done.folder
    assert (BIG_FILE, kept[BIG_FILE]) in hub.ranges  # each file cut short asks only for the bytes it did not have
    assert all(start == kept.get(name, 0) for name, start in hub.ranges)
    assert done.resumed_bytes == sum(kept.values())  # the progress started at the bytes kept
    assert len(hub.ranges) < len(fetched_before)  # files finished before the stop were not fetched again


def test_a_killed_download_continues_inside_the_file(hub, source, tmp_path):
    from huggingface_hub import constants

    hub.hold_at[BIG_FILE] = 8 * CHUNK
    env = {**os.environ, "HF_ENDPOINT": constants.ENDPOINT, "HF_HUB_CACHE": constants.HF_HUB_CACHE,
           "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "0"}
    script = ("import sys; from huggingface_hub import constants; constants.DOWNLOAD_CHUNK_SIZE = int(sys.argv[2]); "
              "from mflux_core.downloads import fetch_repo; fetch_repo(sys.argv[1])")
    process = subprocess.Popen([sys.executable, "-c", script, REPO, str(CHUNK)], env=env,
                               cwd=Path(__file__).resolve().parents[1])
    partial = big_partial(tmp_path, source)
    wait_for_bytes(partial, 8 * CHUNK, process)
    process.kill()
    assert process.wait() == -9  # killed while the big file was arriving
    kept = kept_bytes(tmp_path, source)
    assert kept[BIG_FILE] >= 8 * CHUNK

    hub.hold_at.clear()
    hub.release.set()
    hub.ranges.clear()
    reports = []
    folder = fetch_repo(REPO, on_download=lambda done, total: reports.append((done, total)))
    assert digests(folder) == digests(source)
    assert (BIG_FILE, kept[BIG_FILE]) in hub.ranges and all(start == kept.get(name, 0) for name, start in hub.ranges)
    missing = sum((source / name).stat().st_size for name, _ in hub.ranges)
    assert reports[0] == (sum(kept.values()), missing) and reports[-1] == (missing, missing)


def test_a_damaged_partial_file_is_deleted_with_a_sentence_and_fetched_anew(hub, source, tmp_path, monkeypatch):
    size = (source / BIG_FILE).stat().st_size
    partial = big_partial(tmp_path, source)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(bytes(size // 2))  # zeros where the file's first half should be
    plan = downloads.plan_download(REPO)
    assert plan.partial_bytes == size // 2
    with monkeypatch.context() as disk:  # only the bytes still missing count against the free space
        disk.setattr(downloads, "free_bytes", lambda folder: plan.missing_bytes - size // 2 - 1)
        with pytest.raises(HubError, match="needs"):
            fetch_repo(REPO)
        disk.setattr(downloads, "free_bytes", lambda folder: plan.missing_bytes - size // 2)
        with pytest.raises(HubError) as error:
            fetch_repo(REPO)
    assert BIG_FILE in str(error.value) and "sha256" in str(error.value) and "download again" in str(error.value)
    assert "run the command again" in error.value.cli_text
    assert (BIG_FILE, size // 2) in hub.ranges  # it continued the damaged file; the check at the end caught it
    assert not partial.exists() and cached_repo_folder(REPO) is None

    hub.ranges.clear()
    assert digests(fetch_repo(REPO)) == digests(source)
    assert (BIG_FILE, 0) in hub.ranges  # from its first byte


def test_a_connection_dropped_mid_file_resumes_from_the_bytes_received(hub, source):
    hub.drop_after[BIG_FILE] = 100 * 1024
    folder = fetch_repo(REPO)
    assert digests(folder) == digests(source)
    assert [start > 0 for name, start in hub.ranges if name == BIG_FILE] == [False, True]  # asked from where it broke


def test_a_gated_repo_names_the_repo_its_licence_page_and_how_to_authenticate(hub, capsys):
    from huggingface_hub import constants

    hub.mode = "gated"
    with pytest.raises(HubError) as error:
        fetch_repo(REPO)
    page, cli = str(error.value), error.value.cli_text
    for text in (page, cli):
        assert REPO in text and f"{constants.ENDPOINT}/{REPO}" in text and "licence" in text
    assert "Models tab" in page and "--" not in page.replace("models--", "")
    assert "hf auth login" in cli and "HF_TOKEN" in cli
    assert cli_main(["download", REPO]) == 1
    assert "hf auth login" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["unauthorized", "missing"])
def test_an_unknown_or_private_repo_says_so_and_how_to_authenticate(hub, mode):
    hub.mode = mode
    with pytest.raises(HubError) as error:
        fetch_repo(REPO)
    assert REPO in str(error.value) and "not found" in str(error.value) and "token" in str(error.value)


def test_a_saved_token_is_sent_with_the_next_request_and_opens_a_gated_repo(hub, source, caplog):
    from huggingface_hub import constants

    hub.mode, hub.token = "gated", TOKEN
    with pytest.raises(StudioError) as refused:
        downloads.save_token("hf_wrong_token")
    assert "hf_wrong_token" not in str(refused.value) and not downloads.has_token()
    downloads.save_token(TOKEN)
    assert Path(constants.HF_TOKEN_PATH).read_text().strip() == TOKEN and downloads.has_token()
    hub.seen.clear()
    assert digests(fetch_repo(REPO)) == digests(source)
    assert hub.seen and all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.seen)
    assert TOKEN not in caplog.text


def test_a_download_that_would_not_fit_is_refused_before_any_file_is_fetched(hub, monkeypatch):
    monkeypatch.setattr(downloads, "free_bytes", lambda folder: 1000)
    with pytest.raises(HubError) as error:
        fetch_repo(REPO)
    assert REPO in str(error.value) and "Models tab" in str(error.value) and "hf cache delete" in error.value.cli_text
    assert not [path for method, path, _ in hub.seen if "/resolve/" in path]


def test_the_cli_downloads_with_a_progress_bar(hub, source, capsys):
    assert cli_main(["download", REPO]) == 0
    out = capsys.readouterr()
    assert "Downloaded acme/tiny-flux" in out.out and "B/s" in out.err
    assert digests(cached_repo_folder(REPO)) == digests(source)


def test_offline_downloads_are_refused_in_one_sentence(monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StudioError, match="offline"):
        Downloads().start(REPO)
    assert cli_main(["download", "demo"]) == 1
    assert "built-in demo model" in capsys.readouterr().err
