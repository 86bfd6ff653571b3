"""Which pictures to extract and their captions: COCO caption JSON, or a simple CSV.

The CSV has a header line ``file_name,caption`` and one row per caption; an image's captions
are its rows, in file order, and its id is its file name. Both formats give
:class:`mlasm.data.coco.CaptionedImage` records with ``file_name`` relative to the image folder.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from mlasm.data.coco import CaptionedImage, read_coco_captions
from mlasm.data.errors import DataError

CSV_COLUMNS = ("file_name", "caption")


def read_captions(path: str | os.PathLike) -> list[CaptionedImage]:
    """COCO caption JSON (``.json``) or ``file_name,caption`` CSV (``.csv``), by file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_coco_captions(path)
    if suffix == ".csv":
        return read_caption_csv(path)
    raise DataError(f"{path}: captions must be a COCO caption .json or a file_name,caption .csv file")


def read_caption_csv(path: str | os.PathLike) -> list[CaptionedImage]:
    """Images in order of first appearance, each with its captions; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: caption file not found")
    images: dict[str, CaptionedImage] = {}
    data = path.read_bytes()
    try:  # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # Latin-1, Windows-1252...: say where, not only the codec's words
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {data[e.start]:#04x}: {e.reason}); save the "
                        f"file as UTF-8") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        try:
            _read_rows(path, reader, images)
        except csv.Error as error:  # a NUL byte, a field beyond csv's size limit
            raise DataError(f"{path}: line {reader.line_num}: not a CSV row ({error})") from None
    if not images:
        raise DataError(f"{path}: no caption rows below the header")
    return list(images.values())


def _read_rows(path: Path, reader: csv.DictReader, images: dict[str, CaptionedImage]) -> None:
    """The rows below the header into ``images`` (file name -> its captions, in file order)."""
    if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
        raise DataError(f"{path}: the first line must be the header {','.join(CSV_COLUMNS)}, "
                        f"got {','.join(reader.fieldnames or [])!r}")
    first_line: dict[tuple[str, str], int] = {}
    for row in reader:
        file_name = (row["file_name"] or "").strip()
        caption = (row["caption"] or "").strip()
        if not file_name or not caption:
            raise DataError(f"{path}: line {reader.line_num} needs both a file name and a caption")
        if first_line.setdefault((file_name, caption), reader.line_num) != reader.line_num:
            # the same caption twice would count twice in every metric of that picture
            raise DataError(f"{path}: line {reader.line_num} repeats line {first_line[file_name, caption]} "
                            f"({file_name}, the same caption); expected each caption once")
        image = images.setdefault(file_name, CaptionedImage(
            image_id=file_name, file_name=file_name, captions=[], row=f"line {reader.line_num}"))
        image.captions.append(caption)
