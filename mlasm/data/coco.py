"""Caption annotation files: COCO caption JSON and Karpathy split JSON, mapped to image files and captions.

Both readers return the same record, ``CaptionedImage``, so that feature extraction can take
either. ``file_name`` is relative to the image folder the user points at: for COCO captions the
folder of that part (e.g. ``train2017/``), for Karpathy files the dataset root (COCO entries carry
their ``filepath``, e.g. ``val2014/``; Flickr30K entries sit directly in its image folder).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlasm.data.errors import DataError, load_json


@dataclass
class CaptionedImage:
    """One image and its captions, in the order of the annotation file."""

    image_id: str
    file_name: str
    captions: list[str]
    width: int | None = None
    height: int | None = None
    split: str | None = None
    tokens: list[list[str]] = field(default_factory=list)  # Karpathy's tokenisation, when given
    row: str | None = None  # where the annotation file names it ("images[3]", "line 7"), for errors


def _entries(path: Path, content: Any, key: str) -> list:
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        raise DataError(f"{path}: expected a JSON object with a list \"{key}\"")
    return content[key]


def _field(path: Path, entry: Any, where: str, name: str, kind: type, optional: bool = False):
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {where} must be a JSON object")
    value = entry.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {where}, field \"{name}\": expected {kind.__name__}, got {value!r}")
    return value


def read_coco_captions(path: str | os.PathLike) -> list[CaptionedImage]:
    """Read ``captions_*.json`` (images[{id, file_name, width, height}], annotations[{image_id, caption}]).

    Images keep the file's order; an image without any caption is an error, as is an empty caption.
    """
    path = Path(path)
    return _coco_images(path, load_json(path, "annotation file"))


def _coco_images(path: Path, content: Any) -> list[CaptionedImage]:
    images = _entries(path, content, "images")
    annotations = _entries(path, content, "annotations")
    captions: dict[int, list[str]] = defaultdict(list)
    for k, annotation in enumerate(annotations):
        where = f"annotations[{k}]"
        image_id = _field(path, annotation, where, "image_id", int)
        caption = _field(path, annotation, where, "caption", str).strip()
        if not caption:
            raise DataError(f"{path}: {where} (id {annotation.get('id')}) has an empty caption")
        captions[image_id].append(caption)
    result, seen = [], {}
    for k, image in enumerate(images):
        where = f"images[{k}]"
        image_id = _field(path, image, where, "id", int)
        if seen.setdefault(image_id, k) != k:
            raise DataError(f"{path}: {where}: id {image_id} is also the id of images[{seen[image_id]}]; "
                            f"expected each image once, with its own id")
        if image_id not in captions:
            raise DataError(f"{path}: {where} (id {image_id}) has no caption in \"annotations\"")
        result.append(CaptionedImage(
            image_id=str(image_id), file_name=_field(path, image, where, "file_name", str),
            captions=captions.pop(image_id),
            width=_field(path, image, where, "width", int, optional=True),
            height=_field(path, image, where, "height", int, optional=True), row=where))
    if captions:
        raise DataError(f"{path}: annotations refer to image ids not in \"images\", e.g. {next(iter(captions))}")
    return result


def read_karpathy_split(path: str | os.PathLike, splits: str | Iterable[str] | None = None) -> list[CaptionedImage]:
    """Read ``dataset_coco.json`` / ``dataset_flickr30k.json``, optionally only some splits.

    Karpathy's splits are train, val, test (and restval for COCO). SCAN's precomp names them
    train (= train + restval for COCO), dev (= val) and test. ``image_id`` is the COCO id when
    present (``cocoid``), else ``imgid``.
    """
    path = Path(path)
    return _karpathy_images(path, load_json(path, "annotation file"), splits)


def _karpathy_images(path: Path, content: Any, splits: str | Iterable[str] | None) -> list[CaptionedImage]:
    entries = _entries(path, content, "images")
    wanted = {splits} if isinstance(splits, str) else None if splits is None else set(splits)
    if wanted is not None:
        available = {e.get("split") for e in entries if isinstance(e, dict)}
        unknown = wanted - available
        if unknown:
            raise DataError(f"{path}: no split {sorted(unknown)}; available: {sorted(map(str, available))}")
    result = []
    for k, entry in enumerate(entries):
        where = f"images[{k}]"
        split = _field(path, entry, where, "split", str)
        if wanted is not None and split not in wanted:
            continue
        sentences = _field(path, entry, where, "sentences", list)
        captions, tokens = [], []
        for j, sentence in enumerate(sentences):
            here = f"{where}.sentences[{j}]"
            raw = _field(path, sentence, here, "raw", str, optional=True)
            words = _field(path, sentence, here, "tokens", list, optional=True) or []
            caption = (raw or " ".join(map(str, words))).strip()
            if not caption:
                raise DataError(f"{path}: {here} is an empty caption")
            captions.append(caption)
            tokens.append([str(w) for w in words])
        if not captions:
            raise DataError(f"{path}: {where} has no sentence")
        image_id = _field(path, entry, where, "cocoid", int, optional=True)
        if image_id is None:
            image_id = _field(path, entry, where, "imgid", int)
        file_name = _field(path, entry, where, "filename", str)
        folder = _field(path, entry, where, "filepath", str, optional=True)
        result.append(CaptionedImage(image_id=str(image_id), file_name=f"{folder}/{file_name}" if folder else file_name,
                                     captions=captions, split=split, tokens=tokens, row=where))
    return result


def read_caption_file(path: str | os.PathLike) -> list[CaptionedImage]:
    """A Karpathy split file (every split) or a COCO caption file (split None), told apart by its
    content: COCO's has "annotations", Karpathy's has "images" with "sentences"."""
    path = Path(path)
    content = load_json(path, "annotation file")
    if isinstance(content, dict) and "annotations" in content:
        return _coco_images(path, content)
    if isinstance(content, dict) and isinstance(content.get("images"), list):
        return _karpathy_images(path, content, None)
    raise DataError(f"{path}: neither a COCO caption file (\"images\" and \"annotations\") nor a Karpathy "
                    f"split file (\"images\" with \"sentences\")")
