"""The X/Y/Z plot tab through a live server and gradio_client, on the demo models: every cell in the history,
the grid beside it, the cell count refused before anything runs."""

import socket

import numpy as np
import pytest
from PIL import Image

from mflux_core.manager import ModelManager
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
    folders = StudioFolders.default(root / "outputs", models_dir=root / "models", loras=[])
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
    cell_pixels = [np.asarray(Image.open(path)) for path in cells]
    assert len({pixels.tobytes() for pixels in cell_pixels}) == 4  # steps and prompt each change the image


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
