"""Score matrices saved with an evaluation, so that the workbench opens a run in seconds.

``mlasm evaluate`` (and so ``mlasm demo``) writes ``scores.npz`` beside metrics.json: every
level's (N, M) matrix in float32, and a fingerprint of what produced them (the checkpoint files'
SHA-256, the split's name, sizes and captions). A session opened on the same checkpoint and
split reads them instead of scoring every pair again; any difference in the fingerprint (a
retrained checkpoint, another split, an ensemble of other models) means they are not used.
Beside them, ``attention_records.npz`` holds every word's attention record (mlasm.attention_stats)
over the matching pairs, so the workbench's statistics tab opens without explaining every pair
again; its fingerprint adds what the split says of its regions and words (``reader_signature``).

float32, not float16: half precision ties scores that differ in the fourth digit and changes
ranks (``rank_changes_in_half_precision`` on the demo model's final level, ShapeScenes test:
2.8 % of the caption queries and 0.2 % of the image queries changed rank).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

SCORES_FILE = "scores.npz"
RECORDS_FILE = "attention_records.npz"  # every word's attention record (mlasm.attention_stats), same fingerprint
_FINGERPRINT_KEY = "fingerprint"


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
        np.savez(f, **{_FINGERPRINT_KEY: np.array(json.dumps(fingerprint, sort_keys=True))}, **arrays)


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


def read_saved_scores(path: str | Path, fingerprint: dict) -> dict[str, np.ndarray] | None:
    """The saved matrices when ``path`` holds scores of exactly this fingerprint, else None."""
    scores = _read_fingerprinted(path, fingerprint)
    shape = (fingerprint["n_images"], fingerprint["n_captions"])
    if not scores or any(matrix.shape != shape for matrix in scores.values()):
        return None
    return scores


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


def find_saved_scores(checkpoint: str | Path, split, folders: Iterable[str | Path] | None = None
                      ) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """Saved scores of one checkpoint on ``split``: in ``folders`` (default: the checkpoint's own
    folder and the one above it, where ``mlasm evaluate`` and ``mlasm demo`` write them).

    Returns the matrices and the file they came from, or (None, None).
    """
    checkpoint = Path(checkpoint)
    folders = [checkpoint.parent, checkpoint.parent.parent] if folders is None else [Path(f) for f in folders]
    candidates = [folder / SCORES_FILE for folder in folders if (folder / SCORES_FILE).is_file()]
    if not candidates:
        return None, None
    fingerprint = scores_fingerprint([checkpoint], split)
    for candidate in candidates:
        scores = read_saved_scores(candidate, fingerprint)
        if scores is not None:
            return scores, candidate
    return None, None


def rank_changes_in_half_precision(scores: np.ndarray, caption_to_image: np.ndarray) -> dict:
    """Share of queries whose rank of their own item changes when the scores are stored in float16."""
    from mlasm.metrics import i2t_ranks, t2i_ranks

    full = torch.from_numpy(np.asarray(scores, dtype=np.float32))
    half = full.half().float()
    changed = {}
    for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        before, after = ranks(full, caption_to_image), ranks(half, caption_to_image)
        changed[direction] = float(np.mean(before != after))
    return changed
