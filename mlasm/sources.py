"""Naming data on the command line and in notebooks: ``shapescenes`` or a precomp folder."""
from __future__ import annotations

import os
from pathlib import Path

from mlasm.data.errors import DataError
from mlasm.data.dataset import RetrievalSplit

EMBEDDED = "shapescenes"
# Tiny ShapeScenes for tests and notebooks in fast mode (MLASM_FAST=1).
FAST_SIZES = {"train": 600, "dev": 100, "test": 100}


def fast_mode() -> bool:
    """True when MLASM_FAST=1 asks for tiny settings (tests, CI notebooks)."""
    return os.environ.get("MLASM_FAST", "") not in ("", "0")


def open_split(source: str | os.PathLike, split: str, fast: bool | None = None,
               progress: bool = True) -> RetrievalSplit:
    """``shapescenes`` (generated and cached on first use) or a folder in the precomp format."""
    if str(source) == EMBEDDED:
        from mlasm.data.shapescenes import load_shapescenes

        fast = fast_mode() if fast is None else fast
        return load_shapescenes(split, sizes=FAST_SIZES if fast else None, progress=progress)
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"{source}: no such folder (give '{EMBEDDED}' or a folder in the precomp format)")
    from mlasm.data.precomp import read_split

    return read_split(folder, split)
