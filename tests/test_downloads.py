"""Downloads through the real huggingface_hub client against a local fake hub (tests/fixtures/fake_hub.py):
progress, Stop and continue, a dropped connection, gated / unknown repos, tokens, disk space, the CLI."""

from pathlib import Path

import pytest

from mflux_core import downloads
from mflux_core.cli import main as cli_main
from mflux_core.downloads import Downloads, HubError, cached_repo_folder, fetch_repo
from mflux_core.errors import StudioError
from tests.fixtures.fake_hub import BIG_FILE, REPO, digests, hub, source  # noqa: F401 (fixtures)

TOKEN = "hf_fake_token_for_tests_1234567890"


def test_a_download_reports_growing_progress_and_gives_the_repo_byte_for_byte(hub, source):
    reports = []
    folder = fetch_repo(REPO, on_download=lambda done, total: reports.append((done, total)))
    assert digests(folder) == digests(source)
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert len(reports) > 2 and [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert reports[-1] == (total, total) and all(done <= t for done, t in reports)


def test_stop_ends_the_transfer_and_the_next_download_continues_to_identical_files(hub, source):
    hub.hold_at[BIG_FILE] = 64 * 1024
    jobs = Downloads()
    job = jobs.start(REPO)
    assert jobs.start(REPO) is job  # a second download of the same repo joins the first
    while job.state().done_bytes < 64 * 1024 and not job.finished.is_set():
        job.finished.wait(0.05)
    assert jobs.stop(REPO)
    hub.release.set()
    stopped = job.wait(60)
    assert stopped.state == "stopped" and "download it again to continue" in stopped.message
    assert cached_repo_folder(REPO) is None  # what is on disk is not taken for the model
    fetched_before = [path for method, path, _ in hub.seen if method == "GET" and "/resolve/" in path]

    hub.hold_at.clear()
    done = jobs.start(REPO).wait(60)
    assert done.state == "done", done.message
    assert digests(done.folder) == digests(source) and cached_repo_folder(REPO) == done.folder
    fetched_after = [path for method, path, _ in hub.seen if method == "GET" and "/resolve/" in path][len(fetched_before):]
    assert len(fetched_after) < len(digests(source))  # files finished before the stop were not fetched again


def test_a_connection_dropped_mid_file_resumes_from_the_bytes_received(hub, source):
    hub.drop_after[BIG_FILE] = 100 * 1024
    folder = fetch_repo(REPO)
    assert digests(folder) == digests(source)


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
