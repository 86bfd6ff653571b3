"""MLASM: multi-level local alignment and semantic matching (spec sections 2-4).

Shapes: N images, M captions (n, m inside one block of pairs), R regions per image,
L words per caption, d the joint size. Padded words and masked regions never reach a
score: they are zeroed once, excluded from every softmax, and left out of every mean.

The pair scorer is written for speed without a second copy of the formulas. For a block
of n images x m captions:
  * one matrix product gives every word-region similarity of every pair, (n, R, m, L);
    both attention directions read it;
  * a cosine between a query and its attended context needs no d-dim context: with
    alpha the attention weights, |context|^2 = alpha^T G alpha, G the keys' Gram matrix;
  * the global level's projections are affine in the mean context, which is a weighted
    sum of the keys with weights summing to one, so each projection is the same weighted
    sum of per-key rows computed once per image / caption: O(R d) per pair, not O(d^2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm.auto import tqdm

from mlasm import blocks as planning
from mlasm import fused
from mlasm.blocks import _slice, _take, _to, _trim, default_memory_budget_mb
from mlasm.config import MLASMConfig
from mlasm.levels import LEVELS, levels_of

EPS = 1e-8
LEAKY_SLOPE = 0.1
MAX_BOUND_SHIFTED_LAMBDA = 40.0  # see _attend
LARGE_JOB_PAIRS = 1_000_000  # score_all shows a progress bar from this many pairs on, unless told
TRAINING_LENGTH_GROUPS = 4  # pair_levels: 56 % of one padded block's word positions on ShapeScenes batches


def l2norm(x: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """x / (||x|| + eps): a zero vector (padding) stays zero instead of becoming NaN."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


def lengths_to_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(M,) lengths -> (M, max_length) bool, True for the real words."""
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of x over the positions where mask is True (mask broadcasts against x)."""
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    return x.masked_fill(~mask, -math.inf).logsumexp(dim)


class ImageEncoding(NamedTuple):
    regions: Tensor                # (N, R, d) v_r, unit length
    mask: Tensor                   # (N, R) bool, True = a real region
    glob: Optional[Tensor]         # (N, d) h; None in a local-only (rho = 1) model


class CaptionEncoding(NamedTuple):
    words: Tensor                  # (M, L, d) u_l, unit length, zero past the caption's length
    lengths: Tensor                # (M,) long, number of real words


@dataclass
class PairExplanation:
    """Why one image and one caption score what they score, trimmed to real words and regions."""
    t2i_attention: np.ndarray      # (L, R) weight of each region for each word; rows sum to 1
    i2t_attention: np.ndarray      # (R, L) weight of each word for each region; rows sum to 1
    word_cosines: np.ndarray       # (L,) R_t2i(l) = cos(u_l, a_l)
    region_cosines: np.ndarray     # (R,) R_i2t(r) = cos(v_r, b_r)
    gate: np.ndarray               # (d,) t, the share of the global image vector h (NaN if rho = 1)
    scores: dict                   # level name -> float, as in score_all
    lambda_t2i: float
    lambda_i2t: float
    region_indices: np.ndarray     # (R,) positions of the kept regions in the image (boxes, features)


# ---------------------------------------------------------------------------------------
# Per-item terms: computed once per image / caption, read by every pair it takes part in.

class _RegionTerms(NamedTuple):
    vectors: Tensor                # (n, R, d) v_r, zero where masked
    mask: Tensor                   # (n, R) bool
    norms: Tensor                  # (n, R) |v_r|
    gram: Optional[Tensor]         # (n, R, R) v_r . v_r'; None where R x R would not fit the budget
    glob: Optional[Tensor] = None        # (n, d) h
    context_rows: Optional[Tensor] = None  # (n, R, d) W_x v_r + b_x
    gate_rows: Optional[Tensor] = None     # (n, R, d) W_g [h ; W_x v_r + b_x] + b_g


class _WordTerms(NamedTuple):
    vectors: Tensor                # (m, L, d) u_l, zero past the length
    mask: Tensor                   # (m, L) bool
    norms: Tensor                  # (m, L) |u_l|
    gram: Tensor                   # (m, L, L) u_l . u_l'
    context_rows: Optional[Tensor] = None  # (m, L, d) W_t u_l + b_t
    context_gram: Optional[Tensor] = None  # (m, L, L) their dot products


def _region_terms(regions: Tensor, mask: Tensor, gram: bool = True) -> _RegionTerms:
    mask = mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("every image needs at least one unmasked region")
    vectors = regions if mask.all() else regions.masked_fill(~mask[..., None], 0.0)  # no copy when none is masked
    return _RegionTerms(vectors, mask, torch.linalg.vector_norm(vectors, dim=-1),
                        vectors @ vectors.transpose(1, 2) if gram else None)


def _word_terms(words: Tensor, lengths: Tensor) -> _WordTerms:
    lengths = lengths.to(words.device)
    if not ((lengths >= 1) & (lengths <= words.shape[1])).all():
        raise ValueError(f"caption lengths must be in [1, {words.shape[1]}], "
                         f"got values from {int(lengths.min())} to {int(lengths.max())}")
    mask = lengths_to_mask(lengths, words.shape[1])
    vectors = words.masked_fill(~mask[..., None], 0.0)
    return _WordTerms(vectors, mask, torch.linalg.vector_norm(vectors, dim=-1), vectors @ vectors.transpose(1, 2))


def _unsqueezed(items: NamedTuple) -> NamedTuple:
    """One image's or caption's terms as a block of one: a leading dimension of size 1."""
    return type(items)._make(None if t is None else t[None] for t in items)


# ---------------------------------------------------------------------------------------
# Local alignment (spec section 3), on a block of n images x m captions.

def _similarities(regions: _RegionTerms, words: _WordTerms) -> Tensor:
    """Every v_r . u_l of every pair in one matrix product: (n, R, m, L)."""
    n, n_regions, d = regions.vectors.shape
    m, n_words, _ = words.vectors.shape
    return (regions.vectors.reshape(n * n_regions, d) @ words.vectors.reshape(m * n_words, d).T).view(
        n, n_regions, m, n_words)


def _attend(rectified: Tensor, key_dim: int, query_dim: int, key_mask: Tensor, lambda_softmax: float) -> Tensor:
    """SCAN attention weights over the keys, for every query, from LeakyReLU'd similarities.

    Each key's similarities are L2-normalised across the queries (padded queries are zero
    vectors, so they add nothing to the norm), sharpened by lambda, then a softmax runs over
    the valid keys. Returns weights shaped like ``rectified``, summing to 1 along key_dim.
    Norm and softmax are spelled out: torch's own are several times slower along a short or
    non-last dimension on CPU. The clamp keeps the gradient of an all-zero row finite.
    """
    norms = rectified.square().sum(query_dim, keepdim=True).clamp_min(EPS**2).sqrt()
    # A normalised similarity lies in [-1, 1], so lambda bounds the logits: subtracting it, like the
    # usual max, keeps exp from overflowing, and needs no pass to find the max; exp(-2 lambda) stays
    # a normal float32 up to lambda = 40, past which the max is found after all.
    shift = lambda_softmax if lambda_softmax <= MAX_BOUND_SHIFTED_LAMBDA else 0.0
    key_bias = torch.full(key_mask.shape, -shift, dtype=rectified.dtype, device=rectified.device).masked_fill(
        ~key_mask, -math.inf)  # padded keys get no weight (out of place: the mask may be vmapped, see pair_levels_at)
    logits = torch.addcmul(key_bias, rectified, lambda_softmax / (norms + EPS))
    if lambda_softmax > MAX_BOUND_SHIFTED_LAMBDA:
        logits = logits - logits.amax(key_dim, keepdim=True)
    weights = logits.exp()
    return weights / weights.sum(key_dim, keepdim=True)


def _cosine(dots: Tensor, query_norms: Tensor, context_sq_norms: Tensor) -> Tensor:
    """cos(q, c) from q . c, |q| and |c|^2 (the context c itself is never built)."""
    return dots / (query_norms * context_sq_norms.clamp_min(0).sqrt()).clamp_min(EPS)


def _text_to_image(sim: Tensor, rectified: Tensor, regions: _RegionTerms, words: _WordTerms,
                   lambda_softmax: float) -> tuple[Tensor, Tensor]:
    """Words attend to regions. Returns alpha (n, R, m, L) and R_t2i(l) = cos(u_l, a_l) (n, m, L)."""
    alpha = _attend(rectified, key_dim=1, query_dim=3, key_mask=regions.mask[:, :, None, None],
                    lambda_softmax=lambda_softmax)
    return alpha, word_context_cosines(alpha, sim, regions, words)


def word_context_cosines(alpha: Tensor, sim: Tensor, regions: _RegionTerms, words: _WordTerms) -> Tensor:
    """cos(u_l, a_l), a_l = sum_r alpha_rl v_r, from weights alpha (n, R, m, L) over the regions: (n, m, L)."""
    n, n_regions, m, n_words = sim.shape
    dots = (alpha * sim).sum(1)                                                  # (n, m, L) u_l . a_l
    if regions.gram is None:  # many regions: the attended vectors themselves, (n, m, L, d)
        context_sq = torch.einsum("nrml,nrd->nmld", alpha, regions.vectors).square().sum(-1)
    else:
        gram_alpha = torch.bmm(regions.gram, alpha.reshape(n, n_regions, m * n_words)).view_as(alpha)
        context_sq = (alpha * gram_alpha).sum(1)                                 # (n, m, L) |a_l|^2
    return _cosine(dots, words.norms, context_sq)


def _image_to_text(sim: Tensor, rectified: Tensor, regions: _RegionTerms, words: _WordTerms,
                   lambda_softmax: float) -> tuple[Tensor, Tensor]:
    """Regions attend to words. Returns beta (n, R, m, L) and R_i2t(r) = cos(v_r, b_r) (n, R, m)."""
    beta = _attend(rectified, key_dim=3, query_dim=1, key_mask=words.mask[None, None],
                   lambda_softmax=lambda_softmax)
    return beta, region_context_cosines(beta, sim, regions, words)


def region_context_cosines(beta: Tensor, sim: Tensor, regions: _RegionTerms, words: _WordTerms) -> Tensor:
    """cos(v_r, b_r), b_r = sum_l beta_rl u_l, from weights beta (n, R, m, L) over the words: (n, R, m)."""
    dots = (beta * sim).sum(3)                                                   # (n, R, m) v_r . b_r
    context_sq = (beta * torch.einsum("nrml,mlk->nrmk", beta, words.gram)).sum(3)  # (n, R, m) |b_r|^2
    return _cosine(dots, regions.norms[:, :, None], context_sq)


def _pool(cosines: Tensor, mask: Tensor, dim: int, pooling: str, lambda_lse: float) -> Tensor:
    """Pool the per-query cosines of each pair over its valid queries: mean, or LogSumExp."""
    if pooling == "mean":
        return masked_mean(cosines, mask, dim)
    if pooling == "lse":
        return masked_logsumexp(lambda_lse * cosines, mask, dim) / lambda_lse
    raise ValueError(f"pooling must be 'mean' or 'lse', got {pooling!r}")


class _BlockScores(NamedTuple):
    levels: dict                   # level name -> (n, m)
    alpha: Tensor                  # (n, R, m, L) t2i weights
    beta: Tensor                   # (n, R, m, L) i2t weights
    word_cosines: Tensor           # (n, m, L)
    region_cosines: Tensor         # (n, R, m)
    gate: Optional[Tensor]         # (n, m, d)


# ---------------------------------------------------------------------------------------

class MLASM(nn.Module):
    """Encoders (spec 2), two-way local alignment (spec 3) and semantic matching (spec 4).

    With rho = 1 the model is local-only (SCAN t2i + i2t): the global level's layers are
    not built (so every parameter still trains) and never computed; its "global" score
    matrices are NaN and explain's gate is NaN.
    """

    def __init__(self, config: MLASMConfig):
        super().__init__()
        config.check_data_sizes()
        self.config = config
        d = config.embed_size
        self.region_proj = nn.Linear(config.region_dim, d)                        # W_v
        self.word_embedding = nn.Embedding(config.vocab_size, config.word_dim, padding_idx=0)
        self.word_dropout = nn.Dropout(config.word_dropout)
        self.gru = nn.GRU(config.word_dim, d, batch_first=True, bidirectional=config.bidirectional)
        if config.uses_global_level:
            self.global_proj = nn.Linear(config.global_dim, d)                    # W_h
            self.image_context_proj = nn.Linear(d, d)                             # W_x
            self.gate = nn.Linear(2 * d, d)                                       # W_g, on [h ; x]
            self.text_context_proj = nn.Linear(d, d)                              # W_t
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.uniform_(self.word_embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.word_embedding.weight[0].zero_()

    @torch.no_grad()
    def init_word_embeddings(self, weights) -> None:
        """Copy pretrained word vectors (V, word_dim), e.g. GloVe rows in vocabulary order."""
        weights = torch.as_tensor(weights)
        if weights.shape != self.word_embedding.weight.shape:
            raise ValueError(f"word vectors of shape {tuple(weights.shape)} do not fit the embedding "
                             f"(vocab_size, word_dim) = {tuple(self.word_embedding.weight.shape)}")
        self.word_embedding.weight.copy_(weights)

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels this model scores, in the order they build up (no global level when rho = 1)."""
        return levels_of(self.config.uses_global_level)

    @property
    def directions(self) -> tuple[str, ...]:
        """The attention directions it has: t2i and i2t (a SCAN model: one)."""
        return tuple(direction for direction in ("t2i", "i2t") if direction in self.levels)

    @property
    def device(self) -> torch.device:
        return self.region_proj.weight.device

    # --- encoders (spec 2) -------------------------------------------------------------

    def encode_images(self, regions: Tensor, region_mask: Tensor, global_features: Tensor) -> ImageEncoding:
        """regions (N, R, Dr), region_mask (N, R), global_features (N, Dg) -> v_r (N, R, d), h (N, d)."""
        vectors = l2norm(self.region_proj(regions))                              # (N, R, d)
        glob = self.global_proj(l2norm(global_features)) if self.config.uses_global_level else None
        return ImageEncoding(vectors, region_mask.bool(), glob)

    def encode_captions(self, tokens: Tensor, lengths: Tensor) -> CaptionEncoding:
        """tokens (M, L) padded with 0, lengths (M,) -> u_l (M, L, d); packed, so padding never enters the GRU."""
        embedded = self.word_dropout(self.word_embedding(tokens))                # (M, L, word_dim)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=tokens.shape[1])
        if self.config.bidirectional:                                            # (M, L, 2d) -> (M, L, d)
            forward_states, backward_states = states.chunk(2, dim=-1)
            states = (forward_states + backward_states) / 2
        return CaptionEncoding(l2norm(states), lengths.to(tokens.device))

    # --- per-item terms ----------------------------------------------------------------

    def _image_terms(self, img: ImageEncoding, gram: bool = True) -> _RegionTerms:
        terms = _region_terms(img.regions, img.mask, gram)
        if not self.config.uses_global_level:
            return terms
        # x = W_x abar + b_x and the gate's input W_g [h ; x] + b_g are affine in abar = sum_r wbar_r v_r
        # with sum_r wbar_r = 1, so each is the same wbar-weighted sum of these per-region rows.
        gate_h, gate_x = self.gate.weight.split(self.config.embed_size, dim=1)   # W_g = [W_gh | W_gx]
        x_rows = self.image_context_proj(terms.vectors)                           # (n, R, d)
        gate_rows = F.linear(x_rows, gate_x).add_(F.linear(img.glob, gate_h, self.gate.bias)[:, None, :])
        return terms._replace(glob=img.glob, context_rows=x_rows, gate_rows=gate_rows)

    def _caption_terms(self, cap: CaptionEncoding) -> _WordTerms:
        terms = _word_terms(cap.words, cap.lengths)
        if not self.config.uses_global_level:
            return terms
        # t_glob = l2norm(W_t bbar + b_t) with bbar = sum_l wbar_l u_l, sum_l wbar_l = 1: likewise
        rows = self.text_context_proj(terms.vectors)                              # (m, L, d) W_t u_l + b_t
        return terms._replace(context_rows=rows, context_gram=rows @ rows.transpose(1, 2))

    # --- the pair scorer: the one implementation behind pair_levels, score_all and explain

    def _score_block(self, regions: _RegionTerms, words: _WordTerms,
                     lambda_t2i: float, lambda_i2t: float) -> _BlockScores:
        """Every level of every pair of n images x m captions, with the per-word / per-region terms."""
        config = self.config
        sim = _similarities(regions, words)                                       # (n, R, m, L)
        rectified = F.leaky_relu(sim, LEAKY_SLOPE)
        word_mask = words.mask[None]                                              # (1, m, L)
        region_mask = regions.mask[:, :, None]                                    # (n, R, 1)

        # local level (spec 3)
        alpha, word_cosines = _text_to_image(sim, rectified, regions, words, lambda_t2i)
        beta, region_cosines = _image_to_text(sim, rectified, regions, words, lambda_i2t)
        t2i = _pool(word_cosines, word_mask, 2, config.pooling, config.lambda_lse)   # (n, m)
        i2t = _pool(region_cosines, region_mask, 1, config.pooling, config.lambda_lse)
        if not config.uses_global_level:  # local-only model: no global level to compute
            return _BlockScores(self._levels(t2i, i2t), alpha, beta, word_cosines, region_cosines, None)
        region_weights = masked_mean(alpha, word_mask[:, None], 3).transpose(1, 2)   # (n, m, R) wbar_r
        word_weights = masked_mean(beta, region_mask[..., None], 1)               # (n, m, L) mean_r beta_rl
        global_score, gate = self._semantic_level(regions, words, region_weights, word_weights)
        return _BlockScores(self._levels(t2i, i2t, global_score), alpha, beta, word_cosines, region_cosines, gate)

    def _semantic_level(self, regions: _RegionTerms, words: _WordTerms, region_weights: Tensor,
                        word_weights: Tensor) -> tuple[Tensor, Tensor]:
        """Spec 4, for every pair from that pair alone: the gated global score (n, m) and the gate (n, m, d)."""
        x = torch.bmm(region_weights, regions.context_rows)                       # (n, m, d) W_x abar + b_x
        gate = torch.bmm(region_weights, regions.gate_rows).sigmoid_()            # (n, m, d) t; in place is
        # safe for autograd (bmm keeps no copy of its output) and saves a (n, m, d) allocation
        image_side = torch.lerp(x, regions.glob[:, None, :].to(x.dtype), gate)    # t * h + (1 - t) * x
        # the text side sum_l wbar_l (W_t u_l + b_t) is never built: only its dot and norm are needed
        dot = (word_weights * torch.einsum("nmd,mld->nml", image_side, words.context_rows)).sum(-1)
        text_sq = (word_weights * torch.einsum("nml,mlk->nmk", word_weights, words.context_gram)).sum(-1)
        image_norm = torch.linalg.vector_norm(image_side, dim=-1)
        return dot / ((image_norm + EPS) * (text_sq.clamp_min(0).sqrt() + EPS)), gate  # l2norm(.) . l2norm(.)

    def _levels(self, t2i: Tensor, i2t: Tensor, global_score: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Every level from t2i, i2t and the global score (NaN in a local-only model, whose final is local)."""
        local = 0.5 * t2i + 0.5 * i2t
        final = local if global_score is None else self.config.rho * local + (1 - self.config.rho) * global_score
        global_score = torch.full_like(local, math.nan) if global_score is None else global_score
        return {"t2i": t2i, "i2t": i2t, "local": local, "global": global_score, "final": final}

    def _block_levels(self, regions: _RegionTerms, words: _WordTerms) -> dict[str, Tensor]:
        """score_blocks' scorer: the fused pair loop where it applies (mlasm.fused: the same levels to
        float32 rounding, several times faster on the CPU), else _score_block's."""
        config = self.config
        sim = _similarities(regions, words) if fused.usable(regions.vectors, regions.gram) else None  # (n, R, m, L)
        if sim is None or sim.dtype != torch.float32:  # (bfloat16 autocast: torch's scorer)
            del sim
            return self._score_block(regions, words, config.lambda_t2i, config.lambda_i2t).levels
        local = fused.local_terms(sim, regions, words, config, LEAKY_SLOPE)
        if not config.uses_global_level:
            return self._levels(local.t2i, local.i2t)
        global_score = fused.semantic_scores(regions, words, local.region_weights, local.word_weights)
        return self._levels(local.t2i, local.i2t, global_score)

    # --- public scoring ----------------------------------------------------------------

    def pair_levels(self, img: ImageEncoding, cap: CaptionEncoding,
                    length_groups: int = TRAINING_LENGTH_GROUPS) -> dict[str, Tensor]:
        """Every level for every image x caption of a batch, (n, m) each; differentiable (training).

        The captions are scored in ``length_groups`` groups of similar length, each padded only to
        its own longest caption (as score_all's blocks): a batch is otherwise padded to its longest
        caption, about twice the mean on real data. Padding never changes a score, so the groups
        give the same scores and gradients as one block. Without gradients (the training step's search
        for hardest negatives) the blocks go to score_all's scorer, the fused loop where it applies.
        """
        config = self.config
        regions, words = self._image_terms(img), self._caption_terms(cap)

        def score(group_words: _WordTerms) -> dict[str, Tensor]:
            if torch.is_grad_enabled():
                return self._score_block(regions, group_words, config.lambda_t2i, config.lambda_i2t).levels
            return self._block_levels(regions, group_words)

        n_captions = words.vectors.shape[0]
        if length_groups <= 1 or n_captions < 2 * length_groups:
            return score(words)
        order = torch.argsort(cap.lengths, stable=True)                            # shortest first
        parts = []
        for group in torch.tensor_split(order, length_groups):
            parts.append(score(_trim(_take(words, group), int(cap.lengths[group].max()))))
        back = torch.argsort(order)                                                # to the batch's order
        return {level: torch.cat([part[level] for part in parts], dim=1)[:, back] for level in parts[0]}

    def pair_levels_at(self, img: ImageEncoding, cap: CaptionEncoding, image_index: Tensor,
                       caption_index: Tensor) -> dict[str, Tensor]:
        """Every level of the K pairs (image_index[k], caption_index[k]), (K,) each; differentiable.

        A training step with hardest negatives needs gradients through a few pairs of each row and
        column only (mlasm.loss.hardest_negative_loss): here each pair is its own 1 x 1 block of
        _score_block, the K blocks batched by torch.func.vmap, so the formulas are the same ones.
        """
        config = self.config
        regions, words = self._image_terms(img), self._caption_terms(cap)

        def one_pair(pair_regions: _RegionTerms, pair_words: _WordTerms) -> dict[str, Tensor]:
            block = self._score_block(_unsqueezed(pair_regions), _unsqueezed(pair_words),
                                      config.lambda_t2i, config.lambda_i2t)
            return {level: value[0, 0] for level, value in block.levels.items()}

        return torch.func.vmap(one_pair)(_take(regions, image_index), _take(words, caption_index))

    def forward(self, regions: Tensor, region_mask: Tensor, global_features: Tensor,
                tokens: Tensor, lengths: Tensor, all_levels: bool = False):
        """Final scores of all B images x B captions of a training batch: (B, B); every level's with ``all_levels``."""
        img = self.encode_images(regions, region_mask, global_features)
        levels = self.pair_levels(img, self.encode_captions(tokens, lengths))
        return levels if all_levels else levels["final"]

    @torch.no_grad()
    def score_all(self, img: ImageEncoding, cap: CaptionEncoding, memory_budget_mb: Optional[float] = None,
                  progress: Optional[bool] = None, device=None,
                  blocks: Optional[tuple[int, int]] = None) -> dict[str, Tensor]:
        """Every level for every image x caption of a gallery: (N, M) CPU tensors, in the captions'
        own order; the blocks of ``score_blocks`` (which see) put in place. ``blocks = (first, step)``
        scores only blocks first, first + step, ... of the plan and leaves the others zero: the share
        of one of ``step`` processes (mlasm.distributed), whose sum is the whole.
        """
        allocate = torch.empty if blocks is None else torch.zeros
        scores = {level: allocate(len(img.regions), len(cap.words), dtype=img.regions.dtype) for level in LEVELS}
        for rows, columns, block in self.score_blocks(img, cap, memory_budget_mb, progress, device, blocks):
            for level, value in block.items():
                scores[level][rows, columns] = value.to(scores[level].device, scores[level].dtype)
        return scores

    @torch.no_grad()
    def score_blocks(self, img: ImageEncoding, cap: CaptionEncoding, memory_budget_mb: Optional[float] = None,
                     progress: Optional[bool] = None, device=None, blocks: Optional[tuple[int, int]] = None,
                     from_image: int = 0) -> Iterator[tuple[slice, Tensor, dict[str, Tensor]]]:
        """Every level of every image x caption, one block at a time: (images, caption columns, level -> (n, m)).

        The blocks of mlasm.blocks.plan_gallery (captions shortest first, each run trimmed to its longest
        caption; a block's intermediates and its images' terms within ``memory_budget_mb``, default
        ``default_memory_budget_mb``), band by band: every caption run of one slice of images, then the
        next slice. Runs on ``device`` (default: the model's); the encodings may live elsewhere and travel
        one block at a time; the terms of all captions are held at once, each run's cut to its longest
        caption (about twice the captions' words without the gallery's padding).
        ``progress``: a tqdm bar (None: for large jobs). ``from_image`` (the first image of a band: a
        resumed evaluation) skips the bands before it. ``blocks``: see score_all.
        """
        device = self.device if device is None else torch.device(device)
        budget = default_memory_budget_mb(device) if memory_budget_mb is None else memory_budget_mb
        order, plan = planning.plan_gallery(img.regions, cap.lengths, budget)
        if from_image % plan.rows:
            raise ValueError(f"from_image {from_image} is not the first image of a band of {plan.rows} images")
        n_images, n_captions, sorted_lengths = len(img.regions), len(cap.words), cap.lengths.cpu()[order]
        # each run of captions' terms, made once at the run's own longest caption (not the gallery's)
        sorted_cap, runs = _take(cap, order), []
        for start, stop in plan.chunks:
            longest = int(sorted_lengths[stop - 1])
            run = CaptionEncoding(sorted_cap.words[start:stop, :longest], sorted_cap.lengths[start:stop])
            runs.append(_to(self._caption_terms(_to(run, self.device)), device))
        show = progress if progress is not None else n_images * n_captions >= LARGE_JOB_PAIRS
        with tqdm(total=n_images * n_captions, initial=from_image * n_captions, unit="pair", unit_scale=True,
                  desc="scoring pairs", disable=not show) as bar:
            for i in range(from_image, n_images, plan.rows):
                regions = _to(self._image_terms(_to(_slice(img, i, i + plan.rows), self.device), plan.gram), device)
                n = regions.vectors.shape[0]
                for c, (start, stop) in enumerate(plan.chunks):
                    if blocks is None or (i // plan.rows * len(plan.chunks) + c) % blocks[1] == blocks[0]:
                        block = self._block_levels(regions, runs[c])
                        yield slice(i, i + n), order[start:stop], block  # (else another process's block)
                    bar.update(n * (stop - start))
                del regions  # nor a band's image terms beside the next band's (the plan counts one band's)

    @torch.no_grad()
    def explain(self, img: ImageEncoding, cap: CaptionEncoding, image_index: int = 0, caption_index: int = 0,
                lambda_t2i: Optional[float] = None, lambda_i2t: Optional[float] = None) -> PairExplanation:
        """The attention, per-word and per-region cosines, gate and scores of one pair.

        lambda_t2i / lambda_i2t override the softmax temperatures (a teaching slider can
        recompute the attention live); without them the scores equal score_all's.
        """
        if not 0 <= image_index < img.regions.shape[0]:
            raise IndexError(f"image_index {image_index} out of range for {img.regions.shape[0]} images")
        if not 0 <= caption_index < cap.words.shape[0]:
            raise IndexError(f"caption_index {caption_index} out of range for {cap.words.shape[0]} captions")
        lambda_t2i = self.config.lambda_t2i if lambda_t2i is None else float(lambda_t2i)
        lambda_i2t = self.config.lambda_i2t if lambda_i2t is None else float(lambda_i2t)
        gram = planning._gram_fits(img.regions.shape[1], img.regions.element_size(),
                                   int(default_memory_budget_mb(self.device) * 2**20))
        regions = self._image_terms(_to(_slice(img, image_index, image_index + 1), self.device), gram)
        words = self._caption_terms(_to(_slice(cap, caption_index, caption_index + 1), self.device))
        block = self._score_block(regions, words, lambda_t2i, lambda_i2t)

        kept = regions.mask[0].nonzero().squeeze(1)                               # (R,)
        n_words = int(words.mask[0].sum())
        alpha = block.alpha[0, kept, 0, :n_words]                                 # (R, L)
        beta = block.beta[0, kept, 0, :n_words]                                   # (R, L)
        gate = (block.gate[0, 0] if block.gate is not None
                else torch.full((self.config.embed_size,), math.nan))

        return PairExplanation(
            t2i_attention=alpha.T.cpu().numpy(),
            i2t_attention=beta.cpu().numpy(),
            word_cosines=block.word_cosines[0, 0, :n_words].cpu().numpy(),
            region_cosines=block.region_cosines[0, kept, 0].cpu().numpy(),
            gate=gate.cpu().numpy(),
            scores={level: float(value[0, 0]) for level, value in block.levels.items()},
            lambda_t2i=lambda_t2i,
            lambda_i2t=lambda_i2t,
            region_indices=kept.cpu().numpy(),
        )
