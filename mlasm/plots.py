"""Figures a person would rather look at than read: attention on pictures, recall per level, training curves.

Every function draws on a matplotlib Axes it is given (or makes one) and returns the figure,
so the demo, the notebooks and the widgets draw the same pictures.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mlasm.levels import LEVEL_COLOURS


def _axes(ax=None, figsize=(4, 4)):
    return plt.subplots(figsize=figsize) if ax is None else (ax.figure, ax)


def attention_heatmap(image_size: tuple[int, int], boxes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A (H, W) map where each pixel sums the attention of the boxes covering it, scaled to [0, 1]."""
    width, height = image_size
    heat = np.zeros((height, width), np.float32)
    for (x1, y1, x2, y2), weight in zip(boxes, weights):
        x1, y1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        x2, y2 = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        heat[y1:y2, x1:x2] += weight
    peak = heat.max()
    return heat / peak if peak > 0 else heat


FADE = 0.6                  # how far a picture's unattended area is washed toward white
OUTLINE = "white"           # attention outlines: white over a dark edge, seen on any picture, hue of nothing


def faded_picture(image: np.ndarray, heat: np.ndarray, fade: float = FADE) -> np.ndarray:
    """The picture washed toward white where ``heat`` (H, W) in [0, 1] is low, by ``fade`` x (1 - heat).

    Mixing a colour with white keeps its hue (HSV hue depends only on the differences between
    channels, which a mix with white scales evenly): unattended things look paler, never another colour.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    peak = 255.0 if image.dtype == np.uint8 else 1.0
    colour = image[..., :3].astype(np.float32)
    veil = (fade * (1.0 - np.clip(heat, 0.0, 1.0)))[..., None]
    out = image.copy()
    mixed = colour + (peak - colour) * veil
    out[..., :3] = np.round(mixed).astype(image.dtype) if image.dtype == np.uint8 else mixed.astype(image.dtype)
    return out


def draw_attention(image, boxes: np.ndarray, weights: np.ndarray, ax=None, title: str | None = None,
                   top_k: int | None = 5, labels: Sequence[str] | None = None, fade: float = FADE,
                   legend: bool = True):
    """The picture with attention marked without changing what colour anything is.

    Where the regions get little attention the picture is washed toward white (``faded_picture``),
    so the attended regions stand out in their own colours; the ``top_k`` regions are outlined in
    white over a dark edge, wider and more opaque the larger their weight, and labelled just
    outside their box. No colour is blended into the picture and nothing is filled over it.
    ``legend`` explains the marks under the picture.
    """
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = _axes(ax)
    image = np.asarray(image)
    weights = np.asarray(weights, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    heat = attention_heatmap((image.shape[1], image.shape[0]), boxes, weights)
    ax.imshow(faded_picture(image, heat, fade))
    order = np.argsort(-weights)[: top_k or len(weights)]
    peak = float(weights.max()) if weights.size else 1.0
    height = image.shape[0]
    texts = []
    for r in order:
        x1, y1, x2, y2 = boxes[r]
        strength = float(weights[r]) / peak if peak > 0 else 0.0
        width = 0.8 + 2.7 * strength
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=width, edgecolor=OUTLINE,
                               alpha=0.35 + 0.65 * strength,
                               path_effects=[patheffects.withStroke(linewidth=width + 1.2, foreground="black")]))
        text = f"{weights[r]:.2f}" if labels is None else f"{labels[r]} {weights[r]:.2f}"
        # outside the box: above it, or below it at the picture's top, or inside its top edge when the box
        # spans the picture's height (a label past the picture's edge would meet the legend)
        above, below = y1 > 0.08 * height, y2 < 0.92 * height
        y, va = (y1 - 1, "bottom") if above else (y2 + 1, "top") if below else (y1 + 1, "top")
        texts.append(ax.text(x1, y, text, fontsize=7, va=va, color="white",
                             bbox=dict(facecolor="black", alpha=0.6, pad=1, lw=0)))
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    separate_labels(ax, texts)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if legend and len(order):
        handles = [Line2D([], [], color=OUTLINE, lw=3.5, path_effects=[
                       patheffects.withStroke(linewidth=4.7, foreground="black")],
                          label="outline: attention weight (wider, more opaque = more)"),
                   Patch(facecolor=(1, 1, 1, fade), edgecolor="#888", label="paler: little or no attention")]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7, frameon=False,
                  ncol=1, handlelength=2.2, borderaxespad=0.2)
    return fig


def separate_labels(ax, texts: Sequence, tries: int = 3) -> None:
    """Move labels up or down, strongest first, until none covers another, and hide a label that
    still does after ``tries`` moves: regions of one object share corners, so their labels would be
    drawn on top of each other; on small, crowded boxes the weakest labels give way."""
    get_renderer = getattr(ax.figure.canvas, "get_renderer", None)
    if len(texts) < 2 or get_renderer is None:
        return
    renderer = get_renderer()
    axes_box = ax.get_window_extent(renderer)
    placed = []
    for text in texts:
        box = text.get_window_extent(renderer).padded(2)  # the label's dark background reaches past its text
        for _ in range(tries + 1):
            hit = next((other for other in placed if box.overlaps(other)), None)
            if hit is None:
                placed.append(box)
                break
            up, down = hit.y1 - box.y0 + 1, hit.y0 - box.y1 - 1  # display y grows upward
            # away from the label's own box (a label above its box moves up), unless that leaves the picture
            shift = down if text.get_va() == "top" else up
            if not (axes_box.y0 <= box.y0 + shift and box.y1 + shift <= axes_box.y1):
                shift = up if shift == down else down
            x, y = ax.transData.transform(text.get_position())
            text.set_position(ax.transData.inverted().transform((x, y + shift)))
            box = box.translated(0, shift)
        else:
            text.set_visible(False)


def draw_level_recalls(result: dict, ax=None, title: str = "recall per level"):
    """Grouped bars: R@1/5/10 in both directions for every level of a metrics result."""
    fig, ax = _axes(ax, figsize=(7, 3.2))
    levels = list(result["levels"])
    metrics = [(direction, k) for direction in ("i2t", "t2i") for k in ("r1", "r5", "r10")]
    width = 0.8 / len(levels)
    for j, level in enumerate(levels):
        values = [result["levels"][level][direction][k] for direction, k in metrics]
        ax.bar(np.arange(len(metrics)) + j * width, values, width,
               label=f"{level} (rSum {result['levels'][level]['rsum']:.1f})", color=LEVEL_COLOURS.get(level))
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, [f"{d} {k.upper()}" for d, k in metrics])
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 100)
    # under the bars, never over them
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(levels), 3), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def draw_training_log(rows: Sequence[dict], axes=None):
    """Loss, validation rSum and, where logged, the scores the hinge sees, per epoch (``train_log.jsonl`` rows).

    The third panel tells a model that separates its pairs (the positive above the hardest
    negative by about the margin) from one that has collapsed (the two curves together).
    """
    separation = all("mean_positive" in row for row in rows)
    if axes is None:
        fig, axes = plt.subplots(1, 3 if separation else 2, figsize=(12 if separation else 8, 3))
    else:
        fig = axes[0].figure
    epochs = [row["epoch"] + 1 for row in rows]
    if all("loss_share_of_collapse" in row for row in rows):
        # the loss against its value had every pair scored the same: comparable across the warm-up
        # (summed negatives) and hardest-negative epochs, and across presets
        axes[0].plot(epochs, [row["loss_share_of_collapse"] for row in rows], marker="o")
        axes[0].axhline(1.0, color="tab:red", linestyle="--", linewidth=1, label="collapse (every pair alike)")
        axes[0].set_ylim(bottom=0)
        axes[0].set_ylabel("training loss / loss at collapse")
        axes[0].legend(fontsize=7, loc="upper right")
    else:
        losses = [row["loss"] for row in rows]
        axes[0].plot(epochs, losses, marker="o")
        axes[0].set_ylabel("training loss")
        if min(losses) > 0 and max(losses) > 20 * min(losses):  # a summed-negatives first epoch dwarfs the rest
            axes[0].set_yscale("log")
            axes[0].set_ylabel("training loss (log scale)")
    axes[0].set_xlabel("epoch")
    axes[1].plot(epochs, [row["val_rsum"] for row in rows], marker="o", color="tab:green")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation rSum")
    if separation and len(axes) > 2:
        axes[2].plot(epochs, [row["mean_positive"] for row in rows], marker="o", label="positive pair")
        axes[2].plot(epochs, [row["mean_hardest_negative"] for row in rows], marker="o",
                     label="hardest negative")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("mean training score")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_gallery(images: Sequence, titles: Sequence[str], columns: int = 4, width: float = 2.6,
                 highlight: Sequence[bool] | None = None):
    """Pictures in a grid with wrapped titles; ``highlight`` frames some in green (e.g. the ground truth)."""
    import textwrap

    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, (width + 0.7) * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= len(images):
            continue
        ax.imshow(np.asarray(images[k]))
        ax.set_title("\n".join(textwrap.wrap(titles[k], 32)), fontsize=7)
        if highlight is not None and highlight[k]:
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=4, edgecolor="limegreen"))
    fig.tight_layout()
    return fig
