"""The retrieval protocol used by the whole field (spec section 7), on any score matrix.

Ranks are 0-based. Ties count against the query: a negative scored equal to the best
positive is ranked above it, so a constant score matrix earns chance-level recall, not 100 %.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RECALL_KS = (1, 5, 10)


def _as_numpy(scores) -> np.ndarray:
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    return np.asarray(scores)


def _positive_mask(n_images: int, caption_to_image: np.ndarray) -> np.ndarray:
    return caption_to_image[None, :] == np.arange(n_images)[:, None]  # (N, M)


def i2t_ranks(scores, caption_to_image) -> np.ndarray:
    """Per image, the rank of its best-ranked caption among all captions; -1 for an image without captions."""
    scores = _as_numpy(scores)
    caption_to_image = np.asarray(caption_to_image)
    positive = _positive_mask(scores.shape[0], caption_to_image)
    best_positive = np.where(positive, scores, -np.inf).max(axis=1)  # (N,)
    ranks = ((scores >= best_positive[:, None]) & ~positive).sum(axis=1)
    ranks[~positive.any(axis=1)] = -1
    return ranks


def t2i_ranks(scores, caption_to_image) -> np.ndarray:
    """Per caption, the rank of its image among all images."""
    scores = _as_numpy(scores)
    caption_to_image = np.asarray(caption_to_image)
    n_images, n_captions = scores.shape
    own = scores[caption_to_image, np.arange(n_captions)]  # (M,)
    beaten_by = scores >= own[None, :]  # (N, M)
    beaten_by[caption_to_image, np.arange(n_captions)] = False
    return beaten_by.sum(axis=0)


def recall_summary(ranks: np.ndarray) -> dict:
    """R@1/5/10 in percent, median and mean rank (1-based, as published)."""
    ranks = np.asarray(ranks)
    ranks = ranks[ranks >= 0]
    if ranks.size == 0:
        raise ValueError("recall_summary needs at least one ranked query")
    summary = {f"r{k}": float(100.0 * np.mean(ranks < k)) for k in RECALL_KS}
    summary["medr"] = float(np.floor(np.median(ranks)) + 1)
    summary["meanr"] = float(ranks.mean() + 1)
    return summary


def retrieval_metrics(scores, caption_to_image) -> dict:
    """Both directions and rSum (the sum of the six recalls, not 6 x one of them: defect 4)."""
    i2t = recall_summary(i2t_ranks(scores, caption_to_image))
    t2i = recall_summary(t2i_ranks(scores, caption_to_image))
    rsum = sum(i2t[f"r{k}"] + t2i[f"r{k}"] for k in RECALL_KS)
    return {"rsum": float(rsum), "i2t": i2t, "t2i": t2i}


def fold_indices(n_images: int, caption_to_image, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive image folds (COCO 1K: five folds of 1,000) with the captions of each fold."""
    if n_images % n_folds:
        raise ValueError(f"{n_images} images cannot be cut into {n_folds} equal folds")
    caption_to_image = np.asarray(caption_to_image)
    size = n_images // n_folds
    folds = []
    for fold in range(n_folds):
        images = np.arange(fold * size, (fold + 1) * size)
        captions = np.flatnonzero((caption_to_image >= images[0]) & (caption_to_image <= images[-1]))
        folds.append((images, captions))
    return folds


def average_metrics(results: Sequence[dict]) -> dict:
    """Average of nested metric dicts with the same keys (the COCO 5-fold 1K summary)."""
    first = results[0]
    if isinstance(first, dict):
        return {key: average_metrics([r[key] for r in results]) for key in first}
    return float(np.mean(results))


def folded_retrieval_metrics(scores, caption_to_image, n_folds: int = 5) -> dict:
    """COCO 1K: the protocol on each fold of images with its own captions, averaged over folds."""
    scores = _as_numpy(scores)
    caption_to_image = np.asarray(caption_to_image)
    per_fold = []
    for images, captions in fold_indices(scores.shape[0], caption_to_image, n_folds):
        fold_scores = scores[np.ix_(images, captions)]
        per_fold.append(retrieval_metrics(fold_scores, caption_to_image[captions] - images[0]))
    return average_metrics(per_fold)


def pointing_accuracy(attention_argmax: Sequence[Sequence[int]], grounding: Sequence,
                      n_regions: Sequence[int] | None = None) -> dict:
    """Pointing game: share of grounded words whose most-attended region is a box of their object.

    ``attention_argmax[c][l]`` is the region that word l of caption c attends to most;
    ``grounding[c]`` lists ``(token position, [region indices])`` for the words that name an object.
    With ``n_regions[c]`` (real regions of caption c's image) the result also holds the
    accuracy of pointing at a random region, the level to read the accuracy against.
    """
    hits = total = 0
    chance = 0.0
    for c, (top_regions, caption_grounding) in enumerate(zip(attention_argmax, grounding)):
        for position, regions in caption_grounding or ():
            if position >= len(top_regions) or not len(regions):
                continue
            total += 1
            hits += int(top_regions[position] in set(int(r) for r in regions))
            if n_regions is not None:
                chance += len(set(int(r) for r in regions)) / n_regions[c]
    result = {"accuracy": float(100.0 * hits / total) if total else float("nan"), "words": total, "hits": hits}
    if n_regions is not None:
        result["chance"] = float(100.0 * chance / total) if total else float("nan")
    return result
