"""``mlasm prepare scan``: a SCAN precomp folder (``data/f30k_precomp``) and its vocabulary
(``vocab/f30k_precomp_vocab.json``) as the precomp folder the workbench reads.

Features are hard-linked where the file system allows, else copied in chunks that a second run
continues; an old VSE++ layout (one feature row per caption) is reduced to one row per image,
resumably. The split files and ``meta.json`` are written as ``mlasm prepare tsv`` writes them
(mlasm.data.prepare).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from mlasm.data.errors import DataError
from mlasm.data.precomp import (DEFAULT_CAPTIONS_PER_IMAGE, check_npy_start, list_splits, read_caption_lines,
                                read_split)
from mlasm.data.prepare import _finish_split_files, _partial, _RowFile, _write_meta
from mlasm.data.vocab import Vocabulary, tokenize
from mlasm.io import check_output_folder, write_text

COPY_CHUNK = 64 * 2**20
COVERAGE_SAMPLE = 10_000  # captions per split whose tokens are looked up in the vocabulary


def _link_or_copy(source: Path, target: Path, progress: bool) -> str:
    """``target`` as the same file as ``source``: a hard link where the file system allows, else a
    copy in chunks that a second run continues from where the first stopped."""
    partial = _partial(target)
    if not partial.exists():  # no copy under way: a hard link costs neither time nor space
        try:
            os.link(source, partial)
            os.replace(partial, target)
            return "linked"
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    size = source.stat().st_size
    done = partial.stat().st_size if partial.exists() else 0
    with open(source, "rb") as reader, open(partial, "ab") as writer, \
            tqdm(total=size, initial=done, unit="B", unit_scale=True, desc=f"copying {source.name}",
                 disable=not progress) as bar:
        reader.seek(done)
        while chunk := reader.read(COPY_CHUNK):
            writer.write(chunk)
            bar.update(len(chunk))
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(partial, target)
    return "copied"


def _every_kth_row(source: Path, target: Path, k: int, progress: bool) -> None:
    """Keep row 0, k, 2k... of ``source`` (an old VSE++ layout with one feature row per caption);
    resumable: rows already written (counted in a sidecar file after each chunk) are kept."""
    array = np.load(source, mmap_mode="r")
    n = array.shape[0] // k
    partial, done_file = _partial(target), target.with_name(f".{target.name}.rows")
    done = int(done_file.read_text()) if done_file.is_file() and partial.is_file() else 0
    rows = _RowFile(partial, array.dtype, (n,) + array.shape[1:], create=done == 0)
    step = max(1, COPY_CHUNK // max(1, rows.row_bytes))
    try:
        for start in tqdm(range(done, n, step), desc=f"keeping every {k}th row of {source.name}",
                          disable=not progress):
            stop = min(start + step, n)
            block = np.asarray(array[start * k:stop * k:k])
            os.pwrite(rows.fd, np.ascontiguousarray(block).tobytes(), rows.offset + start * rows.row_bytes)
            rows.sync()
            write_text(done_file, str(stop))
    finally:
        rows.close()
    os.replace(partial, target)
    done_file.unlink(missing_ok=True)


def vocabulary_coverage(vocab: Vocabulary, captions: Sequence[str], sample: int = COVERAGE_SAMPLE) -> float:
    """Share of the tokens of (the first ``sample``) captions that the vocabulary knows."""
    tokens = [token for caption in captions[:sample] for token in tokenize(caption)]
    return float(np.mean([token in vocab for token in tokens])) if tokens else 0.0


def prepare_from_scan(source: str | os.PathLike, vocab: str | os.PathLike, out: str | os.PathLike,
                      splits: Sequence[str] | None = None, captions_per_image: int = DEFAULT_CAPTIONS_PER_IMAGE,
                      progress: bool = True) -> dict:
    """A SCAN precomp folder and its vocabulary file as a folder the workbench reads, ``vocab.json`` included.

    Features are hard-linked where possible (else copied, resumably): a SCAN release is already
    the precomp format. An old VSE++ release that repeats each image's row once per caption is
    reduced to one row per image. ``out`` may be ``source`` itself (then only ``meta.json`` and
    ``vocab.json`` are written). The vocabulary (SCAN's JSON or ours) keeps its ids; the summary
    gives, per split, the share of caption tokens it knows (on the first 10,000 captions).
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"{source}: SCAN precomp folder not found")
    available = list_splits(source)
    names = list(splits) if splits else available
    if not names:
        raise DataError(f"{source}: no split (no *_ims.npy file); expected SCAN's data/f30k_precomp or coco_precomp")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise DataError(f"{source}: no split {unknown}; available: {available}")
    vocabulary = Vocabulary.load(vocab)
    out = check_output_folder(out, "--out")
    in_place = out.resolve() == source.resolve()
    summary = {"splits": {}, "vocabulary": {"file": str(out / "vocab.json"), "words": len(vocabulary)},
               "out": str(out)}
    for name in names:
        ims = source / f"{name}_ims.npy"
        check_npy_start(ims)
        try:
            shape = np.load(ims, mmap_mode="r").shape
        except (ValueError, OSError) as e:
            raise DataError(f"{ims}: not a readable .npy array ({e})") from None
        if len(shape) != 3:
            raise DataError(f"{ims}: expected (images, regions, dim), got shape {shape}")
        captions = read_caption_lines(source / f"{name}_caps.txt")
        ids_path = source / f"{name}_ids.txt"
        ids = read_caption_lines(ids_path) if ids_path.is_file() else None
        repeated = len(captions) == shape[0] != captions_per_image * shape[0]
        if not repeated and len(captions) != captions_per_image * shape[0]:
            raise DataError(f"{source / f'{name}_caps.txt'}: {len(captions)} captions for the {shape[0]} images of "
                            f"{ims.name}; expected {captions_per_image} per image (or one per row, as old VSE++)")
        if repeated and shape[0] % captions_per_image:
            raise DataError(f"{ims}: {shape[0]} rows, one per caption, is not a multiple of {captions_per_image}")
        if repeated and in_place:
            raise DataError(f"{ims}: one row per caption (old VSE++ layout) cannot be reduced in place; "
                            f"give another --out")
        how = "in place"
        if repeated:
            _every_kth_row(ims, out / ims.name, captions_per_image, progress)
            how = f"every {captions_per_image}th row kept"
            ids = None if ids is None else ids[::captions_per_image] if len(ids) == shape[0] else ids
        elif not in_place:
            how = _link_or_copy(ims, out / ims.name, progress)
        if not in_place:
            _finish_split_files(out, name, captions, ids if ids is not None else
                                [str(i) for i in range(len(captions) // captions_per_image)], None)
        data = read_split(out, name, captions_per_image=captions_per_image)
        summary["splits"][name] = {"images": data.n_images, "captions": data.n_captions, "features": how,
                                   "vocabulary_coverage": vocabulary_coverage(vocabulary, data.captions)}
    vocabulary.save(out / "vocab.json")
    _write_meta(out, {"name": "mlasm prepare", "from": "SCAN precomp", "source": str(source.resolve()),
                      "vocabulary": str(Path(vocab).resolve())}, captions_per_image, {"vocabulary": "vocab.json"})
    return summary
