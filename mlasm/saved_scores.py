"""Score matrices saved with an evaluation, so that the workbench opens a run in seconds.

``mlasm evaluate`` (and so ``mlasm demo``) writes ``scores.npz`` beside metrics.json: every
level's (N, M) matrix in float32, and a fingerprint of what produced them (the checkpoint files'
SHA-256, the split's name, sizes and captions). A session opened on the same checkpoint and
split reads them instead of scoring every pair again; any difference in the fingerprint (a
retrained checkpoint, another split, an ensemble of other models) means they are not used.
Beside them, ``attention_records.npz`` holds every word's attention record (mlasm.attention_stats)
over the matching pairs, so the workbench's statistics tab opens without explaining every pair
again; its fingerprint adds what the split says of its regions and words (``reader_signature``).

The file is a cache, and a cache can be damaged (a truncated copy, a flipped bit, a file from
another tool under the same name): its arrays carry a SHA-256 checksum, and a file that cannot be
read, lacks a level, declares members larger than its matrices (checked in the zip directory before
anything is decompressed), holds NaN or infinite scores or does not match its checksum is ignored
with one SavedScoresIgnored warning naming the file and why; the scores are then computed again.

float32, not float16: half precision ties scores that differ in the fourth digit and changes
ranks (``rank_changes_in_half_precision`` on the demo model's final level, ShapeScenes test:
2.8 % of the caption queries and 0.2 % of the image queries changed rank).
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from mlasm.levels import BY_NAME, LEVELS

from mlasm.io import finish_interrupted_writes, npz_declared_sizes

SCORES_FILE = "scores.npz"
RECORDS_FILE = "attention_records.npz"  # every word's attention record (mlasm.attention_stats), same fingerprint
_FINGERPRINT_KEY = "fingerprint"
_CHECKSUM_KEY = "checksum"
_NPY_HEADER_BYTES = 4096  # an .npy header takes 128 bytes for a matrix; anything near this is not one
_SMALL_MEMBER_BYTES = 2**20  # the fingerprint and the checksum


class SavedScoresIgnored(UserWarning):
    """A saved scores.npz that could not be used (damaged, incomplete, non-finite); scored again."""


def arrays_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.shape}\0{array.dtype.str}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def file_digest(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scores_fingerprint(checkpoints: Iterable[str | Path], split) -> dict:
    """What the score matrices of ``checkpoints`` on ``split`` depend on."""
    return {"checkpoints": [file_digest(path) for path in checkpoints], **split.identity()}


def write_scores(path: str | Path, scores: Mapping[str, torch.Tensor | np.ndarray], fingerprint: dict) -> None:
    """Write the levels' matrices and their fingerprint to an open temporary (``write_together``)."""
    arrays = {level: np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float32)
              for level, value in scores.items()}
    with open(path, "wb") as f:
        np.savez(f, **{_FINGERPRINT_KEY: np.array(json.dumps(fingerprint, sort_keys=True)),
                       _CHECKSUM_KEY: np.array(arrays_checksum(arrays))}, **arrays)


def read_saved_scores(path: str | Path, fingerprint: dict, levels: Sequence[str] = LEVELS
                      ) -> dict[str, np.ndarray] | None:
    """The saved matrices of ``levels`` (default: MLASM's; a SCAN model has two) when ``path`` holds
    scores of exactly this fingerprint, else None.

    Scores of another checkpoint or split are passed over without a word (a folder may hold an
    older run's); a file that is damaged, incomplete or non-finite gets one SavedScoresIgnored
    warning naming it and why.
    """
    path = Path(path)
    if not path.is_file():
        return None
    return usable_or_ignored(path, _checked_scores(path, fingerprint, tuple(levels)))


def usable_or_ignored(path: Path, checked: dict[str, np.ndarray] | str) -> dict[str, np.ndarray] | None:
    """Checked matrices, or None when the check said why not: one SavedScoresIgnored line naming
    ``path`` and the reason, none for "" (another checkpoint's or split's scores)."""
    if not isinstance(checked, str):
        return checked
    if checked:
        warnings.warn(f"{path}: {checked}; ignored, the scores are computed again", SavedScoresIgnored,
                      stacklevel=4)
    return None


def _checked_scores(path: Path, fingerprint: dict, levels: tuple[str, ...]) -> dict[str, np.ndarray] | str:
    """The matrices, or why they cannot be used ("" when they are another checkpoint's or split's)."""
    shape = (int(fingerprint["n_images"]), int(fingerprint["n_captions"]))
    matrix_bytes = 4 * shape[0] * shape[1]
    try:  # the zip directory first: sizes as declared, before a byte is decompressed
        declared = npz_declared_sizes(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"not a readable .npz archive ({error})"
    missing = [name for name in (_FINGERPRINT_KEY, _CHECKSUM_KEY, *levels) if name not in declared]
    if missing:
        return f"incomplete: no {', '.join(missing)}" + (" (written by an earlier mlasm)" if missing ==
                                                          [_CHECKSUM_KEY] else "")
    for name, size in declared.items():
        limit = matrix_bytes + _NPY_HEADER_BYTES if name in LEVELS or name in levels else _SMALL_MEMBER_BYTES
        if size > limit:
            return (f"member {name}.npy declares {size:,} bytes uncompressed, more than the {limit:,} of "
                    f"a {shape[0]} x {shape[1]} float32 matrix; not decompressed")
    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved[_FINGERPRINT_KEY])) != fingerprint:
                return ""
            checksum = str(saved[_CHECKSUM_KEY])
            scores = {level: saved[level] for level in levels}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    for level, matrix in scores.items():
        if matrix.shape != shape or matrix.dtype != np.float32:
            return f"{level} is {matrix.dtype} {matrix.shape}, expected float32 {shape}"
    if arrays_checksum(scores) != checksum:
        return "its matrices do not match their checksum (changed or damaged since evaluate wrote them)"
    for level, matrix in scores.items():
        finite = np.isfinite(matrix)
        if not finite.all() and not (BY_NAME[level].semantic and np.isnan(matrix).all()):  # a local-only model's
            return f"{level} holds {int((~finite).sum()):,} NaN or infinite scores (the file, not the model)"
    return scores


def _read_fingerprinted(path: str | Path, fingerprint: dict) -> dict[str, np.ndarray] | None:
    """Every array of the .npz at ``path`` but its fingerprint, when that is exactly ``fingerprint``; else None
    (no file, another fingerprint, unreadable: the caller computes again rather than fails)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved[_FINGERPRINT_KEY])) != fingerprint:
                return None
            return {key: saved[key] for key in saved.files if key != _FINGERPRINT_KEY}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


def write_records(path: str | Path, records, fingerprint: dict) -> None:
    """Write an attention-records table (``mlasm.attention_stats.records_frame``), column by column, and
    its fingerprint, to an open temporary (``write_together``)."""
    columns = {f"column {name}": _plain_column(records[name]) for name in records.columns}
    with open(path, "wb") as f:
        np.savez_compressed(f, **{_FINGERPRINT_KEY: np.array(json.dumps(fingerprint, sort_keys=True))},
                            order=np.array(list(records.columns)), **columns)


def _plain_column(values) -> np.ndarray:
    """A table column as an array np.load reads without pickles: numbers and booleans as they are, text as
    unicode, booleans with gaps (``pointed``: NaN where a word names nothing) as 1.0 / 0.0 / NaN."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.to_numpy()
    if all(isinstance(value, str) for value in values):
        return np.array(values.tolist(), dtype=str)
    return values.to_numpy(dtype=float)


def read_saved_records(path: str | Path, fingerprint: dict):
    """The saved attention records (a DataFrame) when ``path`` holds those of exactly this fingerprint, else None."""
    import pandas as pd

    saved = _read_fingerprinted(path, fingerprint)
    if saved is None or "order" not in saved:
        return None
    names = [str(name) for name in saved["order"]]
    if any(f"column {name}" not in saved for name in names):
        return None
    columns = {name: saved[f"column {name}"] for name in names}
    return pd.DataFrame({name: column.astype(object) if column.dtype.kind == "U" else column
                         for name, column in columns.items()}, columns=names)


def find_saved_scores(checkpoint: str | Path, split, folders: Iterable[str | Path] | None = None,
                      levels: Sequence[str] = LEVELS) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """Saved scores of ``levels`` of one checkpoint on ``split``: in ``folders`` (default: the
    checkpoint's own folder, its ``eval-SPLIT`` folder and the one above it, where ``mlasm evaluate``
    (by default) and ``mlasm demo`` write them).

    Returns the matrices and the file they came from, or (None, None).
    """
    checkpoint = Path(checkpoint)
    folders = [checkpoint.parent, checkpoint.parent / f"eval-{split.name}", checkpoint.parent.parent] \
        if folders is None else [Path(f) for f in folders]
    for folder in folders:  # an evaluation killed between its renames: its files, all of them
        finish_interrupted_writes(folder)
    candidates = [folder / SCORES_FILE for folder in folders if (folder / SCORES_FILE).is_file()]
    if not candidates:
        return None, None
    fingerprint = scores_fingerprint([checkpoint], split)
    for candidate in candidates:
        scores = read_saved_scores(candidate, fingerprint, levels)
        if scores is not None:
            return scores, candidate
    return None, None


def rank_changes_in_half_precision(scores: np.ndarray, caption_to_image: np.ndarray) -> dict:
    """Share of queries whose rank of their own item changes when the scores are stored in float16."""
    from mlasm.metrics import i2t_ranks, t2i_ranks

    full = torch.from_numpy(np.asarray(scores, dtype=np.float32))
    half = full.half().float()
    return {direction: float(np.mean(ranks(full, caption_to_image) != ranks(half, caption_to_image)))
            for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks))}
