"""``mlasm prepare``: the files researchers download, turned into the precomp folder the workbench reads.

Two sources:

- bottom-up-attention TSV (region features and boxes of every image, e.g. ``trainval_36.tsv``)
  with a caption file: Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` (its
  splits become ours) or a COCO ``captions_*.json`` (one split, ``all``): :func:`prepare_from_tsv`;
- a SCAN precomp folder (``data/f30k_precomp``) with its vocabulary
  (``vocab/f30k_precomp_vocab.json``): ``prepare_from_scan`` in mlasm.data.prepare_scan, which
  uses this module's row files, split files and meta.json.

Both work in bounded memory: the TSV is read one line at a time and each image's rows are
written in place into the output ``.npy`` files (no memory map, so written pages never count
against the process); memory holds only per-image metadata. Both resume: run the same command
again after a stop (Ctrl-C, a kill, a full disk) and it continues from its last checkpoint.
Large files are written as hidden ``.NAME.partial`` files and renamed when complete;
``meta.json`` is written after every split is in place.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mlasm.data.coco import CaptionedImage, read_caption_file
from mlasm.data.errors import DataError, load_json
from mlasm.data.pictures import picture_inside
from mlasm.data.precomp import (DEFAULT_CAPTIONS_PER_IMAGE, EXTRA_SUFFIXES, FORMAT, FORMAT_VERSION, META_FILE,
                                read_meta, read_split)
from mlasm.data.tsv import iter_tsv_from
from mlasm.io import check_output_folder, npz_declared_sizes, write_json, write_text, write_together

STATE_FILE = ".prepare-state.json"
FILLED_FILE = ".prepare-filled.npz"
STATE_VERSION = 1
# SCAN's names for Karpathy's splits: COCO's train includes restval (absent from Flickr30K's file)
KARPATHY_SPLITS = {"train": ("train", "restval"), "dev": ("val",), "test": ("test",)}
COCO_FILE_SPLIT = "all"  # a COCO caption file has no splits: all its images are this one
MATCHES = ("auto", "id", "file")


def parse_split_mapping(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=PART[,PART...]``: output split NAME made of these splits of the caption file."""
    name, _, parts = text.partition("=")
    parts = tuple(p.strip() for p in parts.split(",") if p.strip())
    if not name.strip() or not parts or "/" in name:
        raise ValueError(f"expected NAME=SPLIT[,SPLIT...], e.g. train=train,restval or testall=test; got {text!r}")
    return name.strip(), parts


# ----------------------------------------------------------------------------- writing rows in place

class _RowFile:
    """A .npy file of a fixed shape whose rows are written in place, in any order (os.pwrite)."""

    def __init__(self, path: Path, dtype, shape: tuple, create: bool):
        if create:  # the header and a sparse file of the full size: no byte of data is written yet
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            del array
        array = np.load(path, mmap_mode="r")
        if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
            raise DataError(f"{path}: an unfinished conversion left shape {array.shape} {array.dtype}, expected "
                            f"{tuple(shape)} {np.dtype(dtype)}; start again with --restart")
        self.path, self.dtype, self.offset = path, np.dtype(dtype), int(array.offset)
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        del array
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, row: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        try:
            written = os.pwrite(self.fd, data, self.offset + row * self.row_bytes)
        except OSError as error:  # os.pwrite names no file: a full disk would be a bare "No space left"
            raise self._named(error, f"writing row {row + 1}") from None
        if written != len(data):
            raise OSError(errno.EIO, "short write", str(self.path))

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as error:
            raise self._named(error, "saving its rows") from None

    def _named(self, error: OSError, doing: str) -> OSError:
        """``error`` naming the file the user asked for (not the hidden .partial one) and how to go on."""
        final = self.path.with_name(self.path.name.removeprefix(".").removesuffix(".partial"))
        return OSError(error.errno or errno.EIO, f"{error.strerror or error} while {doing} (kept in {self.path.name}); "
                                                 f"free some space and run the same command to resume", str(final))

    def close(self) -> None:
        os.close(self.fd)


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _file_identity(path: Path, sample: int = 2**20) -> dict:
    """What tells a changed input from the one a conversion began on: its size and a digest of its
    first and last MB (not its time stamp: a copy or a touch changes that, not the content)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(sample))
        if size > sample:
            f.seek(max(sample, size - sample))
            digest.update(f.read(sample))
    return {"path": str(path.resolve()), "size": size, "sample_sha256": digest.hexdigest()[:16]}


_STATE_FIELDS = {"kind": (str,), "settings": (dict,), "offset": (int,), "line": (int,), "records": (int,),
                 "skipped": (int,), "match": (str, type(None)), "dim": (int, type(None))}


def _read_state(out: Path, restart: bool = False) -> dict | None:
    """The unfinished conversion's state, None when there is none (or ``restart`` and it is damaged)."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = load_json(path, "conversion state")
        if not isinstance(state, dict):
            raise DataError(f"{path}: a JSON {type(state).__name__}, expected an object")
        wrong = next((name for name, kinds in _STATE_FIELDS.items() if not isinstance(state.get(name, ()), kinds)
                      or isinstance(state.get(name), bool) or name not in state), None)
        if wrong is not None:
            raise DataError(f"{path}: field \"{wrong}\" is {json.dumps(state.get(wrong))[:40]}")
    except DataError as error:
        if restart:  # begun again: its state is not needed
            return None
        raise DataError(f"{error}; the unfinished conversion's state is damaged: pass --restart to begin "
                        f"again") from None
    return state


def _read_filled(path: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Which rows of each split an unfinished conversion has written; a damaged file (unreadable,
    members declaring more than a row flag each, of other shapes) is a DataError naming it."""
    try:
        declared = npz_declared_sizes(path)
        large = [name for name, n in sizes.items() if declared.get(name, 0) > n + 4096]
        if large:
            raise ValueError(f"{large[0]}.npy declares {declared[large[0]]:,} bytes for {sizes[large[0]]} rows")
        with np.load(path, allow_pickle=False) as saved:
            filled = {name: saved[name].copy() for name in sizes}
        wrong = [name for name, n in sizes.items() if filled[name].shape != (n,) or filled[name].dtype != bool]
        if wrong:
            raise ValueError(f"{wrong[0]}: {filled[wrong[0]].dtype} {filled[wrong[0]].shape}, expected bool "
                             f"({sizes[wrong[0]]},)")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: the unfinished conversion's record of written rows is damaged ({error}); pass "
                        f"--restart to begin again") from None
    return filled


def _remove_unfinished(out: Path) -> None:
    for path in out.glob(".*.partial"):
        path.unlink()
    for name in (STATE_FILE, FILLED_FILE):
        (out / name).unlink(missing_ok=True)


def _refuse_other_conversion(out: Path, state: dict, settings: dict) -> None:
    differences = sorted(key for key in set(state.get("settings", {})) | set(settings)
                         if state.get("settings", {}).get(key) != settings.get(key))
    raise DataError(f"{out}: holds an unfinished conversion of other inputs or settings ({', '.join(differences)} "
                    f"differ from what it began with); give those to continue it, or pass --restart to begin "
                    f"again with these")


def _finish_split_files(out: Path, name: str, captions: list[str], image_ids: list[str],
                        image_paths: list[str] | None, keep: Sequence[str] = ()) -> None:
    """Remove the extras an earlier content of the folder left for a split (but those in ``keep``,
    about to be replaced), then write its text files."""
    for suffix in EXTRA_SUFFIXES:
        if suffix not in keep:
            (out / f"{name}_{suffix}").unlink(missing_ok=True)
    write_text(out / f"{name}_caps.txt", "".join(c + "\n" for c in captions))
    write_text(out / f"{name}_ids.txt", "".join(i + "\n" for i in image_ids))
    if image_paths is not None:
        write_text(out / f"{name}_image_paths.txt", "".join(p + "\n" for p in image_paths))


def _write_meta(out: Path, producer: dict, captions_per_image: int, extra: dict | None = None) -> None:
    try:
        meta = read_meta(out)
    except DataError:  # an unreadable meta.json of an earlier content is replaced
        meta = {}
    meta.update(extra or {})
    meta.update({"format": FORMAT, "version": FORMAT_VERSION, "captions_per_image": captions_per_image,
                 "producer": producer})
    write_json(out / META_FILE, meta)


def _normalised(caption: str) -> str:
    """One line: a caption's whitespace (line breaks included) as single spaces."""
    return " ".join(caption.split())


# ----------------------------------------------------------------------------- TSV + captions

@dataclass
class _Split:
    """An output split: the splits of the caption file it is made of, and its images in the file's order."""

    name: str
    parts: list[str]
    images: list[CaptionedImage]


def _default_mapping(parts: set[str]) -> dict[str, list[str]]:
    """SCAN's names for the Karpathy splits the file has; a COCO caption file's one split as it is."""
    mapping = {name: [p for p in wanted if p in parts] for name, wanted in KARPATHY_SPLITS.items()}
    mapping = {name: wanted for name, wanted in mapping.items() if wanted}
    return mapping or {COCO_FILE_SPLIT: [COCO_FILE_SPLIT]}


def _plan(captions_path: Path, images: list[CaptionedImage], mapping: dict[str, Sequence[str]] | None,
          captions_per_image: int) -> list[_Split]:
    parts = {image.split or COCO_FILE_SPLIT for image in images}
    mapping = _default_mapping(parts) if mapping is None else mapping
    unknown = sorted({p for wanted in mapping.values() for p in wanted} - parts)
    if unknown:
        raise DataError(f"{captions_path}: no split {unknown}; it has {sorted(parts)}")
    taken: dict[str, str] = {}
    for name, wanted in mapping.items():
        for part in wanted:
            if part in taken:
                raise DataError(f"--split: {part!r} of {captions_path.name} is given to both {taken[part]!r} "
                                f"and {name!r}")
            taken[part] = name
    splits = {name: _Split(name, list(wanted), []) for name, wanted in mapping.items()}
    for image in images:
        name = taken.get(image.split or COCO_FILE_SPLIT)
        if name is None:
            continue
        if len(image.captions) < captions_per_image:
            raise DataError(f"{captions_path}: image {image.image_id} ({image.file_name}) has "
                            f"{len(image.captions)} captions, fewer than --captions-per-image {captions_per_image}")
        splits[name].images.append(image)
    return list(splits.values())


def _index(splits: list[_Split], key: Callable[[CaptionedImage], str]) -> dict[str, tuple[str, int] | None]:
    """key -> (split, row); None for a key two images share (an error only if the TSV uses it)."""
    index: dict[str, tuple[str, int] | None] = {}
    for split in splits:
        for row, image in enumerate(split.images):
            k = key(image)
            index[k] = None if k in index else (split.name, row)
    return index


def prepare_from_tsv(tsv: str | os.PathLike, captions: str | os.PathLike, out: str | os.PathLike,
                     splits: dict[str, Sequence[str]] | None = None, max_regions: int = 36,
                     captions_per_image: int = DEFAULT_CAPTIONS_PER_IMAGE, match: str = "auto",
                     images_root: str | os.PathLike | None = None, restart: bool = False,
                     checkpoint_every: int = 1000, progress: bool = True,
                     on_record: Callable[[int], None] | None = None, allow_images_outside: bool = False) -> dict:
    """Convert a bottom-up-attention TSV and a caption file into precomp splits in ``out``.

    ``splits`` maps output splits to splits of the caption file (default: SCAN's names for
    Karpathy's, train = train + restval, dev = val, test = test; a COCO caption file: ``all``).
    Each image keeps its first ``captions_per_image`` captions and up to ``max_regions`` boxes
    (fewer are padded, with a mask). TSV lines are matched to images by ``match``: ``id`` (COCO
    ids: the TSV's image_id is the caption file's image id), ``file`` (the TSV's image_id is the
    picture's file name without extension, as for Flickr30K), or ``auto`` (whichever the first
    line matches). TSV images in no chosen split are skipped and counted. ``images_root`` (the
    folder the caption file's file names are relative to) records each picture's path, for
    display; a file name leading out of it (``..``, an absolute path, a symlink) is refused before
    the TSV is read, unless ``allow_images_outside``. ``on_record`` is called after each TSV line with the number read (tests use it).
    Returns a summary: per split its images and captions, the TSV lines skipped, the match used.
    """
    tsv, captions_path, out = Path(tsv), Path(captions), Path(out)
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    if not tsv.is_file():
        raise DataError(f"{tsv}: TSV file not found")
    plan = _plan(captions_path, read_caption_file(captions_path), splits, captions_per_image)
    picture_files = None if images_root is None else {
        id(image): picture_inside(images_root, image.file_name, f"{captions_path}: {image.row or image.image_id}",
                                  f"--images {Path(images_root).resolve()}", allow_images_outside)
        for split in plan for image in split.images}
    settings = {"tsv": _file_identity(tsv), "captions": _file_identity(captions_path),
                "splits": {s.name: {"parts": s.parts, "images": len(s.images)} for s in plan},
                "max_regions": max_regions,
                "captions_per_image": captions_per_image, "match": match}
    settings = json.loads(json.dumps(settings))  # as it reads back from the state file
    out = check_output_folder(out, "--out", clean=True)
    state, filled = _tsv_state(out, restart, settings, plan, match)
    rows = _TsvRows(out, {s.name: len(s.images) for s in plan}, max_regions)
    if state["dim"] is not None:
        rows.open(state["dim"], create=False)
    try:
        _read_tsv(tsv, captions_path, plan, state, filled, rows, max_regions, checkpoint_every, progress, on_record)
    finally:
        rows.close()
    _check_every_image_read(tsv, captions_path, plan, filled)
    for split in plan:
        texts = [_normalised(c) for image in split.images for c in image.captions[:captions_per_image]]
        paths = None if picture_files is None else [str(picture_files[id(image)]) for image in split.images]
        moved = tuple(f"{suffix}.npy" for suffix in _TsvRows.SUFFIXES)
        _finish_split_files(out, split.name, texts, [image.image_id for image in split.images], paths, keep=moved)
        for suffix in moved:  # a run stopped among these renames finds some already done
            if _partial(out / f"{split.name}_{suffix}").exists():
                os.replace(_partial(out / f"{split.name}_{suffix}"), out / f"{split.name}_{suffix}")
    producer = {"name": "mlasm prepare", "from": "bottom-up-attention TSV", "tsv": str(tsv.resolve()),
                "captions": str(captions_path.resolve()), "match": state["match"],
                "splits": {s.name: s.parts for s in plan}}
    pictures = {"picture_folder": None if images_root is None else str(Path(images_root).resolve()),
                "pictures_outside_allowed": bool(allow_images_outside)}  # the workbench's rule (read_split)
    _write_meta(out, producer, captions_per_image, pictures)
    _remove_unfinished(out)
    summary = {"splits": {}, "skipped_tsv_images": state["skipped"], "match": state["match"], "out": str(out)}
    for split in plan:
        data = read_split(out, split.name)  # cheap: reads no feature; proves the folder reads back
        summary["splits"][split.name] = {"images": data.n_images, "captions": data.n_captions}
    return summary


def _tsv_state(out: Path, restart: bool, settings: dict, plan, match: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Where a conversion of these ``settings`` stands in ``out`` (a new one, or the one a stop left),
    and which rows of each split are already filled."""
    state = _read_state(out, restart)
    if state is not None and (restart or state.get("kind") != "tsv" or state.get("settings") != settings):
        if not restart:
            _refuse_other_conversion(out, state, settings)
        state = None
    if state is None:
        _remove_unfinished(out)
        state = {"version": STATE_VERSION, "kind": "tsv", "settings": settings, "offset": 0, "line": 0,
                 "records": 0, "skipped": 0, "match": None if match == "auto" else match, "dim": None}
        return state, {s.name: np.zeros(len(s.images), bool) for s in plan}
    return state, _read_filled(out / FILLED_FILE, {s.name: len(s.images) for s in plan})


class _TsvRows:
    """The splits' row files being filled (as ``.partial`` files until the conversion ends)."""

    SUFFIXES = ("ims", "boxes", "mask", "sizes")

    def __init__(self, out: Path, sizes: dict[str, int], max_regions: int):
        self.out, self.sizes, self.max_regions = out, sizes, max_regions
        self.files: dict[str, dict[str, _RowFile]] = {}

    def open(self, dim: int, create: bool) -> None:
        out, max_regions = self.out, self.max_regions
        for name, n in self.sizes.items():
            layouts = {"ims": (np.float32, (n, max_regions, dim)), "boxes": (np.float32, (n, max_regions, 4)),
                       "mask": (np.bool_, (n, max_regions)), "sizes": (np.int32, (n, 2))}  # per suffix: dtype, shape
            for suffix in self.SUFFIXES:  # a run stopped among the final renames
                final = out / f"{name}_{suffix}.npy"
                if not create and not _partial(final).exists() and final.exists():
                    os.replace(final, _partial(final))
            self.files[name] = {suffix: _RowFile(_partial(out / f"{name}_{suffix}.npy"), *layouts[suffix], create)
                                for suffix in self.SUFFIXES}

    def write(self, name: str, row: int, record) -> None:
        """One image's regions, padded to max_regions with a mask, its boxes and size."""
        k, dim = record.features.shape
        padded = np.zeros((self.max_regions, dim), np.float32)
        padded[:k] = record.features
        boxes = np.zeros((self.max_regions, 4), np.float32)
        boxes[:k] = record.boxes
        files = self.files[name]
        files["ims"].write(row, padded)
        files["boxes"].write(row, boxes)
        files["mask"].write(row, np.arange(self.max_regions) < k)
        files["sizes"].write(row, np.array([record.width, record.height], np.int32))

    def checkpoint(self, state: dict, filled: dict[str, np.ndarray]) -> None:
        """The rows on disk, then which are filled and where the TSV stands, as one unit."""
        for row_files in self.files.values():
            for row_file in row_files.values():
                row_file.sync()

        def save_filled(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **filled)

        def save_state(tmp: Path) -> None:
            tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")

        write_together({self.out / FILLED_FILE: save_filled, self.out / STATE_FILE: save_state})

    def close(self) -> None:
        for row_files in self.files.values():
            for row_file in row_files.values():
                row_file.close()


def _read_tsv(tsv: Path, captions_path: Path, plan, state: dict, filled: dict[str, np.ndarray], rows: _TsvRows,
              max_regions: int, checkpoint_every: int, progress: bool, on_record) -> None:
    """Read the TSV from where ``state`` stands, each line into its image's row; a checkpoint every
    ``checkpoint_every`` lines and at the end."""
    by_key = {"id": _index(plan, lambda image: image.image_id),
              "file": _index(plan, lambda image: Path(image.file_name).stem)}
    bar = tqdm(total=state["settings"]["tsv"]["size"], initial=state["offset"], unit="B", unit_scale=True,
               desc=f"reading {tsv.name}", disable=not progress)
    since_checkpoint = 0
    try:
        for record, line, offset in iter_tsv_from(tsv, state["offset"], state["line"]):
            if state["match"] is None:  # auto: the first line decides
                state["match"] = "id" if record.image_id in by_key["id"] else \
                    "file" if record.image_id in by_key["file"] else None
                if state["match"] is None:
                    raise DataError(f"{tsv}: line {line}: image_id {record.image_id!r} is neither an image id nor "
                                    f"a file name (without extension) of an image of {captions_path.name} in the "
                                    f"chosen splits; check the pairing of TSV and caption file, or give --match")
            index = by_key[state["match"]]
            if record.image_id not in index:
                state["skipped"] += 1
            else:
                _check_tsv_record(tsv, captions_path, line, record, index, state, filled, max_regions)
                name, row = index[record.image_id]
                if state["dim"] is None:
                    state["dim"] = record.features.shape[1]
                    rows.open(state["dim"], create=True)
                rows.write(name, row, record)
                filled[name][row] = True
            bar.update(offset - state["offset"])
            state.update(offset=offset, line=line, records=state["records"] + 1)
            since_checkpoint += 1
            if since_checkpoint >= checkpoint_every:
                rows.checkpoint(state, filled)
                since_checkpoint = 0
            if on_record is not None:
                on_record(state["records"])
        rows.checkpoint(state, filled)
    finally:
        bar.close()


def _check_tsv_record(tsv: Path, captions_path: Path, line: int, record, index: dict, state: dict,
                      filled: dict[str, np.ndarray], max_regions: int) -> None:
    target = index[record.image_id]
    if target is None:
        raise DataError(f"{tsv}: line {line}: image_id {record.image_id!r} names two images of "
                        f"{captions_path.name} (by {state['match']}); give --match id or file")
    name, row = target
    k, dim = record.features.shape
    if k > max_regions:
        raise DataError(f"{tsv}: line {line} (image {record.image_id}): {k} boxes, more than "
                        f"--max-regions {max_regions}; give a larger --max-regions (images with "
                        f"fewer boxes are padded, with a mask)")
    if state["dim"] is not None and dim != state["dim"]:
        raise DataError(f"{tsv}: line {line} (image {record.image_id}), field features: {dim}-d "
                        f"region features, where the first image had {state['dim']}-d")
    if filled[name][row]:
        raise DataError(f"{tsv}: line {line}: image {record.image_id} appears a second time in the TSV")


def _check_every_image_read(tsv: Path, captions_path: Path, plan, filled: dict[str, np.ndarray]) -> None:
    for split in plan:
        missing = np.flatnonzero(~filled[split.name])
        if missing.size:
            examples = ", ".join(split.images[i].image_id for i in missing[:5])
            raise DataError(f"{tsv}: {missing.size} of the {len(split.images)} images of split {split.name!r} are not "
                            f"in the TSV (ids {examples}{', ...' if missing.size > 5 else ''}); the TSV must hold "
                            f"every image of the chosen splits of {captions_path.name}")
