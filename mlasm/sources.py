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


# One process generates a picture with its captions and features in about this long: 23.8-24.3 s for
# the full 5,500 images on two processes (an idle 2-core machine, captions chosen on both since 2026-12-05),
# 4.3 s for 450 on one (a busy 2-core machine).
SECONDS_PER_IMAGE = 0.009


def generation_notice(sizes: dict[str, int], folder: Path) -> str:
    """The line shown before ShapeScenes is generated: what, where, and about how long."""
    from mlasm.data.shapescenes.scenes import FAMILY_SIZE

    images = sum(sizes.values())
    families = sum(-(-size // FAMILY_SIZE) for size in sizes.values())
    workers = min(2, os.cpu_count() or 1) if families >= 100 else 1  # as mlasm.data.shapescenes.build does
    seconds = max(1, round(images * SECONDS_PER_IMAGE / workers))
    counts = ", ".join(f"{split} {size:,}" for split, size in sizes.items())
    return (f"ShapeScenes is not in the cache yet: generating {images:,} pictures with their captions and region "
            f"features ({counts}) into {folder}, once; about {seconds} s (up to twice that on a busy machine). "
            "Later runs read the cache.")


def announce_generation(sizes: dict | None = None, seed: int = 0, cache: str | os.PathLike | None = None) -> bool:
    """Print ``generation_notice`` when ShapeScenes at these sizes is not in the cache; True when it was printed."""
    from mlasm.data.shapescenes.build import _is_current, _resolve_sizes, shapescenes_folder

    sizes = _resolve_sizes(sizes)
    folder = shapescenes_folder(seed, sizes, cache)
    if _is_current(folder, seed, sizes):
        return False
    print(generation_notice(sizes, folder), flush=True)
    return True


def split_names(source: str | os.PathLike) -> list[str]:
    """The splits of ``shapescenes`` or of a precomp folder (none where there is no such folder)."""
    if str(source) == EMBEDDED:
        from mlasm.data.shapescenes import SPLITS

        return list(SPLITS)
    from mlasm.data.precomp import list_splits

    return list_splits(source)


def open_split(source: str | os.PathLike, split: str, fast: bool | None = None,
               progress: bool = True) -> RetrievalSplit:
    """``shapescenes`` (generated and cached on first use) or a folder in the precomp format."""
    if str(source) == EMBEDDED:
        from mlasm.data.shapescenes import load_shapescenes

        fast = fast_mode() if fast is None else fast
        sizes = FAST_SIZES if fast else None
        announce_generation(sizes)  # a minute's work is never silent, with or without a progress bar
        return load_shapescenes(split, sizes=sizes, progress=progress)
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"{source}: no such folder (give '{EMBEDDED}' or a folder in the precomp format)")
    from mlasm.data.precomp import read_split

    return read_split(folder, split)
