"""Widgets render in a real browser: JupyterLab driven by headless Chromium.

Two tests, so a failure says where to look:
- ``test_harness_renders_widgets``: a tiny generated notebook; if it fails, the browser
  stack (chromium, JupyterLab, widget extensions) is broken, not our notebooks.
- ``test_attention_maps_notebook_renders``: the real attention explorer notebook.

Skipped when chromium or playwright is missing (``scripts/install_browser.sh``
installs chromium), unless ``MLASM_REQUIRE_BROWSER=1`` makes that a failure.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator
from pathlib import Path

import nbformat
import pytest

from browser_support import (
    assert_not_blank,
    browser_missing,
    chromium_page,
    lab_server,
    open_notebook,
    run_all_cells,
    screenshot,
    wait_visible,
)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks/04_attention_maps.ipynb"
# Environment of the notebook's kernel: small, quick settings.
NOTEBOOK_ENV = {"MLASM_FAST": "1"}
# What the attention explorer must show, each visible in the page.
NOTEBOOK_SELECTORS = (
    ".widget-dropdown select, .widget-slider",  # a control: a dropdown or a slider
    ".widget-output img",  # the matplotlib picture with region boxes
    ".js-plotly-plot .main-svg",  # the plotly FigureWidget heatmap
)
# Elements whose screenshots must show a real picture, not a flat colour.
NOTEBOOK_SCREENSHOTS = (".widget-output img", ".js-plotly-plot")

HARNESS_SELECTORS = (
    ".widget-dropdown select",
    ".widget-slider",
    ".widget-output img",
    ".js-plotly-plot .main-svg",
)
HARNESS_CELL = '''\
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go

picked = widgets.Label("picked: red")
dropdown = widgets.Dropdown(options=["red", "blue"], value="red", description="colour")
slider = widgets.IntSlider(value=3, min=1, max=9, description="size")
image = widgets.Output()
with image:
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.random.default_rng(0).random((16, 16, 3)))
    ax.add_patch(plt.Rectangle((2, 2), 6, 6, fill=False, edgecolor="yellow", lw=2))
    plt.show()
heatmap = go.FigureWidget(go.Heatmap(z=np.arange(25).reshape(5, 5)))
heatmap.update_layout(width=360, height=300, margin=dict(l=20, r=20, t=20, b=20))

def on_pick(change):
    picked.value = f"picked: {change['new']}"

dropdown.observe(on_pick, names="value")
widgets.VBox([dropdown, slider, picked, image, heatmap])
'''


def require_browser() -> None:
    """Skip without chromium or playwright, or fail when MLASM_REQUIRE_BROWSER=1."""
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("MLASM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; MLASM_REQUIRE_BROWSER=1 makes the browser required")
    pytest.skip(reason)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path: Chromium's singleton socket path must fit in 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="mlasm-browser-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.browser
def test_harness_renders_widgets(short_tmp: Path) -> None:
    require_browser()
    root = short_tmp / "root"
    root.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(HARNESS_CELL)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, root / "harness.ipynb")

    with lab_server(short_tmp, root) as lab, chromium_page(short_tmp) as page:
        open_notebook(page, lab, "harness.ipynb")
        run_all_cells(page, "harness.ipynb")
        wait_visible(page, HARNESS_SELECTORS)
        assert_not_blank(screenshot(page, ".widget-vbox", short_tmp / "harness.png"))
        assert len(lab.api("GET", "/api/kernels")) == 1, "the page started a second kernel"

        # The kernel link: a change made in the page reaches the Python callback and back.
        page.locator(".widget-dropdown select").first.select_option(label="blue")
        page.get_by_text("picked: blue").wait_for(state="visible", timeout=30_000)


@pytest.mark.browser
def test_attention_maps_notebook_renders(short_tmp: Path) -> None:
    if not NOTEBOOK.is_file():
        pytest.fail(f"{NOTEBOOK} does not exist: the attention explorer notebook is missing")
    require_browser()
    path = NOTEBOOK.relative_to(REPO).as_posix()

    with lab_server(short_tmp, REPO, env=NOTEBOOK_ENV) as lab, chromium_page(short_tmp) as page:
        open_notebook(page, lab, path)
        run_all_cells(page, path, timeout=240)
        wait_visible(page, NOTEBOOK_SELECTORS)
        for index, selector in enumerate(NOTEBOOK_SCREENSHOTS):
            assert_not_blank(screenshot(page, selector, short_tmp / f"attention-{index}.png"))
