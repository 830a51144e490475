"""The Models tab without a browser: the catalog (kinds, sizes, complete or partial, resident), downloading through
the page's handler from the fake hub, deleting from the cache, and the tab in the built app."""

import hashlib
import html
import shutil

import pytest

from mflux_core.downloads import Downloads, fetch_repo, repo_id_of
from mflux_core.errors import StudioError
from mflux_core.manager import ModelManager
from mflux_core.memory import gb_text
from mflux_core.model_catalog import cache_bytes_freed, catalog, delete_from_cache, deletion_plan, folder_bytes
from mflux_core.registry import on_disk
from mflux_core.weights.resolve import DEMO_MODELS, demo_models_dir
from tests.fixtures.fake_hub import BIG_FILE, REPO, digests, hub, source  # noqa: F401 (fixtures)
from webui.jobs import scoped
from webui.panels.models import MODELS_JOBS, follow_download, table_rows
from webui.status import size_text


def rows_by_name(tmp_path, resident=()):
    return {row.name: row for row in catalog(tmp_path / "models", [], list(resident))}


def cache_bytes(tmp_path) -> int:
    return folder_bytes(tmp_path / "home" / "hub")


def test_the_catalog_lists_demo_models_and_aliases_with_kind_size_and_state(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    rows = rows_by_name(tmp_path)
    for name in DEMO_MODELS:
        assert rows[name].where == "built-in" and rows[name].state == "complete"
        assert rows[name].size_bytes == folder_bytes(demo_models_dir() / name) > 0
    assert rows["demo-fill"].kind == "Fill" and rows["canny"].kind == "ControlNet" and rows["redux"].kind == "Redux"
    assert rows["depth-estimator"].kind == "estimator"
    assert rows["dev"].state == "not downloaded" and rows["dev"].size_bytes == 0
    shown = {row[0]: row for row in table_rows(list(rows.values()))}
    assert shown["demo"][3] == size_text(folder_bytes(demo_models_dir() / "demo")) and shown["dev"][3] == "—"


def test_a_resident_model_shows_its_quantization(tmp_path):
    folder = demo_models_dir() / "demo"
    resident = [{"kind": "transformer", "name": f"transformer {folder}/transformer 8-bit", "bytes": 1}]
    rows = rows_by_name(tmp_path, resident)
    assert rows["demo"].resident == "8-bit" and rows["demo-fill"].resident == ""


def test_a_stopped_download_is_partial_and_a_finished_one_complete_then_delete_frees_it(hub, source, tmp_path):
    hub.hold_at[BIG_FILE] = 32 * 1024
    blobs = tmp_path / "home" / "hub" / "models--acme--tiny-flux" / "blobs"
    big = blobs / f"{hashlib.sha256((source / BIG_FILE).read_bytes()).hexdigest()}.incomplete"
    jobs = Downloads()
    job = jobs.start(REPO)
    while not (big.is_file() and big.stat().st_size >= 32 * 1024) and not job.finished.is_set():
        job.finished.wait(0.05)
    jobs.stop(REPO)
    hub.release.set()
    assert job.wait(60).state == "stopped"
    partial = rows_by_name(tmp_path)[REPO]
    assert partial.state == "partial" and not on_disk(REPO)  # never taken for a model
    assert big.is_file() and partial.size_bytes == folder_bytes(blobs)  # the file cut short counts on disk
    assert cache_bytes_freed(REPO) == partial.size_bytes

    hub.hold_at.clear()
    folder = fetch_repo(REPO)
    row = rows_by_name(tmp_path)[REPO]
    assert row.state == "complete" and row.where == "Hugging Face cache" and row.kind == "base"
    assert row.size_bytes == sum(folder_bytes(source / name) for name in digests(source))
    assert row.path == folder and on_disk(REPO)

    before = cache_bytes(tmp_path)
    assert deletion_plan(REPO).expected_freed_size == row.size_bytes
    message = delete_from_cache(REPO)
    assert REPO in message and "freeing" in message
    assert before - cache_bytes(tmp_path) >= row.size_bytes and REPO not in rows_by_name(tmp_path)
    with pytest.raises(StudioError, match="nothing to delete"):
        delete_from_cache(REPO)


class FakeStudio:
    """What the Models tab's handlers read from the Studio: a real manager, folders and the download jobs."""

    def __init__(self, tmp_path):
        self.manager = ModelManager(models_dir=tmp_path / "models")
        self.folders = type("Folders", (), {"loras": ()})()
        self.downloads = Downloads()


def test_the_page_download_streams_progress_and_ends_with_the_model_complete_in_the_table(hub, tmp_path):
    studio = FakeStudio(tmp_path)
    updates = list(follow_download(studio, REPO, "status", "table"))
    assert studio.downloads.running() == []
    texts = [html.unescape(update["status"]) for update in updates]
    assert f"Downloaded {REPO}" in texts[-1]
    assert all("Downloading" in text and "of" in text for text in texts[:-1])
    table = {row[0]: row for row in updates[-1]["table"]}
    assert table[REPO][4] == "complete"


def test_page_messages_for_bad_names_and_gated_repos_never_name_cli_flags(hub, tmp_path):
    for bad in ("", "demo", "not a repo"):
        with pytest.raises(StudioError):
            repo_id_of(bad)
    hub.mode = "gated"
    updates = list(follow_download(FakeStudio(tmp_path), "acme/tiny-flux", "status", "table"))
    text = html.unescape(updates[-1]["status"])
    assert "gated" in text and "Models tab" in text and "hf auth" not in text and " --" not in text


def test_offline_the_built_app_lists_demo_models_with_sizes_and_turns_downloads_off(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from webui.app import build_app
    from webui.panels.models import OFFLINE_NOTE
    from webui.studio import StudioFolders

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    app = build_app(ModelManager(models_dir=tmp_path), StudioFolders.default(tmp_path / "out", loras=[]),
                    openai_api=False)
    blocks = {getattr(block, "elem_id", None): block for block in app.blocks.values()}
    rows = {row[0]: row for row in blocks["models-table"].value["data"]}
    assert rows["demo"][3] == size_text(folder_bytes(demo_models_dir() / "demo")) and rows["demo"][4] == "complete"
    assert blocks["models-note"].value == OFFLINE_NOTE and blocks["models-download"].interactive is False


def test_quantize_and_save_writes_a_new_model_into_the_models_folder(tmp_path):
    from webui.panels.models import quantize_and_save
    from webui.studio import Studio, StudioFolders

    studio = Studio(manager=ModelManager(models_dir=tmp_path / "models"),
                    folders=StudioFolders.default(tmp_path / "out", loras=[]))
    (tmp_path / "models").mkdir()
    updates = list(quantize_and_save(studio, "demo", "8", "demo-8bit", "session", "status"))
    assert "Saved demo as demo-8bit" in html.unescape(updates[-1]["status"])
    row = rows_by_name(tmp_path)["demo-8bit"]
    assert row.where == "models folder" and row.kind == "base" and row.state == "complete"
    with pytest.raises(Exception, match="already has demo-8bit"):
        list(quantize_and_save(studio, "demo", "4", "demo-8bit", "session", "status"))


def studio_with_models(tmp_path):
    from webui.studio import Studio, StudioFolders

    (tmp_path / "models").mkdir(exist_ok=True)
    return Studio(manager=ModelManager(models_dir=tmp_path / "models"),
                  folders=StudioFolders.default(tmp_path / "out", loras=[]))


def test_delete_from_the_models_folder_unloads_the_model_and_frees_its_size(tmp_path):
    import mlx.core as mx

    from mflux_core.weights.resolve import resolve_model
    from webui.panels.models import ask_delete, delete_model

    studio = studio_with_models(tmp_path)
    mine = tmp_path / "models" / "mine"
    shutil.copytree(demo_models_dir() / "demo", mine)
    (tmp_path / "models" / "mine-8bit").mkdir()  # a name that starts the same is not the model
    studio.manager.resident.model_for(resolve_model(model="mine", models_dir=tmp_path / "models"), mx.float32)
    assert rows_by_name(tmp_path, studio.manager.status()["resident"])["mine"].resident == "full precision"

    target, question = ask_delete(studio, "mine")
    assert target == "mine" and "models folder" in question and gb_text(folder_bytes(mine)) in question
    with studio.manager._lock:  # a running job holds the lock: the delete is refused and nothing goes
        with pytest.raises(StudioError, match="job is running"):
            delete_model(studio, "mine")
    assert mine.is_dir()
    message = delete_model(studio, target)
    assert "Deleted mine from the models folder" in message and not mine.exists()
    assert not any("mine" in entry["name"] for entry in studio.manager.status()["resident"])
    assert (tmp_path / "models" / "mine-8bit").is_dir()


def test_delete_refuses_links_out_of_the_models_folder_and_the_demo_models(tmp_path, monkeypatch):
    from mflux_core.model_catalog import checked_models_folder_entry, delete_from_models_folder
    from webui.panels.models import ask_delete

    studio = studio_with_models(tmp_path)
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights.safetensors").write_bytes(b"keep me")
    (models / "linked").symlink_to(elsewhere, target_is_directory=True)
    (models / "holder").mkdir()
    (models / "holder" / "inner").symlink_to(elsewhere / "weights.safetensors")
    for name in ("linked", "holder"):
        with pytest.raises(StudioError, match="outside the models folder"):
            ask_delete(studio, name)
        with pytest.raises(StudioError, match="outside the models folder"):
            delete_from_models_folder(name, models)
    assert (elsewhere / "weights.safetensors").read_bytes() == b"keep me" and (models / "holder" / "inner").is_symlink()
    with pytest.raises(StudioError, match="ships with the studio"):
        checked_models_folder_entry("demo", demo_models_dir())
    with pytest.raises(StudioError, match="built-in demo model"):
        ask_delete(studio, "demo")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    (models / "cached").symlink_to(tmp_path / "home" / "hub" / "x", target_is_directory=True)
    assert "Deleted cached" in delete_from_models_folder("cached", models)  # a link into the cache: the link goes
    assert not (models / "cached").is_symlink()


def test_an_unknown_model_says_what_to_do_in_the_page_and_the_cli_keeps_its_wording(tmp_path, capsys):
    from mflux_core.cli import main as cli_main
    from mflux_core.errors import WordedTwice
    from mflux_core.weights.resolve import resolve_name

    with pytest.raises(WordedTwice) as error:
        resolve_name("no-such-model", tmp_path)
    page, cli = str(error.value), error.value.cli_text
    assert page.startswith("Unknown model 'no-such-model'") and cli.startswith("Unknown model 'no-such-model'")
    assert "Models tab" in page and "models folder" in page and "--" not in page
    assert "an existing folder or file" in cli and "Models tab" not in cli
    assert cli_main(["generate", "--model", "no-such-model", "--models-dir", str(tmp_path), "--prompt", "x",
                     "--output", str(tmp_path / "x.png")]) == 1
    assert cli in capsys.readouterr().err


def test_quantize_and_save_reports_tensors_and_a_stop_leaves_no_folder(tmp_path):
    from mflux_core.errors import Cancelled
    from mflux_core.weights.resolve import resolve_model
    from mflux_core.weights.save import save_model
    from webui.panels.models import quantize_and_save

    studio = studio_with_models(tmp_path)
    reports = []
    demo = resolve_model(model="demo")
    save_model(tmp_path / "models" / "full", demo, bits=4, on_progress=lambda *report: reports.append(report))
    counted = [done for done, total, _ in reports if total]
    total = reports[-1][1]
    assert counted == list(range(1, total + 1)) and reports[-1] == (total, total, "model_index.json copied")
    assert any(what == "tensors quantized" for _, _, what in reports)

    def stop_at(step):
        def on_progress(done, total, what):
            if done == step:
                raise Cancelled("stopped")
        return on_progress

    for step in (3, total - 1):  # while computing tensors, and after files were written
        with pytest.raises(Cancelled):
            save_model(tmp_path / "models" / "stopped", demo, bits=4, on_progress=stop_at(step))
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["full"]

    updates = quantize_and_save(studio, "demo", "8", "demo-stop", "session", "status")
    for update in updates:
        if "Preparing" in html.unescape(update["status"]):
            assert not studio.jobs.cancel("session")  # another tab's Stop leaves it running
            assert studio.jobs.cancel(scoped("session", MODELS_JOBS))  # the tab's Stop, before the work starts
    assert "Stopped quantizing demo" in html.unescape(update["status"])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["full"]


def test_the_tab_merges_models_into_the_models_folder_and_a_stop_leaves_none(tmp_path):
    """demo-fill + (demo - demo) x 1 is demo-fill itself, tensor for tensor (Fill's wider image input kept); the new
    model is listed and mergeable; a wrong count of models is refused; Stop leaves no folder."""
    from safetensors.numpy import load_file

    from webui.panels.models import merge_and_save, merge_choices

    studio = studio_with_models(tmp_path)
    assert {"demo", "demo-fill"} <= set(merge_choices(studio))
    updates = list(merge_and_save(studio, ["demo-fill", "demo", "demo"], "add-difference", 1.0, "fill-again", "s",
                                  "status"))
    assert "Merged demo-fill and demo and demo (Add difference, M 1: " in html.unescape(updates[-1]["status"])

    def tensors(folder):
        return {key: value for path in sorted((folder / "transformer").glob("*.safetensors"))
                for key, value in load_file(str(path)).items()}

    merged, fill = tensors(tmp_path / "models" / "fill-again"), tensors(demo_models_dir() / "demo-fill")
    assert merged.keys() == fill.keys() and all((merged[key] == fill[key]).all() for key in fill)
    assert rows_by_name(tmp_path)["fill-again"].kind == "Fill" and "fill-again" in merge_choices(studio)

    with pytest.raises(Exception, match="A weighted sum takes two models, A and B"):  # shown as the page's error
        list(merge_and_save(studio, ["demo", "", None], "weighted-sum", 0.5, "half", "s", "status"))
    updates = merge_and_save(studio, ["demo", "demo"], "weighted-sum", 0.5, "never", "s", "status")
    for update in updates:
        if "Preparing" in html.unescape(update["status"]):
            assert studio.jobs.cancel(scoped("s", MODELS_JOBS))
    assert "Stopped merging" in html.unescape(update["status"])
    assert not (tmp_path / "models" / "never").exists()


def test_the_tab_extracts_a_lora_into_the_lora_library(tmp_path):
    """demo-kontext against demo (the same architecture): the change of every layer as a rank-8 LoRA in the models
    folder's loras/, part of the LoRA library; a model against itself is refused."""
    from mflux_core.lora.library import library_names
    from webui.panels.models import extract_and_save

    studio = studio_with_models(tmp_path)
    with pytest.raises(Exception, match="have the same linear layers: there is no change to extract"):
        list(extract_and_save(studio, "demo", "demo", 8, "none", "s", "status"))
    for outside in ("..", "/etc", "../models"):  # the pickers take typed names: never a path out of the folders
        with pytest.raises(Exception, match="Pick a model that is on disk"):
            list(extract_and_save(studio, outside, "demo", 8, "none", "s", "status"))
    updates = list(extract_and_save(studio, "demo-kontext", "demo", 8, "kontext-change", "s", "status"))
    message = html.unescape(updates[-1]["status"])
    assert "Saved kontext-change.safetensors" in message and "layers at rank 8, keeping " in message, message
    assert "kontext-change" in library_names([tmp_path / "models" / "loras"])  # the models folder's library
    with pytest.raises(Exception, match="already has kontext-change.safetensors"):
        list(extract_and_save(studio, "demo-kontext", "demo", 8, "kontext-change", "s", "status"))


def test_every_panels_model_list_is_read_again_on_page_load_and_after_the_models_tab_saves_one(tmp_path, monkeypatch):
    """A model quantized, merged or downloaded on the Models tab (or copied into the models folder) is in every
    tool's Model dropdown after the event or a page reload, not only after each dropdown's rescan."""
    from webui.app import build_app
    from webui.studio import StudioFolders
    from webui.widgets import refresh_model_pickers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models").mkdir()
    folders = StudioFolders.default(tmp_path / "outputs", models_dir=tmp_path / "models", loras=[])
    studio = build_app(ModelManager(models_dir=tmp_path / "models"), folders).studio
    tools = {tool for tool, _ in studio.model_pickers}
    assert {"generate", "fill", "kontext", "controlnet", "redux", "ic-edit"} <= tools
    shutil.copytree(demo_models_dir() / "demo", tmp_path / "models" / "demo-later")
    handlers = []
    refresh_model_pickers(studio, lambda handler, **wiring: handlers.append((handler, wiring)))
    [(handler, wiring)] = handlers
    assert wiring["outputs"] == [picker for _, picker in studio.model_pickers]
    updates = handler()
    generate_picker = next(picker for tool, picker in studio.model_pickers if tool == "generate")
    assert "demo-later" in [value for _, value in updates[generate_picker].choices]
