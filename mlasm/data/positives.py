"""Complete positive sets: every image a caption is true of, not only the one it was written for.

Retrieval data usually knows one image per caption, so a correct answer that happens to be
another picture counts as a miss. Where a dataset knows more (ShapeScenes checks every caption
against every scene; ECCV Caption and CxC annotate COCO), ``PositiveSets`` holds it: per
caption, the sorted indices of the images it is true of, stored compressed by row (CSR), so a
COCO-sized split costs a few integers per caption.

On disk, ``{split}_positives.txt`` has one line per caption (line c + 1 for caption c): the
image indices it is true of, separated by spaces. Each line must name the caption's own image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mlasm.data.errors import DataError
from mlasm.io import write_text


class PositiveSets:
    """Per caption, the images it is true of (CSR rows: ``indices[indptr[c]:indptr[c + 1]]``)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_images: int):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.n_images = int(n_images)
        if self.indptr.ndim != 1 or self.indptr.size == 0 or self.indptr[0] != 0 \
                or self.indptr[-1] != self.indices.size or (np.diff(self.indptr) < 0).any():
            raise DataError("PositiveSets: indptr must start at 0, never decrease and end at len(indices)")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.n_images):
            raise DataError(f"PositiveSets: image indices must lie in [0, {self.n_images})")
        if (np.diff(self._keys()) <= 0).any():
            raise DataError("PositiveSets: each caption's images must be listed once, in ascending order")
        self._by_image: PositiveSets | None = None

    def _keys(self) -> np.ndarray:
        """caption * n_images + image for every entry: ascending over the whole array when rows are sorted."""
        return np.repeat(np.arange(self.n_captions), np.diff(self.indptr)) * self.n_images + self.indices

    def contains(self, captions, images) -> np.ndarray:
        """Elementwise (broadcast): is caption ``captions[k]`` true of image ``images[k]``?"""
        captions, images = np.broadcast_arrays(np.asarray(captions, np.int64), np.asarray(images, np.int64))
        keys = self._keys()
        wanted = captions * self.n_images + images
        at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
        return keys[at] == wanted if keys.size else np.zeros(wanted.shape, bool)

    # --- construction ------------------------------------------------------------------

    @classmethod
    def from_lists(cls, images_per_caption: Sequence[Sequence[int]], n_images: int) -> "PositiveSets":
        rows = [np.unique(np.asarray(row, dtype=np.int64)) for row in images_per_caption]
        indptr = np.concatenate(([0], np.cumsum([row.size for row in rows])))  # CSR: where each row starts
        return cls(indptr, np.concatenate(rows) if rows else np.zeros(0, np.int64), n_images)

    @classmethod
    def from_dense(cls, truth: np.ndarray) -> "PositiveSets":
        """From an (N, M) bool matrix, True where caption m is true of image n."""
        truth = np.asarray(truth, dtype=bool)
        captions, images = np.nonzero(truth.T)  # row-major over captions: sorted by caption, then image
        indptr = np.concatenate(([0], np.cumsum(np.bincount(captions, minlength=truth.shape[1]))))
        return cls(indptr, images, truth.shape[0])

    @classmethod
    def strict(cls, caption_to_image: np.ndarray, n_images: int) -> "PositiveSets":
        """The standard protocol's positives: each caption is true of its own image only."""
        caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
        return cls(np.arange(caption_to_image.size + 1), caption_to_image, n_images)

    # --- reading -----------------------------------------------------------------------

    @property
    def n_captions(self) -> int:
        return self.indptr.size - 1

    def images_of(self, caption: int) -> np.ndarray:
        """The images caption ``caption`` is true of, ascending."""
        return self.indices[self.indptr[caption]:self.indptr[caption + 1]]

    def captions_of(self, image: int) -> np.ndarray:
        """The captions true of image ``image``, ascending (the same sets, read the other way)."""
        return self.transpose().images_of(image)

    def transpose(self) -> "PositiveSets":
        """Per image, the captions true of it (as a PositiveSets over "images" = captions)."""
        if self._by_image is None:
            captions = np.repeat(np.arange(self.n_captions), np.diff(self.indptr))
            order = np.lexsort((captions, self.indices))
            indptr = np.concatenate(([0], np.cumsum(np.bincount(self.indices, minlength=self.n_images))))
            self._by_image = PositiveSets(indptr, captions[order], self.n_captions)
        return self._by_image

    def sizes(self) -> np.ndarray:
        """(M,) how many images each caption is true of."""
        return np.diff(self.indptr)

    def dense(self) -> np.ndarray:
        """(N, M) bool, True where caption m is true of image n."""
        truth = np.zeros((self.n_images, self.n_captions), bool)
        truth[self.indices, np.repeat(np.arange(self.n_captions), self.sizes())] = True
        return truth

    def mask(self, image_ids: Sequence[int], caption_ids: Sequence[int]) -> np.ndarray:
        """(len(image_ids), len(caption_ids)) bool: is caption_ids[j] true of image_ids[i]? (a batch's positives)"""
        return self.contains(np.asarray(caption_ids)[None, :], np.asarray(image_ids)[:, None])

    def subset(self, images: np.ndarray, captions: np.ndarray) -> "PositiveSets":
        """The sets restricted to ``captions`` (in that order) and ``images``, renumbered as positions in it."""
        new_index = np.full(self.n_images, -1, np.int64)
        new_index[np.asarray(images, dtype=np.int64)] = np.arange(len(images))
        rows = [new_index[self.images_of(c)] for c in np.asarray(captions, dtype=np.int64)]
        return PositiveSets.from_lists([row[row >= 0] for row in rows], len(images))

    def check_own_images(self, caption_to_image: np.ndarray, source: str) -> None:
        """Every caption must be true of its own image; ``source`` names the file in the error."""
        caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
        if caption_to_image.size != self.n_captions:
            raise DataError(f"{source}: {self.n_captions} lines for {caption_to_image.size} captions "
                            f"(expected one line per caption)")
        own = self.contains(np.arange(self.n_captions), caption_to_image)
        if not own.all():
            c = int(np.flatnonzero(~own)[0])
            raise DataError(f"{source}: line {c + 1} (caption {c}) does not list its own image "
                            f"{int(caption_to_image[c])}")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PositiveSets) and self.n_images == other.n_images
                and np.array_equal(self.indptr, other.indptr) and np.array_equal(self.indices, other.indices))

    def __repr__(self) -> str:
        sizes = self.sizes()
        return (f"PositiveSets(captions={self.n_captions}, images={self.n_images}, "
                f"mean images per caption={sizes.mean() if sizes.size else 0:.2f})")


def write_positives(path: str | os.PathLike, positives: PositiveSets) -> None:
    """One line per caption, its images separated by spaces; written atomically."""
    lines = (" ".join(map(str, positives.images_of(c).tolist())) + "\n" for c in range(positives.n_captions))
    write_text(path, "".join(lines))


def read_positives(path: str | os.PathLike, n_images: int, caption_to_image: np.ndarray) -> PositiveSets:
    """Read and check a positives file: integers in [0, n_images), one line per caption, own image listed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not a part of line 1
    except FileNotFoundError:
        raise DataError(f"{path}: positives file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = [int(v) for v in line.split()]
        except ValueError:
            raise DataError(f"{path}: line {number} must hold image indices (integers separated by spaces), "
                            f"got {line[:60]!r}") from None
        if not row:
            raise DataError(f"{path}: line {number} is empty; it must list at least the caption's own image")
        bad = [v for v in row if not 0 <= v < n_images]
        if bad:
            raise DataError(f"{path}: line {number}: image index {bad[0]} is outside [0, {n_images})")
        rows.append(row)
    positives = PositiveSets.from_lists(rows, n_images)
    positives.check_own_images(caption_to_image, str(path))
    return positives
