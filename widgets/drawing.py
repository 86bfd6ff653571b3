"""Drawing shared by the widgets: one way to draw a picture, attention on it, shaded words, the gate, thumbnails.

Every matplotlib picture a widget shows goes through ``PictureView.draw``: a new
``matplotlib.figure.Figure`` per drawing (never pyplot's global state), drawn and turned into
PNG bytes under one lock, then handed to an ``Image`` widget as its value. ipykernel may run
widget callbacks on more than one thread, and matplotlib does not promise thread safety: the
lock makes it one drawing at a time, whichever thread asks. No figure is known to pyplot, so
the inline backend never shows or closes one behind a widget's back, and setting an Image's
bytes needs no display output captured inside a callback (an Output widget's ``with`` block).

Pictures with attention go through ``mlasm.plots.draw_attention`` so that the widgets,
the demo and the notebooks draw the same thing; what is here only adds what a widget
needs around it (a blank canvas when a split has boxes but no pictures, the outline of a
chosen region, labels that do not overlap, words as HTML).
"""
from __future__ import annotations

import html
import io
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Callable, Hashable

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator
from PIL import Image

from mlasm.data.pictures import OutsideFolder
from mlasm.plots import draw_attention
from widgets.saving import DRAW_LOCK, SaveButtons, save_figure
from mlasm.session import WorkbenchSession

CANVAS_GREY = 235
HIGHLIGHT = "#00d5ff"   # the chosen region's outline (dashed), apart from draw_attention's white outlines
WORD_SHADE = (255, 127, 14)  # orange: a word's share of a region's attention
DPI = 100               # a figure of w inches is w * 100 pixels wide
KEPT_PICTURES = 12      # keyed pictures a PictureView keeps (about 0.7 MB each, with the figure's canvas)


PNG_COMPRESSION = 1  # zlib level: 1 encodes a 380 px picture in about 7 ms, matplotlib's 6 in about 30 ms,
#                      for files about 15 % larger; lossless either way, so no colour changes


def render_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (drawn under the drawing lock), as ``fig.savefig(format="png")`` at ``DPI`` draws it.

    Drawn on the figure's own Agg canvas and encoded as RGB (the figure is opaque) at a fast zlib
    level: a picture is drawn on every change of the selection, and encoding was a third of its cost.
    """
    with DRAW_LOCK:
        engine = fig.get_layout_engine()
        if engine is not None:  # a first pass from matplotlib's default axes positions can leave titles and
            engine.execute(fig)  # legends outside the figure (equal-aspect pictures); the one in draw settles it
        if fig.dpi != DPI:
            fig.set_dpi(DPI)
        canvas = FigureCanvasAgg(fig) if not isinstance(fig.canvas, FigureCanvasAgg) else fig.canvas
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        picture = Image.fromarray(rgba[..., :3] if (rgba[..., 3] == 255).all() else rgba)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
    return buffer.getvalue()


def new_figure(size: tuple[float, float], columns: int = 1) -> tuple[Figure, list]:
    """A Figure of ``size`` inches with ``columns`` axes in a row, laid out by matplotlib's constrained layout.

    The figure is not known to pyplot: nothing needs closing, nothing is shared between threads.
    """
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, columns, squeeze=False)[0])


def keep_plotly_state(figure) -> None:
    """Write a plotly FigureWidget's current data and layout into its synced widget state.

    A FigureWidget sends each change to the page as a one-off message and keeps its synced
    state (``_widget_data``, ``_widget_layout``) as it was when first shown; a page reloaded
    while the kernel runs rebuilds the figure from that state, so without this it would come
    back as first drawn. The page ignores changes of that state otherwise: nothing is redrawn.
    """
    figure._widget_data = deepcopy(figure._data)
    figure._widget_layout = deepcopy(figure._layout_obj._props)


class PictureView(widgets.VBox):
    """A matplotlib picture as an Image widget, or a short message in its place.

    ``draw(size, paint)`` makes the figure, lets ``paint(*axes)`` draw on it, renders it and
    shows it: the one drawing path of every widget. ``figure`` is the last figure drawn (None
    after a message), ``png`` its bytes. ``save`` (PNG and SVG buttons under the picture,
    ``widgets.saving``) writes the figure to ``figures/<save_as>.png`` or ``.svg``.
    """

    def __init__(self, width: int, min_height: int = 0, save_as: str = "picture"):
        self.figure: Figure | None = None
        self._kept: dict[Hashable, tuple[Figure, bytes]] = {}  # key -> (figure, PNG), oldest first
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.message = widgets.HTML()
        self.save = SaveButtons(lambda: self.figure, f"figures/{save_as}", compact=True)
        # its own width, never squeezed by its neighbours in a row (a row of views wraps instead)
        super().__init__([self.image, self.message, self.save],
                         layout=widgets.Layout(width=f"{width}px", min_height=f"{min_height}px", overflow="hidden",
                                               flex="0 0 auto"))
        self.add_class("mlasm-picture")
        self.show_message("")

    @property
    def png(self) -> bytes:
        return self.image.value

    def draw(self, size: tuple[float, float], paint: Callable[..., None], columns: int = 1,
             key: Hashable = None) -> Figure:
        """Draw a new figure with ``paint(*axes)``, show it, and return it.

        ``key``: what the picture shows (hashable; None: no reuse). The last ``KEPT_PICTURES`` keyed
        pictures are kept, so that going back to a pair shows its picture again without drawing it.
        """
        if key is not None and key in self._kept:
            fig, png = self._kept.pop(key)
        else:
            with DRAW_LOCK:  # one figure made, drawn and rendered at a time
                fig, axes = new_figure(size, columns)
                paint(*axes)
                png = render_png(fig)
        if key is not None:
            self._kept[key] = (fig, png)  # the most recent last
            while len(self._kept) > KEPT_PICTURES:
                self._kept.pop(next(iter(self._kept)))
        self.figure = fig
        self.image.value = png
        self.message.layout.display = "none"
        self.image.layout.display = None
        return fig

    def show_message(self, message: str) -> None:
        """Show a short HTML message (e.g. why nothing is drawn) instead of the picture."""
        self.figure = None
        self.message.value = f"<div style='color:#555;padding:8px'>{message}</div>"
        self.message.layout.display = None
        self.image.layout.display = "none"


def region_names(session: WorkbenchSession, image: int, region_indices: np.ndarray) -> list[str]:
    """``r<index>`` per region (its index in the image's boxes and features), with the detector label when known."""
    split = session.split
    names = [f"r{r}" for r in region_indices]
    if split.region_labels is not None and split.label_names is not None:
        names = [f"{name} {split.label_names[split.region_labels[image, r]]}"
                 for name, r in zip(names, region_indices)]
    return names


def picture_with_boxes(session: WorkbenchSession, image: int):
    """(picture, boxes (R, 4), note) for drawing attention on, in a split with boxes.

    A split with boxes but no pictures gets a grey canvas of the image's size, so the
    layout of the attended regions still shows.
    """
    split = session.split
    boxes = np.asarray(split.boxes[image], dtype=np.float32)
    try:
        picture = session.picture(image)
    except OutsideFolder as refused:  # a picture path leading out of the dataset's folders is not read
        warnings.warn(str(refused), stacklevel=2)
        picture = None
    if picture is not None:
        return picture, boxes, ""
    if split.image_sizes is not None:
        width, height = (int(v) for v in split.image_sizes[image])
    else:
        width, height = (int(np.ceil(v)) for v in boxes[:, 2:].max(axis=0))
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), (CANVAS_GREY,) * 3)
    return canvas, boxes, " (no picture: boxes on a blank canvas)"


def draw_pair_attention(session: WorkbenchSession, image: int, region_indices: np.ndarray,
                        weights: np.ndarray, ax, title: str, highlight: int | None = None, top_k: int = 4):
    """Attention over one image's kept regions (``region_indices``), optionally outlining region ``highlight``.

    The split must have boxes; the picture is drawn on ``ax``.
    """
    picture, boxes, note = picture_with_boxes(session, image)
    draw_attention(picture, boxes[region_indices], weights, ax=ax, title=title + note, top_k=top_k,
                   labels=region_names(session, image, region_indices))
    for axis in (ax.xaxis, ax.yaxis):  # the axes are off: without ticks to place, laying out the title is
        axis.set_major_locator(NullLocator())  # a third quicker, and the picture is the same to the pixel
        axis.set_minor_locator(NullLocator())
    if highlight is not None:
        x1, y1, x2, y2 = boxes[highlight]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.2, ls="--", edgecolor=HIGHLIGHT))


def regions_for_words(explanation, word: int | None = None) -> tuple[np.ndarray, str]:
    """Weights over the kept regions for one word (None: the mean over every word), and how to read them.

    The word's text-to-image attention where the model has it ("looked at by"); a SCAN i2t model has
    none, and then each region's image-to-text weight on the word ("attending to") is shown instead.
    """
    t2i = explanation.t2i_attention                                           # (L, R)
    if not np.isnan(t2i).all():
        return (t2i.mean(axis=0) if word is None else t2i[word]), "looked at by"
    i2t = explanation.i2t_attention                                           # (R, L)
    return (i2t.mean(axis=1) if word is None else i2t[:, word]), "attending to (image-to-text)"


def shaded_words_html(words: list[str], weights: np.ndarray, selected: int | None = None,
                      unknown: set[str] = frozenset()) -> str:
    """The words in a row, each shaded by its weight (relative to the largest), weight on hover.

    The ``selected`` word is underlined; words the vocabulary lacks are struck through.
    """
    weights = np.asarray(weights, dtype=float)
    peak = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
    red, green, blue = WORD_SHADE
    spans = []
    for position, (word, weight) in enumerate(zip(words, weights)):
        strength = weight / peak
        style = [f"background:rgba({red},{green},{blue},{0.08 + 0.85 * strength:.2f})",
                 "padding:3px 5px", "margin:2px", "border-radius:4px", "display:inline-block",
                 "font-size:15px", "line-height:1.3"]
        if position == selected:
            style.append("border-bottom:3px solid #222")
        if word in unknown:
            style.append("text-decoration:line-through")
        spans.append(f"<span title='{html.escape(word)}: {weight:.3f}' style='{';'.join(style)}'>"
                     f"{html.escape(word)}<sub style='font-size:10px;color:#444'> {weight:.2f}</sub></span>")
    return "<div style='line-height:2'>" + "".join(spans) + "</div>"


def draw_gate(gate: np.ndarray, ax) -> None:
    """Histogram of the gate t over the d dimensions: how much of the image side is the global vector h."""
    mean = float(np.mean(gate))
    ax.hist(gate, bins=np.linspace(0, 1, 21), color="#d62728", alpha=0.8)
    ax.axvline(mean, color="black", lw=1.5, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("gate t (1 = all global image vector h, 0 = all attended regions x)", fontsize=8)
    ax.set_ylabel("dimensions", fontsize=8)
    ax.set_title(f"semantic-level gate: mean {mean:.2f} = share of h", fontsize=9)
    ax.tick_params(labelsize=8)


def png_thumbnail(picture: Image.Image, size: int) -> bytes:
    """PNG bytes of the picture fitted into a size x size square (small pictures are enlarged, crisply)."""
    scale = size / max(picture.size)
    resample = Image.NEAREST if scale >= 2 else Image.LANCZOS
    thumbnail = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                               resample)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")
    return buffer.getvalue()


def save_view(view, path: str | Path, picture: str | None = None, dpi: int = 150) -> Path:
    """Save the picture a view shows (any view drawn through PictureView: explorer, levels, failures...).

    ``picture`` names the PictureView attribute when the view has more than one.
    """
    pictures = {name: value for name, value in vars(view).items() if isinstance(value, PictureView)}
    if picture is None and len(pictures) == 1:
        picture = next(iter(pictures))
    if picture not in pictures:
        raise ValueError(f"{type(view).__name__} shows the pictures {sorted(pictures)}; name one (picture=...)")
    return save_figure(pictures[picture].figure, path, dpi=dpi)
