"""The evaluation's measures read from memory-mapped score matrices in chunks (mlasm.score_store).

The same numbers as mlasm.evaluate's level_metrics / level_ranks / score_separation on whole
matrices, without holding one: ranks, the top results and the separation go over rows
(images) or columns (captions) a chunk at a time (``CHUNK_ELEMENTS`` scores, 64 MB in float32),
the complete-positive ranks through mlasm.metrics' own blocks. Ranks are integers counted
exactly as mlasm.metrics counts them; the separation's float64 sums are added chunk by chunk.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from mlasm.levels import BY_NAME
from mlasm.score_store import read_rows
from mlasm.metrics import (NonFiniteScores, complete_positive_ranks, metrics_from_ranks,
                           summarize_complete_ranks)

CHUNK_ELEMENTS = 1 << 24


def row_chunks(n_rows: int, n_columns: int, elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    step = max(1, elements // max(n_columns, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def all_nan(matrix: np.ndarray) -> bool:
    """Whether every score is NaN (a local-only model's global level), read chunk by chunk."""
    return all(np.isnan(read_rows(matrix, a, b)).all() for a, b in row_chunks(*matrix.shape))


def check_finite_in_chunks(matrix: np.ndarray, what: str) -> None:
    """mlasm.metrics.check_finite, counted chunk by chunk."""
    bad = sum(int((~np.isfinite(read_rows(matrix, a, b))).sum()) for a, b in row_chunks(*matrix.shape))
    if bad:
        raise NonFiniteScores(f"{what}: {bad} of {matrix.size} scores are NaN or infinite; the model "
                              f"has diverged (lower the learning rate, or train without --amp)")


def ranks_in_chunks(matrix: np.ndarray, caption_to_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mlasm.metrics.i2t_ranks and t2i_ranks in one pass over row chunks."""
    caption_to_image = np.asarray(caption_to_image)
    n_images, n_captions = matrix.shape
    captions = np.arange(n_captions)
    own = np.asarray(matrix[caption_to_image, captions])                      # (M,) each caption's own pair
    i2t = np.empty(n_images, np.int64)
    t2i = np.zeros(n_captions, np.int64)
    for a, b in row_chunks(n_images, n_captions):
        chunk = read_rows(matrix, a, b)
        positive = caption_to_image[None, :] == np.arange(a, b)[:, None]
        best_positive = np.where(positive, chunk, -np.inf).max(axis=1)
        i2t[a:b] = ((chunk >= best_positive[:, None]) & ~positive).sum(axis=1)
        i2t[a:b][~positive.any(axis=1)] = -1
        beaten_by = chunk >= own[None, :]
        beaten_by[positive] = False
        t2i += beaten_by.sum(axis=0)
    return i2t, t2i


def top_in_chunks(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image its k best captions (N, k) and per caption its k best images (M, k), as level_ranks saves them."""
    n_images, n_captions = matrix.shape
    i2t = np.concatenate([torch.from_numpy(read_rows(matrix, a, b)).topk(k, dim=1).indices.numpy()
                          for a, b in row_chunks(n_images, n_captions)])
    t2i = np.concatenate([torch.from_numpy(np.array(matrix[:, a:b])).topk(k, dim=0).indices.T.numpy()
                          for a, b in row_chunks(n_captions, n_images)])
    return i2t, t2i


def separation_in_chunks(matrix: np.ndarray, positives) -> dict:
    """mlasm.evaluate.score_separation, summed chunk by chunk."""
    captions = np.repeat(np.arange(positives.n_captions), positives.sizes())
    true_sum = float(np.asarray(matrix[positives.indices, captions]).astype(np.float64).sum())
    total = sum(float(read_rows(matrix, a, b).sum(dtype=np.float64)) for a, b in row_chunks(*matrix.shape))
    n_true = positives.indices.size
    positive, negative = true_sum / n_true, (total - true_sum) / max(matrix.size - n_true, 1)
    return {"positive": positive, "negative": negative, "gap": positive - negative}


def measure_store(scores: dict[str, np.ndarray], caption_to_image: np.ndarray, positives=None,
                  top_k: int = 5) -> tuple[dict, dict[str, np.ndarray]]:
    """level_metrics (full protocol) and level_ranks of (memory-mapped) matrices: (metrics, ranks.npz arrays)."""
    levels, arrays = {}, {}
    for level, matrix in scores.items():
        if BY_NAME[level].semantic and all_nan(matrix):  # a local-only model has no global level
            continue
        check_finite_in_chunks(matrix, f"level {level!r}")
        i2t, t2i = ranks_in_chunks(matrix, caption_to_image)
        levels[level] = metrics_from_ranks(i2t, t2i)
        k = min(top_k, *matrix.shape)
        arrays[f"{level}_i2t_rank"], arrays[f"{level}_t2i_rank"] = i2t, t2i
        arrays[f"{level}_i2t_top"], arrays[f"{level}_t2i_top"] = top_in_chunks(matrix, k)
        if positives is not None:
            complete = complete_positive_ranks(matrix, positives)
            levels[level]["complete"] = summarize_complete_ranks(complete)
            for direction in ("i2t", "t2i"):
                arrays[f"{level}_{direction}_first_valid_rank"] = complete[f"{direction}_first_rank"]
                if level == "final":
                    for key in ("r_precision", "map_at_r", "n_positives"):
                        arrays[f"{direction}_{key}"] = complete[f"{direction}_{key}"]
    return {"protocol": "full", **levels["final"], "levels": levels}, arrays
