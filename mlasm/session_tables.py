"""The session's query table over memory-mapped score matrices (a score store), in row chunks.

The same columns and values as WorkbenchSession's table over whole matrices (its docstring says
what each means), from one pass over the final level's rows: no (N, M) matrix is made besides
the store's; a chunk's true and own pairs stay sparse (a few per row), so only two dense passes
(the best other item per row and per column) go over each chunk; the best image of each caption
is kept as the chunks go (the first of equal scores, as argmax takes it).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from mlasm.evaluate import TOP_K_SAVED
from mlasm.io import npz_declared_sizes
from mlasm.score_store import read_column, read_rows
from mlasm.store_measures import row_chunks


def saved_ranks(path: Path, levels, complete: bool, final: np.ndarray, caption_to_image: np.ndarray,
                samples: int = 8) -> dict | None:
    """ranks.npz as evaluate wrote it beside a score store, when it has every level's ranks and the final
    t2i ranks of a few captions, counted again from the store's columns, agree; else None (computed again).
    Without complete positives, the first valid rank is the rank (what the session's strict sets give)."""
    limit = 8 * (TOP_K_SAVED + 1) * max(final.shape) + 1024  # a query's rank and top items as int64, and a header
    try:  # the sizes its zip directory declares, before anything is decompressed (a small file may declare GBs)
        if any(size > limit for size in npz_declared_sizes(path).values()):
            return None
        with np.load(path, allow_pickle=False) as saved:
            ranks = {key: saved[key] for key in saved.files if key != "caption_to_image"}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    present = [level for level in levels if f"{level}_t2i_rank" in ranks]
    if "final" not in present or any(f"{level}_i2t_rank" not in ranks for level in present):
        return None
    if not complete:
        ranks.update({f"{level}_{d}_first_valid_rank": ranks[f"{level}_{d}_rank"] for level in present
                      for d in ("i2t", "t2i")})
    elif any(f"{level}_{d}_first_valid_rank" not in ranks for level in present for d in ("i2t", "t2i")):
        return None
    for caption in np.linspace(0, final.shape[1] - 1, min(samples, final.shape[1])).astype(int):
        column = read_column(final, caption)
        own = caption_to_image[caption]
        if int((column >= column[own]).sum()) - 1 != ranks["final_t2i_rank"][caption]:
            return None  # ranks of other scores (a later evaluation of another checkpoint)
    return ranks


def direction_table(split, ranks: dict, others: list[str], direction: str, queries: np.ndarray, n_valid, preferred,
                    preferred_valid, alternative, image, caption) -> pd.DataFrame:
    """One direction's rows of the query table (WorkbenchSession.query_table says what each column means):
    caption queries for t2i, ``queries`` = every caption; image queries for i2t, ``queries`` = the images
    with captions. ``preferred`` is an image for t2i, a caption for i2t."""
    rows = slice(None) if direction == "t2i" else queries  # ranks.npz holds a rank for every caption, every image
    image_ids = [split.image_ids[i] for i in (preferred if direction == "t2i" else queries)]
    return pd.DataFrame({
        "direction": direction, "query": queries,
        "query_text": split.captions if direction == "t2i" else image_ids,
        "rank": ranks[f"final_{direction}_rank"][rows],
        **{f"rank_{level}": ranks[f"{level}_{direction}_rank"][rows] for level in others},
        "valid_rank": ranks[f"final_{direction}_first_valid_rank"][rows],
        **{f"valid_rank_{level}": ranks[f"{level}_{direction}_first_valid_rank"][rows] for level in others},
        "n_valid": n_valid, "preferred": preferred, "preferred_valid": preferred_valid,
        "preferred_text": image_ids if direction == "t2i" else [split.captions[c] for c in preferred],
        "alternative": alternative, "image": image, "caption": caption})


def query_table_in_chunks(session) -> pd.DataFrame:
    split, final, ranks, positives = session.split, session.scores["final"], session.ranks, session.positives
    n_images, n_captions = final.shape
    caption_to_image = split.caption_to_image
    by_image = positives.transpose()  # per image: the captions true of it
    others = [level for level in session.levels if level != "final"]
    captions = np.arange(n_captions)
    # t2i, kept across chunks: best image other than the own (and whether it is true), best other true image
    preferred_score = np.full(n_captions, -np.inf)
    preferred_image = np.zeros(n_captions, np.int64)
    preferred_true = np.zeros(n_captions, bool)
    alternative_score = np.full(n_captions, -np.inf)
    alternative_image = np.zeros(n_captions, np.int64)
    has_alternative = np.zeros(n_captions, bool)
    n_valid_t2i = np.zeros(n_captions, np.int64)
    i2t = {name: np.empty(n_images, dtype) for name, dtype in (("best_truth", np.int64), ("preferred", np.int64),
           ("alternative", np.int64), ("n_valid", np.int64), ("preferred_valid", bool), ("has", bool))}
    for a, b in row_chunks(n_images, n_captions):
        chunk = read_rows(final, a, b)                                   # (b - a, M), changed below:
        chunk = chunk.copy() if np.may_share_memory(chunk, final) else chunk  # never the scores themselves
        # the chunk's true pairs and its own pairs, as (row, caption) lists: few per row
        starts, stops = by_image.indptr[a:b], by_image.indptr[a + 1:b + 1]
        true_rows = np.repeat(np.arange(b - a), stops - starts)
        true_columns = by_image.indices[starts[0]:stops[-1]]
        true_keys = true_rows * n_captions + true_columns
        also = caption_to_image[true_columns] != a + true_rows             # true, not own
        also_rows, also_columns = true_rows[also], true_columns[also]
        also_values = chunk[also_rows, also_columns]
        own_columns = np.flatnonzero((caption_to_image >= a) & (caption_to_image < b))
        own_rows = caption_to_image[own_columns] - a
        own_values = chunk[own_rows, own_columns]
        # image queries: within the chunk
        has = np.bincount(own_rows, minlength=b - a) > 0
        i2t["has"][a:b] = has
        i2t["best_truth"][a:b] = _first_best(own_rows, own_columns, own_values, b - a, 0)
        chunk[own_rows, own_columns] = -np.inf                            # now: every score but the own pairs'
        i2t["preferred"][a:b] = chunk.argmax(axis=1)
        i2t["alternative"][a:b] = _first_best(also_rows, also_columns, also_values, b - a, -1)
        i2t["n_valid"][a:b] = stops - starts
        i2t["preferred_valid"][a:b] = np.isin(np.arange(b - a) * n_captions + i2t["preferred"][a:b], true_keys)
        # caption queries: the chunk's best, kept where strictly better than the earlier chunks' (first wins)
        best = chunk.argmax(axis=0)
        value = chunk[best, captions]
        better = value > preferred_score
        if a == 0:  # an all -inf column (no other image) takes image 0, as argmax does
            better[:] = True
        preferred_score = np.where(better, value, preferred_score)
        preferred_image = np.where(better, a + best, preferred_image)
        preferred_true = np.where(better, np.isin(best * n_captions + captions, true_keys), preferred_true)
        chunk_has = np.zeros(n_captions, bool)
        chunk_has[also_columns] = True
        best = _first_best(also_columns, also_rows, also_values, n_captions, 0)
        value = np.full(n_captions, -np.inf)
        np.maximum.at(value, also_columns, also_values)
        better = chunk_has & (~has_alternative | (value > alternative_score))
        alternative_score = np.where(better, value, alternative_score)
        alternative_image = np.where(better, a + best, alternative_image)
        has_alternative |= chunk_has
        n_valid_t2i += np.bincount(true_columns, minlength=n_captions)
    t2i = direction_table(split, ranks, others, "t2i", captions, n_valid_t2i, preferred_image, preferred_true,
                          np.where(has_alternative, alternative_image, -1), caption_to_image, captions)
    images = np.flatnonzero(i2t["has"])
    image_table = direction_table(split, ranks, others, "i2t", images, *(i2t[name][images] for name in (
        "n_valid", "preferred", "preferred_valid", "alternative")), images, i2t["best_truth"][images])
    return pd.concat([t2i, image_table], ignore_index=True)


def _first_best(groups: np.ndarray, items: np.ndarray, values: np.ndarray, n_groups: int, none: int) -> np.ndarray:
    """Per group, the item of its largest value, the smallest item among equal values (as argmax over
    a dense row takes the first): (groups, items, values) are a sparse matrix's entries; ``none`` where
    a group has no entry."""
    found = np.full(n_groups, none, np.int64)
    order = np.lexsort((items, -values, groups))                       # by group, best value, smallest item
    first = order[np.r_[True, groups[order][1:] != groups[order][:-1]]] if order.size else order
    found[groups[first]] = items[first]
    return found
