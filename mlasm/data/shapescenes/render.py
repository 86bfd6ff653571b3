"""Rendering: the 128 x 128 picture of a scene description, the same pixels every time."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageDraw

from mlasm.data.shapescenes.scenes import IMAGE_SIZE, outline

SUPERSAMPLE = 2  # shapes are drawn at twice the size and averaged down, for smooth edges

# float64 throughout: a sine's last-bit differences between CPUs cannot move a pixel's rounding.
_GRID_Y, _GRID_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


def _background_pixels(background: dict) -> np.ndarray:
    """(S, S, 3) uint8: a tinted grey with blotches, stripes or checks and pixel noise, from its own seed."""
    rng = np.random.default_rng(background["seed"])
    texture = background["texture"]
    if texture == "striped":
        theta = np.radians(background["angle"])
        phase = (_GRID_X * np.cos(theta) + _GRID_Y * np.sin(theta)) * (2 * np.pi / background["period"])
        pattern = 16 * np.sin(phase)
    elif texture == "checkered":
        cell = background["period"] * 1.2
        pattern = 24 * ((np.floor(_GRID_X / cell) + np.floor(_GRID_Y / cell)) % 2) - 12
    else:
        coarse = Image.fromarray(rng.normal(0, 14, size=(8, 8)).astype(np.float32))
        pattern = np.asarray(coarse.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float64)
    noise = (rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) - 0.5) * 24  # uniform, sd 7
    pixels = np.asarray(background["rgb"], np.float64) + pattern[..., None] + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_scene(scene: dict) -> Image.Image:
    """The 128 x 128 RGB picture of a scene description, identical every time (pixels hash in ``pixel_hash``)."""
    background = Image.fromarray(_background_pixels(scene["background"]))
    big = IMAGE_SIZE * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for obj in scene["objects"]:
        points = [tuple(p) for p in (outline(obj) * SUPERSAMPLE).tolist()]
        dark = tuple(int(c * 0.6) for c in obj["rgb"])
        draw.polygon(points, fill=tuple(obj["rgb"]) + (255,), outline=dark + (255,), width=SUPERSAMPLE)
    layer = layer.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")


def pixel_hash(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]
