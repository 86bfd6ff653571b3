"""SCAN "precomp" folders plus the optional extras of docs/architecture.md, read and written.

``{split}_ims.npy`` (and ``{split}_global.npy``) are opened as read-only memory maps and not read:
opening COCO's 33 GB training split takes the time of reading its captions and small extras, and
its features cost memory only as batches are read. Their NaN/inf check happens per batch as they
are read (``image_tensors``), or all at once with ``check_features`` (``mlasm check``). Every file
is written atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mlasm.data.dataset import RetrievalSplit, check_boxes, check_grounding
from mlasm.data.errors import DataError, load_json
from mlasm.data.positives import read_positives, write_positives
from mlasm.io import atomic_path, write_json, write_text

FORMAT = "mlasm-precomp"
FORMAT_VERSION = 1
META_FILE = "meta.json"
DEFAULT_CAPTIONS_PER_IMAGE = 5
STANDARD_SPLITS = ("train", "dev", "test", "testall")


# the optional files of a split (docs/architecture.md): a producer replacing a split removes those it
# does not write, or they would be read back with the new content
EXTRA_SUFFIXES = ("mask.npy", "boxes.npy", "global.npy", "cap2img.npy", "ids.txt", "image_paths.txt", "sizes.npy",
                  "scores.npy", "labels.npy", "grounding.json", "attributes.json", "positives.txt", "meanings.json",
                  "scenes.json")


def list_splits(folder: str | os.PathLike) -> list[str]:
    """Names of the splits in ``folder`` (those with an ``{split}_ims.npy``), standard ones first."""
    folder = Path(folder)
    names = {p.name[: -len("_ims.npy")] for p in folder.glob("*_ims.npy")} if folder.is_dir() else set()
    return sorted(names, key=lambda s: (STANDARD_SPLITS.index(s) if s in STANDARD_SPLITS else len(STANDARD_SPLITS), s))


def read_meta(folder: str | os.PathLike) -> dict:
    """The folder's meta.json, or {} when it has none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    if meta.get("format", FORMAT) != FORMAT or meta.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise DataError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                        f"expected {FORMAT!r} version {FORMAT_VERSION}")
    cpi = meta.get("captions_per_image")
    if cpi is not None and not (isinstance(cpi, int) and not isinstance(cpi, bool) and cpi >= 1):
        raise DataError(f"{path}: field \"captions_per_image\" must be a whole number >= 1 (or null when it "
                        f"varies), got {json.dumps(cpi)}" + (" (a string)" if isinstance(cpi, str) else ""))
    names = meta.get("label_names")
    if names is not None and not (isinstance(names, list) and all(n is None or isinstance(n, str) for n in names)):
        raise DataError(f"{path}: field \"label_names\" must be a list of strings (null for an unused id)")
    return meta


def read_split(folder: str | os.PathLike, split: str, captions_per_image: int | None = None,
               mmap: bool = True) -> RetrievalSplit:
    """Read split ``split`` of a precomp folder, with every optional extra that is present.

    Captions belong to images by ``{split}_cap2img.npy`` when present, else caption k to image
    k // captions_per_image (argument, else meta ``captions_per_image``, else 5). With ``mmap``
    (the default) no feature is read here (module docstring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    available = list_splits(folder)
    if split not in available:
        raise DataError(f"{folder}: no split {split!r} (no {split}_ims.npy); available: {available or 'none'}")
    meta = read_meta(folder)

    def file(suffix: str) -> Path:
        return folder / f"{split}_{suffix}"

    regions = _load_array(file("ims.npy"), mmap, ndim=3, kind="f")
    n, r, d = regions.shape
    if n == 0 or r == 0:
        raise DataError(f"{file('ims.npy')}: shape {regions.shape} holds no image or no region")
    if d == 0:  # every feature would be "finite" and mean nothing
        raise DataError(f"{file('ims.npy')}: shape {regions.shape}: its regions have 0-d features; expected "
                        f"(images, regions, dim) with dim > 0")
    mask = _optional_array(file("mask.npy"), (n, r), kind="b")
    if mask is None:
        mask = np.ones((n, r), bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise DataError(f"{file('mask.npy')}: image {int(empty[0])} has no real region (all False)")
    captions = _read_lines(file("caps.txt"), required=True, allow_empty=False)
    if not captions:
        raise DataError(f"{file('caps.txt')}: holds no caption (the file is empty); expected one caption per line")
    caption_to_image = _caption_to_image(file, meta, captions_per_image, n, len(captions))
    paths = _read_lines(file("image_paths.txt"), expected=n)
    labels = _optional_array(file("labels.npy"), (n, r), kind="i")
    boxes = _optional_array(file("boxes.npy"), (n, r, 4), kind="f")
    if boxes is not None:
        check_boxes(boxes, str(file("boxes.npy")))
    extras = dict(
        boxes=boxes,
        image_sizes=_optional_array(file("sizes.npy"), (n, 2), kind="i"),
        image_ids=_read_lines(file("ids.txt"), expected=n),
        image_paths=None if paths is None else [str(folder / p) if p else None for p in paths],
        picture_folders=None if paths is None else _picture_folders(folder, meta),
        image_paths_file=None if paths is None else str(file("image_paths.txt")),
        grounding=_read_grounding(file("grounding.json"), captions, mask, caption_to_image),
        image_attributes=_read_attributes(file("attributes.json"), n),
        region_scores=_optional_array(file("scores.npy"), (n, r), kind="f"),
        region_labels=labels,
        label_names=meta.get("label_names") if labels is not None else None,
        positives=read_positives(file("positives.txt"), n, caption_to_image) if file("positives.txt").exists() else None,
    )
    global_features = _optional_array(file("global.npy"), (n, None), kind="f", mmap=mmap)
    # None: the masked mean of the regions, computed as they are read (RetrievalSplit)
    return RetrievalSplit(name=split, regions=regions, region_mask=mask, global_features=global_features,
                          captions=captions, caption_to_image=caption_to_image,
                          regions_file=str(file("ims.npy")),
                          global_file=None if global_features is None else str(file("global.npy")), **extras)


def write_split(folder: str | os.PathLike, split_name: str, split: RetrievalSplit,
                meta: dict | None = None) -> None:
    """Write ``split`` as split ``split_name`` of a precomp folder (each file atomically) and update meta.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bad = [k for k, c in enumerate(split.captions) if "\n" in c or "\r" in c]
    if bad:
        raise DataError(f"split {split.name!r}: caption {bad[0]} contains a line break; "
                        "captions are stored one per line")

    def file(suffix: str) -> Path:
        return folder / f"{split_name}_{suffix}"

    arrays = {"ims.npy": split.regions, "mask.npy": split.region_mask, "global.npy": split.global_features,
              "cap2img.npy": split.caption_to_image, "boxes.npy": split.boxes, "sizes.npy": split.image_sizes,
              "scores.npy": split.region_scores, "labels.npy": split.region_labels}
    for suffix, array in arrays.items():
        if array is not None:
            with atomic_path(file(suffix)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(array), allow_pickle=False)
    write_text(file("caps.txt"), "".join(c + "\n" for c in split.captions))
    write_text(file("ids.txt"), "".join(f"{i}\n" for i in split.image_ids))
    if split.image_paths is not None:
        write_text(file("image_paths.txt"), "".join(f"{_relative_to(p, folder)}\n" for p in split.image_paths))
    documents = {"grounding.json": split.grounding, "attributes.json": split.image_attributes}
    for suffix, document in documents.items():
        if document is not None:
            write_json_compact(file(suffix), document)
    if split.positives is not None:
        write_positives(file("positives.txt"), split.positives)
    optional = {**arrays, **documents, "image_paths.txt": split.image_paths, "positives.txt": split.positives}
    for suffix in (s for s, value in optional.items() if value is None):
        file(suffix).unlink(missing_ok=True)  # left from an earlier write, it would be read back with this split

    merged = {**read_meta(folder), **(meta or {}), "format": FORMAT, "version": FORMAT_VERSION}
    merged.setdefault("captions_per_image", DEFAULT_CAPTIONS_PER_IMAGE)
    if "picture_folder" not in (meta or {}):  # a split made in code: its own pictures' folder is allowed
        merged["picture_folder"] = _with_pictures_of(merged.get("picture_folder"), split.image_paths, folder)
    if split.label_names is not None:
        merged["label_names"] = list(split.label_names)
    write_json(folder / META_FILE, merged)


def write_json_compact(path: str | os.PathLike, document) -> None:
    """One-line JSON, atomically: the C encoder writes the grounding of 100k captions in a blink
    (an indented dump goes through the pure-Python encoder, many times slower)."""
    write_text(path, json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")


def _picture_folders(folder: Path, meta: dict) -> list[str] | None:
    """Where a split's pictures may be read from: the dataset folder and the picture folder that
    mlasm prepare / extract recorded in meta.json; None (anywhere) when they recorded
    --allow-images-outside."""
    if meta.get("pictures_outside_allowed") is True:
        return None
    recorded = meta.get("picture_folder")
    recorded = recorded if isinstance(recorded, list) else [recorded]
    if isinstance(meta.get("source"), dict):  # mlasm extract before picture_folder was recorded
        recorded.append(meta["source"].get("images"))
    return [str(folder)] + [p for p in recorded if isinstance(p, str) and p]


def _with_pictures_of(recorded, paths: list | None, folder: Path):
    """meta.json's picture_folder (None, a folder or a list) widened by the folder that holds the
    pictures of ``paths`` lying outside the dataset folder."""
    outside = [Path(p).resolve() for p in paths or [] if p and not Path(p).resolve().is_relative_to(folder.resolve())]
    if not outside:
        return recorded
    common = os.path.commonpath([str(p.parent) for p in outside])
    folders = recorded if isinstance(recorded, list) else [] if recorded is None else [recorded]
    return folders if common in folders else [*folders, common] if folders else common


def _relative_to(path: str | None, folder: Path) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(path).resolve())


_KINDS = {"f": "floating-point", "i": "integer", "b": "boolean"}


NPY_MAGIC = b"\x93NUMPY"


def check_npy_start(path: Path) -> None:
    """A DataError naming ``path`` (and where a link leads) unless it starts as a .npy array does: np.load
    would open a zip as an .npz and call a text file pickled data."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if head.startswith(NPY_MAGIC):
        return
    link = f" (a link to {Path(path).resolve()})" if Path(path).is_symlink() else ""
    if head.startswith(b"PK"):
        what = "a zip archive (an .npz of several arrays?)"
    elif not head:
        what = "an empty file (0 bytes)"
    else:
        what = f"a file that starts with {head!r}"
    raise DataError(f"{path}{link}: not a readable .npy array: {what}; expected one array saved by numpy.save "
                    f"(which starts with \\x93NUMPY)")


def _load_array(path: Path, mmap: bool, ndim: int, kind: str) -> np.ndarray:
    """np.load with the failure modes turned into messages that name the file."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a .npy file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    check_npy_start(path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):  # numpy's hint would be unsafe: a pickle runs code
            raise DataError(f"{path}: holds Python objects (a pickled array), not numbers; mlasm does not unpickle "
                            f"data files: expected a .npy array of numbers") from None
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    if array.ndim != ndim:
        raise DataError(f"{path}: expected {ndim} dimensions, got shape {array.shape}")
    if array.dtype.kind != kind and not (kind == "i" and array.dtype.kind == "u"):
        raise DataError(f"{path}: expected {_KINDS[kind]} values, got dtype {array.dtype}")
    return array


def _optional_array(path: Path, shape: tuple, kind: str, mmap: bool = False) -> np.ndarray | None:
    """An optional extra, loaded into memory unless ``mmap``; ``shape`` entries None accept any size."""
    if not path.exists():
        return None
    array = _load_array(path, mmap=mmap, ndim=len(shape), kind=kind)
    if any(want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = tuple("any" if s is None else s for s in shape)
        raise DataError(f"{path}: expected shape {expected}, got {array.shape}")
    return array


def read_caption_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a captions file (or any one-entry-per-line file), stripped; an empty line or text
    that is not UTF-8 is an error naming the line."""
    lines = _read_lines(Path(path), required=True, allow_empty=False)
    if not lines:
        raise DataError(f"{path}: the file is empty; expected one entry per line")
    return lines


def _read_lines(path: Path, required: bool = False, expected: int | None = None,
                allow_empty: bool = True) -> list[str] | None:
    """The stripped lines of a UTF-8 text file; errors name the line (1-based)."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a text file")
    if not path.is_file():
        if required:
            raise DataError(f"{path}: file not found")
        return None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 ({e.reason})") from None
    lines = text.removeprefix("\ufeff").split("\n")  # a byte-order mark is not a part of the first line
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.strip() for line in lines]
    if not allow_empty:
        empty = [k for k, line in enumerate(lines) if not line]
        if empty:
            raise DataError(f"{path}: line {empty[0] + 1} is empty; every line must hold a caption")
    if expected is not None and len(lines) != expected:
        raise DataError(f"{path}: expected {expected} lines (one per image), found {len(lines)}")
    return lines


def _caption_to_image(file, meta: dict, captions_per_image: int | None, n: int, m: int) -> np.ndarray:
    explicit = _optional_array(file("cap2img.npy"), (m,), kind="i")
    if explicit is not None:
        if m and (explicit.min() < 0 or explicit.max() >= n):
            raise DataError(f"{file('cap2img.npy')}: image indices must lie in [0, {n}), "
                            f"got [{explicit.min()}, {explicit.max()}]")
        return explicit.astype(np.int64)
    if captions_per_image is not None and not (isinstance(captions_per_image, int) and captions_per_image >= 1):
        raise ValueError(f"captions_per_image must be a whole number >= 1, got {captions_per_image!r}")
    cpi = captions_per_image or meta.get("captions_per_image") or DEFAULT_CAPTIONS_PER_IMAGE
    if m != cpi * n:
        repeated = " (one feature row per caption, as in old VSE++ releases: keep every 5th row)" if m == n else ""
        raise DataError(f"{file('caps.txt')}: {m} captions for the {n} images of {file('ims.npy').name}; "
                        f"expected {cpi} per image ({cpi * n}){repeated}. Pass captions_per_image, or add "
                        f"{file('cap2img.npy').name} to map each caption to its image")
    return np.arange(m, dtype=np.int64) // cpi


def _read_grounding(path: Path, captions: list[str], region_mask: np.ndarray,
                    caption_to_image: np.ndarray) -> list | None:
    """Per caption a list of [token position, [region indices]], checked against its tokens and real regions."""
    if not path.exists():
        return None
    grounding = load_json(path, "grounding file")
    check_grounding(grounding, captions, region_mask, caption_to_image, str(path))
    return grounding


def _read_attributes(path: Path, n: int) -> list[dict] | None:
    if not path.exists():
        return None
    attributes = load_json(path)
    if not isinstance(attributes, list) or len(attributes) != n or not all(isinstance(a, dict) for a in attributes):
        raise DataError(f"{path}: expected a list of {n} JSON objects (one per image)")
    return attributes
