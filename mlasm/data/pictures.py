"""Any picture Pillow can open, as the 8-bit RGB picture a person would see.

``Image.convert("RGB")`` alone is wrong for several kinds of file: a 16-bit greyscale PNG
(mode ``I;16`` or ``I``) is clipped at 255 and turns white; the transparent parts of a
picture with alpha (RGBA, LA, a palette with a transparent colour) show whatever colour
happens to be stored under them, often black. Here 16-bit and 32-bit values are scaled to 8
bits, and transparency is laid over white, as a viewer shows it. Extraction and display use
the same function, so the boxes the model saw line up with the picture shown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mlasm.data.errors import DataError

BACKGROUND = (255, 255, 255)


# What one picture may take, checked from its header before a pixel is decoded: a 25 KB PNG can
# declare billions of pixels (a decompression bomb). 64 MP is a large camera's photo.
MAX_PICTURE_PIXELS = 64_000_000  # mlasm extract --max-picture-megapixels
BYTES_PER_PIXEL = 3  # decoded bytes allowed per pixel of the limit, in the picture's own mode: RGB fits, RGBA not
_BYTES_PER_BAND = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "RGBA;16B": 2, "RGB;16B": 2}


class PictureTooLarge(DataError):
    """A picture whose header declares more pixels or decoded bytes than the limits."""


def decoded_bytes(image: Image.Image) -> int:
    """Bytes the decoded picture takes in its own mode, from its header (nothing decoded)."""
    width, height = image.size
    return width * height * len(image.getbands()) * _BYTES_PER_BAND.get(image.mode, 1)


def open_picture(path, max_pixels: int = MAX_PICTURE_PIXELS) -> Image.Image:
    """The picture at ``path`` as :func:`as_rgb` shows it; PictureTooLarge (one line naming the file,
    its size and the limit) when its header declares more than ``max_pixels`` pixels or more than
    ``BYTES_PER_PIXEL`` x ``max_pixels`` decoded bytes, before anything is decoded. OSError when it
    cannot be read."""
    max_bytes = BYTES_PER_PIXEL * max_pixels
    try:
        image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours
        raise PictureTooLarge(f"{path}: refused before decoding: {error}") from None
    with image:
        width, height = image.size
        size = decoded_bytes(image)
        if width * height > max_pixels or size > max_bytes:
            raise PictureTooLarge(f"{path}: {width} x {height} pixels ({width * height / 1e6:.3g} MP, "
                                  f"{size / 1e6:.3g} MB decoded as {image.mode}), more than the limit of "
                                  f"{max_pixels / 1e6:.3g} MP and {max_bytes / 1e6:.3g} MB; refused before "
                                  f"decoding")
        image.load()
        return as_rgb(image)


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


# ----------------------------------------------------------------------------- where a picture may be read from

ALLOW_OUTSIDE_OPTION = "--allow-images-outside"


class OutsideFolder(DataError):
    """A picture named by a data file (a captions CSV or JSON, a TSV's caption file, a split's
    image_paths.txt) that lies outside the folder the user named."""


def picture_inside(folders, name: str, where: str, expected: str | None = None,
                   allow_outside: bool = False, hint: str | None = None) -> Path:
    """The file a data file's picture ``name`` points at, resolved (``..``, symlinks, an absolute
    name) and proved to lie inside one of ``folders`` (a path or several); else OutsideFolder.

    A downloaded caption file must not decide what gets read: ``../../../etc/hostname``, an
    absolute path or a symlink out of the folder is refused with one line naming ``where`` (the
    file and its row), the picture, where it leads and ``expected`` (the folder, as the user
    named it, e.g. "--images DIR"). ``allow_outside`` (the users' explicit
    ``--allow-images-outside``) resolves the name and skips the rule.
    """
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    try:
        roots = [folder.resolve() for folder in folders]
        path = (roots[0] / str(name)).resolve()  # an absolute name stays itself; symlinks are followed
    except (OSError, ValueError, RuntimeError) as error:  # a NUL byte, a symlink loop
        raise DataError(f"{where}: picture {str(name)!r} is not a usable path ({error})") from None
    if allow_outside or any(path == root or root in path.parents for root in roots):
        return path
    expected = expected or " or ".join(str(root) for root in roots)
    hint = hint or (f"pictures are read only inside it (move the picture there, or give "
                    f"{ALLOW_OUTSIDE_OPTION} to read pictures elsewhere)")
    raise OutsideFolder(f"{where}: picture {str(name)!r} leads to {path}, outside {expected}; {hint}")
