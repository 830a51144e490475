"""The X/Y/Z plot tab through a live server and gradio_client, on the demo models: every cell in the history,
the grid beside it, the cell count refused before anything runs; the prompt matrix and the LoRA axis, and the
Generate tab's prompt list on the same server."""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mflux_core.manager import ModelManager
from mflux_core.metadata import JSON_KEY
from mflux_core.weights.resolve import demo_folder
from tests.fixtures.lora_files import Dims, write_diffusers_lora
from tests.test_prompt_batches import PROMPT_LIST
from webui.app import build_app, launch_kwargs
from webui.studio import StudioFolders


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    root = tmp_path_factory.mktemp("plot")
    (root / "loras").mkdir()
    write_diffusers_lora(root / "loras" / "style.safetensors", Dims.of(demo_folder("demo")), magnitude=2.0)
    folders = StudioFolders.default(root / "outputs", models_dir=root / "models", loras=[root / "loras"])
    app = build_app(ModelManager(models_dir=root / "models"), folders)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               **launch_kwargs(folders))
    yield Client(f"http://127.0.0.1:{port}/", analytics_enabled=False, verbose=False), folders.outputs
    app.close()


def test_a_plot_saves_every_cell_to_the_history_and_its_grid_beside_it(client):
    client, outputs = client
    status, preview, results = client.predict(
        prompt="a red circle on a blue background", x_kind="steps", x_values="1-2", y_kind="prompt-sr",
        y_values="red, green", api_name="/plot")
    assert "Done: 4 cells" in status
    cells = sorted(outputs.glob("????-??-??/*-generate-0*.png"))
    assert len(cells) == 4
    grids = list((outputs / "grids").glob("*/*-plot-0.png"))
    assert len(grids) == 1 and len(results) == 5
    grid = Image.open(grids[0])
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # two columns, two rows and the labels
    assert "a red circle on a blue background\nSteps: 1," in grid.info["parameters"]  # its first cell's settings
    cell_pixels = [np.asarray(Image.open(path)) for path in cells]
    assert len({pixels.tobytes() for pixels in cell_pixels}) == 4  # steps and prompt each change the image
    status, _, results = client.predict(prompt="a red circle", x_kind="guidance", x_values="2, 3", seed=7,
                                        random_seed=False, vary_seeds_x=True, api_name="/plot")
    assert [cell["seed"] for cell in recorded(results[1:])] == [7, 8]  # the grid first; "Vary seeds for X"


def test_too_many_cells_are_refused_before_anything_runs(client):
    from gradio_client.exceptions import AppError

    client, outputs = client
    before = set(outputs.glob("????-??-??/*.png"))
    with pytest.raises(AppError, match="more than the limit of 10"):
        client.predict(prompt="a cat", x_kind="steps", x_values="1-4", y_kind="seed", y_values="1-3", max_cells=10,
                       api_name="/plot")
    with pytest.raises(AppError, match="Choose at least one axis"):
        client.predict(prompt="a cat", api_name="/plot")
    assert set(outputs.glob("????-??-??/*.png")) == before


def test_an_image_strength_axis_plots_image_to_image_from_the_input_image(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, outputs = client
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "start.png")
    status, _, results = client.predict(prompt="a blue square", x_kind="strength", x_values="0.3, 0.8", seed=3,
                                        init_image=handle_file(str(tmp_path / "start.png")), api_name="/plot")
    assert "Done: 2 cells" in status
    cells = recorded([item for item in results if "cell" in (item.get("caption") or "")])
    assert [cell["image_strength"] for cell in cells] == [0.3, 0.8] and all(cell["image_path"] for cell in cells)
    with pytest.raises(AppError, match="The image strength and denoising axes need an input image"):
        client.predict(prompt="a cat", x_kind="strength", x_values="0.3, 0.8", api_name="/plot")
    status, _, results = client.predict(prompt="a blue square", x_kind="denoising", x_values="0.7, 0.2", seed=3,
                                        init_image=handle_file(str(tmp_path / "start.png")), api_name="/plot")
    cells = recorded([item for item in results if "cell" in (item.get("caption") or "")])
    assert [cell["image_strength"] for cell in cells] == [0.3, 0.8]  # A1111's Denoising: 1 - the image strength


def recorded(results) -> list[dict]:
    """The request each returned image records in its metadata."""
    return [json.loads(Image.open(item["image"]).info[JSON_KEY])["request"] for item in results]


def test_a_prompt_matrix_saves_each_combination_with_its_prompt_at_one_seed_and_the_grid(client):
    client, outputs = client
    status, preview, results = client.predict(prompt="a red circle|at night|big", prompt_matrix=True, steps="1",
                                              seed=4, api_name="/plot")
    assert "Done: 4 cells" in status
    cells = recorded(results[1:])  # the grid comes first
    assert {cell["prompt"] for cell in cells} == {"a red circle", "a red circle, at night", "a red circle, big",
                                                  "a red circle, at night, big"}
    assert {cell["seed"] for cell in cells} == {4}
    grid = Image.open(results[0]["image"])
    assert grid.width > 2 * 64 and grid.height > 2 * 64


def test_the_lora_axis_picks_library_loras_by_name_and_refuses_an_unknown_one(client):
    from gradio_client.exceptions import AppError

    client, outputs = client
    status, preview, results = client.predict(prompt="a red circle", x_kind="lora", x_values="none, style",
                                              steps="1", seed=2, api_name="/plot")
    assert "Done: 2 cells" in status
    plain, styled = recorded(results[1:])
    assert plain["lora_paths"] == [] and [Path(p).name for p in styled["lora_paths"]] == ["style.safetensors"]
    assert not np.array_equal(np.asarray(Image.open(results[1]["image"])), np.asarray(Image.open(results[2]["image"])))
    with pytest.raises(AppError, match="'nowhere' is not in the LoRA library"):
        client.predict(prompt="a cat", x_kind="lora", x_values="none, nowhere", api_name="/plot")
    with pytest.raises(AppError, match="A prompt matrix makes its own axes"):
        client.predict(prompt="a cat|red", prompt_matrix=True, x_kind="steps", x_values="1-2", api_name="/plot")


def test_the_prompt_list_runs_every_line_in_one_job_and_refuses_a_bad_line_before_any_image(client):
    from gradio_client.exceptions import AppError

    client, outputs = client
    status, preview, results = client.predict(prompt="", prompt_lines=PROMPT_LIST, steps="1", seed=3,
                                              api_name="/generate")
    assert "Done: 4 images" in status
    made = [(r["prompt"], r["seed"], r["steps"], r["guidance"]) for r in recorded(results)]
    assert made[0][:3] == ("a red circle", 3, 1)  # the page's seed and steps, the model's guidance
    assert made[1:3] == [("a blue square", 5, 1, 2.5), ("a blue square", 6, 1, 2.5)]
    assert made[3][1:] == (7, 2, 4.5) and made[3][0] in ("a green dot", "a yellow dot")
    status, _, results = client.predict(prompt="on grass", prompt_lines="a red circle", prompt_position="end",
                                        steps="1", seed=3, api_name="/generate")
    assert [r["prompt"] for r in recorded(results)] == ["on grass a red circle"]  # A1111's "Insert prompts at the"
    before = set(outputs.glob("????-??-??/*.png"))
    with pytest.raises(AppError, match="Line 2: Steps must be a whole number from 1 to 500, not 0"):
        client.predict(prompt_lines="a cat\n--prompt a dog --steps 0", api_name="/generate")
    assert set(outputs.glob("????-??-??/*.png")) == before
