"""``mlasm export-notebooks``: run notebooks and write each as static HTML that a class opens without a kernel.

Each notebook is executed (``--fast``: tiny data and model, as CI runs them) with its widgets'
state kept, then written as HTML with that state embedded. Jupyter's widget manager for static
pages and require.js, which the page needs to draw the widgets, are put inside each page (one
self-contained file, about 5 MB more), or with ``--linked-assets`` copied beside the HTML
(``widget-assets/``) for the pages to load from there; either way the export opens from disk with
no server and no network. They come from the npm registry at install time
(``scripts/install_widget_assets.sh``), never at run time.

What shows without a kernel: every ipywidgets control in the state it was left in, pictures
(Image widgets), HTML, printed output, and plotly's FigureWidgets (an anywidget: the project's own
``export_assets/anywidget.js`` runs the widget's saved module in the page). What cannot: anything a
Python callback would compute (choosing another word redraws nothing): so the page says on top that it
is a static snapshot, and its widget controls are drawn disabled.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from mlasm.io import atomic_path, write_text
from mlasm.paths import REPO_ROOT, cache_dir

# name beside the HTML -> (npm package, pinned version, file inside its tarball)
ASSETS = {
    "require.js": ("requirejs", "2.3.8", "package/require.js"),
    "embed-amd.js": ("@jupyter-widgets/html-manager", "1.0.15", "package/dist/embed-amd.js"),
}
ASSETS_FOLDER = "widget-assets"
# ours, shipped with the package: the front end of anywidget models (plotly's FigureWidget) in a static page
OWN_ASSETS = {"anywidget.js": Path(__file__).parent / "export_assets" / "anywidget.js"}
# after require.js: where the page finds the anywidget module (else it would ask a CDN)
REQUIRE_CONFIG = (f'<script>require.config({{paths: {{"anywidget": "{ASSETS_FOLDER}/anywidget"}}}});</script>')
NOTEBOOKS = REPO_ROOT / "notebooks"
# A static page must not look live: a note on top says what it is, and the widget controls are shown
# disabled (no pointer events, greyed). Plotly's own zoom and hover work without a kernel and are kept.
STATIC_CONTROLS = ", ".join(f".jupyter-widgets.{name}" for name in (
    "widget-dropdown", "widget-select", "widget-text", "widget-toggle-buttons", "widget-button", "widget-checkbox",
    "widget-hslider"))  # not widget-inline-hbox: HTML and Label widgets carry it too, and stay as they are
STATIC_NOTE = (
    '<div class="mlasm-static-note" style="position:sticky;top:0;z-index:1000;background:#fff3cd;'
    'border-bottom:1px solid #e0c36a;padding:6px 12px;font:14px sans-serif;color:#4a3b00">'
    "<b>Static snapshot</b> of a notebook run: the pictures, tables and controls show the state they were "
    "left in, and the controls are disabled (nothing here can compute). Open the notebook in Jupyter to "
    "explore.</div>")
STATIC_STYLE = f"<style>{STATIC_CONTROLS} {{pointer-events: none; opacity: 0.55; filter: grayscale(1)}}</style>"


# set for the kernels an export runs: a workbench then builds every tab at once, so that the page holds them all
STATIC_EXPORT = "MLASM_STATIC_EXPORT"


def exporting() -> bool:
    """True inside a notebook that ``export_notebooks`` is running for a static page."""
    return os.environ.get(STATIC_EXPORT) == "1"


class ExportError(ValueError):
    """An export that cannot be made (assets missing, a notebook that fails): one line for the user."""


def assets_dir() -> Path:
    """Where ``scripts/install_widget_assets.sh`` puts the page's scripts (under the cache folder)."""
    return Path(os.environ.get("MLASM_WIDGET_ASSETS", cache_dir() / ASSETS_FOLDER))


def missing_assets(folder: Path | None = None) -> list[str]:
    """The scripts a static page needs that are not installed."""
    folder = assets_dir() if folder is None else folder
    return [name for name in ASSETS if not (folder / name).is_file()]


def default_notebooks() -> list[Path]:
    """Every numbered notebook of the project, as its py:percent source."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def read_notebook(path: Path):
    """A notebook from its .ipynb or its jupytext .py (the cells, not the stored outputs)."""
    import jupytext

    if not path.is_file():
        raise ExportError(f"{path}: no such notebook")
    try:
        return jupytext.read(path)
    except Exception as error:  # nbformat's NotJSONError names no file; a JSON of another shape, AttributeError
        text = str(error).strip().splitlines()
        why = f"{type(error).__name__}: {text[0][:120]}" if text else type(error).__name__
        raise ExportError(f"{path}: not a readable notebook ({why}); expected a .ipynb notebook or a jupytext "
                          f".py") from None


@contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the kernels started inside, then put them back."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(notebook, folder: Path, fast: bool = False, timeout: int = 600, name: str = "the notebook"):
    """Run every cell in a fresh kernel started in ``folder``; the widgets' state is kept in the metadata."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    changes = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", STATIC_EXPORT: "1"}
    if fast:
        changes["MLASM_FAST"] = "1"
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}, store_widget_state=True)
    # the kernel's own stderr (its start-up warnings, ZMQ's tracebacks when it dies) is kept apart, so that
    # an export prints its one line; the last line of it is told when the kernel dies
    with _environment(changes), tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as kernel_log:
        try:
            client.execute(stderr=kernel_log)
        except CellExecutionError as error:
            raise ExportError(f"{name}: a cell failed: {error.ename}: {error.evalue}") from None
        except DeadKernelError:  # os._exit, a crash in native code, the kernel killed for memory
            kernel_log.seek(0)
            last = [line.strip() for line in kernel_log.read().splitlines()  # a crash's words, not start-up notes
                    if re.search(r"error|fatal|killed|segmentation|abort", line, re.IGNORECASE)][-1:]
            raise ExportError(f"{name}: its kernel died while a cell ran (a crash, or killed for memory); no page "
                              f"was written for it" + (f" (the kernel's last words: {last[0][:160]})" if last
                                                       else "")) from None
        except CellTimeoutError:
            raise ExportError(f"{name}: a cell ran longer than the timeout ({timeout} s); raise it with --timeout, "
                              f"or use --fast") from None
    return notebook


def _inline_script(path: Path) -> str:
    """A script's text inside a <script> element (a "</script" in it would end the element early)."""
    return "<script>" + path.read_text(encoding="utf-8").replace("</script", "<\\/script") + "</script>"


def to_html(notebook, assets: Path | None = None) -> str:
    """The executed notebook as one HTML page.

    With ``assets`` (the folder of the installed scripts), the scripts are inside the page: one
    self-contained file (require.js and the anywidget module as scripts, the widget manager as a
    data: URL where the template loads it). Without, the page loads them from ``widget-assets/`` beside it.
    """
    import base64

    from nbconvert import HTMLExporter

    renderer = f"{ASSETS_FOLDER}/embed-amd.js" if assets is None else \
        "data:text/javascript;base64," + base64.b64encode((assets / "embed-amd.js").read_bytes()).decode()
    exporter = HTMLExporter(template_name="lab", require_js_url=f"{ASSETS_FOLDER}/require.js",
                            widget_renderer_url=renderer, mathjax_url="", embed_images=True)
    body, _ = exporter.from_notebook_node(notebook)
    loader = f'<script src="{ASSETS_FOLDER}/require.js"></script>'
    if loader not in body:
        raise ExportError("nbconvert's page template no longer loads require.js where expected")
    if assets is None:
        body = body.replace(loader, loader + "\n" + REQUIRE_CONFIG, 1)
    else:  # the anywidget module defines itself by name: no path to configure
        inline = _inline_script(assets / "require.js") + "\n" + _inline_script(OWN_ASSETS["anywidget.js"])
        body = body.replace(loader, inline, 1)
    opening = re.compile(r"<body[^>]*>").search(body, max(0, body.find("</head>")))  # not in an inlined script
    if opening is None:
        raise ExportError("nbconvert's page template has no <body> to put the static-snapshot note in")
    return body[:opening.end()] + "\n" + STATIC_STYLE + STATIC_NOTE + body[opening.end():]


def widget_state(notebook) -> dict:
    """The widget models an executed notebook holds (model id -> state): what its HTML embeds."""
    return notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


def _check_assets() -> None:
    missing = missing_assets()
    if missing:
        raise ExportError(f"the static pages' scripts are not installed ({', '.join(missing)} missing in "
                          f"{assets_dir()}): run bash scripts/install_widget_assets.sh")


def copy_assets(out: Path) -> Path:
    """Put the page's scripts in ``out/widget-assets`` (from the installed copy)."""
    _check_assets()
    target = out / ASSETS_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name, source in [*((name, assets_dir() / name) for name in ASSETS), *OWN_ASSETS.items()]:
        with atomic_path(target / name) as tmp:  # a full disk leaves the earlier script whole
            shutil.copyfile(source, tmp)
    return target


def export_notebooks(out: str | Path, notebooks: Sequence[str | Path] = (), fast: bool = False,
                     timeout: int = 600, progress: bool = True, linked_assets: bool = False) -> list[Path]:
    """Execute each notebook (default: every numbered one) and write OUT/<name>.html.

    Each page holds its scripts (one file to send or open), unless ``linked_assets``: then the pages
    load them from OUT/widget-assets/, copied there (smaller pages, but a page alone shows no widget).
    Notebooks run in their own folder (their relative paths work as in Jupyter). Returns the pages written.
    """
    out = Path(out)
    paths = [Path(p) for p in notebooks] or default_notebooks()
    for path in paths:
        if not path.is_file():
            raise ExportError(f"{path}: no such notebook")
    read = {path: read_notebook(path) for path in paths}  # every one readable, before any runs for minutes
    out.mkdir(parents=True, exist_ok=True)
    if linked_assets:
        copy_assets(out)
    else:
        _check_assets()
    for path in paths:
        if progress:
            print(f"running {path.name}{' (fast)' if fast else ''}", flush=True)
        notebook = execute(read[path], path.resolve().parent, fast=fast, timeout=timeout, name=path.name)
        page = out / f"{path.stem}.html"
        write_text(page, to_html(notebook, None if linked_assets else assets_dir()))  # atomically: an earlier
        # complete page stays until this one is whole
        if progress:
            print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB, {len(widget_state(notebook))} widgets)",
                  flush=True)
    return [out / f"{path.stem}.html" for path in paths]


def install_assets(folder: Path | None = None, packages: Iterable[str] | None = None) -> Path:
    """Fetch the pinned scripts with ``npm pack`` (an install step: scripts/install_widget_assets.sh calls it)."""
    import subprocess
    import tarfile
    import tempfile

    folder = assets_dir() if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise ExportError("npm is not installed: it fetches the static pages' scripts from the npm registry")
    with tempfile.TemporaryDirectory() as work:
        for name, (package, version, member) in ASSETS.items():
            if packages is not None and name not in packages:
                continue
            packed = subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=work, check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1]
            with tarfile.open(Path(work) / packed) as archive:
                source = archive.extractfile(member)
                if source is None:
                    raise ExportError(f"{package}@{version} has no {member}")
                with atomic_path(folder / name) as tmp:
                    tmp.write_bytes(source.read())
    return folder


if __name__ == "__main__":  # python -m mlasm.export --install-assets
    import sys

    if sys.argv[1:] != ["--install-assets"]:
        raise SystemExit("usage: python -m mlasm.export --install-assets")
    print(f"installed {', '.join(ASSETS)} in {install_assets()}")
