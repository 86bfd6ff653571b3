"""Saving a picture as PNG or SVG, from Python (``save_figure``; a view's: ``widgets.drawing.save_view``)
and from buttons (``SaveButtons``).

Pictures for papers (SVG: scalable, editable) and for slides (PNG). The figure saved is the
matplotlib Figure the view drew last, drawn again at the file's own format, not a screenshot.
"""
from __future__ import annotations

import html
import os
import threading
from pathlib import Path
from typing import Callable

import ipywidgets as widgets
from matplotlib.figure import Figure

from mlasm.io import atomic_path

FORMATS = ("png", "svg")
DRAW_LOCK = threading.RLock()  # one drawing at a time, whichever thread a callback runs on (widgets.drawing too)


def save_figure(fig: Figure | None, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (a full disk leaves an earlier file whole); the format is
    the suffix (.png or .svg). Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"{path}: save as .png or .svg, not {path.suffix or 'no suffix'!r}")
    if fig is None:
        raise ValueError("nothing is drawn yet: there is no picture to save")
    with DRAW_LOCK, atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=dpi)
    return path


class SaveButtons(widgets.HBox):
    """A file stem and one button per format; each click writes the current figure (``figure()``) there.

    ``compact``: a narrow row, to sit under a picture of its own width.
    """

    def __init__(self, figure: Callable[[], Figure | None], stem: str = "figures/picture", compact: bool = False):
        self.figure = figure
        self.stem = widgets.Text(value=stem, description="save as",
                                 layout=widgets.Layout(width="55%" if compact else "300px"),
                                 style={"description_width": "60px"})
        self.buttons = {fmt: widgets.Button(description=fmt.upper(), tooltip=f"save the picture as {fmt.upper()}",
                                            layout=widgets.Layout(width="60px")) for fmt in FORMATS}
        self.status = widgets.HTML()
        self.saved: Path | None = None
        for fmt, button in self.buttons.items():
            button.on_click(lambda _button, fmt=fmt: self.save(fmt))
        super().__init__([self.stem, *self.buttons.values(), self.status],
                         **({"layout": widgets.Layout(flex_flow="row wrap", align_items="center")} if compact else {}))

    def save(self, fmt: str) -> Path | None:
        """What a click does: write STEM.fmt, and say where (or why not); served, offer it as a download."""
        if os.environ.get("MLASM_SERVED") == "1":  # under mlasm serve a click writes nothing on the server
            self.status.value = download_link(self.figure(), f"{Path(self.stem.value).name or 'picture'}.{fmt}")
            return None
        try:
            self.saved = save_figure(self.figure(), f"{self.stem.value}.{fmt}")
        except (ValueError, OSError) as error:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            return None
        self.status.value = f"<span style='color:#2a7'>wrote {html.escape(str(self.saved))}</span>"
        return self.saved


def download_link(fig: Figure | None, name: str, dpi: int = 150) -> str:
    """HTML: a link that downloads ``fig`` as ``name`` (.png or .svg) from the page, or why there is none."""
    import base64
    import io

    fmt = Path(name).suffix.lower().lstrip(".")
    if fig is None or fmt not in FORMATS:
        return "<span style='color:#b00'>nothing is drawn yet: there is no picture to save</span>"
    buffer = io.BytesIO()
    with DRAW_LOCK:
        fig.savefig(buffer, format=fmt, dpi=dpi)
    kind = "image/svg+xml" if fmt == "svg" else "image/png"
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<a class='mlasm-download' download='{html.escape(name)}' href='data:{kind};base64,{data}' "
            f"style='color:#2a7'>download {html.escape(name)}</a>")
