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

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mlasm.attention_stats import caption_kinds
from mlasm.checkpoint import load_model
from mlasm.data.vocab import tokenize
from mlasm.evaluate import average_levels, score_split
from mlasm.session import WorkbenchSession
from mlasm.sources import EMBEDDED, open_split

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
    parts = {direction: table[table["direction"] == direction] for direction in ("t2i", "i2t")}
    return {f"{protocol} {direction}": {side: float(100 * (part[f"{column}_{side}"] < k).mean()) for side in ("a", "b")}
            for protocol, column in _RANK_COLUMN.items() for direction, part in parts.items()}


def ensemble_session(checkpoints: Sequence[str | Path], split, device=None, vocab=None) -> WorkbenchSession:
    """An ensemble as one side: its scores are the mean of the models' (``average_levels``; SCAN's
    t-i + i-t: a SCAN t2i and a SCAN i2t checkpoint with their ``vocab``).

    Its attention and level panel are those of the first model: an ensemble has no attention of its own.
    """
    per_model, first = [], None
    for path in checkpoints:
        model, model_vocab, _ = load_model(path, device, vocab=vocab)
        first = first or (model, model_vocab)
        per_model.append(score_split(model, split, model_vocab))
    return WorkbenchSession(first[0], first[1], split, scores=average_levels(per_model))


class ModelComparison:
    """Named sessions of models on the same split, compared two at a time (``a`` against ``b``)."""

    def __init__(self, sessions: Mapping[str, WorkbenchSession], a: str | None = None, b: str | None = None):
        if len(sessions) < 2:
            raise ValueError(f"a comparison needs at least two models, got {len(sessions)}")
        self.sessions = dict(sessions)
        first = next(iter(self.sessions.values())).split
        for name, session in self.sessions.items():
            if session.split.captions != first.captions or session.split.n_images != first.n_images:
                raise ValueError(f"model {name!r} was opened on another split than the others "
                                 f"({session.split!r} vs {first!r}): compare models on one split")
        names = list(self.sessions)
        self.a, self.b = a or names[0], b or names[1]
        self._tables: dict[tuple[str, str], pd.DataFrame] = {}

    @classmethod
    def from_checkpoints(cls, checkpoints: Mapping[str, str | Path], source: str = EMBEDDED, split: str = "test",
                         device=None, fast: bool | None = None, vocab=None) -> "ModelComparison":
        """One session per named checkpoint, all on the same split, opened once. ``vocab``: SCAN's
        vocabulary, for SCAN checkpoints among them (an mlasm checkpoint reads with its own)."""
        data = open_split(source, split, fast=fast, progress=False)
        return cls({name: WorkbenchSession(*load_model(path, device, vocab=vocab)[:2], data)  # model, its vocabulary
                    for name, path in checkpoints.items()})

    @property
    def split(self):
        return self.sessions[self.a].split

    @property
    def names(self) -> list[str]:
        return list(self.sessions)

    def choose(self, a: str, b: str) -> None:
        """Compare model ``b`` against model ``a`` from now on."""
        unknown = [name for name in (a, b) if name not in self.sessions]
        if unknown or a == b:
            raise ValueError(f"choose two different models among {self.names}, got {a!r} and {b!r}")
        self.a, self.b = a, b

    def table(self, k: int = 1) -> pd.DataFrame:
        """``mlasm.compare.comparison_table`` of the chosen pair at k (ranks cached per pair)."""
        key = (self.a, self.b)
        if key not in self._tables:
            split = self.split
            self._tables[key] = comparison_table(self.sessions[self.a].query_table(),
                                                 self.sessions[self.b].query_table(),
                                                 split.captions, split.caption_to_image, k=1)
        return with_changes(self._tables[key], k)

    def queries(self, change: str, k: int = 1, protocol: str = "strict", direction: str | None = None,
                kind: str | None = None, words: str | Sequence[str] = ()) -> pd.DataFrame:
        """The queries with this change at k under a protocol, narrowed like ``filter_queries``, largest moves first."""
        rows = filter_queries(self.table(k), direction=direction, kind=kind, words=words)
        return changed(rows, change, protocol)

    def fixed(self, k: int = 1, protocol: str = "strict", **filters) -> pd.DataFrame:
        """Queries model B gets right within the top k and model A does not."""
        return self.queries(FIXED, k, protocol, **filters)

    def broken(self, k: int = 1, protocol: str = "strict", **filters) -> pd.DataFrame:
        """Queries model A gets right within the top k and model B does not."""
        return self.queries(BROKEN, k, protocol, **filters)

    def counts(self, k: int = 1) -> pd.DataFrame:
        """How many queries each model fixed or broke, per protocol and direction."""
        return change_counts(self.table(k))

    def pair_levels(self, image: int, caption) -> pd.DataFrame:
        """Both models' level scores and ranks of one pair, side by side (columns: model, then measure)."""
        return pd.concat({name: self.sessions[name].pair_levels(image, caption) for name in (self.a, self.b)},
                         axis=1)
