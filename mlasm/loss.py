"""Hinge triplet loss (VSE++, spec section 6), for one process and for a share of a batch across processes.

One formula serves both. A process scores ``rows`` (b, n): its b images against the batch's n
captions, and ``columns`` (n, b): the batch's images against its b captions; its training pairs
sit at (offset + k, offset + k). One process is the case b = n, offset 0, rows = columns = the
whole (B, B) matrix. Summed over the processes, the shares are the loss of the whole batch.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor


def _violations(rows: Tensor, columns: Tensor, offset: int, margin: float, row_positives: Tensor,
                column_positives: Tensor) -> tuple[Tensor, Tensor]:
    """The hinge terms, zero for positive pairs: per image row margin + s(i, j) - s(i, i), per
    caption column margin + s(i, j) - s(j, j), both clamped at 0."""
    row_positive = rows.diagonal(offset)                                         # s(i, i) of the rows' images
    column_positive = columns.diagonal(-offset)                                  # s(j, j) of the columns' captions
    caption_violations = (margin + rows - row_positive[:, None]).clamp(min=0).masked_fill(row_positives, 0)
    image_violations = (margin + columns - column_positive[None, :]).clamp(min=0).masked_fill(column_positives, 0)
    return caption_violations, image_violations


def rows_and_columns_loss(rows: Tensor, columns: Tensor, offset: int, margin: float, hardest: bool,
                          row_positives: Tensor, column_positives: Tensor) -> Tensor:
    """This process's share of the hinge loss of the batch (see the module docstring and :func:`triplet_loss`).

    ``row_positives`` (b, n) and ``column_positives`` (n, b) are the matching slices of the batch's
    positive mask: pairs true of each other are never negatives.
    """
    caption_violations, image_violations = _violations(rows, columns, offset, margin, row_positives, column_positives)
    if hardest:
        return caption_violations.max(dim=1).values.sum() + image_violations.max(dim=0).values.sum()
    return caption_violations.sum() + image_violations.sum()


def square_positive_mask(scores: Tensor, positive_mask: Optional[Tensor]) -> Tensor:
    """The (B, B) positive mask of a whole batch's score matrix, checked; the identity by default."""
    n = scores.shape[0]
    if scores.shape != (n, n):
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    if positive_mask is None:
        return torch.eye(n, dtype=torch.bool, device=scores.device)
    positive_mask = positive_mask.to(device=scores.device, dtype=torch.bool)
    if positive_mask.shape != scores.shape or not positive_mask.diagonal().all():
        raise ValueError("positive_mask must be (B, B) with a True diagonal (the training pairs)")
    return positive_mask


def triplet_loss(scores: Tensor, margin: float = 0.2, hardest: bool = True,
                 positive_mask: Optional[Tensor] = None) -> Tensor:
    """Hinge loss of every training pair (k, k) against its negatives, both directions.

    scores: (B, B), images x captions; the diagonal holds the training pairs.
    hardest: True = VSE++ max violation (only the hardest negative of each image and of
        each caption counts); False = the sum over all negatives (a warm-up: every
        negative gives gradient while the hardest ones are still noise).
    positive_mask: (B, B) bool, True where a caption is true of an image: the same image twice
        in a batch (through two of its captions), or any pair the data knows to be true
        (complete positives). Such pairs are never negatives. Default: the identity. Its
        diagonal must be True.

    Reduction is the sum over the batch, as in VSE++ (its margin-based learning rate
    was tuned against a sum): divide by B for a mean.
    """
    positive_mask = square_positive_mask(scores, positive_mask)
    return rows_and_columns_loss(scores, scores, 0, margin, hardest, positive_mask, positive_mask)


def hardest_negative_loss(scores: dict[str, Tensor], weights: dict[str, float], margin: float,
                          positive_mask: Tensor, score_pairs: Callable[[Tensor, Tensor], dict[str, Tensor]]) -> Tensor:
    """sum over levels of weights[level] x triplet_loss(scores[level], margin, hardest=True, positive_mask),
    with gradients only through the pairs that loss is made of.

    A row's hardest-negative hinge [margin + s(i, j*) - s(i, i)]_+ has the value and gradient of two
    pairs, the positive and the highest-scored negative j*, and none where it is not active; a column's
    likewise. So ``scores`` (level -> (B, B), without gradients: the fused loop scores them fast) picks
    each row's and column's hardest negative and whether its hinge is active, and
    ``score_pairs(image_index, caption_index)`` (level -> (K,), with gradients) scores only the
    positives and those negatives: at most B (1 + 2 x levels) of the B^2 pairs. The value and gradients
    are triplet_loss's to rounding, unless rounding reorders two negatives scored alike.
    """
    n = positive_mask.shape[0]
    diagonal = torch.arange(n, device=positive_mask.device)
    images, captions, hinges = [diagonal], [diagonal], []  # hinges: (level, rows or columns' positives, slots)
    used = n
    for level in weights:
        level_scores = scores[level].detach()
        negatives = level_scores.masked_fill(positive_mask, -math.inf)
        for dim in (1, 0):  # each image's hardest caption, each caption's hardest image
            hardest, other = negatives.max(dim=dim)
            # inactive where the margin is met or there is no negative (-inf); a NaN stays active, so
            # that it reaches the loss and the step stops as one through every pair would
            active = ~(margin + hardest - level_scores.diagonal() <= 0)
            own, other = diagonal[active], other[active]
            images.append(own if dim == 1 else other)
            captions.append(other if dim == 1 else own)
            hinges.append((level, own, torch.arange(used, used + len(own), device=own.device)))
            used += len(own)
    keys = torch.cat(images) * n + torch.cat(captions)
    unique, slot = torch.unique(keys, return_inverse=True)  # a pair hardest at several levels is scored once
    levels = score_pairs(unique // n, unique % n)
    loss = levels[next(iter(weights))].new_zeros(())
    for level, own, slots in hinges:
        pair_scores = levels[level]
        positive = pair_scores[slot[own]]  # the positive pair (own, own) sits in slot[own], the first n keys
        loss = loss + weights[level] * (margin + pair_scores[slot[slots]] - positive).clamp(min=0).sum()
    return loss


def loss_at_collapse(margin: float, hardest: bool, hinges_with_a_negative: int, negative_comparisons: int) -> float:
    """What :func:`triplet_loss` is when every pair scores the same: each hinge sits at the margin,
    one per (pair, direction) that has a negative with hardest negatives, one per (pair, negative,
    direction) when summing. The yardstick of ``loss_share_of_collapse`` (1.0: collapsed)."""
    return margin * (hinges_with_a_negative if hardest else negative_comparisons)


@torch.no_grad()
def hinge_sums(rows: Tensor, columns: Tensor, offset: int, margin: float, row_positives: Tensor,
               column_positives: Tensor) -> Tensor:
    """This process's sums behind :func:`statistics_from_sums`, to add over processes: the positive pairs' scores,
    the hardest negatives' scores and their count, the active hinges (inside), the comparisons."""
    rows, columns = rows.detach().float(), columns.detach().float()
    caption_violations, image_violations = _violations(rows, columns, offset, margin, row_positives, column_positives)
    hardest = torch.cat([rows.masked_fill(row_positives, -math.inf).max(dim=1).values,
                         columns.masked_fill(column_positives, -math.inf).max(dim=0).values])
    finite = hardest[torch.isfinite(hardest)]  # a pair with no negative has no hardest one
    return torch.stack([rows.diagonal(offset).sum(), finite.sum(),
                        torch.tensor(float(finite.numel()), device=rows.device),
                        ((caption_violations > 0).sum() + (image_violations > 0).sum()).float(),
                        ((~row_positives).sum() + (~column_positives).sum()).float()])


def statistics_from_sums(sums: Tensor, pairs: int, margin: float, hardest: bool) -> dict[str, float]:
    """What the hinge sees in one batch of ``pairs`` training pairs, from the sums of :func:`hinge_sums`:
    to tell a model that separates from one that has collapsed.

    positive: mean score of the training pairs;
    hardest_negative: mean over both directions of each pair's hardest (highest-scored) negative;
    inside_margin: share of (pair, negative) comparisons, both directions, with the negative
        scored above positive - margin (where the hinge is active). A collapsed model sits near 1.
    collapse_loss: what the loss would have been had every pair scored the same.
    """
    _, _, hardest_count, inside, comparisons = sums.tolist()
    # the means in float32, as torch.mean takes them
    return {"positive": (sums[0] / pairs).item(),
            "hardest_negative": (sums[1] / hardest_count).item() if hardest_count else math.nan,
            "inside_margin": inside / max(comparisons, 1),
            "collapse_loss": loss_at_collapse(margin, hardest, int(hardest_count), int(comparisons))}


def batch_statistics(scores: Tensor, margin: float, positive_mask: Optional[Tensor] = None,
                     hardest: bool = True) -> dict[str, float]:
    """:func:`statistics_from_sums` of a whole (B, B) batch; pairs in ``positive_mask`` are not
    negatives, as in :func:`triplet_loss`."""
    positive_mask = square_positive_mask(scores, positive_mask)
    sums = hinge_sums(scores, scores, 0, margin, positive_mask, positive_mask)
    return statistics_from_sums(sums, scores.shape[0], margin, hardest)
