"""A score store: every level's (N, M) matrix as its own memory-mappable ``.npy``, for large galleries.

MS-COCO 5K test is 5,000 images x 25,000 captions: five float32 matrices take 2.5 GB, too much
to hold in a ``scores.npz`` that is read whole. ``mlasm evaluate`` writes such galleries here
instead (mlasm.evaluate, ``score_store``), and the workbench memory-maps them:

    EVAL/scores/manifest.json   fingerprint (as scores.npz's), shape, levels, per level its file's
                                size and SHA-256, the block plan's rows
    EVAL/scores/<level>.npy     float32 (N, M), C order, uncompressed

While scoring, the files grow in ``EVAL/.scores.partial/``: one band of images at a time (every
caption run of a slice of images: mlasm.blocks) is written at its rows' offset, and, at most every
``record_every_s`` seconds, the files are synced and ``progress.json`` records (atomically) the
rows finished. A rerun of the same evaluation (same fingerprint, shape, levels and plan) resumes
after the last recorded band; anything else starts over, with one line saying why. When every
band is in, the files get their checksums and the finished store is put in place by evaluate's
one-unit write (mlasm.io.write_together: hard links of the partial files, renamed with metrics.json).

Checking costs: a manifest and the files' sizes and ``.npy`` headers are checked at every open
(microseconds; a truncated or foreign file is ignored with one SavedScoresIgnored line and the
scores computed again); the SHA-256 of 2.5 GB (about 5-10 s) is computed once when written and
verified only on request (``open_store(..., verify=True)``, ``verify_store``), not at every open,
which must take seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mlasm.blocks import default_memory_budget_mb, plan_gallery
from mlasm.io import finish_interrupted_writes, remove_stale_temporaries, write_json
from mlasm.saved_scores import file_digest, scores_fingerprint, usable_or_ignored

STORE_DIR = "scores"
PARTIAL_DIR = ".scores.partial"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
FORMAT = 1
RECORD_EVERY_S = 5.0  # at most this much scoring is lost to a kill (besides the band under way)


def _data_offset(path: Path) -> tuple[int, tuple, np.dtype, bool]:
    """The .npy's data offset, shape, dtype and Fortran order, from its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return f.tell(), shape, dtype, fortran


class StoreWriter:
    """The partial store of one evaluation: resumed where a killed run left it, or started over."""

    def __init__(self, out_dir: str | Path, fingerprint: dict, shape: tuple[int, int], levels: Sequence[str],
                 rows: int, record_every_s: float = 5.0):
        self.out_dir, self.folder = Path(out_dir), Path(out_dir) / PARTIAL_DIR
        self.identity = {"format": FORMAT, "fingerprint": fingerprint, "shape": list(shape),
                         "levels": list(levels), "rows": int(rows)}
        self.shape, self.levels, self.rows = tuple(shape), tuple(levels), int(rows)
        self.record_every_s = record_every_s
        self.done_rows = self._resumable()
        if self.done_rows == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            for level in self.levels:
                np.lib.format.open_memmap(self.folder / f"{level}.npy", mode="w+", dtype=np.float32,
                                          shape=self.shape)._mmap.close()  # a sparse file of the final size
            self._record(0)
        self._offsets = {level: _data_offset(self.folder / f"{level}.npy")[0] for level in self.levels}
        self._written, self._last_record = self.done_rows, time.monotonic()

    def _resumable(self) -> int:
        """Rows finished by an earlier run of this very evaluation; 0 (with one line why) otherwise."""
        try:
            progress = json.loads((self.folder / PROGRESS).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as error:
            print(f"{self.folder}: unreadable {PROGRESS} ({error}); scoring starts over", file=sys.stderr)
            return 0
        if not isinstance(progress, dict) or {k: progress.get(k) for k in self.identity} != self.identity:
            print(f"{self.folder}: an interrupted evaluation of other scores (checkpoint, split or block plan); "
                  f"scoring starts over", file=sys.stderr)
            return 0
        expected = {level: self._file_size() for level in self.levels}
        sizes = {level: (self.folder / f"{level}.npy").stat().st_size if (self.folder / f"{level}.npy").exists()
                 else -1 for level in self.levels}
        if sizes != expected:
            print(f"{self.folder}: its matrices are missing or truncated; scoring starts over", file=sys.stderr)
            return 0
        done = int(progress.get("done_rows", 0))
        if done and done < self.shape[0]:
            print(f"{self.folder}: resuming an interrupted evaluation after image {done:,} of {self.shape[0]:,}",
                  file=sys.stderr)
        return done

    def _file_size(self) -> int:
        path = self.folder / f"{self.levels[0]}.npy"
        try:
            offset = _data_offset(path)[0]
        except (OSError, ValueError):
            return -2  # never a file's size: start over
        return offset + 4 * self.shape[0] * self.shape[1]

    def _record(self, done_rows: int) -> None:
        write_json(self.folder / PROGRESS, {**self.identity, "done_rows": int(done_rows)})

    def write_band(self, start: int, band: Mapping[str, np.ndarray]) -> None:
        """Rows [start, start + len) of every level, written at their place; recorded when it is time."""
        if start != self._written:
            raise ValueError(f"band at image {start}, expected {self._written}")
        n = 0
        for level in self.levels:
            values = np.ascontiguousarray(band[level], dtype=np.float32)
            n = values.shape[0]
            with open(self.folder / f"{level}.npy", "r+b") as f:
                f.seek(self._offsets[level] + 4 * start * self.shape[1])
                f.write(values.tobytes())
        self._written = start + n
        if self._written == self.shape[0] or time.monotonic() - self._last_record >= self.record_every_s:
            self.sync()

    def sync(self) -> None:
        """Make the bands written so far durable, then record them (a kill after this resumes from there)."""
        written = self._written
        for level in self.levels:
            with open(self.folder / f"{level}.npy", "r+b") as f:
                os.fsync(f.fileno())
        self._record(written)
        self.done_rows, self._last_record = written, time.monotonic()

    def matrices(self) -> dict[str, np.ndarray]:
        """The partial files, memory-mapped read-only (complete once every band is written)."""
        return {level: np.load(self.folder / f"{level}.npy", mmap_mode="r") for level in self.levels}

    def finish(self) -> dict:
        """The manifest of the complete store: checksums computed once, here."""
        if self.done_rows != self.shape[0]:
            raise ValueError(f"{self.folder}: {self.done_rows} of {self.shape[0]} images scored")
        files = {level: {"file": f"{level}.npy", "bytes": (self.folder / f"{level}.npy").stat().st_size,
                         "sha256": file_digest(self.folder / f"{level}.npy")} for level in self.levels}
        return {**self.identity, "files": files}

    def writers(self, manifest: dict) -> dict:
        """For mlasm.io.write_together: the store's files (hard links of the partial ones), manifest last."""
        def link(source: Path):
            def write(tmp: Path) -> None:
                tmp.unlink()
                os.link(source, tmp)
            return write

        target = self.out_dir / STORE_DIR
        target.mkdir(exist_ok=True)
        files = {target / f"{level}.npy": link(self.folder / f"{level}.npy") for level in self.levels}
        files[target / MANIFEST] = lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        return files

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_manifest(folder: str | Path) -> dict | None:
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _checked_store(folder: Path, fingerprint: dict, levels: tuple[str, ...], verify: bool) -> dict | str:
    """The memory-mapped matrices, or why they cannot be used ("" when another checkpoint's or split's)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"no readable {MANIFEST}"
    if manifest.get("fingerprint") != fingerprint:
        return ""
    shape = (int(fingerprint["n_images"]), int(fingerprint["n_captions"]))
    files = manifest.get("files")
    if not isinstance(files, dict) or tuple(manifest.get("shape", ())) != shape:
        return f"{MANIFEST} does not describe {shape[0]} x {shape[1]} matrices"
    missing = [level for level in levels if level not in files]
    if missing:
        return f"incomplete: no {', '.join(missing)}"
    matrices = {}
    for level in levels:
        path = folder / f"{level}.npy"
        try:
            size = path.stat().st_size
            offset, found_shape, dtype, fortran = _data_offset(path)
        except (OSError, ValueError) as error:
            return f"{level}.npy is unreadable ({type(error).__name__}: {error})"
        if size != files[level].get("bytes") or size != offset + 4 * shape[0] * shape[1]:
            return f"{level}.npy has {size:,} bytes, its manifest says {files[level].get('bytes')!r}"
        if tuple(found_shape) != shape or dtype != np.float32 or fortran:
            return f"{level}.npy is {dtype} {found_shape}, expected float32 {shape} in C order"
        if verify and file_digest(path) != files[level].get("sha256"):
            return f"{level}.npy does not match its checksum (changed or damaged since evaluate wrote it)"
        matrices[level] = np.load(path, mmap_mode="r")
    return matrices


def open_store(folder: str | Path, fingerprint: dict, levels: Sequence[str], verify: bool = False
               ) -> dict[str, np.ndarray] | None:
    """The store's matrices of ``levels``, memory-mapped read-only, when ``folder`` holds scores of exactly
    this fingerprint; else None (another run's: without a word; damaged: one SavedScoresIgnored line).
    ``verify``: also compare every file's SHA-256 with the manifest's (reads every byte)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None
    return usable_or_ignored(folder, _checked_store(folder, fingerprint, tuple(levels), verify))


def verify_store(folder: str | Path) -> list[str]:
    """The levels whose file does not match the manifest's checksum (every byte read)."""
    manifest = read_manifest(folder) or {}
    paths = {level: Path(folder) / entry["file"] for level, entry in manifest.get("files", {}).items()}
    return [level for level, path in paths.items()
            if not path.is_file() or file_digest(path) != manifest["files"][level]["sha256"]]


def find_store(checkpoint: str | Path, split, folders=None, levels: Sequence[str] = ()) -> tuple[dict | None,
                                                                                                  Path | None]:
    """A score store of one checkpoint on ``split``, looked for where find_saved_scores looks for scores.npz
    (``FOLDER/scores/``): its matrices memory-mapped and its folder, or (None, None)."""
    checkpoint = Path(checkpoint)
    folders = [checkpoint.parent, checkpoint.parent / f"eval-{split.name}", checkpoint.parent.parent] \
        if folders is None else [Path(f) for f in folders]
    candidates = [folder / STORE_DIR for folder in folders if (folder / STORE_DIR / MANIFEST).is_file()]
    if not candidates:
        return None, None
    fingerprint = scores_fingerprint([checkpoint], split)
    for candidate in candidates:
        finish_interrupted_writes(candidate.parent)  # an evaluation killed between its renames: all its files
        matrices = open_store(candidate, fingerprint, levels)
        if matrices is not None:
            return matrices, candidate
    return None, None


def read_rows(matrix: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a matrix; of a memory-mapped .npy, read from its file into a fresh array (mapping
    them would keep the pages in the process's resident memory)."""
    if not isinstance(matrix, np.memmap) or matrix.filename is None:
        return np.asarray(matrix[start:stop])
    n_columns = matrix.shape[1]
    return np.fromfile(matrix.filename, dtype=matrix.dtype, count=(stop - start) * n_columns,
                       offset=matrix.offset + start * n_columns * matrix.itemsize).reshape(stop - start, n_columns)


def read_column(matrix: np.ndarray, column: int) -> np.ndarray:
    """One column of a matrix; of a memory-mapped .npy, one read a row: touching it through the mapping would map
    the pages around every row, i.e. the whole file (about 5 ms for 5,000 rows)."""
    if not isinstance(matrix, np.memmap) or matrix.filename is None:
        return np.array(matrix[:, column])
    n_rows, n_columns = matrix.shape
    size = matrix.itemsize
    fd = os.open(matrix.filename, os.O_RDONLY)
    try:
        data = b"".join(os.pread(fd, size, matrix.offset + (row * n_columns + column) * size) for row in range(n_rows))
    finally:
        os.close(fd)
    return np.frombuffer(data, dtype=matrix.dtype).copy()


class StoredScores(dict):
    """Level -> memory-mapped matrix of a score store being written, with its writer."""

    writer: StoreWriter


def score_into_store(model, img, cap, out_dir: Path, fingerprint: dict, memory_budget_mb: float | None,
                     progress: bool) -> StoredScores:
    """Every level of every pair of ``model`` (MLASM.score_blocks over the image and caption encodings)
    written band by band into the partial store (resumed where a killed run of this evaluation left it);
    at most one band of rows per level in memory."""
    remove_stale_temporaries(out_dir / STORE_DIR)
    budget = default_memory_budget_mb(model.device) if memory_budget_mb is None else memory_budget_mb
    n_captions = len(cap.words)
    writer = StoreWriter(out_dir, fingerprint, (len(img.regions), n_captions), model.levels,
                         plan_gallery(img.regions, cap.lengths, budget)[1].rows, RECORD_EVERY_S)
    band, start = None, writer.done_rows
    for rows, columns, levels in model.score_blocks(img, cap, budget, progress, from_image=writer.done_rows):
        if band is not None and rows.start != start:
            writer.write_band(start, band)
            band = None
        if band is None:
            band, start = {level: np.empty((rows.stop - rows.start, n_captions), np.float32)
                           for level in model.levels}, rows.start
        for level in model.levels:
            band[level][:, columns.numpy()] = levels[level].to("cpu", img.regions.dtype).numpy()
    if band is not None:
        writer.write_band(start, band)
    stored = StoredScores(writer.matrices())
    stored.writer = writer
    return stored
