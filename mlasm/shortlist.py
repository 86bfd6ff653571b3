"""Two-stage search for galleries beyond all-pairs: a shortlist by one matrix product, then the full model.

First stage: every image and every caption is encoded once into one unit vector that needs no
partner, and a query's K candidates are the items whose vector has the largest dot product with
its own (``top_candidates``). The vectors come from what the model already has
(``FIRST_STAGES``); nothing is trained for them:

- ``mean``: the masked mean of an image's region vectors v_r and of a caption's word vectors u_l,
  each made unit length (the local level's vectors with uniform instead of attended weights);
- ``semantic``: the semantic level (spec 4) with uniform attention: the image side
  l2norm(t * h + (1 - t) * (W_x abar + b_x)) with abar the mean region vector, the text side
  l2norm(W_t ubar + b_t) with ubar the mean word vector;
- ``blend``: both, concatenated with weights sqrt(rho) and sqrt(1 - rho), so that one dot product
  is rho * mean + (1 - rho) * semantic, as the final score mixes its levels.
  A local-only model (rho = 1) has no semantic level: ``semantic`` and ``blend`` are ``mean`` there;
- a ``FirstStage``: attention pooling (a few heads) of the model's region and word vectors, trained
  afterwards on the frozen model's encodings of a training split with its own contrastive loss
  (``train_first_stage``; the model itself and its numbers never change). On ShapeScenes the
  partner-free kinds above keep the true item in the shortlist far too rarely (benchmarks/README.md).

Second stage: the full model scores only the pairs (query, candidate), every level; a pair that
both directions need is scored once (``rescore_pairs``).

Ranks (``TwoStageDirection.ranks``), 0-based as mlasm.metrics: a query's candidates are ranked
by the full model's score, and every item outside its shortlist ranks below every candidate, in
first-stage order among themselves. So the true item ranks as in mlasm.metrics among the K
candidates when it is one of them, else at K + (the number of other non-candidates whose
first-stage score is at least its own); for an image query the best of its captions counts, as in
``i2t_ranks``. With K at least the gallery's size, every item is a candidate and the ranks are the
exact ones. R@k for k <= K is then what the full model would give wherever the shortlist kept the
true item; "first-stage recall" is how often it did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlasm.blocks import _slice, _take, _to, _trim
from mlasm.io import write_together
from mlasm.data.positives import PositiveSets
from mlasm.metrics import (RECALL_KS, complete_positive_ranks_by_blocks, recall_summary, scored_levels,
                           summarize_complete_ranks)
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding, l2norm, lengths_to_mask, masked_mean

FIRST_STAGES = ("mean", "semantic", "blend")
DEFAULT_FIRST_STAGE = "mean"   # the best of the untrained kinds on ShapeScenes (benchmarks/README.md)
QUERY_CHUNK = 1024          # queries whose first-stage scores against every item are held at once
CAPTION_CHUNK = 8192        # captions whose per-caption terms are held at once while re-scoring
PIECE = 96                  # one image's captions scored together, cut to the longest of them


def check_shortlist(k, what: str = "--shortlist") -> int:
    """K as a positive integer, or a ValueError in one line."""
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{what} must be a whole number of candidates >= 1, got {k!r}")
    return int(k)


# --- first stage: one vector per item ------------------------------------------------------

ENCODE_CHUNK = 4096          # items whose first-stage vectors are made at once (no copy of a whole gallery)


@torch.no_grad()
def image_vectors(model: MLASM, img: ImageEncoding, kind=DEFAULT_FIRST_STAGE) -> Tensor:
    """(N, D) unit vectors of the images; masked regions never count."""
    def semantic(mean_region: Tensor, part: ImageEncoding) -> Tensor:  # abar -> l2norm(t * h + (1 - t) * x)
        x = model.image_context_proj(mean_region)                                  # W_x abar + b_x
        glob = part.glob.to(x.dtype)
        return l2norm(torch.lerp(x, glob, torch.sigmoid(model.gate(torch.cat([glob, x], dim=-1)))))

    return _item_vectors(model, img, lambda part: (part.regions, part.mask.bool()), "image", semantic, kind)


@torch.no_grad()
def caption_vectors(model: MLASM, cap: CaptionEncoding, kind=DEFAULT_FIRST_STAGE) -> Tensor:
    """(M, D) unit vectors of the captions; padded words never count."""
    def words_and_mask(part: CaptionEncoding):
        return part.words, lengths_to_mask(part.lengths.to(part.words.device), part.words.shape[1])

    return _item_vectors(model, cap, words_and_mask, "caption",
                         lambda mean_word, part: l2norm(model.text_context_proj(mean_word)), kind)  # W_t ubar + b_t


def _item_vectors(model: MLASM, items: NamedTuple, vectors_and_mask, side: str, semantic, kind) -> Tensor:
    """One side's first-stage vectors, ENCODE_CHUNK items at a time: a FirstStage's, or from the masked
    mean of the item's vectors (``semantic(mean, part)`` makes the semantic kind's)."""
    if not isinstance(kind, FirstStage) and kind not in FIRST_STAGES:
        raise ValueError(f"first stage must be one of {', '.join(FIRST_STAGES)}, got {kind!r}")
    parts = []
    for start in range(0, items[0].shape[0], ENCODE_CHUNK):
        part = _slice(items, start, start + ENCODE_CHUNK)
        vectors, mask = vectors_and_mask(part)
        if isinstance(kind, FirstStage):
            parts.append(getattr(kind, side)(vectors, mask))
            continue
        mean = masked_mean(vectors.masked_fill(~mask[..., None], 0.0), mask[..., None], 1)   # (n, d)
        if kind == "mean" or not model.config.uses_global_level:
            parts.append(l2norm(mean))
        elif kind == "semantic":
            parts.append(semantic(mean, part))
        else:  # blend: one dot product is rho * mean + (1 - rho) * semantic
            rho = model.config.rho
            parts.append(torch.cat([math.sqrt(rho) * l2norm(mean), math.sqrt(1 - rho) * semantic(mean, part)], dim=-1))
    return torch.cat(parts)


def first_stage_scores(queries: Tensor, items: Tensor) -> Tensor:
    """(Q, I): every query's first-stage score of every item (one matrix product)."""
    return queries @ items.T


# --- a first stage trained beside the model ------------------------------------------------------

FIRST_STAGE_FORMAT = "mlasm-first-stage"


class PooledVector(nn.Module):
    """One side's vector: ``heads`` attention poolings of its (masked) vectors, concatenated,
    projected to d and made unit length. Masked positions never count."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attend = nn.Linear(d, heads)
        self.project = nn.Linear(heads * d, d)

    def forward(self, vectors: Tensor, mask: Tensor) -> Tensor:
        vectors = vectors.masked_fill(~mask[..., None], 0.0)
        weights = self.attend(vectors).masked_fill(~mask[..., None], -math.inf).softmax(dim=1)   # (n, R, H)
        return l2norm(self.project(torch.einsum("nrh,nrd->nhd", weights, vectors).flatten(1)))


class FirstStage(nn.Module):
    """A trained first stage: a ``PooledVector`` for the images' region vectors, one for the captions' words."""

    def __init__(self, d: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.image = PooledVector(d, heads)
        self.caption = PooledVector(d, heads)

    def save(self, path, about: dict | None = None) -> None:
        """Atomically, as plain tensors and numbers (read back with ``load`` under weights_only)."""
        state = {"format": FIRST_STAGE_FORMAT, "embed_size": self.image.project.out_features, "heads": self.heads,
                 "about": dict(about or {}), "state": self.state_dict()}
        write_together({path: lambda tmp: torch.save(state, tmp)})

    @classmethod
    def load(cls, path, model: MLASM | None = None) -> "FirstStage":
        """A saved first stage; anything else (another file, sizes of another model) one ValueError naming it."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"{path}: first stage file not found") from None
        except Exception as error:  # a zip or pickle that is no saved tensors: torch raises many kinds
            raise ValueError(f"{path}: not a first stage written by mlasm.shortlist ({type(error).__name__})") from None
        if not isinstance(saved, dict) or saved.get("format") != FIRST_STAGE_FORMAT:
            raise ValueError(f"{path}: not a first stage written by mlasm.shortlist (no format {FIRST_STAGE_FORMAT!r})")
        embed_size, heads = saved.get("embed_size"), saved.get("heads")
        if not (type(embed_size) is int and type(heads) is int and 1 <= heads <= embed_size <= 65_536):
            raise ValueError(f"{path}: embed_size {embed_size!r} and heads {heads!r}: expected whole numbers, "
                             f"1 <= heads <= embed_size <= 65536")
        if model is not None and embed_size != model.config.embed_size:
            raise ValueError(f"{path}: a first stage for embedding size {embed_size}, the model has "
                             f"{model.config.embed_size}")
        stage = cls(embed_size, heads)
        try:
            stage.load_state_dict(saved.get("state"))
        except (RuntimeError, TypeError, AttributeError) as error:
            first = str(error).strip().splitlines()[-1].strip() if str(error).strip() else type(error).__name__
            raise ValueError(f"{path}: its weights do not fit a first stage of embedding size {embed_size} and "
                             f"{heads} heads ({first})") from None
        return stage.eval()


def train_first_stage(img: ImageEncoding, cap: CaptionEncoding, caption_to_image, epochs: int = 20,
                      batch_size: int = 128, learning_rate: float = 2e-3, temperature: float = 0.05,
                      heads: int = 4, seed: int = 0, on_epoch: Callable[[int, float], None] | None = None
                      ) -> FirstStage:
    """A FirstStage fitted to a frozen model's encodings of a training split: in each batch of
    captions, each caption's own image against the batch's other images and the reverse, by
    softmax cross-entropy over the scaled dot products (the other captions of the same image are
    not counted as negatives). A hinge on the hardest negative stayed at twice its margin here.
    ``on_epoch(epoch, mean loss)`` after each epoch (a progress bar); it changes no weight.
    ``cap.words`` needs only ``shape`` and indexing by a long tensor (mlasm.first_stage_training's
    unpadded words serve)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    stage = FirstStage(img.regions.shape[-1], heads)
    optimiser = torch.optim.Adam(stage.parameters(), lr=learning_rate)
    owner = torch.as_tensor(np.asarray(caption_to_image), dtype=torch.long)
    region_mask = img.mask.bool()
    word_mask = lengths_to_mask(cap.lengths, cap.words.shape[1])
    for epoch in range(epochs):
        if epoch == epochs * 3 // 4:
            for group in optimiser.param_groups:
                group["lr"] = learning_rate / 10
        order = torch.randperm(len(owner), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            captions = order[start:start + batch_size]
            images = owner[captions]
            logits = stage.image(img.regions[images], region_mask[images]) @ \
                stage.caption(cap.words[captions], word_mask[captions]).T / temperature
            same_image = (images[:, None] == images[None, :]) & ~torch.eye(len(captions), dtype=torch.bool)
            logits = logits.masked_fill(same_image, -math.inf)
            target = torch.arange(len(captions))
            loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if on_epoch is not None:
                losses.append(loss.item())
        if on_epoch is not None:
            on_epoch(epoch, sum(losses) / len(losses))
    return stage.eval()


# --- first stage: shortlists and the ranks outside them --------------------------------------

@dataclass
class TwoStageDirection:
    """One direction's shortlists: per query its K candidates (best first-stage score first), which
    of them are true of it, and where its true item ranks among the non-candidates."""

    candidates: Tensor       # (Q, K) long item indices
    positive: Tensor         # (Q, K) bool: the candidate is true of the query
    rest_rank: Tensor        # (Q,) long: first-stage rank of its best true item among non-candidates
    has_positive: Tensor     # (Q,) bool: the query has a true item at all

    @property
    def k(self) -> int:
        return self.candidates.shape[1]

    @property
    def hit(self) -> Tensor:
        """(Q,) bool: a true item is among the candidates (first-stage recall counts these)."""
        return self.positive.any(dim=1)

    def first_stage_recall(self) -> float:
        """Percent of the queries with a true item whose shortlist holds one."""
        return float(100.0 * self.hit[self.has_positive].float().mean())

    def ranks(self, scores: Tensor) -> np.ndarray:
        """(Q,) 0-based ranks from the candidates' full-model scores (Q, K); -1 where no item is true."""
        best = torch.where(self.positive, scores, torch.full_like(scores, -math.inf)).max(dim=1).values
        inside = ((scores >= best[:, None]) & ~self.positive).sum(dim=1)
        ranks = torch.where(self.hit, inside, self.k + self.rest_rank)
        return torch.where(self.has_positive, ranks, torch.full_like(ranks, -1)).numpy()

    def top(self, scores: Tensor, k: int) -> np.ndarray:
        """(Q, k) item indices of each query's best k candidates under ``scores`` (Q, K)."""
        order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
        return torch.gather(self.candidates, 1, order).numpy()


def top_candidates(queries: Tensor, items: Tensor, k: int, chunk: int = QUERY_CHUNK) -> Tensor:
    """(Q, min(k, I)) the items with the largest first-stage scores per query, best first."""
    k = min(check_shortlist(k, "k"), items.shape[0])
    return torch.cat([first_stage_scores(queries[start:start + chunk], items).topk(k, dim=1).indices
                      for start in range(0, queries.shape[0], chunk)]) if queries.shape[0] else \
        torch.zeros(0, k, dtype=torch.long)


def shortlist_direction(queries: Tensor, items: Tensor, k: int, positive_of, chunk: int = QUERY_CHUNK
                        ) -> TwoStageDirection:
    """One pass over the first-stage scores, ``chunk`` queries at a time: each query's shortlist and
    the rank of its best true item among the non-candidates. ``positive_of(start, stop)``: the
    (stop - start, I) bool matrix of which items are true of those queries."""
    k = min(check_shortlist(k, "k"), items.shape[0])
    parts = []
    for start in range(0, queries.shape[0], chunk):
        scores = first_stage_scores(queries[start:start + chunk], items)            # (q, I)
        positive = torch.as_tensor(positive_of(start, start + scores.shape[0]))
        candidates = scores.topk(k, dim=1).indices
        best = torch.where(positive, scores, torch.full_like(scores, -math.inf)).max(dim=1).values
        outside = torch.ones_like(positive).scatter_(1, candidates, False)         # not a candidate
        rest_rank = ((scores >= best[:, None]) & outside & ~positive).sum(dim=1)
        parts.append((candidates, torch.gather(positive, 1, candidates), rest_rank, positive.any(dim=1)))
    return TwoStageDirection(*(torch.cat(part) for part in zip(*parts)))


def shortlists(img_vectors: Tensor, cap_vectors: Tensor, caption_to_image, k: int,
               chunk: int = QUERY_CHUNK) -> dict[str, TwoStageDirection]:
    """Both directions: t2i (each caption's K images) and i2t (each image's K captions)."""
    owner = torch.as_tensor(np.asarray(caption_to_image), dtype=torch.long)
    images = torch.arange(img_vectors.shape[0])
    return {
        "t2i": shortlist_direction(cap_vectors, img_vectors, k,
                                   lambda a, b: owner[a:b, None] == images[None, :], chunk),
        "i2t": shortlist_direction(img_vectors, cap_vectors, k,
                                   lambda a, b: images[a:b, None] == owner[None, :], chunk),
    }


# --- second stage: the full model on the shortlisted pairs -----------------------------------

@torch.no_grad()
def rescore_pairs(model: MLASM, img: ImageEncoding, cap: CaptionEncoding, images: Tensor, captions: Tensor,
                  caption_chunk: int = CAPTION_CHUNK) -> dict[str, Tensor]:
    """Every level of the pairs (images[p], captions[p]): level -> (P,) CPU tensors.

    Each image's and each caption's terms are made once; the pairs are taken caption chunk by caption
    chunk (shortest captions first), and within a chunk image by image, each image against its own
    captions trimmed to their longest: the scores equal score_all's for the same pairs.
    """
    images, captions = torch.as_tensor(images).long(), torch.as_tensor(captions).long()
    n_pairs = images.numel()
    out = {level: torch.full((n_pairs,), math.nan, dtype=img.regions.dtype) for level in model.levels}
    if n_pairs == 0:
        return out
    device = model.device
    lengths = cap.lengths.cpu()
    needed = torch.unique(images)
    region_terms = _to(model._image_terms(_take(img, needed) if len(needed) < len(img.regions) else img), device)
    row_of = torch.full((img.regions.shape[0],), -1, dtype=torch.long)
    row_of[needed] = torch.arange(len(needed))
    distinct = torch.unique(captions)
    distinct = distinct[torch.argsort(lengths[distinct], stable=True)]             # shortest captions first
    for start in range(0, len(distinct), caption_chunk):
        chunk_captions = distinct[start:start + caption_chunk]
        longest = int(lengths[chunk_captions].max())
        chunk_encoding = CaptionEncoding(cap.words[chunk_captions.to(cap.words.device), :longest].to(device),
                                         lengths[chunk_captions].to(device))
        word_terms = model._caption_terms(chunk_encoding)
        column_of = torch.full((cap.words.shape[0],), -1, dtype=torch.long)
        column_of[chunk_captions] = torch.arange(len(chunk_captions))
        pairs = torch.nonzero(column_of[captions] >= 0).flatten()
        pairs = pairs[torch.argsort(images[pairs], stable=True)]                    # image by image
        pair_images = images[pairs]
        bounds = torch.nonzero(torch.diff(pair_images, prepend=pair_images[:1] - 1)).flatten().tolist() + [len(pairs)]
        for first, last in zip(bounds[:-1], bounds[1:]):
            row = int(row_of[pair_images[first]])
            regions = _take(region_terms, torch.tensor([row]))
            image_pairs = pairs[first:last]
            image_pairs = image_pairs[torch.argsort(lengths[captions[image_pairs]], stable=True)]  # shortest first
            for piece in range(0, len(image_pairs), PIECE):  # each piece cut to its own longest caption
                these = image_pairs[piece:piece + PIECE]
                columns = column_of[captions[these]]
                words = _take(_trim(word_terms, int(lengths[captions[these[-1]]])), columns)
                levels = model._block_levels(regions, words)  # (the fused loop where it applies)
                for level in out:
                    out[level][these] = levels[level][0].to("cpu", out[level].dtype)
    return out


@dataclass
class TwoStageResult:
    """Both directions' shortlists and their candidates' scores under every level."""

    directions: dict[str, TwoStageDirection]
    scores: dict[str, dict[str, Tensor]]       # direction -> level -> (Q, K)
    first_stage: str           # its name: one of FIRST_STAGES, or "trained"
    k: int
    vectors: dict[str, Tensor]  # "images" (N, e), "captions" (M, e): the first stage's vectors

    def ranks(self, level: str, direction: str) -> np.ndarray:
        return self.directions[direction].ranks(self.scores[direction][level])

    def first_stage_recall(self) -> dict[str, float]:
        return {direction: self.directions[direction].first_stage_recall() for direction in ("i2t", "t2i")}

    def ranking_scores(self, level: str, direction: str, start: int, stop: int) -> np.ndarray:
        """(stop - start, items) float64: queries start..stop's two-stage ranking as scores, every
        candidate's full-model score lifted above every non-candidate's first-stage score, so that
        sorting them gives the rank convention above (ties kept: the lift is one constant per block)."""
        queries, items = ("captions", "images") if direction == "t2i" else ("images", "captions")
        ranking = first_stage_scores(self.vectors[queries][start:stop], self.vectors[items]).double()
        full = self.scores[direction][level][start:stop].double()
        lift = (ranking.max() - full.min() + 1.0) if full.numel() else 0.0
        return ranking.scatter_(1, self.directions[direction].candidates[start:stop], full + lift).numpy()

    def complete_ranks(self, level: str, positives: PositiveSets) -> dict[str, np.ndarray]:
        """``mlasm.metrics.complete_positive_ranks`` of the two-stage ranking under complete positives."""
        return complete_positive_ranks_by_blocks(lambda a, b: self.ranking_scores(level, "t2i", a, b),
                                                 lambda a, b: self.ranking_scores(level, "i2t", a, b),
                                                 positives, positives.transpose())

    def metrics(self, complete_ranks: dict[str, dict] | None = None) -> dict:
        """As mlasm.evaluate.level_metrics (protocol "full"), with ``two_stage``; with ``complete_ranks``
        (level -> ``self.complete_ranks``), every level's ``complete`` measures as well."""
        levels = {}
        for level in scored_levels(self.scores["t2i"]):
            summary = {direction: recall_summary(self.ranks(level, direction)) for direction in ("i2t", "t2i")}
            rsum = sum(summary[d][f"r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
            levels[level] = {"rsum": float(rsum), **summary}
            if complete_ranks is not None:
                levels[level]["complete"] = summarize_complete_ranks(complete_ranks[level])
        return {"protocol": "full", **levels["final"], "levels": levels, "two_stage": self.describe()}

    def describe(self) -> dict:
        return {"shortlist": self.k, "first_stage": self.first_stage,
                "first_stage_recall": self.first_stage_recall(),
                "rank_convention": "an item outside a query's shortlist ranks below all K candidates: "
                                   "K + its first-stage rank among the non-candidates"}


@torch.no_grad()
def two_stage(model: MLASM, img: ImageEncoding, cap: CaptionEncoding, caption_to_image, k: int,
              first_stage=DEFAULT_FIRST_STAGE, chunk: int = QUERY_CHUNK) -> TwoStageResult:
    """Shortlist K items per query in both directions, and score those pairs with the full model."""
    k = check_shortlist(k)
    image_vecs = image_vectors(model, img, first_stage).cpu()
    caption_vecs = caption_vectors(model, cap, first_stage).cpu()
    directions = shortlists(image_vecs, caption_vecs, caption_to_image, k, chunk)
    t2i, i2t = directions["t2i"].candidates, directions["i2t"].candidates
    n_images, n_captions = img.regions.shape[0], cap.words.shape[0]
    # every pair once: (image, caption) keys of both directions
    keys = torch.cat([(t2i * n_captions + torch.arange(n_captions)[:, None]).flatten(),
                      (torch.arange(n_images)[:, None] * n_captions + i2t).flatten()])
    unique, inverse = torch.unique(keys, return_inverse=True)
    pair_scores = rescore_pairs(model, img, cap, unique // n_captions, unique % n_captions)
    split_at = t2i.numel()
    scores = {"t2i": {level: s[inverse[:split_at]].view_as(t2i) for level, s in pair_scores.items()},
              "i2t": {level: s[inverse[split_at:]].view_as(i2t) for level, s in pair_scores.items()}}
    return TwoStageResult(directions, scores, "trained" if isinstance(first_stage, FirstStage) else first_stage, k,
                          {"images": image_vecs, "captions": caption_vecs})


@torch.no_grad()
def text_query_scores(model: MLASM, img: ImageEncoding, image_vecs: Tensor, one: CaptionEncoding, k: int,
                      first_stage=DEFAULT_FIRST_STAGE) -> dict[str, np.ndarray]:
    """Level -> (N,) scores of one caption against a gallery: its K shortlisted images scored by the
    full model, every other image NaN (not scored; it ranks below them). ``image_vecs``: the
    gallery's ``image_vectors`` (made once)."""
    query = caption_vectors(model, one, first_stage).cpu()
    candidates = top_candidates(query, image_vecs, k)[0]
    scored = rescore_pairs(model, img, one, candidates, torch.zeros_like(candidates))
    out = {}
    for level, values in scored.items():
        column = np.full(img.regions.shape[0], np.nan, dtype=np.float32)
        column[candidates.numpy()] = values.numpy()
        out[level] = column
    return out


# --- typed queries in the workbench ------------------------------------------------------------

TYPED_SHORTLIST_K = 100        # "auto": the shortlist a typed query gets over a large gallery
TYPED_EXACT_UP_TO = 2000       # "auto": galleries of at most this many images are scored exactly


def typed_shortlist_size(choice, n_images: int) -> int | None:
    """K for a session's typed queries, or None for exact (every image scored by the full model).

    ``choice``: "auto" (K = TYPED_SHORTLIST_K above TYPED_EXACT_UP_TO images, else exact), None
    (exact) or K. A K that covers the gallery is exact.
    """
    if choice == "auto":
        k = TYPED_SHORTLIST_K if n_images > TYPED_EXACT_UP_TO else None
    else:
        k = None if choice is None else check_shortlist(choice, "typed_shortlist")
    return None if k is None or k >= n_images else k


def typed_ranking_note(k: int | None, n_images: int) -> str:
    """One line: how a typed query's images were ranked."""
    if k is None:
        return f"exact: the full model scored all {n_images:,} images"
    return (f"two-stage: the full model ranked the first stage's {k:,} best of {n_images:,} images; "
            f"the others are not scored and rank below them")
