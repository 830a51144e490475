"""The Models tab in a real browser against the real app, downloading from the fake hub: the tab lists the demo
models with their sizes, a download shows its progress and completes, a saved token never shows, delete frees
the space after a confirmation."""

import pytest

from mflux_core.manager import ModelManager
from mflux_core.model_catalog import folder_bytes
from mflux_core.weights.resolve import demo_models_dir
from tests.fixtures.fake_hub import BIG_FILE, REPO, hub, source  # noqa: F401 (fixtures)
from tests.test_webui_browser import TIMEOUT_MS, browser, free_port, open_tab, screenshot, type_into, wait_for_status  # noqa: F401,E501
from webui.app import build_app, launch_kwargs
from webui.status import size_text
from webui.studio import StudioFolders

TOKEN = "hf_browser_token_never_shown_0987654321"


@pytest.fixture
def models_page(browser, hub, tmp_path):  # noqa: F811
    folders = StudioFolders.default(tmp_path / "outputs", loras=[])
    app = build_app(ModelManager(models_dir=tmp_path / "models"), folders, openai_api=False)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               **launch_kwargs(folders))
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"http://127.0.0.1:{port}/")
    open_tab(page, "Models")
    page.wait_for_selector("#models-table")
    yield page
    context.close()
    app.close()


def test_the_tab_lists_downloads_deletes_and_takes_a_token_without_showing_it(models_page, hub, tmp_path):  # noqa: F811
    page = models_page
    table = page.inner_text("#models-table")
    for name in ("demo", "demo-fill", "dev", "depth-estimator"):
        assert name in table
    assert size_text(folder_bytes(demo_models_dir() / "demo")) in table

    hub.hold_at[BIG_FILE] = 64 * 1024
    type_into(page, "models-name", REPO)
    page.click("#models-download")
    progress = wait_for_status(page, "models", "Downloading .* of ")
    assert REPO in progress
    screenshot(page, "models-downloading")
    page.click("#status-refresh")  # the status strip shows the tab's download too
    page.wait_for_function(f"() => document.querySelector('#status-strip').innerText.includes('Downloading {REPO}')")
    hub.release.set()
    done = wait_for_status(page, "models", "Downloaded|rror")
    assert done.startswith(f"Downloaded {REPO}"), done
    page.wait_for_function(f"() => document.querySelector('#models-table').innerText.includes('{REPO}')")
    row = page.inner_text("#models-table").split(REPO, 1)[1].split("\n\n")[0]  # its cells; the last row
    assert "complete" in row and "Hugging Face cache" in row, row

    cache = tmp_path / "home" / "hub"
    before = folder_bytes(cache)
    page.click("#models-delete")
    question = wait_for_status(page, "models", "freeing")
    assert REPO in question
    page.click("#models-confirm-delete")
    wait_for_status(page, "models", "Deleted")
    assert before - folder_bytes(cache) >= folder_bytes(demo_models_dir() / "demo")
    page.wait_for_function(f"() => !document.querySelector('#models-table').innerText.includes('{REPO}')")

    hub.token = TOKEN
    type_into(page, "models-token", TOKEN)
    page.click("#models-save-token")
    wait_for_status(page, "models", "Token saved")
    assert TOKEN not in page.content() and page.input_value("#models-token input") == ""
    screenshot(page, "models-tab")


def test_the_tab_merges_models_as_a1111s_checkpoint_merger(models_page, tmp_path):
    from tests.test_webui_browser import choose, open_accordions

    page = models_page
    open_accordions(page, "models-merge")
    for letter, name in (("a", "demo-fill"), ("b", "demo"), ("c", "demo")):
        choose(page, f"models-merge-{letter}", name)
    page.locator("#models-merge-method label", has_text="Add difference").click()
    type_into(page, "models-merge-name", "fill-merged")
    page.click("#models-merge-run")
    done = wait_for_status(page, "models", "Merged|rror|wrong")
    assert done.startswith("Merged demo-fill and demo and demo (Add difference, M 0.5: "), done
    page.wait_for_function("() => document.querySelector('#models-table').innerText.includes('fill-merged')")
    screenshot(page, "models-merge")
    assert (tmp_path / "models" / "fill-merged" / "transformer").is_dir()
