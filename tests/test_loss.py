"""triplet_loss against values worked out by hand (margin 0.2)."""
from __future__ import annotations

import pytest
import torch

from mlasm.loss import (batch_statistics, hardest_negative_loss, hinge_sums, loss_at_collapse, rows_and_columns_loss,
                        triplet_loss)

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


def test_a_false_negative_is_never_the_hardest_negative():
    """Caption 1 is in truth also true of image 0: masked, the hinge uses the next hardest negative."""
    scores = torch.tensor([[0.5, 0.9, 0.1],
                           [0.2, 0.6, 0.3],
                           [0.0, 0.35, 0.7]])
    truth = torch.tensor([[True, True, False], [False, True, False], [False, False, True]])
    # by hand, margin 0.2, hardest per image (row) then per caption (column), hinge clamped at 0:
    # image 0: negatives {0.1} (0.9 masked) -> 0.2 + 0.1 - 0.5 = -0.2 -> 0
    # image 1: negatives {0.2, 0.3} -> 0.2 + 0.3 - 0.6 = -0.1 -> 0
    # image 2: negatives {0.0, 0.35} -> 0.2 + 0.35 - 0.7 = -0.15 -> 0
    # caption 0: negatives {0.2, 0.0} -> 0.2 + 0.2 - 0.5 = -0.1 -> 0
    # caption 1: negatives {0.35} (0.9 masked) -> 0.2 + 0.35 - 0.6 = -0.05 -> 0
    # caption 2: negatives {0.1, 0.3} -> 0.2 + 0.3 - 0.7 = -0.2 -> 0
    assert triplet_loss(scores, 0.2, positive_mask=truth).item() == pytest.approx(0.0, abs=1e-6)
    # unmasked, 0.9 is the hardest negative of image 0 and of caption 1: 0.6 + 0.5
    assert triplet_loss(scores, 0.2).item() == pytest.approx(0.6 + 0.5)
    scores.requires_grad_(True)
    triplet_loss(scores, 0.3, positive_mask=truth).backward()
    assert scores.grad[0, 1] == 0  # the false negative gets no push


def test_batch_statistics_by_hand():
    scores = torch.tensor([[0.5, 0.9, 0.1],
                           [0.2, 0.6, 0.3],
                           [0.0, 0.35, 0.7]])
    truth = torch.tensor([[True, True, False], [False, True, False], [False, False, True]])
    stats = batch_statistics(scores, 0.2, truth)
    assert stats["positive"] == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    # hardest per image 0.1, 0.3, 0.35; per caption 0.2, 0.35, 0.3
    assert stats["hardest_negative"] == pytest.approx((0.1 + 0.3 + 0.35 + 0.2 + 0.35 + 0.3) / 6)
    # 5 negatives, 10 comparisons, none above its positive - 0.2; with margin 0.27 the thresholds
    # fall to 0.23, 0.33, 0.43 (rows and columns alike): only caption 1's 0.35 is above its 0.33
    assert stats["inside_margin"] == pytest.approx(0.0)
    assert batch_statistics(scores, 0.27, truth)["inside_margin"] == pytest.approx(1 / 10)
    collapsed = batch_statistics(torch.full((4, 4), 0.3), 0.2)
    assert collapsed["inside_margin"] == 1.0 and collapsed["positive"] == pytest.approx(collapsed["hardest_negative"])


@pytest.mark.parametrize("hardest", [True, False])
def test_the_collapsed_loss_is_the_loss_of_scores_all_equal(hardest):
    """The yardstick of loss_share_of_collapse: triplet_loss itself on a matrix of one value,
    known positives included (they are no negatives, so they add no hinge)."""
    truth = torch.eye(5, dtype=torch.bool)
    truth[0, 3] = truth[2, 1] = True
    flat = torch.full((5, 5), 0.42)
    loss = triplet_loss(flat, 0.2, hardest=hardest, positive_mask=truth).item()
    stats = batch_statistics(flat, 0.2, truth, hardest=hardest)
    assert stats["collapse_loss"] == pytest.approx(loss)
    # by hand: 18 negatives in each direction (25 - 7 known positives); every row and column has one
    assert loss == pytest.approx(0.2 * (10 if hardest else 36))


@pytest.mark.parametrize("hardest", [True, False])
def test_the_ranks_shares_of_the_loss_add_up_to_the_loss_of_the_whole_batch(hardest):
    """Processes that each score their rows and columns of the batch add up to one process scoring it all."""
    generator = torch.Generator().manual_seed(3)
    n, b = 12, 4
    scores = torch.rand(n, n, generator=generator, dtype=torch.float64, requires_grad=True)
    positives = torch.eye(n, dtype=torch.bool)
    positives[0, 5] = positives[7, 2] = True  # known positives across the ranks' slices are no negatives
    whole = triplet_loss(scores, margin=0.2, hardest=hardest, positive_mask=positives)
    (expected_gradient,) = torch.autograd.grad(whole, scores)
    shares = [rows_and_columns_loss(scores[r * b:(r + 1) * b], scores[:, r * b:(r + 1) * b], r * b, 0.2,
                                    hardest, positives[r * b:(r + 1) * b], positives[:, r * b:(r + 1) * b])
              for r in range(n // b)]
    (gradient,) = torch.autograd.grad(sum(shares), scores)
    assert sum(shares).item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-12)
    sums = sum(hinge_sums(scores[r * b:(r + 1) * b], scores[:, r * b:(r + 1) * b], r * b, 0.2,
                          positives[r * b:(r + 1) * b], positives[:, r * b:(r + 1) * b]) for r in range(n // b))
    expected = batch_statistics(scores, 0.2, positives)
    assert sums[0].item() / n == pytest.approx(expected["positive"])
    assert sums[1].item() / sums[2].item() == pytest.approx(expected["hardest_negative"])
    assert sums[3].item() / sums[4].item() == pytest.approx(expected["inside_margin"])
    expected = batch_statistics(scores, 0.2, positives, hardest=hardest)
    assert loss_at_collapse(0.2, hardest, sums[2].item(), sums[4].item()) == pytest.approx(expected["collapse_loss"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardest_negative_loss_is_the_whole_batch_loss_with_gradients_through_its_pairs_alone(seed):
    """Training scores every pair without gradients, then only the positives and the active hardest
    negatives with them: the same value and gradients as the weighted sum of triplet_loss."""
    n, generator = 7, torch.Generator().manual_seed(seed)
    weights = {"final": 1.0, "t2i": 0.5, "global": 0.25}
    matrices = {level: (0.3 * torch.randn(n, n, dtype=torch.float64, generator=generator)).requires_grad_()
                for level in weights}
    positive = torch.eye(n, dtype=torch.bool)
    positive[0, 1] = positive[1, 0] = True  # one picture reached through two captions
    positive[2] = True                      # image 2 is true of every caption: its row has no negative
    requested = []

    def score_pairs(images, captions):
        requested.extend(zip(images.tolist(), captions.tolist()))
        return {level: matrix[images, captions] for level, matrix in matrices.items()}

    loss = hardest_negative_loss({level: m.detach() for level, m in matrices.items()}, weights, 0.2, positive,
                                 score_pairs)
    gradients = torch.autograd.grad(loss, list(matrices.values()))
    expected = sum(weight * triplet_loss(matrices[level], 0.2, True, positive) for level, weight in weights.items())
    expected_gradients = torch.autograd.grad(expected, list(matrices.values()))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12) and expected.item() > 0
    for actual, wanted in zip(gradients, expected_gradients):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-12)
    # the pairs scored: each once, the positives and exactly the negatives that get a gradient
    pushed = {(i, j) for g in expected_gradients for i, j in (g != 0).nonzero().tolist() if i != j}
    assert len(requested) == len(set(requested))
    assert set(requested) == {(i, i) for i in range(n)} | pushed
    assert len(requested) < n * n


def test_hardest_negative_loss_of_a_nan_score_is_nan_as_triplet_loss():
    """A model that produced NaN must not train on as if every margin were met: training stops on it."""
    matrix = SCORES_3X3.clone()
    matrix[1, 2] = float("nan")
    loss = hardest_negative_loss({"final": matrix}, {"final": 1.0}, 0.2, torch.eye(3, dtype=torch.bool),
                                 lambda images, captions: {"final": matrix[images, captions]})
    assert torch.isnan(loss) and torch.isnan(triplet_loss(matrix))


def test_hardest_negative_loss_with_every_margin_met_scores_only_the_positives():
    matrix = torch.eye(3, dtype=torch.float64).requires_grad_()
    requested = []

    def score_pairs(images, captions):
        requested.extend(zip(images.tolist(), captions.tolist()))
        return {"final": matrix[images, captions]}

    loss = hardest_negative_loss({"final": matrix.detach()}, {"final": 1.0}, 0.2, torch.eye(3, dtype=torch.bool),
                                 score_pairs)
    loss.backward()  # no active hinge: a loss of 0 that still backpropagates (zero gradients)
    assert loss.item() == 0.0 and requested == [(0, 0), (1, 1), (2, 2)]
    assert torch.equal(matrix.grad, torch.zeros(3, 3, dtype=torch.float64))
