"""Bottom-up-attention TSV files (Anderson et al.'s ``generate_tsv.py``): region features with their boxes.

One line per image, tab-separated: image_id, image_w, image_h, num_boxes, boxes, features, the
last two base64-encoded float32 arrays of num_boxes x 4 and num_boxes x D. Columns after the
sixth (class or attribute probabilities in some releases) are ignored. A TSV is read whole into
memory: convert a large one once to a precomp folder (``precomp.write_split``) and memory-map that.
"""
from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.io import atomic_path

FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")

# One field holds every region's features in base64: far beyond csv's default limit of 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class TsvRecord:
    """One image of a TSV: its id, size in pixels, boxes (K, 4) x1 y1 x2 y2 and features (K, D)."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    features: np.ndarray


@dataclass
class TsvFeatures:
    """Every image of a TSV, padded to R regions: features (N, R, D), boxes (N, R, 4), mask (N, R)."""

    image_ids: list[str]
    image_sizes: np.ndarray
    boxes: np.ndarray
    features: np.ndarray
    mask: np.ndarray

    def to_split(self, name: str, captions: list[str], caption_to_image: Sequence[int]) -> RetrievalSplit:
        """Join with captions; the global feature is the masked mean of the regions."""
        return RetrievalSplit(name=name, regions=self.features, region_mask=self.mask, global_features=None,
                              captions=captions, caption_to_image=np.asarray(caption_to_image),
                              boxes=self.boxes, image_sizes=self.image_sizes, image_ids=self.image_ids)


def _decode_floats(text: str, path: Path, line: int, field: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{path}: line {line}, field {field}: not valid base64 ({e})") from None
    if len(raw) % 4:
        raise DataError(f"{path}: line {line}, field {field}: {len(raw)} bytes is not a whole number of float32")
    return np.frombuffer(raw, dtype=np.float32)


def parse_tsv_row(row: list[str], path: Path, line: int) -> TsvRecord:
    """One line's fields as a record, checked; errors name the file, the line and the field."""
    if len(row) < len(FIELDS):
        raise DataError(f"{path}: line {line} has {len(row)} tab-separated fields, expected {len(FIELDS)}: {FIELDS}")
    image_id, width, height, num_boxes, boxes, features = row[: len(FIELDS)]
    try:
        width, height, num_boxes = int(width), int(height), int(num_boxes)
    except ValueError:
        raise DataError(f"{path}: line {line}: image_w, image_h and num_boxes must be integers, "
                        f"got {row[1]!r}, {row[2]!r}, {row[3]!r}") from None
    if num_boxes < 1:
        raise DataError(f"{path}: line {line}: num_boxes is {num_boxes}, expected at least 1")
    boxes = _decode_floats(boxes, path, line, "boxes")
    if boxes.size != num_boxes * 4:
        raise DataError(f"{path}: line {line}, field boxes: {boxes.size} values, "
                        f"expected num_boxes x 4 = {num_boxes * 4}")
    features = _decode_floats(features, path, line, "features")
    if not features.size:  # else every region would be a 0-d feature, "finite" and meaningless
        raise DataError(f"{path}: line {line} (image {image_id}), field features: empty; expected num_boxes x D "
                        f"float32 values (D > 0)")
    if features.size % num_boxes:
        raise DataError(f"{path}: line {line}, field features: {features.size} values do not divide "
                        f"into num_boxes = {num_boxes} rows")
    record = TsvRecord(image_id, width, height, boxes.reshape(num_boxes, 4), features.reshape(num_boxes, -1))
    if not (np.isfinite(record.features).all() and np.isfinite(record.boxes).all()):
        raise DataError(f"{path}: line {line} (image {image_id}): NaN or infinite boxes or features")
    inverted = np.flatnonzero((record.boxes[:, 2] < record.boxes[:, 0]) | (record.boxes[:, 3] < record.boxes[:, 1]))
    if inverted.size:  # a negative width or height: corners swapped, or a box in another layout (x, y, w, h)
        box = ", ".join(f"{v:g}" for v in record.boxes[inverted[0]])
        raise DataError(f"{path}: line {line} (image {image_id}), field boxes: box {inverted[0]} is ({box}), a "
                        f"negative width or height ({inverted.size} such boxes); expected x1 y1 x2 y2 with "
                        f"x1 <= x2 and y1 <= y2")
    return record


def iter_tsv(path: str | os.PathLike) -> Iterator[TsvRecord]:
    """The records of a TSV one at a time, checked; errors name the line (1-based)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: TSV file not found")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        line = 0
        try:
            for row in reader:
                line = reader.line_num
                if row:
                    yield parse_tsv_row(row, path, line)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: line {line + 1} is not valid UTF-8 ({e.reason})") from None
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: {e}") from None


def iter_tsv_from(path: str | os.PathLike, offset: int = 0, line: int = 0) -> Iterator[tuple[TsvRecord, int, int]]:
    """(record, its line number, the byte offset after it) from byte ``offset`` (the start of line
    ``line + 1``) on: what a resumable conversion needs to continue where it stopped.

    Lines are split on tabs as bottom-up-attention writes them (no quoting, which base64 never needs).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: TSV file not found")
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            line += 1
            offset += len(raw)
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {line} is not valid UTF-8 ({e.reason})") from None
            if text:
                yield parse_tsv_row(text.split("\t"), path, line), line, offset


def read_tsv(path: str | os.PathLike, max_regions: int | None = None) -> TsvFeatures:
    """Every record of a TSV, padded to ``max_regions`` (default: the largest num_boxes) with a mask."""
    records = list(iter_tsv(path))
    if not records:
        raise DataError(f"{path}: TSV file holds no image")
    seen: dict[str, int] = {}
    for k, record in enumerate(records):
        if seen.setdefault(record.image_id, k) != k:
            raise DataError(f"{path}: image {record.image_id} appears a second time (records "
                            f"{seen[record.image_id] + 1} and {k + 1}); expected one line per image")
    dims = {r.features.shape[1] for r in records}
    if len(dims) > 1:
        raise DataError(f"{path}: images have features of different sizes {sorted(dims)}")
    most = max(len(r.boxes) for r in records)
    n_regions = most if max_regions is None else max_regions
    if most > n_regions:
        worst = next(r for r in records if len(r.boxes) == most)
        raise DataError(f"{path}: image {worst.image_id} has {most} boxes, more than max_regions = {n_regions}")
    features = np.zeros((len(records), n_regions, dims.pop()), np.float32)
    boxes = np.zeros((len(records), n_regions, 4), np.float32)
    mask = np.zeros((len(records), n_regions), bool)
    for i, record in enumerate(records):
        k = len(record.boxes)
        features[i, :k], boxes[i, :k], mask[i, :k] = record.features, record.boxes, True
    sizes = np.array([[r.width, r.height] for r in records], np.int32)
    return TsvFeatures([r.image_id for r in records], sizes, boxes, features, mask)


def write_tsv(path: str | os.PathLike, records: Iterable[TsvRecord]) -> None:
    """Write records in the bottom-up-attention layout (atomically); used for tests and conversions."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for r in records:
            writer.writerow([r.image_id, r.width, r.height, len(r.boxes),
                             base64.b64encode(np.ascontiguousarray(r.boxes, np.float32).tobytes()).decode("ascii"),
                             base64.b64encode(np.ascontiguousarray(r.features, np.float32).tobytes()).decode("ascii")])
