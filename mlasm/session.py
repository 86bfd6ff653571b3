"""WorkbenchSession: one model on one split, with everything the widgets ask of them computed once.

The widgets never touch the model directly: they ask the session, which caches what is
expensive. Encodings are made when the session is built (seconds); the (N, M) score
matrix of every level is made on first use (``scores``), since it is the one costly step
(N x M attention problems) and the attention explorer alone never needs it.

A "caption" argument is either the index of a caption of the split or a free text the
user typed; both go through the same code (a typed text is encoded as a one-caption
batch). Ranks are 0-based, as in ``ranks.npz``: rank 0 is retrieved first, R@k counts rank < k,
and ties count against the query (mlasm.metrics).

Captions are often true of more than their own image ("A square." is true of every picture
with a square). The session reads the split's complete positives (``split.positive_sets()``:
per caption, every image it is true of; the strict one image per caption when the split does
not know more) and tells three outcomes apart per query at k: ``hit`` (its own item within the
top k), ``valid alternative`` (not its own item, but another item true of the query within the
top k) and ``failure`` (nothing true of the query within the top k). Without complete
positives the second never happens and every miss is a failure, as under the standard protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mlasm.attention_stats import reader_signature
from mlasm.blocks import _slice
from mlasm.data.dataset import RetrievalSplit, caption_tensors, cut_caption, image_tensors
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import Vocabulary
from mlasm.encoding import encode_split
from mlasm.evaluate import level_ranks
from mlasm.explain import ScoreExplanation, explain_scores
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding, PairExplanation
from mlasm.saved_scores import RECORDS_FILE, find_saved_scores, read_saved_records, scores_fingerprint
from mlasm.score_store import find_store, read_column, read_rows
from mlasm.session_tables import direction_table, query_table_in_chunks, saved_ranks
from mlasm.store_measures import measure_store
from mlasm.shortlist import (
    DEFAULT_FIRST_STAGE, FirstStage, image_vectors, text_query_scores, typed_ranking_note, typed_shortlist_size,
)
from mlasm.sources import EMBEDDED, open_split
from mlasm.checkpoint import check_model_fits, load_model

CaptionRef = Union[int, str]  # a caption of the split (index) or a typed text
DIRECTIONS = {"t2i": "caption query, images ranked", "i2t": "image query, captions ranked"}
HIT, VALID_ALTERNATIVE, FAILURE = "hit", "valid alternative", "failure"  # the outcomes: module docstring


@dataclass(frozen=True)
class TextQuery:
    """A typed text as the model reads it: its tokens, the ones it does not know, its encoding."""

    text: str
    tokens: list[str]
    unknown: list[str]          # tokens read as <unk>
    encoding: CaptionEncoding   # one caption, on the model's device


class WorkbenchSession:
    """A model, its vocabulary and a split, with encodings, score matrices, ranks and explanations."""

    def __init__(self, model: MLASM, vocab: Vocabulary, split: RetrievalSplit,
                 scores: dict | None = None, memory_budget_mb: float | None = None, cache_size: int = 512,
                 large: bool = False, typed_shortlist: int | str | None = "auto", first_stage=None):
        """``scores``: the (N, M) matrices of every level if already computed (e.g. by
        ``mlasm.evaluate.score_split``, or an ensemble's ``average_levels``), so they are not computed again.
        ``large``: they are a score store's, memory-mapped (mlasm.score_store): nothing is encoded until a
        typed query needs every image, a pair is encoded alone to be explained, ranks and tables go in chunks.
        ``typed_shortlist``: typed queries rank a shortlist of K images (mlasm.shortlist; None: every
        image; "auto": K = 100 above 2,000 images), chosen by ``first_stage``: a trained
        ``FirstStage`` or its file (default: the untrained mean vectors)."""
        check_model_fits(model, split, "the model")
        vocab.check_fits(model.config.vocab_size, "the model")
        self.model = model.eval()
        # captions read as the model was trained: with <start> and <end> where its config says
        self.vocab = vocab.with_boundaries(model.config.start_end_tokens)
        self.split = split
        self.memory_budget_mb = memory_budget_mb
        # memory-mapped scores (a score store: a large gallery) open without encoding every image and caption
        self._large = large and scores is not None
        self._encodings = None if self._large else encode_split(model, split, self.vocab)
        self.typed_shortlist = typed_shortlist_size(typed_shortlist, split.n_images)  # K, or None: exact
        self._first_stage_images: torch.Tensor | None = None
        self.first_stage = (DEFAULT_FIRST_STAGE if first_stage is None else first_stage
                            if isinstance(first_stage, FirstStage) else FirstStage.load(first_stage, model))
        self._scores = None if scores is None else self._checked_scores(scores)
        self.scores_source: Path | str | None = None if scores is None else "given"  # or the file they came from
        self._ranks: dict[str, np.ndarray] | None = None
        self.positives: PositiveSets = split.positive_sets()
        self._truth: np.ndarray | None = None
        self._query_table: pd.DataFrame | None = None
        self._outcome_tables: dict[int, pd.DataFrame] = {}
        # Per-instance caches: the same pair / text / picture is asked for again on every redraw.
        self.attention_records: pd.DataFrame | None = None  # saved by evaluate (mlasm.saved_scores), if read
        self._explain = lru_cache(maxsize=cache_size)(self._explain_pair)
        self._contributions = lru_cache(maxsize=cache_size)(self._contributions_of_pair)
        self.encode_text = lru_cache(maxsize=cache_size)(self._encode_text)
        self.text_scores = lru_cache(maxsize=cache_size)(self._text_scores)
        self.picture = lru_cache(maxsize=cache_size)(self._picture)
        # before the whole gallery is scored, one caption or one image is scored alone
        self._caption_column = lru_cache(maxsize=cache_size)(self._score_one_caption)
        self._image_row = lru_cache(maxsize=cache_size)(self._score_one_image)

    @classmethod
    def from_checkpoint(cls, path: str | Path, source: str = EMBEDDED, split: str = "test",
                        device: str | torch.device | None = None, fast: bool | None = None,
                        saved_scores: bool | Iterable[str | Path] = True, vocab: str | Path | None = None,
                        **options) -> "WorkbenchSession":
        """Load a checkpoint and open a split of ``source`` (``shapescenes`` or a precomp folder).

        ``fast`` picks tiny ShapeScenes (default: the MLASM_FAST environment variable).
        ``saved_scores``: reuse the score matrices that ``mlasm evaluate`` or ``mlasm demo`` saved
        for this very checkpoint and split (looked for beside the checkpoint and one folder up, or
        in the folders given; ``mlasm.saved_scores``), instead of scoring every pair again.
        ``vocab``: SCAN's vocabulary file, for a SCAN checkpoint (``model_best.pth.tar``; see
        ``mlasm.scan_model``), which keeps it apart.
        """
        model, vocab, _ = load_model(path, device, vocab=vocab)
        opened = open_split(source, split, fast=fast, progress=False)
        found = where = None
        if saved_scores is not False and "scores" not in options:
            folders = None if saved_scores is True else saved_scores
            found, where = find_store(path, opened, folders, model.levels)  # a large gallery's, memory-mapped
            if found is None:
                found, where = find_saved_scores(path, opened, folders, model.levels)
            elif "large" not in options:
                options["large"] = True
        session = cls(model, vocab, opened, **({"scores": found} if found is not None else {}), **options)
        if where is not None:
            session.scores_source = where
            if where.is_dir():  # a score store: evaluate's ranks.npz beside it, when complete
                session._ranks = saved_ranks(where.parent / "ranks.npz", session.levels, opened.positives is not None,
                                             found["final"], opened.caption_to_image)
            # the attention records saved with them: the statistics tab opens without explaining every pair
            session.attention_records = read_saved_records(
                where.parent / RECORDS_FILE, {**scores_fingerprint([path], opened), "reader": reader_signature(opened)})
        return session

    def __repr__(self) -> str:
        scored = "not scored yet" if self._scores is None else f"scores {self.scores_source}"
        return f"WorkbenchSession({self.split!r}, levels={self.levels}, {scored})"

    # --- levels, scores and ranks of the whole split ------------------------------------

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels this model scores, in the order they build up (no global level when rho = 1; a SCAN
        model's one direction and final)."""
        return self.model.levels

    @property
    def directions(self) -> tuple[str, ...]:
        """The attention directions the model has: t2i and i2t (MLASM), or a SCAN model's one."""
        return self.model.directions

    @property
    def level_caveat(self) -> str:
        """What a reader of a single level's ranks must know: empty when every level was trained to rank."""
        config = self.model.config
        return "" if config.levels_trained_alone else "This model was " + config.describe_objective() + "."

    @property
    def images(self) -> ImageEncoding:
        """Every image of the split encoded (on first use where the scores are memory-mapped)."""
        if self._encodings is None:
            self._encodings = encode_split(self.model, self.split, self.vocab)
        return self._encodings[0]

    @property
    def captions(self) -> CaptionEncoding:
        self.images  # noqa: B018 (both are encoded together)
        return self._encodings[1]

    def _one_pair(self, image: int, caption: CaptionRef) -> tuple[ImageEncoding, CaptionEncoding, int, int]:
        """The encodings explain reads for a pair, and the pair's indices in them: the split's, or (a large
        gallery not encoded) the pair's alone; with a typed text, every image's and the text's."""
        if isinstance(caption, str):
            return self.images, self.encode_text(caption).encoding, image, 0
        if self._encodings is not None:
            return self.images, self.captions, image, caption
        with torch.no_grad():
            img = self.model.encode_images(*(t.to(self.model.device) for t in image_tensors(self.split, [image])))
            tokens, lengths = caption_tensors(self.vocab, [self.split.captions[caption]])
            cap = self.model.encode_captions(tokens.to(self.model.device), lengths.to(self.model.device))
        return img, cap, 0, 0

    def _checked_scores(self, scores: dict) -> dict[str, np.ndarray]:
        shape = (self.split.n_images, self.split.n_captions)
        checked = {level: scores[level] if isinstance(scores[level], np.memmap) and scores[level].dtype == np.float32
                   else np.asarray(scores[level].cpu() if hasattr(scores[level], "cpu") else scores[level],
                                   dtype=np.float32) for level in self.levels}
        wrong = {level: s.shape for level, s in checked.items() if s.shape != shape}
        if wrong:
            raise ValueError(f"scores must be (N, M) = {shape} per level, got {wrong}")
        return checked

    @property
    def scores(self) -> dict[str, np.ndarray]:
        """Level -> (N, M) score of every image against every caption; computed once, on first use."""
        if self._scores is None:
            all_levels = self.model.score_all(self.images, self.captions, memory_budget_mb=self.memory_budget_mb)
            self._scores = {level: all_levels[level].numpy() for level in self.levels}
            self.scores_source = "computed"
        return self._scores

    def _against_every_image(self, one: CaptionEncoding) -> dict[str, np.ndarray]:
        """Level -> (N,): a one-caption encoding against every image."""
        scores = self.model.score_all(self.images, one, memory_budget_mb=self.memory_budget_mb, progress=False)
        return {level: scores[level][:, 0].numpy() for level in self.levels}

    def _score_one_caption(self, caption: int) -> dict[str, np.ndarray]:
        """Level -> (N,): one caption of the split against every image."""
        return self._against_every_image(_slice(self.captions, caption, caption + 1))

    def _score_one_image(self, image: int) -> dict[str, np.ndarray]:
        """Level -> (M,): one image against every caption of the split."""
        one = _slice(self.images, image, image + 1)
        scores = self.model.score_all(one, self.captions, memory_budget_mb=self.memory_budget_mb, progress=False)
        return {level: scores[level][0].numpy() for level in self.levels}

    @property
    def ranks(self) -> dict[str, np.ndarray]:
        """``mlasm.evaluate.level_ranks`` of the scores: the arrays that evaluate writes to ranks.npz."""
        if self._ranks is None and self._large:  # in chunks, as evaluate measures a score store
            self._ranks = measure_store(self.scores, self.split.caption_to_image, self.positives)[1]
        if self._ranks is None:
            self._ranks = level_ranks({level: torch.from_numpy(s) for level, s in self.scores.items()},
                                      self.split.caption_to_image, self.positives)
        return self._ranks

    # --- what is true of what ----------------------------------------------------------

    @property
    def complete_positives(self) -> bool:
        """Whether the split knows every image each caption is true of (else: one image per caption)."""
        return self.split.positives is not None

    @property
    def truth(self) -> np.ndarray:
        """(N, M) bool: is caption m true of image n? (its own image always; others where the split knows)"""
        if self._truth is None:
            self._truth = self.positives.dense()
        return self._truth

    def valid_images(self, caption: int) -> np.ndarray:
        """The images a caption of the split is true of, its own included, ascending."""
        return self.positives.images_of(int(caption))

    def valid_captions(self, image: int) -> np.ndarray:
        """The captions of the split true of an image, its own included, ascending."""
        return self.positives.captions_of(int(image))

    def valid_items(self, direction: str, query: int, level: str = "final") -> pd.DataFrame:
        """Every item true of a query, best-ranked first: images of a caption (t2i), captions of an image (i2t).

        Columns: ``index`` (the image, or the caption), ``own`` (the query's own item: the
        caption's image, or one of the image's own captions), ``rank`` (its position in the
        query's ranking under ``level``, sorted by decreasing score, 0 first: as the ranking
        browser shows it) and ``score``.
        """
        if direction == "t2i":
            scores, valid = self.image_scores(int(query), level), self.valid_images(query)
            own = valid == self.split.caption_to_image[int(query)]
        elif direction == "i2t":
            scores, valid = self.caption_scores(int(query), level), self.valid_captions(query)
            own = self.split.caption_to_image[valid] == int(query)
        else:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        position = np.empty(scores.size, np.int64)
        position[np.argsort(-scores, kind="stable")] = np.arange(scores.size)
        items = pd.DataFrame({"index": valid, "own": own, "rank": position[valid], "score": scores[valid]})
        return items.sort_values("rank", kind="stable").reset_index(drop=True)

    # --- captions and typed texts ------------------------------------------------------

    def caption_text(self, caption: CaptionRef) -> str:
        return self.split.captions[caption] if isinstance(caption, (int, np.integer)) else caption

    def tokens(self, caption: CaptionRef) -> list[str]:
        """The words of a caption as the model reads them: one per attention row of ``explain``."""
        return cut_caption(self.vocab.encode(self.caption_text(caption)).tokens, self.vocab.boundaries)  # as read

    def unknown_words(self, caption: CaptionRef) -> list[str]:
        return self.vocab.encode(self.caption_text(caption)).unknown

    def _encode_text(self, text: str) -> TextQuery:
        """A typed text encoded as a one-caption batch, with its unknown words; cached (``encode_text``)."""
        encoded = self.vocab.encode(text)
        if not encoded.words:  # <start> and <end> alone are no words
            raise ValueError(f"the query {text!r} has no words")
        tokens, lengths = caption_tensors(self.vocab, [text])
        with torch.no_grad():
            encoding = self.model.encode_captions(tokens.to(self.model.device), lengths.to(self.model.device))
        return TextQuery(text, cut_caption(encoded.tokens, self.vocab.boundaries), encoded.unknown, encoding)

    def _text_scores(self, text: str) -> dict[str, np.ndarray]:
        """Level -> (N,) score of every image for a typed text; cached. With a shortlist (``typed_ranking``)
        only its K images are scored, the others are NaN."""
        if self.typed_shortlist is None:
            return self._against_every_image(self.encode_text(text).encoding)
        if self._first_stage_images is None:
            self._first_stage_images = image_vectors(self.model, self.images, self.first_stage).cpu()
        scores = text_query_scores(self.model, self.images, self._first_stage_images, self.encode_text(text).encoding,
                                   self.typed_shortlist, self.first_stage)
        return {level: scores[level] for level in self.levels}

    @property
    def typed_ranking(self) -> str:
        """One line: whether typed queries are ranked exactly or two-stage, and K."""
        return typed_ranking_note(self.typed_shortlist, self.split.n_images)

    # --- one pair ----------------------------------------------------------------------

    def explain(self, image: int, caption: CaptionRef, lambda_t2i: float | None = None,
                lambda_i2t: float | None = None) -> PairExplanation:
        """model.explain for an image and a caption of the split or a typed text; cached.

        The lambdas default to the model's (then the scores equal the score matrices').
        """
        config = self.model.config
        return self._explain(int(image), caption if isinstance(caption, str) else int(caption),
                             float(config.lambda_t2i if lambda_t2i is None else lambda_t2i),
                             float(config.lambda_i2t if lambda_i2t is None else lambda_i2t))

    def _explain_pair(self, image: int, caption: CaptionRef, lambda_t2i: float, lambda_i2t: float) -> PairExplanation:
        return self.model.explain(*self._one_pair(image, caption), lambda_t2i, lambda_i2t)

    @property
    def explains_scores(self) -> bool:
        """Whether a pair's scores split into contributions here (mlasm.explain works out MLASM's
        levels; a SCAN model's pooling options are not split)."""
        return self.model.config.objective != "scan"

    def contributions(self, image: int, caption: CaptionRef) -> ScoreExplanation:
        """Every level's score of the pair as word and region contributions (mlasm.explain); cached."""
        return self._contributions(int(image), caption if isinstance(caption, str) else int(caption))

    def _contributions_of_pair(self, image: int, caption: CaptionRef) -> ScoreExplanation:
        pair = self.explain(image, caption)
        return explain_scores(self.model, *self._one_pair(image, caption), pair)

    def _picture(self, image: int) -> Image.Image | None:
        """The image's picture (rendered or read from its file), None when the split has none; cached."""
        return self.split.get_image(int(image))

    def image_scores(self, caption: CaptionRef, level: str = "final") -> np.ndarray:
        """(N,) score of every image for a caption of the split or a typed text."""
        if isinstance(caption, str):
            return self.text_scores(caption)[level]
        if self._scores is None:  # one caption, not the whole gallery
            return self._caption_column(int(caption))[level]
        return read_column(self.scores[level], int(caption))  # of a memory-mapped store: read, not mapped

    def caption_scores(self, image: int, level: str = "final") -> np.ndarray:
        """(M,) score of every caption of the split for an image."""
        if self._scores is None:  # one image, not the whole gallery
            return self._image_row(int(image))[level]
        return read_rows(self.scores[level], int(image), int(image) + 1)[0]

    def pair_levels(self, image: int, caption: CaptionRef) -> pd.DataFrame:
        """Per level: the pair's score, and where it ranks.

        ``image_rank``: the image's rank among all images for the caption as a text query
        (for the matching pair, the t2i rank of ranks.npz). ``caption_rank``: the caption's
        rank among all captions of the split for the image as a query (a typed text is
        placed among them); other matching captions above it count, so for a matching pair
        it can exceed the i2t rank of ranks.npz, which counts from the best matching caption.
        """
        rows, alone = {}, None
        for level in self.levels:
            column, row = self.image_scores(caption, level), self.caption_scores(image, level)
            score = float(column[image])
            if np.isnan(score) and isinstance(caption, str):  # outside a typed query's shortlist: scored alone,
                if alone is None:                               # ranked among the shortlisted images
                    one = _slice(self.images, image, image + 1)
                    alone = self.model.score_all(one, self.encode_text(caption).encoding, progress=False)
                score = float(alone[level][0, 0])
            others = row if isinstance(caption, str) else np.delete(row, int(caption))
            rows[level] = {"score": score,
                           "image_rank": int((np.delete(column, image) >= score).sum()),
                           "caption_rank": int((others >= score).sum())}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("level")

    # --- every query of the split ------------------------------------------------------

    def query_table(self, k: int = 1) -> pd.DataFrame:
        """Every query of the split in both directions, with its ground truth's rank under every level.

        Columns: ``direction`` (t2i: a caption queries the images; i2t: an image queries the
        captions), ``query`` (caption or image index), ``query_text`` (the caption, or the image
        id), ``rank`` (the ground truth's rank under the final level, as ranks.npz),
        ``rank_<level>`` for the other levels, ``valid_rank`` (the rank of the best-ranked item
        true of the query, its own included, under final: only items not true of it count
        above it, ties against the query) and ``valid_rank_<level>``, ``n_valid`` (how many
        items are true of the query, its own included), ``preferred`` (the best-scored result
        other than the query's own under final: an image for t2i, a caption for i2t),
        ``preferred_valid`` (whether it is true of the query: a valid alternative),
        ``preferred_text``, ``alternative`` (the best-scored item true of the query other than
        its own; -1 when none), and the matching pair to open, ``image`` and ``caption`` (for
        i2t the best-ranked matching caption).

        And for this k: ``hit`` (rank < k), ``valid_alternative`` (not a hit, but valid_rank < k)
        and ``outcome``: "hit", "valid alternative" or "failure" (valid_rank ≥ k). Without
        complete positives valid_rank equals rank and no query is a valid alternative.
        """
        if self._query_table is None:
            self._query_table = (query_table_in_chunks(self) if self._large else self._build_query_table())
        k = int(k)
        if k not in self._outcome_tables:
            table = self._query_table.copy()
            hit = table["rank"].to_numpy() < k
            alternative = ~hit & (table["valid_rank"].to_numpy() < k)
            table["hit"], table["valid_alternative"] = hit, alternative
            table["outcome"] = np.where(hit, HIT, np.where(alternative, VALID_ALTERNATIVE, FAILURE))
            self._outcome_tables[k] = table
        return self._outcome_tables[k]

    def _build_query_table(self) -> pd.DataFrame:
        split, final, ranks, truth = self.split, self.scores["final"], self.ranks, self.truth
        n_images, n_captions = final.shape
        caption_to_image = split.caption_to_image
        positive = caption_to_image[None, :] == np.arange(n_images)[:, None]              # (N, M) own pairs
        also = truth & ~positive                                                           # true, not own
        others = [level for level in self.levels if level != "final"]

        captions = np.arange(n_captions)
        preferred_image = np.where(positive, -np.inf, final).argmax(axis=0)               # (M,)
        alternative_image = np.where(also.any(axis=0), np.where(also, final, -np.inf).argmax(axis=0), -1)
        t2i = direction_table(split, ranks, others, "t2i", captions, truth.sum(axis=0), preferred_image,
                              truth[preferred_image, captions], alternative_image, caption_to_image, captions)

        images = np.flatnonzero(positive.any(axis=1))                                      # images with captions
        best_truth = np.where(positive, final, -np.inf).argmax(axis=1)[images]
        preferred_caption = np.where(positive, -np.inf, final).argmax(axis=1)[images]
        alternative_caption = np.where(also.any(axis=1), np.where(also, final, -np.inf).argmax(axis=1), -1)[images]
        i2t = direction_table(split, ranks, others, "i2t", images, truth.sum(axis=1)[images], preferred_caption,
                              truth[images, preferred_caption], alternative_caption, images, best_truth)
        return pd.concat([t2i, i2t], ignore_index=True)

    def failures(self, k: int = 1, include_valid: bool = False) -> pd.DataFrame:
        """The queries with nothing true of them in the top k under the final level, worst first.

        ``include_valid``: also list the valid alternatives, the queries whose own item ranks
        k or worse but another item true of them is within the top k (so every query whose
        ground truth ranks k or worse, as the standard protocol counts failures). Without
        complete positives both lists are the queries whose ground truth ranks k or worse.
        Columns: those of ``query_table(k)``, and ``right_under``, the other levels that would
        have put an item true of the query within the top k. Worst first: by ``valid_rank``,
        then ``rank`` (so the valid alternatives come after the failures).
        """
        table = self.query_table(k)
        keep = ~table["hit"] if include_valid else table["outcome"] == FAILURE
        failed = table[keep.to_numpy()].copy()
        others = [level for level in self.levels if level != "final"]
        right = failed[[f"valid_rank_{level}" for level in others]].to_numpy() < k
        failed.insert(failed.columns.get_loc("preferred"), "right_under",
                      [", ".join(level for level, ok in zip(others, row) if ok) for row in right])
        return failed.sort_values(["valid_rank", "rank", "direction", "query"],
                                  ascending=[False, False, True, True], kind="stable")
