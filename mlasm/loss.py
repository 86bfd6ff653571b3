"""Hinge triplet loss on the in-batch score matrix (VSE++, spec section 6)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def triplet_loss(scores: Tensor, margin: float = 0.2, hardest: bool = True,
                 positive_mask: Optional[Tensor] = None) -> Tensor:
    """Hinge loss of every training pair (k, k) against its negatives, both directions.

    scores: (B, B), images x captions; the diagonal holds the training pairs.
    hardest: True = VSE++ max violation (only the hardest negative of each image and of
        each caption counts); False = the sum over all negatives (a warm-up: every
        negative gives gradient while the hardest ones are still noise).
    positive_mask: (B, B) bool, True where a caption belongs to an image. Such pairs are
        never negatives (a batch can hold the same image twice, through two of its
        captions). Default: the identity. Its diagonal must be True.

    Reduction is the sum over the batch, as in VSE++ (its margin-based learning rate
    was tuned against a sum): divide by B for a mean.
    """
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
    # image i against caption j: margin + s(i, j) - s(i, i); caption j against image i: margin + s(i, j) - s(j, j)
    caption_violations = (margin + scores - positive[:, None]).clamp(min=0).masked_fill(positive_mask, 0)
    image_violations = (margin + scores - positive[None, :]).clamp(min=0).masked_fill(positive_mask, 0)
    if hardest:
        return caption_violations.max(dim=1).values.sum() + image_violations.max(dim=0).values.sum()
    return caption_violations.sum() + image_violations.sum()
