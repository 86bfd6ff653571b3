"""Widgets render in a real browser: JupyterLab driven by headless Chromium.

Three tests, so a failure says where to look:
- ``test_harness_renders_widgets``: a tiny generated notebook; if it fails, the browser
  stack (chromium, JupyterLab, widget extensions) is broken, not our notebooks.
- ``test_attention_maps_notebook_renders_and_survives_a_reload``: the real attention explorer
  notebook, run, saved, and the page reloaded while its kernel runs: the widgets come back,
  the heatmap as last drawn, and they still answer.
- ``test_workbench_pictures_never_come_up_blank``: 100 quick interactions with the workbench
  (words, regions, λ, typed queries, images, tabs): every picture seen has pixels that vary,
  and updates show within 1 s (95 in 100; none over UPDATE_LIMIT_S).

The screenshots stay in SHOTS (printed by the tests) for a reviewer to look at.

Skipped when chromium or playwright is missing (``scripts/install_browser.sh``
installs chromium), unless ``MLASM_REQUIRE_BROWSER=1`` makes that a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

import nbformat
import pytest

from browser_support import (
    assert_not_blank,
    browser_missing,
    chromium_page,
    lab_server,
    open_notebook,
    reload_page,
    run_all_cells,
    save_notebook,
    screenshot,
    wait_visible,
)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks/04_attention_maps.ipynb"
# Environment of the notebook's kernel: small, quick settings.
NOTEBOOK_ENV = {"MLASM_FAST": "1"}
EXPLORER = ".mlasm-attentionexplorer"
PICTURE = f"{EXPLORER} .mlasm-picture img"  # the matplotlib picture with region boxes
HEATMAP = f"{EXPLORER} .js-plotly-plot"  # the plotly FigureWidget heatmap
# What the attention explorer must show, each visible in the page.
NOTEBOOK_SELECTORS = (
    f"{EXPLORER} .widget-dropdown select, {EXPLORER} .widget-slider",  # a control: a dropdown or a slider
    PICTURE,
    f"{HEATMAP} .main-svg",
)
# Elements whose screenshots must show a real picture, not a flat colour.
NOTEBOOK_SCREENSHOTS = (PICTURE, HEATMAP)
# Where the screenshots stay (runs/ is not committed).
SHOTS = Path(os.environ.get("MLASM_BROWSER_SHOTS", REPO / "runs" / "browser-shots"))
# How soon an interaction's new picture shows (seconds). The goal is 1 s; on 2 shared cores a rare
# update takes a little longer (1.1 s was seen once in 100), so 95 in 100 must meet the goal and
# none may take over UPDATE_LIMIT_S, which a stuck or doubled redraw would.
UPDATE_GOAL_S = float(os.environ.get("MLASM_BROWSER_UPDATE_GOAL_S", "1.0"))
UPDATE_LIMIT_S = float(os.environ.get("MLASM_BROWSER_UPDATE_LIMIT_S", "3.0"))
INTERACTIONS = 100

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


def shots_folder(name: str) -> Path:
    """An empty folder under SHOTS for one test's screenshots, printed so a reviewer can find it."""
    folder = SHOTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"screenshots: {folder}")
    return folder


def picture_source(page, selector: str) -> str:
    """The src of the first element matching ``selector`` ("" when there is none)."""
    return page.evaluate("sel => { const e = document.querySelector(sel); return e ? e.src : ''; }", selector)


def wait_new_picture(page, selector: str, old_source: str, timeout: float = 20) -> float:
    """Seconds until the picture at ``selector`` shows a source other than ``old_source``, loaded and visible."""
    start = time.monotonic()
    page.wait_for_function(
        """([sel, old]) => { const e = document.querySelector(sel);
            return !!e && !!e.src && e.src !== old && e.complete && e.naturalWidth > 0
                && e.getBoundingClientRect().width > 0 && e.offsetParent !== null; }""",
        arg=[selector, old_source], timeout=timeout * 1000, polling=20)
    return time.monotonic() - start


def overlap(a: dict, b: dict) -> bool:
    """Whether two bounding boxes (x, y, width, height) share any area."""
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def pixel_spread(png: Path) -> float:
    """Standard deviation of the screenshot's grey levels: about 0 for a blank picture."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        return float(np.asarray(image.convert("L"), dtype=float).std())


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
def test_attention_maps_notebook_renders_and_survives_a_reload(short_tmp: Path) -> None:
    if not NOTEBOOK.is_file():
        pytest.fail(f"{NOTEBOOK} does not exist: the attention explorer notebook is missing")
    require_browser()
    shots = shots_folder("attention-reload")
    root = short_tmp / "root"  # a copy: the test saves the notebook, and must not touch the repository's
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    path = NOTEBOOK.name

    with lab_server(short_tmp, root, env=NOTEBOOK_ENV) as lab, chromium_page(short_tmp) as page:
        kernel = open_notebook(page, lab, path)
        run_all_cells(page, path, timeout=240)
        wait_visible(page, NOTEBOOK_SELECTORS)
        for index, selector in enumerate(NOTEBOOK_SCREENSHOTS):
            assert_not_blank(screenshot(page, selector, shots / f"run-{index}.png"))
        words = page.locator(f"{HEATMAP} .ytick text").all_inner_texts()
        assert len(words) > 3, f"the heatmap shows no words: {words}"

        # Reload the page while the kernel runs, as a user would (the notebook saved, as autosave does).
        save_notebook(page, path)
        reload_page(page, path, kernel)
        wait_visible(page, NOTEBOOK_SELECTORS)
        for text in ("AttentionExplorer(children", "an interactive widget, shown once"):  # what shows without a model
            assert page.get_by_text(text).count() == 0, f"a widget came back as text: {text!r}"
        for index, selector in enumerate(NOTEBOOK_SCREENSHOTS):
            assert_not_blank(screenshot(page, selector, shots / f"reloaded-{index}.png"))
        assert page.locator(f"{HEATMAP} .ytick text").all_inner_texts() == words, \
            "the heatmap came back as first drawn, not as last drawn"

        # ... and the widgets still answer: another word redraws the picture.
        before = picture_source(page, PICTURE)
        menu = page.locator(f"{EXPLORER} .widget-dropdown select").first
        options = menu.locator("option").all_inner_texts()
        menu.select_option(label=options[-1])
        wait_new_picture(page, PICTURE, before)
        assert_not_blank(screenshot(page, PICTURE, shots / "reloaded-answers.png"))
    stale, unsent = widget_log_errors(short_tmp, shots)
    assert not stale and not unsent, f"the log has {stale[:3]} {unsent[:3]}"


def widget_log_errors(tmp: Path, shots: Path) -> tuple[list[str], list[str]]:
    """A clean log: lines about a message to or from a widget the other side no longer has (kernel:
    "No such comm"; browser: "Could not send widget sync message"), which a reader takes for a fault.
    The kernel's stderr is in the server's log (its start-up warning shows there). Both logs are kept in ``shots``."""
    kernel_log = (tmp / "jupyterlab.log").read_text(errors="replace")
    console = (tmp / "browser-console.log").read_text(errors="replace")
    assert "IPKernelApp" in kernel_log, "the kernel's stderr does not reach the server's log: nothing checked"
    (shots / "jupyterlab.log").write_text(kernel_log)
    (shots / "browser-console.log").write_text(console)
    stale = [line for line in kernel_log.splitlines() if "No such comm" in line]
    unsent = [line for line in console.splitlines() if "Could not send widget sync message" in line]
    print(f"log: {len(stale)} 'No such comm' (kernel), {len(unsent)} unsent widget syncs (browser)")
    return stale, unsent


WORKBENCH_CELL = """\
from mlasm.demo import demo_checkpoint
from widgets import Workbench, WorkbenchSession

bench = Workbench(WorkbenchSession.from_checkpoint(demo_checkpoint()))
bench
"""
TYPED_QUERIES = ("a red circle", "a small blue square on the left", "two green triangles", "a large star",
                 "a yellow diamond above a circle")


@pytest.mark.browser
def test_workbench_pictures_never_come_up_blank(short_tmp: Path) -> None:
    require_browser()
    shots = shots_folder("workbench-100")
    root = short_tmp / "root"
    root.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(WORKBENCH_CELL)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, root / "workbench.ipynb")
    levels_picture = ".mlasm-levelpanel .mlasm-picture img"
    seen: list[dict] = []  # per interaction: what, seconds until its picture showed, the picture's pixel sd

    with lab_server(short_tmp, root, env=NOTEBOOK_ENV) as lab, chromium_page(short_tmp) as page:
        open_notebook(page, lab, "workbench.ipynb")
        run_all_cells(page, "workbench.ipynb", timeout=240)
        wait_visible(page, [PICTURE, f"{HEATMAP} .main-svg"])
        word_menu = page.locator(f"{EXPLORER} .widget-dropdown select").nth(0)
        region_menu = page.locator(f"{EXPLORER} .widget-dropdown select").nth(1)
        lambda_readout = page.locator(f"{EXPLORER} .widget-slider .widget-readout").first
        text_box = page.locator(".mlasm-text-box input")
        image_box = page.locator(".mlasm-image-box input")
        tab = lambda title: page.locator(".lm-TabBar-tab, .p-TabBar-tab", has_text=title).first  # noqa: E731

        def other_option(menu) -> None:
            options = menu.locator("option").all_inner_texts()
            current = menu.evaluate("e => e.selectedIndex")
            menu.select_option(index=(current + 1) % len(options))

        def set_text(locator, value: str) -> None:
            locator.fill(value)
            locator.press("Enter")

        actions = [  # (what, action, the picture it redraws)
            ("word", lambda n: other_option(word_menu), PICTURE),
            ("region", lambda n: other_option(region_menu), PICTURE),
            ("lambda", lambda n: set_text(lambda_readout, f"{(2.0, 5.5, 12.0, 20.0, 9.0)[n % 5]}"), PICTURE),
            ("typed query", lambda n: set_text(text_box, TYPED_QUERIES[n % len(TYPED_QUERIES)]), PICTURE),
            ("word", lambda n: other_option(word_menu), PICTURE),
            ("image", lambda n: set_text(image_box, str(1 + n % 9)), PICTURE),
            ("region", lambda n: other_option(region_menu), PICTURE),
            ("Levels tab", lambda n: tab("Levels").click(), levels_picture),
            ("image (levels shown)", lambda n: set_text(image_box, str(10 + n % 9)), levels_picture),
            ("Attention tab", lambda n: tab("Attention").click(), PICTURE),
        ]
        for step in range(INTERACTIONS):
            what, act, picture = actions[step % len(actions)]
            before = picture_source(page, picture)
            act(step // len(actions))
            if what.endswith("tab"):  # a tab shows its picture, drawn already or drawn now
                latency = wait_new_picture(page, picture, "")
            else:
                latency = wait_new_picture(page, picture, before)
            shot = screenshot(page, picture, shots / f"{step:03d}-{what.replace(' ', '-')}.png")
            seen.append({"step": step, "what": what, "seconds": latency, "pixel_sd": pixel_spread(shot),
                         "file": shot.name})

        # Every tab, for a reviewer to look at; no part of the workbench scrolls sideways (but the
        # failure list, a native list box whose long rows may be scrolled).
        for title, view in (("Ranking", ".mlasm-rankingbrowser"), ("Failures", ".mlasm-failureexplorer"),
                            ("Embedding map", ".mlasm-embeddingmap"), ("Levels", ".mlasm-levelpanel"),
                            ("Attention statistics", ".mlasm-attentionstatsview"), ("Attention", EXPLORER)):
            tab(title).click()
            page.locator(view).first.wait_for(state="visible", timeout=60_000)
            if title == "Failures":
                page.locator(".mlasm-failure-rows select").first.select_option(index=0)
                page.locator(f"{view} .mlasm-picture img").first.wait_for(state="visible", timeout=20_000)
            if title in ("Embedding map", "Attention", "Attention statistics"):
                # plotly's toolbar, shown on hover, covers no title and no legend
                plot = page.locator(f"{view} .js-plotly-plot").first
                plot.hover()
                toolbar = plot.locator(".modebar").first
                toolbar.wait_for(state="visible", timeout=20_000)
                box = toolbar.bounding_box()
                for part in (".gtitle", ".legend"):
                    if plot.locator(part).count():
                        part_box = plot.locator(part).first.bounding_box()
                        assert not overlap(part_box, box), f"{title}: the toolbar {box} covers the {part} {part_box}"
            screenshot(page, ".mlasm-workbench", shots / f"tab-{title.replace(' ', '-')}.png")
            sideways = page.evaluate(
                """sel => Array.from(document.querySelectorAll(sel + ' *')).filter(e => {
                    const style = getComputedStyle(e);
                    return e.tagName !== 'SELECT' && ['auto', 'scroll'].includes(style.overflowX)
                        && e.scrollWidth > e.clientWidth + 1
                        && e.getBoundingClientRect().width > 0;
                }).map(e => e.className.toString().slice(0, 80))""", view)
            assert not sideways, f"{title}: parts that scroll sideways: {sideways}"

    stale, unsent = widget_log_errors(short_tmp, shots)
    (shots / "interactions.json").write_text(json.dumps(seen, indent=1))
    timed = [row["seconds"] for row in seen]
    print(f"{len(seen)} interactions, {len(timed)} pictures: median {statistics.median(timed):.2f} s, "
          f"slowest {max(timed):.2f} s; lowest pixel sd {min(row['pixel_sd'] for row in seen):.1f}")
    blank = [row for row in seen if row["pixel_sd"] < 8]
    assert not blank, f"blank pictures: {blank}"
    slow = [row for row in seen if row["seconds"] > UPDATE_LIMIT_S]
    assert not slow, f"updates slower than {UPDATE_LIMIT_S} s: {slow}"
    late = sorted(timed)[int(0.95 * len(timed)) - 1]
    assert late <= UPDATE_GOAL_S, f"the 95th of 100 updates took {late:.2f} s, over the {UPDATE_GOAL_S} s goal"
    assert not stale and not unsent, f"the log has {stale[:3]} {unsent[:3]}"
