"""Comparing two models query by query: which queries did model B fix, and which did it break?

Both models rank the same split; each query's rank (0-based, as in ranks.npz: R@k counts rank < k)
is read under two protocols:

- ``strict``: the query's own item counts (the standard protocol's rank);
- ``complete``: any item the query is true of counts (the rank of the first valid item, from the
  split's complete positives; equal to the strict rank where the split knows one image per caption).

At k, a query is *fixed by B* when A ranks it k or worse and B within the top k, *broken by B*
in the opposite case; the rest are right or wrong under both. Queries can be narrowed to captions of
a kind (``mlasm.attention_stats.CAPTION_KINDS``: counts, relations, extremes, colours...) or that
contain given words.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mlasm.attention_stats import caption_kinds
from mlasm.data.vocab import tokenize

FIXED, BROKEN, BOTH_RIGHT, BOTH_WRONG = "fixed", "broken", "both right", "both wrong"
CHANGES = (FIXED, BROKEN, BOTH_RIGHT, BOTH_WRONG)
PROTOCOLS = {"strict": "the query's own item counts (standard protocol)",
             "complete": "any item the query is true of counts (complete positives)"}
_RANK_COLUMN = {"strict": "rank", "complete": "valid_rank"}


def rank_changes(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int) -> np.ndarray:
    """Per query: "fixed" (A rank >= k, B rank < k), "broken" (the reverse), "both right" or "both wrong"."""
    ranks_a, ranks_b = np.asarray(ranks_a), np.asarray(ranks_b)
    if ranks_a.shape != ranks_b.shape:
        raise ValueError(f"the two models ranked different queries: {ranks_a.shape} vs {ranks_b.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    right_a, right_b = ranks_a < k, ranks_b < k
    return np.select([~right_a & right_b, right_a & ~right_b, right_a & right_b], [FIXED, BROKEN, BOTH_RIGHT],
                     BOTH_WRONG)


def fixed_and_broken(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the queries B fixed and of those it broke at k, each ordered by how far the rank moved."""
    changes = rank_changes(ranks_a, ranks_b, k)
    gain = np.asarray(ranks_a) - np.asarray(ranks_b)
    fixed, broken = np.flatnonzero(changes == FIXED), np.flatnonzero(changes == BROKEN)
    return (fixed[np.argsort(-gain[fixed], kind="stable")], broken[np.argsort(gain[broken], kind="stable")])


def caption_tags(captions: Sequence[str]) -> list[frozenset[str]]:
    """What each caption speaks of (``caption_kinds`` of its tokens)."""
    return [caption_kinds(tokenize(text)) for text in captions]


def comparison_table(table_a: pd.DataFrame, table_b: pd.DataFrame, captions: Sequence[str],
                     caption_to_image: np.ndarray, k: int = 1) -> pd.DataFrame:
    """Every query (both directions) with its ranks under A and B, both protocols, and what changed at k.

    ``table_a`` / ``table_b``: the models' ``WorkbenchSession.query_table()`` (columns direction,
    query, query_text, rank, valid_rank, image, caption). Columns: ``direction``, ``query``,
    ``query_text``, ``image`` and ``caption`` (the pair to open; for an image query its caption
    best ranked by A), ``rank_a``, ``rank_b``, ``valid_rank_a``, ``valid_rank_b``, ``strict`` and
    ``complete`` (rank_changes at k under each protocol), ``kinds`` (what the caption speaks of; for
    an image query, any of its own captions) and ``text`` (the captions the word filter reads).
    """
    keys = ["direction", "query"]
    a = table_a[keys + ["query_text", "image", "caption", "rank", "valid_rank"]]
    b = table_b[keys + ["rank", "valid_rank"]]
    merged = a.merge(b, on=keys, how="inner", suffixes=("_a", "_b"), validate="one_to_one")
    if len(merged) != len(table_a) or len(merged) != len(table_b):
        raise ValueError("the two models were not evaluated on the same queries (same split?)")
    tags = caption_tags(captions)
    own_captions: dict[int, list[int]] = {}
    for caption, image in enumerate(np.asarray(caption_to_image)):
        own_captions.setdefault(int(image), []).append(caption)
    kinds, texts = [], []
    for direction, query in zip(merged["direction"], merged["query"]):
        members = [int(query)] if direction == "t2i" else own_captions.get(int(query), [])
        kinds.append(frozenset().union(*(tags[c] for c in members)))
        texts.append(" | ".join(captions[c] for c in members))
    merged["kinds"], merged["text"] = kinds, texts
    return with_changes(merged, k)


def with_changes(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The comparison table with its ``strict`` and ``complete`` columns set for this k."""
    table = table.copy()
    for protocol, column in _RANK_COLUMN.items():
        table[protocol] = rank_changes(table[f"{column}_a"].to_numpy(), table[f"{column}_b"].to_numpy(), k)
    return table


def filter_queries(table: pd.DataFrame, direction: str | None = None, kind: str | None = None,
                   words: Iterable[str] | str = ()) -> pd.DataFrame:
    """The rows of one direction ("t2i", "i2t"), whose captions speak of ``kind`` and contain every word."""
    keep = np.ones(len(table), bool)
    if direction not in (None, "both"):
        keep &= table["direction"].to_numpy() == direction
    if kind:
        keep &= np.array([kind in kinds for kinds in table["kinds"]], bool)
    words = tokenize(words) if isinstance(words, str) else [w.lower() for w in words]
    if words:
        keep &= np.array([all(w in set(tokenize(text)) for w in words) for text in table["text"]], bool)
    return table[keep]


def changed(table: pd.DataFrame, change: str, protocol: str = "strict") -> pd.DataFrame:
    """The rows with this change (``FIXED`` / ``BROKEN`` ...) under a protocol, the largest moves first."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    column = _RANK_COLUMN[protocol]
    rows = table[table[protocol].to_numpy() == change]
    move = (rows[f"{column}_a"] - rows[f"{column}_b"]).abs()
    return rows.assign(move=move).sort_values(["move", "direction", "query"], ascending=[False, True, True],
                                              kind="stable").drop(columns="move")


def change_counts(table: pd.DataFrame) -> pd.DataFrame:
    """How many queries each change holds, per protocol and direction."""
    counts = {(protocol, direction): table.loc[table["direction"] == direction, protocol].value_counts()
              for protocol in PROTOCOLS for direction in ("t2i", "i2t")}
    frame = pd.DataFrame(counts).reindex(list(CHANGES)).fillna(0).astype(int)
    frame.columns.names = ["protocol", "direction"]
    return frame


def recall_at(table: pd.DataFrame, k: int) -> Mapping[str, Mapping[str, float]]:
    """R@k (percent) of A and B per protocol and direction, read from the comparison table."""
    result = {}
    for protocol, column in _RANK_COLUMN.items():
        for direction in ("t2i", "i2t"):
            part = table[table["direction"] == direction]
            result[f"{protocol} {direction}"] = {side: float(100 * (part[f"{column}_{side}"] < k).mean())
                                                 for side in ("a", "b")}
    return result
