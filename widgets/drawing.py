"""Drawing shared by the widgets: attention on a picture, shaded words, the gate, thumbnails.

Pictures with attention go through ``mlasm.plots.draw_attention`` so that the widgets,
the demo and the notebooks draw the same thing; what is here only adds what a widget
needs around it (a blank canvas when a split has boxes but no pictures, the outline of a
chosen region, words as HTML).
"""
from __future__ import annotations

import html
import io

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display
from matplotlib.patches import Rectangle
from PIL import Image

from mlasm.plots import draw_attention
from widgets.session import WorkbenchSession

CANVAS_GREY = 235
HIGHLIGHT = "#00d5ff"   # the chosen region's outline, apart from draw_attention's viridis boxes
WORD_SHADE = (255, 127, 14)  # orange: a word's share of a region's attention


def show_figure(output, fig) -> None:
    """Replace what ``output`` shows with the figure, then close it (no pyplot leak)."""
    with output:
        output.clear_output(wait=True)
        display(fig)
    plt.close(fig)


def show_message(output, message: str) -> None:
    """Replace what ``output`` shows with a short HTML message (e.g. why nothing is drawn)."""
    with output:
        output.clear_output(wait=True)
        display(HTML(f"<div style='color:#555;padding:8px'>{message}</div>"))


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
    picture = session.picture(image)
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
    if highlight is not None:
        x1, y1, x2, y2 = boxes[highlight]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.2, ls="--", edgecolor=HIGHLIGHT))


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
