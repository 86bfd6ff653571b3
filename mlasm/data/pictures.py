"""Any picture Pillow can open, as the 8-bit RGB picture a person would see.

``Image.convert("RGB")`` alone is wrong for several kinds of file: a 16-bit greyscale PNG
(mode ``I;16`` or ``I``) is clipped at 255 and turns white; the transparent parts of a
picture with alpha (RGBA, LA, a palette with a transparent colour) show whatever colour
happens to be stored under them, often black. Here 16-bit and 32-bit values are scaled to 8
bits, and transparency is laid over white, as a viewer shows it. Extraction and display use
the same function, so the boxes the model saw line up with the picture shown.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """A greyscale picture of 16-bit, 32-bit integer or float values as mode L."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or image.mode == "I":
        full_scale = 65535.0  # Pillow opens 16-bit PNG and TIFF greyscale as I;16 or I
        if image.mode == "I" and values.max(initial=0) > full_scale:
            full_scale = float(2**31 - 1)
    else:  # F: floats, taken as 0..1 when they fit there, else as 0..255
        full_scale = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    values = np.nan_to_num(values, nan=0.0)
    return Image.fromarray(np.clip(np.rint(values / full_scale * 255), 0, 255).astype(np.uint8))


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation applied) and in 8-bit RGB, transparency over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = _scaled_to_8_bits(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
