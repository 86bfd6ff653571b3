"""triplet_loss against values worked out by hand (margin 0.2)."""
from __future__ import annotations

import pytest
import torch

from mlasm.loss import triplet_loss

# images x captions; the diagonal holds the training pairs
SCORES_3X3 = torch.tensor([[0.90, 0.80, 0.10],
                           [0.75, 0.70, 0.60],
                           [0.20, 0.65, 0.50]])
# caption violations, margin + s(i, j) - s(i, i), per image row:
#   row 0: j1 0.10, j2 -       row 1: j0 0.25, j2 0.10      row 2: j0 -, j1 0.35
# image violations, margin + s(i, j) - s(j, j), per caption column:
#   col 0: i1 0.05, i2 -       col 1: i0 0.30, i2 0.15      col 2: i0 -, i1 0.30


def test_2x2_by_hand():
    scores = torch.tensor([[0.5, 0.6], [0.4, 0.3]])
    # image 0: 0.2 + 0.6 - 0.5 = 0.3; image 1: 0.2 + 0.4 - 0.3 = 0.3
    # caption 0: 0.2 + 0.4 - 0.5 = 0.1; caption 1: 0.2 + 0.6 - 0.3 = 0.5
    assert float(triplet_loss(scores)) == pytest.approx(1.2)
    assert float(triplet_loss(scores, hardest=False)) == pytest.approx(1.2)  # one negative each: the same


def test_3x3_hardest_against_sum():
    assert float(triplet_loss(SCORES_3X3)) == pytest.approx(0.10 + 0.25 + 0.35 + 0.05 + 0.30 + 0.30)
    assert float(triplet_loss(SCORES_3X3, hardest=False)) == pytest.approx(
        0.10 + (0.25 + 0.10) + 0.35 + 0.05 + (0.30 + 0.15) + 0.30)


def test_pairs_of_the_same_image_are_not_negatives():
    # images 0 and 1 are the same picture, reached through two of its captions
    positive = torch.eye(3, dtype=torch.bool)
    positive[0, 1] = positive[1, 0] = True
    # left: row 1 j2 0.10, row 2 j1 0.35, col 1 i2 0.15, col 2 i1 0.30
    assert float(triplet_loss(SCORES_3X3, positive_mask=positive)) == pytest.approx(0.10 + 0.35 + 0.15 + 0.30)
    assert float(triplet_loss(SCORES_3X3, hardest=False, positive_mask=positive)) == pytest.approx(
        0.10 + 0.35 + 0.15 + 0.30)


def test_margin_met_costs_nothing_and_gradient_reaches_the_hardest_negative():
    assert float(triplet_loss(torch.eye(3))) == 0.0
    scores = SCORES_3X3.clone().requires_grad_()
    triplet_loss(scores).backward()
    # row 2's hardest caption (j1) and column 1's hardest image (i0) are pushed down
    assert scores.grad[2, 1] > 0 and scores.grad[0, 1] > 0
    assert scores.grad[2, 0] == 0                       # within the margin: no gradient


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="square"):
        triplet_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="diagonal"):
        triplet_loss(SCORES_3X3, positive_mask=torch.zeros(3, 3, dtype=torch.bool))
