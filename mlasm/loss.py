"""Hinge triplet loss on the in-batch score matrix (VSE++, spec section 6)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def _violations(scores: Tensor, margin: float, positive_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The hinge terms, zero for positive pairs: per image row margin + s(i, j) - s(i, i), per
    caption column margin + s(i, j) - s(j, j), both clamped at 0."""
    n = scores.shape[0]
    if scores.shape != (n, n):
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    if positive_mask is None:
        positive_mask = torch.eye(n, dtype=torch.bool, device=scores.device)
    else:
        positive_mask = positive_mask.to(device=scores.device, dtype=torch.bool)
        if positive_mask.shape != scores.shape or not positive_mask.diagonal().all():
            raise ValueError("positive_mask must be (B, B) with a True diagonal (the training pairs)")
    positive = scores.diagonal()
    caption_violations = (margin + scores - positive[:, None]).clamp(min=0).masked_fill(positive_mask, 0)
    image_violations = (margin + scores - positive[None, :]).clamp(min=0).masked_fill(positive_mask, 0)
    return caption_violations, image_violations


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
    caption_violations, image_violations = _violations(scores, margin, positive_mask)
    if hardest:
        return caption_violations.max(dim=1).values.sum() + image_violations.max(dim=0).values.sum()
    return caption_violations.sum() + image_violations.sum()


def loss_at_collapse(margin: float, hardest: bool, hinges_with_a_negative: int, negative_comparisons: int) -> float:
    """What :func:`triplet_loss` is when every pair scores the same: each hinge sits at the margin,
    one per (pair, direction) that has a negative with hardest negatives, one per (pair, negative,
    direction) when summing. The yardstick of ``loss_share_of_collapse`` (1.0: collapsed)."""
    return margin * (hinges_with_a_negative if hardest else negative_comparisons)


@torch.no_grad()
def batch_statistics(scores: Tensor, margin: float, positive_mask: Optional[Tensor] = None,
                     hardest: bool = True) -> dict[str, float]:
    """What the hinge sees in one batch, to tell a model that separates from one that has collapsed.

    positive: mean score of the training pairs (the diagonal);
    hardest_negative: mean over both directions of each pair's hardest (highest-scored) negative;
    inside_margin: share of (pair, negative) comparisons, both directions, with the negative
        scored above positive - margin (where the hinge is active). A collapsed model sits near 1.
    collapse_loss: ``triplet_loss(scores, margin, hardest, positive_mask)`` had every pair scored the same.
    Pairs in ``positive_mask`` are not negatives, as in ``triplet_loss``.
    """
    scores = scores.detach().float()
    if positive_mask is None:
        positive_mask = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    positive_mask = positive_mask.to(device=scores.device, dtype=torch.bool)
    caption_violations, image_violations = _violations(scores, margin, positive_mask)
    negatives = scores.masked_fill(positive_mask, -math.inf)
    hardest_negatives = torch.cat([negatives.max(dim=1).values, negatives.max(dim=0).values])
    hardest_negatives = hardest_negatives[torch.isfinite(hardest_negatives)]
    comparisons = 2 * int((~positive_mask).sum())
    inside = int((caption_violations > 0).sum() + (image_violations > 0).sum())  # where the hinge is active
    return {"positive": float(scores.diagonal().mean()),
            "hardest_negative": float(hardest_negatives.mean()) if hardest_negatives.numel() else math.nan,
            "inside_margin": inside / max(comparisons, 1),
            "collapse_loss": loss_at_collapse(margin, hardest, hardest_negatives.numel(), comparisons)}
