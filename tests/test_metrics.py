import numpy as np
import pytest

from mlasm.metrics import (
    folded_retrieval_metrics,
    i2t_ranks,
    pointing_accuracy,
    recall_summary,
    retrieval_metrics,
    t2i_ranks,
)


def test_ranks_worked_by_hand():
    # 2 images, 4 captions: captions 0,1 -> image 0; 2,3 -> image 1.
    caption_to_image = np.array([0, 0, 1, 1])
    scores = np.array([
        [0.1, 0.5, 0.9, 0.2],  # image 0: best own caption (0.5) is beaten by caption 2 only -> rank 1
        [0.0, 0.3, 0.4, 0.8],  # image 1: best own caption 0.8, nothing above -> rank 0
    ])
    assert i2t_ranks(scores, caption_to_image).tolist() == [1, 0]
    # caption 0: own 0.1 vs image1 0.0 -> 0; caption 1: 0.5 vs 0.3 -> 0;
    # caption 2: own 0.4 vs image0 0.9 -> 1; caption 3: 0.8 vs 0.2 -> 0
    assert t2i_ranks(scores, caption_to_image).tolist() == [0, 0, 1, 0]


def test_ties_count_against_the_query():
    caption_to_image = np.repeat(np.arange(10), 5)
    scores = np.zeros((10, 50))
    result = retrieval_metrics(scores, caption_to_image)
    assert result["t2i"]["r1"] == 0.0  # every other image ties with the right one
    assert result["i2t"]["r1"] == 0.0


def test_perfect_scores_and_rsum_is_sum_of_six():
    caption_to_image = np.repeat(np.arange(20), 5)
    scores = (caption_to_image[None, :] == np.arange(20)[:, None]).astype(float)
    result = retrieval_metrics(scores, caption_to_image)
    assert result["rsum"] == pytest.approx(600.0)
    assert result["i2t"]["medr"] == 1.0 and result["t2i"]["meanr"] == 1.0


def test_recall_summary_known_values():
    summary = recall_summary(np.array([0, 1, 4, 5, 9, 10, 20, 30]))
    assert summary["r1"] == pytest.approx(12.5)
    assert summary["r5"] == pytest.approx(37.5)
    assert summary["r10"] == pytest.approx(62.5)
    assert summary["medr"] == 8.0  # median 7.5 -> floor 7 -> +1
    assert summary["meanr"] == pytest.approx(np.mean([0, 1, 4, 5, 9, 10, 20, 30]) + 1)


def test_folds_average_equals_manual_average():
    rng = np.random.default_rng(0)
    caption_to_image = np.repeat(np.arange(10), 5)
    scores = rng.normal(size=(10, 50))
    folded = folded_retrieval_metrics(scores, caption_to_image, n_folds=2)
    first = retrieval_metrics(scores[:5, :25], caption_to_image[:25])
    second = retrieval_metrics(scores[5:, 25:], caption_to_image[25:] - 5)
    assert folded["rsum"] == pytest.approx((first["rsum"] + second["rsum"]) / 2)
    assert folded["t2i"]["r1"] == pytest.approx((first["t2i"]["r1"] + second["t2i"]["r1"]) / 2)
    with pytest.raises(ValueError, match="equal folds"):
        folded_retrieval_metrics(scores, caption_to_image, n_folds=3)


def test_pointing_accuracy_counts_grounded_words_only():
    attention_argmax = [[2, 0, 1], [3, 3]]
    grounding = [[(0, [2]), (2, [0, 5])], [(1, [3])]]
    result = pointing_accuracy(attention_argmax, grounding)
    assert result == {"accuracy": pytest.approx(200 / 3), "words": 3, "hits": 2}


def test_pointing_chance_is_share_of_object_regions():
    result = pointing_accuracy([[0, 1]], [[(0, [0]), (1, [2, 3])]], n_regions=[4])
    assert result["chance"] == pytest.approx(100 * (1 / 4 + 2 / 4) / 2)
    assert result["hits"] == 1
