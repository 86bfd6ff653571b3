"""mlasm export-notebooks: executed notebooks as static HTML with their widgets' state, opened without a kernel.

The page-level checks read the HTML; the browser test opens the exported attention-maps notebook
from disk (file://, no server, no kernel) in headless Chromium and finds its widgets drawn, with
every request the page made served from disk.

The static pages' scripts come from ``scripts/install_widget_assets.sh`` (CI runs it); without
them the tests skip, unless ``MLASM_REQUIRE_BROWSER=1`` makes that a failure.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mlasm.cli import main
from mlasm.export import ASSETS, ASSETS_FOLDER, OWN_ASSETS, ExportError, export_notebooks, missing_assets

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = '''\
# %%
import ipywidgets as widgets
import plotly.graph_objects as go

colour = widgets.Dropdown(options=["red", "blue"], value="red", description="colour")
colour.value = "blue"  # a change made by the code: the page must show the state it was left in
size = widgets.IntSlider(value=7, min=1, max=9, description="size")
heatmap = go.FigureWidget(go.Heatmap(z=[[1, 2], [3, 4]]))
widgets.VBox([colour, size, heatmap])

# %%
print("printed", 6 * 7)
'''


def require_assets() -> None:
    missing = missing_assets()
    if not missing:
        return
    reason = f"static page scripts missing ({', '.join(missing)}): run bash scripts/install_widget_assets.sh"
    if os.environ.get("MLASM_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + "; MLASM_REQUIRE_BROWSER=1 makes them required")
    pytest.skip(reason)


def widget_state(page: str) -> dict:
    """The widget state the page embeds (the JSON of its widget-state script)."""
    found = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', page, re.S)
    assert found, "the page embeds no widget state"
    return json.loads(found.group(1))["state"]


def test_export_embeds_widget_state_and_loads_nothing_from_the_network(tmp_path):
    require_assets()
    source = tmp_path / "tiny.py"
    source.write_text(NOTEBOOK)
    pages = export_notebooks(tmp_path / "out", [source], progress=False, timeout=120, linked_assets=True)
    assert pages == [tmp_path / "out" / "tiny.html"]
    page = pages[0].read_text(encoding="utf-8")

    state = widget_state(page)
    by_name = {}
    for model in state.values():
        by_name.setdefault(model["model_name"], []).append(model["state"])
    dropdown, = by_name["DropdownModel"]
    assert dropdown["_options_labels"][dropdown["index"]] == "blue"
    assert [s["value"] for s in by_name["IntSliderModel"]] == [7]
    assert len(by_name["AnyModel"]) == 1               # the plotly FigureWidget, its module inside
    assert "printed 42" in page                          # ordinary output is there too

    # every script the page loads is beside it
    sources = re.findall(r'<script[^>]*\bsrc="([^"]*)"', page)
    assert sources and all(not re.match(r"[a-z]+:", src) for src in sources), sources
    assert f'"{ASSETS_FOLDER}/embed-amd.js"' in page.replace("'", '"')
    for name in [*ASSETS, *OWN_ASSETS]:
        assert (tmp_path / "out" / ASSETS_FOLDER / name).stat().st_size > 0


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["export-notebooks", "--out", str(tmp_path), str(tmp_path / "absent.py")]) == 2
    expected = f"mlasm export-notebooks: error: {tmp_path / 'absent.py'}: no such notebook"
    assert capsys.readouterr().err.strip() == expected

    monkeypatch.setenv("MLASM_WIDGET_ASSETS", str(tmp_path / "empty"))
    (tmp_path / "nb.py").write_text("# %%\nprint(1)\n")
    with pytest.raises(ExportError, match="install_widget_assets.sh"):
        export_notebooks(tmp_path / "out", [tmp_path / "nb.py"], progress=False)


def test_a_failing_cell_is_reported(tmp_path):
    require_assets()
    (tmp_path / "bad.py").write_text("# %%\nraise ValueError('no such model')\n")
    with pytest.raises(ExportError, match=r"^bad.py: a cell failed: ValueError: no such model$"):
        export_notebooks(tmp_path / "out", [tmp_path / "bad.py"], progress=False, timeout=60)


def test_by_default_a_page_holds_its_scripts_and_needs_no_folder_beside_it(tmp_path):
    require_assets()
    source = tmp_path / "tiny.py"
    source.write_text(NOTEBOOK)
    page, = export_notebooks(tmp_path / "out", [source], progress=False, timeout=120)
    text = page.read_text(encoding="utf-8")
    assert not (tmp_path / "out" / ASSETS_FOLDER).exists()
    sources = re.findall(r'<script[^>]*\bsrc="([^"]*)"', text) + re.findall(r"widgetRendererSrc = '([^']*)'", text)
    assert sources and all(src.startswith("data:text/javascript;base64,") or src == "" for src in sources), \
        [src[:40] for src in sources]
    assert f"{ASSETS_FOLDER}/" not in text
    assert 'define("anywidget"' in text and "requirejs" in text
    assert len(widget_state(text)) > 3 and "printed 42" in text


@pytest.mark.browser
def test_exported_attention_notebook_renders_from_disk(short_tmp):
    """Notebook 04 exported (fast, one self-contained page) and opened from disk: its controls, picture
    and heatmap are drawn, under the static-snapshot note."""
    from test_browser import require_browser

    require_browser()
    require_assets()
    from browser_support import assert_not_blank, chromium_page, screenshot, wait_visible

    pages = export_notebooks(short_tmp / "out", [REPO / "notebooks/04_attention_maps.py"], fast=True, progress=False)
    outside = []
    with chromium_page(short_tmp) as page:
        page.on("request", lambda request: None if re.match(r"(file|data|blob):", request.url)
                else outside.append(request.url))
        page.goto(pages[0].resolve().as_uri())
        wait_visible(page, (".widget-dropdown select", ".widget-slider", ".widget-image",
                            ".js-plotly-plot .main-svg"), timeout=90)
        assert page.locator(".mlasm-static-note").is_visible()
        assert not (short_tmp / "out" / ASSETS_FOLDER).exists()
        # the explorer's word menu shows the word the notebook left chosen
        assert page.locator(".widget-dropdown select").nth(1).evaluate("s => s.selectedIndex") >= 0
        for index, selector in enumerate((".widget-image", ".js-plotly-plot")):
            assert_not_blank(screenshot(page, selector, short_tmp / f"export-{index}.png"))
    assert outside == [], f"the page asked the network for {outside}"


def test_a_static_page_says_so_on_top_and_its_controls_are_disabled():
    import jupytext

    from mlasm.export import STATIC_CONTROLS, to_html

    page = to_html(jupytext.reads("# %%\nprint('hi')\n", fmt="py:percent"))
    body = page[page.index("<body"):]
    assert body.index("mlasm-static-note") < body.index("jp-Cell")  # above the first cell
    assert "Static snapshot" in body and "controls are disabled" in body
    style = re.search(r"<style>([^<]*pointer-events: none[^<]*)</style>", page).group(1)
    assert ".jupyter-widgets.widget-dropdown" in style and ".jupyter-widgets.widget-text" in style
    assert STATIC_CONTROLS in style and "plotly" not in style  # plotly's zoom and hover work without a kernel
