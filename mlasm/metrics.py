"""The retrieval protocol used by the whole field (spec section 7), on any score matrix.

Ranks are 0-based. Ties count against the query: a negative scored equal to the best
positive is ranked above it, so a constant score matrix earns chance-level recall, not 100 %.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mlasm.levels import BY_NAME

RECALL_KS = (1, 5, 10)


def _as_numpy(scores) -> np.ndarray:
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    return np.asarray(scores)


def scored_levels(level_scores: Mapping) -> dict:
    """The levels of ``level_scores`` the model scores: a local-only model's global level is NaN everywhere."""
    return {level: scores for level, scores in level_scores.items()
            if not (BY_NAME[level].semantic and np.isnan(_as_numpy(scores)).all())}


class NonFiniteScores(ValueError):
    """Scores that are NaN or infinite: a model that diverged. They rank nothing, so they are an error."""


def check_finite(scores, what: str = "scores") -> None:
    """Raise NonFiniteScores naming ``what`` and how many scores are bad (a NaN would otherwise rank first)."""
    bad = ~np.isfinite(_as_numpy(scores))
    if bad.any():
        raise NonFiniteScores(f"{what}: {int(bad.sum())} of {bad.size} scores are NaN or infinite; the model "
                              f"has diverged (lower the learning rate, or train without --amp)")


def i2t_ranks(scores, caption_to_image) -> np.ndarray:
    """Per image, the rank of its best-ranked caption among all captions; -1 for an image without captions."""
    scores = _as_numpy(scores)
    caption_to_image = np.asarray(caption_to_image)
    positive = caption_to_image[None, :] == np.arange(scores.shape[0])[:, None]  # (N, M) own pairs
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
    check_finite(scores)
    return metrics_from_ranks(i2t_ranks(scores, caption_to_image), t2i_ranks(scores, caption_to_image))


def metrics_from_ranks(i2t_rank: np.ndarray, t2i_rank: np.ndarray) -> dict:
    """``retrieval_metrics`` from the ranks of both directions (computed elsewhere, e.g. in chunks)."""
    i2t, t2i = recall_summary(i2t_rank), recall_summary(t2i_rank)
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
    return average_metrics([retrieval_metrics(scores[np.ix_(images, captions)], caption_to_image[captions] - images[0])
                            for images, captions in fold_indices(scores.shape[0], caption_to_image, n_folds)])


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


# --- complete positive sets (ECCV Caption, CxC, ShapeScenes) ------------------------------
#
# With several positives per query, recall alone says little; R-Precision and mAP@R
# (Musgrave et al. 2020, "A Metric Learning Reality Check", as ECCV Caption uses them) read the
# whole top R, R = the number of positives of the query. Ties still count against the query:
# among equal scores, every negative is ranked before every positive.
#
# Nothing here sorts (score, relevance) pairs. Per block of queries the scores are sorted on
# their own (a fast value sort), and the position of each positive is counted: the k-th best
# positive of a query (positives in descending score) stands at 1-based position
#     pos_k = k + #(negatives scored >= its score)
#           = k + #(items scored >= its score) - #(positives scored >= its score),
# the first count found by a vectorised binary search in the sorted row. Then, with R positives,
#     first rank (0-based) = pos_1 - 1,
#     R-Precision = #{k : pos_k <= R} / R,
#     mAP@R = (1/R) * sum over k with pos_k <= R of k / pos_k   (P@pos_k = k / pos_k).

_BLOCK_ELEMENTS = 1 << 24  # scores sorted at once: 16 M values (64 MiB in float32)


def _count_below(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each (row, value): how many entries of ascending ``sorted_rows[row]`` are < value (batched searchsorted)."""
    width = sorted_rows.shape[1]
    flat = sorted_rows.reshape(-1)
    base = rows.astype(np.int64) * width
    lo = np.zeros(values.size, np.int64)
    hi = np.full(values.size, width, np.int64)
    for _ in range(int(width).bit_length()):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        below = active & (flat[base + np.minimum(mid, width - 1)] < values)
        lo = np.where(below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    return lo


def _direction_ranks(n_queries: int, n_items: int, query_block, indptr: np.ndarray,
                     indices: np.ndarray) -> dict[str, np.ndarray]:
    """First rank, R-Precision and mAP@R per query; ``query_block(q0, q1)`` gives (q1 - q0, n_items) scores."""
    first_rank = np.full(n_queries, -1, np.int64)
    r_precision = np.full(n_queries, np.nan)
    map_at_r = np.full(n_queries, np.nan)
    n_positives = np.diff(indptr)
    block = max(1, _BLOCK_ELEMENTS // max(n_items, 1))
    for q0 in range(0, n_queries, block):
        q1 = min(n_queries, q0 + block)
        start, stop = indptr[q0], indptr[q1]
        if start == stop:
            continue
        scores = np.asarray(query_block(q0, q1))
        check_finite(scores, "complete_positive_ranks")
        counts = n_positives[q0:q1]
        query = np.repeat(np.arange(q1 - q0), counts)  # local query of each positive
        value = scores[query, indices[start:stop]]
        order = np.lexsort((-value, query))  # per query, positives by descending score
        query, value = query[order], value[order]
        seg_start = (indptr[q0:q1] - start)[query]
        k = np.arange(query.size) - seg_start + 1  # 1-based rank among the query's positives
        # positives scored >= value: the end of the run of equal values k belongs to
        run_start = np.ones(query.size, bool)
        run_start[1:] = (query[1:] != query[:-1]) | (value[1:] != value[:-1])
        starts = np.flatnonzero(run_start)
        ends = np.append(starts[1:], query.size) - 1
        positives_ge = ends[np.cumsum(run_start) - 1] - seg_start + 1
        items_ge = n_items - _count_below(np.sort(scores, axis=1), query, value)
        position = k + items_ge - positives_ge  # 1-based, ties against the query
        r = counts[query]
        hit = position <= r
        has = counts > 0
        local = np.flatnonzero(has)
        first_rank[q0 + local] = position[k == 1] - 1
        hits = np.bincount(query, weights=hit, minlength=q1 - q0)
        precision_sum = np.bincount(query, weights=np.where(hit, k / position, 0.0), minlength=q1 - q0)
        r_precision[q0 + local] = hits[has] / counts[has]
        map_at_r[q0 + local] = precision_sum[has] / counts[has]
    return {"first_rank": first_rank, "r_precision": r_precision, "map_at_r": map_at_r,
            "n_positives": n_positives.astype(np.int64)}


def complete_positive_ranks(scores, positives, i2t_positives=None) -> dict[str, np.ndarray]:
    """Per query, both directions: rank of the first positive, R-Precision and mAP@R over complete positives.

    ``scores`` is (N images, M captions), higher = better; ``positives`` a ``PositiveSets`` over the
    same M captions and N images. Text-to-image queries are captions, their positives
    ``positives.images_of(c)``; image-to-text queries are images, their positives the captions
    true of them, ``positives.transpose().images_of(i)``, unless ``i2t_positives`` is given: a
    PositiveSets read the other way (one row per image, listing caption indices; what
    ``transpose()`` returns), for annotations whose two directions were collected separately, as
    ECCV Caption's were.

    Returns ``t2i_first_rank`` (M,) and ``i2t_first_rank`` (N,), 0-based, -1 for a query without
    positives; ``t2i_r_precision``, ``t2i_map_at_r``, ``i2t_r_precision``, ``i2t_map_at_r``
    (float, NaN for a query without positives); ``t2i_n_positives`` (M,), ``i2t_n_positives`` (N,).
    Ties count against the query: among equal scores, negatives are ranked before positives.
    """
    scores = _as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"complete_positive_ranks: scores must be (images, captions), got shape {scores.shape}")
    if scores.dtype.kind not in "fi":  # bool and unsigned (whose negation wraps) become float
        scores = scores.astype(np.float64)
    n_images, n_captions = scores.shape
    if positives.n_captions != n_captions or positives.n_images != n_images:
        raise ValueError(f"complete_positive_ranks: positives cover {positives.n_images} images x "
                         f"{positives.n_captions} captions, scores are {n_images} x {n_captions}")
    by_image = positives.transpose() if i2t_positives is None else i2t_positives
    if by_image.n_captions != n_images or by_image.n_images != n_captions:
        raise ValueError(f"complete_positive_ranks: i2t_positives must have one row per image ({n_images}) over "
                         f"{n_captions} captions, got {by_image.n_captions} rows over {by_image.n_images}")
    return complete_positive_ranks_by_blocks(lambda a, b: np.ascontiguousarray(scores[:, a:b].T),
                                             lambda a, b: scores[a:b], positives, by_image)


def complete_positive_ranks_by_blocks(t2i_block, i2t_block, positives, by_image) -> dict[str, np.ndarray]:
    """``complete_positive_ranks`` for rankings that exist only a block of queries at a time (a
    two-stage search's): ``t2i_block(c0, c1)`` gives captions c0..c1's scores of every image
    (c1 - c0, N), ``i2t_block(i0, i1)`` images i0..i1's of every caption (i1 - i0, M);
    ``by_image`` is ``positives.transpose()`` or the i2t annotations."""
    t2i = _direction_ranks(positives.n_captions, positives.n_images, t2i_block, positives.indptr, positives.indices)
    i2t = _direction_ranks(by_image.n_captions, by_image.n_images, i2t_block, by_image.indptr, by_image.indices)
    return {f"{direction}_{key}": value for direction, values in (("t2i", t2i), ("i2t", i2t))
            for key, value in values.items()}


def complete_positive_metrics(scores, positives, i2t_positives=None) -> dict:
    """R@1/5/10, R-Precision and mAP@R in percent, both directions, over queries with positives; rSum of the six recalls.

    R@K is the share of queries whose first positive is in the top K. With
    ``PositiveSets.strict(caption_to_image, n_images)`` the recalls equal ``retrieval_metrics``'s.
    ``i2t_positives``: see ``complete_positive_ranks``.
    """
    return summarize_complete_ranks(complete_positive_ranks(scores, positives, i2t_positives))


def summarize_complete_ranks(ranks: dict[str, np.ndarray]) -> dict:
    """``complete_positive_metrics`` from ranks already computed by ``complete_positive_ranks``."""
    result: dict = {}
    for direction in ("i2t", "t2i"):
        first = ranks[f"{direction}_first_rank"]
        ranked = first >= 0
        if not ranked.any():
            raise ValueError(f"complete_positive_metrics: no {direction} query has a positive")
        summary = {f"r{k}": float(100.0 * np.mean(first[ranked] < k)) for k in RECALL_KS}
        summary["r_precision"] = float(100.0 * np.mean(ranks[f"{direction}_r_precision"][ranked]))
        summary["map_at_r"] = float(100.0 * np.mean(ranks[f"{direction}_map_at_r"][ranked]))
        result[direction] = summary
    result["rsum"] = float(sum(result[d][f"r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS))
    return result
