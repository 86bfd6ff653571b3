"""Example photos for notebook 07 and ``mlasm extract``: sample images that ship inside scikit-image.

The pictures are files of the installed ``scikit-image`` package (its ``skimage/data/``
folder, part of the wheel on PyPI; nothing is downloaded). :func:`example_photos` copies them,
byte for byte, into a folder of the cache (:func:`mlasm.paths.cache_dir`) and returns that folder
with the project's own captions, ``data/examples/captions.csv`` in a checkout. Sources and
licences, as scikit-image's ``skimage.data`` docstrings state them, are in
``data/examples/CREDITS.md``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

from mlasm.io import atomic_path
from mlasm.paths import REPO_ROOT, cache_dir

PACKAGE = "scikit-image"

# file in skimage/data -> the skimage.data function that loads it (the tests compare the two)
EXAMPLE_PHOTOS = {
    "astronaut.png": "astronaut",
    "camera.png": "camera",
    "chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "rocket.jpg": "rocket",
    "horse.png": "horse",
    "hubble_deep_field.jpg": "hubble_deep_field",
    "retina.jpg": "retina",
}

CAPTIONS_FILE = REPO_ROOT / "data" / "examples" / "captions.csv"


def package_data_dir() -> Path:
    """``skimage/data`` inside the installed scikit-image, found without importing the package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {PACKAGE} package is not installed: "
                          f"pip install 'mlasm-workbench[extract]' or {PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def example_photos(folder: str | Path | None = None,
                   captions: str | Path = CAPTIONS_FILE) -> tuple[Path, Path]:
    """(photos folder, captions CSV) of the example photos, ready for :func:`mlasm.extract.extract_dataset`.

    The photos are copied from the installed scikit-image into ``folder`` (default: a folder of
    the cache named after the scikit-image version); a file already there with the same bytes
    is left alone, any other is replaced, atomically. ``FileNotFoundError`` if scikit-image lacks
    one of the files (it is never downloaded) or the captions file is missing.
    """
    captions = Path(captions)
    if not captions.is_file():
        raise FileNotFoundError(f"{captions}: the example captions are missing (they live in a checkout "
                                f"of the project, data/examples/captions.csv)")
    source = package_data_dir()
    if folder is None:
        folder = cache_dir() / "examples" / f"{PACKAGE}-{importlib.metadata.version(PACKAGE)}"
    folder = Path(folder)
    for name in EXAMPLE_PHOTOS:
        original = source / name
        if not original.is_file():
            raise FileNotFoundError(f"{original} is missing from the installed {PACKAGE} package: "
                                    f"reinstall it from PyPI (pip install --force-reinstall {PACKAGE})")
        copy = folder / name
        if copy.is_file() and copy.read_bytes() == original.read_bytes():
            continue
        with atomic_path(copy) as tmp:
            shutil.copyfile(original, tmp)
    return folder, captions
