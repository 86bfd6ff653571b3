"""Region descriptors: what a detector's feature vector would say, from the pixels inside a box only."""
from __future__ import annotations

import numpy as np
from PIL import Image

PATCH = 12
HUE_BINS = 12                      # soft bins centred on 0, 30, ... 330 degrees
GREY_EDGES = (0.3, 0.55, 0.82)     # value bins of greyish pixels: dark, background-grey, light, white
GREY_BINS = len(GREY_EDGES) + 1
GEOMETRY = ("x1", "y1", "x2", "y2", "w", "h", "area")
FEATURE_DIM = HUE_BINS + GREY_BINS + PATCH * PATCH + len(GEOMETRY)

# --------------------------------------------------------------------------------- descriptor

def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1), saturation and value in [0, 1] of float RGB in [0, 1]."""
    value = rgb.max(axis=-1)
    spread = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, spread / np.maximum(value, 1e-6), 0.0)
    r, g, b = np.moveaxis(rgb, -1, 0)
    safe = np.maximum(spread, 1e-6)
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    return (hue / 6.0) % 1.0, saturation, value


def describe_boxes(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """(K, FEATURE_DIM) float32 features of K boxes, from the pixels inside each box only.

    Each box is resampled to a PATCH x PATCH crop. Blocks, each L2-normalised:
    1. colour: histogram of hue (HUE_BINS soft bins, each pixel shared between the two nearest
       bin centres; pixels with saturation > 0.3 and value > 0.2) and of value for the other,
       greyish pixels (GREY_BINS bins at GREY_EDGES), square-rooted (Hellinger);
    2. shape: per pixel, the RGB distance to the median colour of the crop's border (the
       background, for a box around an object), as a PATCH x PATCH map;
    then the box geometry x1, y1, x2, y2, w, h, area, normalised by the picture size (unscaled).
    """
    width, height = image.size
    crops = np.stack([np.asarray(image.resize((PATCH, PATCH), Image.BILINEAR, box=tuple(map(float, box))),
                                 dtype=np.float64) / 255.0 for box in boxes])  # (K, P, P, 3)
    hue, saturation, value = _hsv(crops)
    chromatic = (saturation > 0.3) & (value > 0.2)
    position = hue * HUE_BINS
    lower = np.floor(position).astype(int)
    share = position - lower  # of the pixel that goes to the upper bin
    n_bins = HUE_BINS + GREY_BINS
    offset = np.arange(len(boxes))[:, None, None] * n_bins
    first = np.where(chromatic, lower % HUE_BINS, HUE_BINS + np.digitize(value, GREY_EDGES)) + offset
    second = (lower + 1) % HUE_BINS + offset
    histogram = (np.bincount(first.ravel(), np.where(chromatic, 1 - share, 1.0).ravel(), len(boxes) * n_bins)
                 + np.bincount(second.ravel(), np.where(chromatic, share, 0.0).ravel(), len(boxes) * n_bins))
    histogram = histogram.reshape(len(boxes), n_bins)
    colour = np.sqrt(histogram / histogram.sum(axis=1, keepdims=True))
    border = np.concatenate([crops[:, 0], crops[:, -1], crops[:, 1:-1, 0], crops[:, 1:-1, -1]], axis=1)
    background = np.median(border, axis=1)  # (K, 3)
    distance = np.linalg.norm(crops - background[:, None, None], axis=-1).reshape(len(boxes), -1)
    shape = distance / np.maximum(np.linalg.norm(distance, axis=-1, keepdims=True), 1e-6)  # unit length
    b = np.asarray(boxes, np.float64) / [width, height, width, height]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    geometry = np.concatenate([b, w[:, None], h[:, None], (w * h)[:, None]], axis=1)
    return np.concatenate([colour, shape, geometry], axis=1).astype(np.float32)
