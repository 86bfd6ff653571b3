"""Attention statistics over a split: per kind of word, where its attention goes and how sharply.

One matching pair at a time tells little about a model; over a whole split one can ask "does the
model bind colours to shapes, or only find shapes?". For every word of every caption (with its own
image) this module keeps one record: the word's kind, the entropy of its text-to-image attention,
the region it attends to most, whether that region is one of the word's own object (the pointing
game, for words the split grounds) and the share of its attention that falls on each kind of
region. Summaries group the records by word kind (``summarize``) and by word kind x region kind
(``kind_matrix``); ``examples`` lists the records behind one cell, for drill-down.

Word kinds on ShapeScenes come from its caption templates (``word_kinds``): colour, shape, size,
count, position ("on the left"), relation ("to the left of", "above"), extreme ("leftmost"),
background (textures), generic nouns ("shape", "object") and function words. Region kinds come
from its scenes: object, part (of one object), pair (two objects) and background.
On detector data (``region_labels``), a word is a *detected label* when it names the label of one
of its image's regions, an *other label* when it names a label absent from the image, else an
*other word*; a region is then of the *same label* as the word or of an *other label*, and a
detected label's word points right when its most-attended region carries its label.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mlasm.data.shapescenes.scenes import COLOURS, NUMBER_WORDS, PLURALS, SHAPES, SIZES, TEXTURES
from mlasm.data.shapescenes.truth import EXTREMES
from mlasm.data.dataset import cut_caption
from mlasm.data.vocab import SPECIAL_TOKENS, START, rows_before_words
from mlasm.encoding import encode_split

WORD_KINDS = ("colour", "shape", "size", "count", "position", "relation", "extreme", "background",
              "generic noun", "function")
REGION_KINDS = ("object", "part", "pair", "background")
LABEL_WORD_KINDS = ("detected label", "other label", "other word")
LABEL_REGION_KINDS = ("same label", "other label")

_COLOURS = frozenset(COLOURS)
_SHAPES = frozenset(SHAPES) | frozenset(PLURALS[shape] for shape in SHAPES)
_GENERIC = frozenset({"shape", "shapes", "object", "objects"})
_SIZES = frozenset(SIZES)
_COUNTS = frozenset(NUMBER_WORDS[2:])          # "two" ... "five"; "one" is never written
_EXTREMES = frozenset(EXTREMES)
_BACKGROUND = frozenset(TEXTURES) | {"background"}
_SIDES = frozenset({"left", "right"})
_PLACES = frozenset({"top", "bottom", "corner"})
_RELATIONS = frozenset({"above", "below"})
# a word's kind is that of the first set holding it; a "side" is a relation before "of", else a position
_WORD_SETS = (("colour", _COLOURS), ("shape", _SHAPES), ("generic noun", _GENERIC), ("size", _SIZES),
              ("count", _COUNTS), ("extreme", _EXTREMES), ("relation", _RELATIONS), ("side", _SIDES),
              ("position", _PLACES), ("background", _BACKGROUND))


def word_kinds(tokens: Sequence[str]) -> list[str]:
    """The kind of each token of a ShapeScenes caption (one of WORD_KINDS), read in context.

    "left" and "right" are relation words in "to the left of" (followed by "of") and position
    words in "on the left" or "in the top left corner". Boundary tokens (<start>, <end>) and
    punctuation are function words.
    """
    kinds = []
    for position, token in enumerate(tokens):
        following = tokens[position + 1] if position + 1 < len(tokens) else ""
        kind = next((kind for kind, words in _WORD_SETS if token in words), "function")
        kinds.append(kind if kind != "side" else "relation" if following == "of" else "position")
    return kinds


CAPTION_KINDS = ("count", "relation", "extreme", "colour", "size", "position", "background")


def caption_kinds(text_tokens: Sequence[str]) -> frozenset[str]:
    """What a caption speaks of: the kinds of its words among CAPTION_KINDS (e.g. {"count", "colour"})."""
    return frozenset(kind for kind in word_kinds(text_tokens) if kind in CAPTION_KINDS)


def entropy(weights: np.ndarray) -> float:
    """Shannon entropy (nats) of one attention row: 0 when all weight is on one region."""
    p = np.asarray(weights, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@dataclass(frozen=True)
class AttendedCaption:
    """One matching pair's text-to-image attention with what the statistics need to read it.

    ``attention`` (L, R): each token's weights over the image's R kept regions (rows sum to 1);
    ``region_indices`` (R,): those regions' indices in the image; ``region_kinds``: per token, the
    (R,) kind of each region as that token sees it (the same for every token on ShapeScenes);
    ``targets``: token position -> the region indices that count as pointing right (grounded words).
    """

    caption: int
    image: int
    tokens: Sequence[str]
    kinds: Sequence[str]
    attention: np.ndarray
    region_indices: np.ndarray
    region_kinds: Sequence[Sequence[str]]
    targets: Mapping[int, frozenset]


def caption_records(attended: AttendedCaption, region_kind_names: Sequence[str]) -> list[dict]:
    """One record per token: kind, entropy, most-attended region and its kind, pointing, share per region kind."""
    records = []
    n_regions = attended.attention.shape[1]
    for position, (word, kind) in enumerate(zip(attended.tokens, attended.kinds)):
        row = np.asarray(attended.attention[position], dtype=np.float64)
        kinds_here = np.asarray(attended.region_kinds[position])
        top = int(row.argmax())
        target = attended.targets.get(position)
        record = {"caption": attended.caption, "image": attended.image, "position": position, "word": word,
                  "kind": kind, "entropy": entropy(row),
                  "normalised_entropy": entropy(row) / math.log(n_regions) if n_regions > 1 else 0.0,
                  "top_region": int(attended.region_indices[top]), "top_region_kind": str(kinds_here[top]),
                  "top_weight": float(row[top]), "grounded": target is not None and len(target) > 0}
        if record["grounded"]:
            record["pointed"] = int(attended.region_indices[top]) in target
            record["pointing_chance"] = len(target & set(attended.region_indices.tolist())) / n_regions
        else:
            record["pointed"], record["pointing_chance"] = np.nan, np.nan
        for region_kind in region_kind_names:
            record[f"share {region_kind}"] = float(row[kinds_here == region_kind].sum())
        records.append(record)
    return records


def records_frame(attended: Iterable[AttendedCaption], region_kind_names: Sequence[str]) -> pd.DataFrame:
    """Every token's record (``caption_records``) of many pairs, as one table."""
    rows = [record for pair in attended for record in caption_records(pair, region_kind_names)]
    columns = ["caption", "image", "position", "word", "kind", "entropy", "normalised_entropy", "top_region",
               "top_region_kind", "top_weight", "grounded", "pointed", "pointing_chance",
               *(f"share {kind}" for kind in region_kind_names)]
    return pd.DataFrame(rows, columns=columns)


def summarize(records: pd.DataFrame, kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """Per word kind: words, grounded words, pointing accuracy and its chance (percent), mean entropy.

    ``pointing %`` and ``chance %`` are over the grounded words of the kind (NaN when none are);
    ``entropy`` is the mean in nats, ``normalised entropy`` divides each by log(R) (1 = uniform).
    Rows follow ``kinds`` (default: the kinds present, in WORD_KINDS / LABEL_WORD_KINDS order).
    """
    kinds = list(kinds) if kinds is not None else _present(records["kind"])
    rows = {}
    for kind in kinds:
        part = records[records["kind"] == kind]
        grounded = part[part["grounded"]]
        rows[kind] = {"words": len(part), "grounded": len(grounded),
                      "pointing %": 100.0 * grounded["pointed"].astype(float).mean() if len(grounded) else np.nan,
                      "chance %": 100.0 * grounded["pointing_chance"].mean() if len(grounded) else np.nan,
                      "entropy": part["entropy"].mean() if len(part) else np.nan,
                      "normalised entropy": part["normalised_entropy"].mean() if len(part) else np.nan}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("word kind")


def kind_matrix(records: pd.DataFrame, region_kind_names: Sequence[str],
                kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """(word kind x region kind): the mean share of a word's attention that falls on regions of that kind.

    Each row sums to 1 (a word's attention sums to 1 over its image's regions).
    """
    kinds = list(kinds) if kinds is not None else _present(records["kind"])
    shares = records.groupby("kind")[[f"share {kind}" for kind in region_kind_names]].mean()
    shares = shares.reindex(kinds)
    shares.columns = list(region_kind_names)
    return shares.rename_axis(index="word kind", columns="region kind")


def examples(records: pd.DataFrame, word_kind: str, region_kind: str, limit: int | None = 20) -> pd.DataFrame:
    """The records behind one cell of ``kind_matrix``: words of that kind, most attention on that region kind first."""
    part = records[records["kind"] == word_kind]
    part = part.sort_values(f"share {region_kind}", ascending=False, kind="stable")
    return part if limit is None else part.head(limit)


def _present(kinds: pd.Series) -> list[str]:
    order = {kind: i for i, kind in enumerate(WORD_KINDS + LABEL_WORD_KINDS)}
    return sorted(set(kinds), key=lambda kind: (order.get(kind, len(order)), kind))


# --- reading a split ------------------------------------------------------------------------

def shapescenes_region_kinds(split) -> list[list[str]] | None:
    """Per image, each region's kind (object, part, pair, background) from ShapeScenes' scenes; None elsewhere."""
    renderer, images = split.renderer, None
    if hasattr(renderer, "parent") and hasattr(renderer, "images"):  # a subset of a split
        renderer, images = renderer.parent, list(renderer.images)
    scenes = getattr(renderer, "scenes", None)
    if scenes is None:
        return None
    images = images if images is not None else range(len(scenes))
    return [[region["kind"] for region in scenes[i]["regions"]] for i in images]


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


class SplitReader:
    """What a split says about its words and regions: word kinds, region kinds and pointing targets.

    ShapeScenes-like splits (with scenes) use WORD_KINDS and REGION_KINDS and their grounding;
    splits with detector labels use LABEL_WORD_KINDS and LABEL_REGION_KINDS; other splits have one
    region kind, "region", and ShapeScenes' word kinds (mostly function words there).
    """

    def __init__(self, split):
        self.split = split
        self.scene_kinds = shapescenes_region_kinds(split)
        self.labels = None
        if self.scene_kinds is None and split.region_labels is not None and split.label_names is not None:
            # a detector's label list may have gaps (None: COCO's unused category ids)
            self.labels = [(name or "").lower() for name in split.label_names]
            self.label_ids = {}
            for index, name in enumerate(self.labels):
                if not name:
                    continue
                self.label_ids.setdefault(name, index)
                self.label_ids.setdefault(_singular(name), index)
        self.region_kind_names = (REGION_KINDS if self.scene_kinds is not None else
                                  LABEL_REGION_KINDS if self.labels is not None else ("region",))

    def attended(self, caption: int, image: int, tokens: Sequence[str], attention: np.ndarray,
                 region_indices: np.ndarray) -> AttendedCaption:
        """An AttendedCaption for one pair, given the model's tokens and attention over kept regions."""
        split, region_indices = self.split, np.asarray(region_indices)
        offset = rows_before_words(tokens[:1] == [START])
        if self.labels is not None:
            region_labels = np.asarray(split.region_labels[image])[region_indices]
            present = set(region_labels.tolist())
            kinds, region_kinds, targets = [], [], {}
            for position, token in enumerate(tokens):
                label = self.label_ids.get(token, self.label_ids.get(_singular(token)))
                if label is None or token in SPECIAL_TOKENS:
                    kinds.append("other word")
                    region_kinds.append(np.full(len(region_indices), "other label"))
                    continue
                kinds.append("detected label" if label in present else "other label")
                same = np.array([self.labels[l] == self.labels[label] for l in region_labels])
                region_kinds.append(np.where(same, "same label", "other label"))
                if label in present:
                    targets[position] = frozenset(region_indices[same].tolist())
            return AttendedCaption(caption, image, list(tokens), kinds, attention, region_indices, region_kinds,
                                   targets)
        names = (np.asarray(self.scene_kinds[image], dtype=object)[region_indices] if self.scene_kinds is not None
                 else np.full(len(region_indices), "region", dtype=object))
        targets = {} if split.grounding is None else {int(position) + offset: frozenset(int(r) for r in regions)
                                                      for position, regions in split.grounding[caption] if regions}
        return AttendedCaption(caption, image, list(tokens), word_kinds(tokens), attention, region_indices,
                               [names] * len(tokens), targets)


def reader_signature(split) -> str:
    """A digest of what SplitReader reads besides the captions (region kinds, detector labels, grounding):
    saved records are reused only where it is the same, since the same split's identity can come with
    more or less of it (ShapeScenes generated in memory, or read back from a precomp folder)."""
    import hashlib
    import json

    reader = SplitReader(split)
    digest = hashlib.sha256(json.dumps([list(reader.region_kind_names), reader.scene_kinds, reader.labels,
                                        split.grounding]).encode())
    if reader.labels is not None:
        digest.update(np.ascontiguousarray(split.region_labels).tobytes())
    return digest.hexdigest()[:16]


def knows_word_and_region_kinds(split) -> bool:
    """Whether the statistics can say something of a split: it has scenes, detector labels or grounding."""
    return (split.grounding is not None or shapescenes_region_kinds(split) is not None
            or (split.region_labels is not None and split.label_names is not None))


def model_records(model, split, vocab, img=None, cap=None, captions: Sequence[int] | None = None) -> pd.DataFrame:
    """Every token's record over the matching pairs of ``split`` (or of ``captions``), by ``model.explain``."""
    if "t2i" not in model.directions:
        raise ValueError("this model (a SCAN i2t model) has no word-to-region attention: the statistics per kind "
                         "of word are about where words look")
    vocab = vocab.with_boundaries(model.config.start_end_tokens)
    if img is None or cap is None:
        img, cap = encode_split(model, split, vocab)
    reader = SplitReader(split)
    captions = range(split.n_captions) if captions is None else captions

    def pairs():
        for c in captions:
            image = int(split.caption_to_image[c])
            explanation = model.explain(img, cap, image, int(c))
            tokens = cut_caption(vocab.encode(split.captions[c]).tokens, vocab.boundaries)  # as the model read it
            yield reader.attended(int(c), image, tokens,
                                  explanation.t2i_attention, explanation.region_indices)

    return records_frame(pairs(), reader.region_kind_names)


def top_regions_after(records: pd.DataFrame, n_captions: int, first_word: int) -> list[list[int]]:
    """Per caption, the most-attended region of each of its words from ``first_word`` on (the rows
    ``metrics.pointing_accuracy`` reads), from the records; [] for a caption without records."""
    top = [[] for _ in range(n_captions)]
    for caption, regions in records.groupby("caption", sort=False)["top_region"]:
        top[int(caption)] = [int(r) for r in regions.to_numpy()[first_word:]]
    return top


def statistics(records: pd.DataFrame, region_kind_names: Sequence[str]) -> dict:
    """The JSON-able summary that ``mlasm evaluate`` writes: per word kind, and the kind matrix."""
    def clean(value):
        return None if isinstance(value, float) and math.isnan(value) else value

    table = summarize(records)
    matrix = kind_matrix(records, region_kind_names)
    return {"words": {kind: {key: clean(float(v) if key not in ("words", "grounded") else int(v))
                             for key, v in row.items()} for kind, row in table.iterrows()},
            "region_kinds": list(region_kind_names),
            "matrix": {kind: {region: clean(float(v)) for region, v in row.items()} for kind, row in matrix.iterrows()}}


def statistics_captions(n_captions: int, max_captions: int = 5000) -> np.ndarray | None:
    """The captions the statistics read: None for all of them when there are at most ``max_captions``,
    else ``max_captions`` of them evenly spread (in increasing order)."""
    if n_captions <= max_captions:
        return None
    return np.linspace(0, n_captions - 1, max_captions).round().astype(int)


def attention_statistics_and_records(model, split, vocab, img=None, cap=None, max_captions: int = 5000,
                                     records: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame]:
    """``statistics`` of a model on a split, on at most ``max_captions`` captions evenly spread (its "captions"
    says how many), and the records it was made from (every caption's when there are at most
    ``max_captions``: what the workbench's statistics tab shows, saved so that it opens at once).

    ``records``: ``model_records`` already made over these captions or more (evaluate's one pass over the
    pairs, which the pointing game reads too); only the rows of ``statistics_captions`` are read."""
    n = split.n_captions
    captions = statistics_captions(n, max_captions)
    if records is None:
        records = model_records(model, split, vocab, img, cap, captions)
    elif captions is not None:
        records = records[records["caption"].isin(captions)].reset_index(drop=True)
    result = statistics(records, SplitReader(split).region_kind_names)
    result["captions"] = n if captions is None else len(captions)
    return result, records


def attention_table(stats: Mapping) -> str:
    """Plain text of ``statistics``: per word kind, pointing, entropy and where the attention goes."""
    regions = stats["region_kinds"]
    width = max(14, *(len(kind) for kind in stats["words"]))
    header = (f"{'word kind':<{width}} {'words':>6} {'point%':>7} {'chance':>7} {'H nats':>7} {'H/logR':>7} "
              + " ".join(f"{region[:10]:>10}" for region in regions))
    lines = [header]

    def number(value, form):
        return f"{'-':>{len(format(0.0, form))}}" if value is None else format(value, form)

    for kind, row in stats["words"].items():
        shares = stats["matrix"].get(kind, {})
        lines.append(f"{kind:<{width}} {row['words']:>6} {number(row['pointing %'], '7.1f')} "
                     f"{number(row['chance %'], '7.1f')} {number(row['entropy'], '7.2f')} "
                     f"{number(row['normalised entropy'], '7.2f')} "
                     + " ".join(number(shares.get(region), "10.2f") for region in regions))
    return "\n".join(lines)
