import numpy as np
import pytest

import mlasm.metrics as metrics_module
from mlasm.data.positives import PositiveSets
from mlasm.metrics import (
    complete_positive_metrics,
    complete_positive_ranks,
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


# --- complete positive sets ----------------------------------------------------------------

# 7 images x 3 captions. Positives (caption -> images): c0 {3, 4, 5, 6}, c1 {0}, c2 {0, 1};
# so (image -> captions): i0 {c1, c2}, i1 {c2}, i2 {}, i3..i6 {c0}.
HAND_SCORES = np.array([
    #  c0    c1   c2
    [0.90, 0.5, 0.8],  # i0
    [0.80, 0.1, 0.3],  # i1
    [0.70, 0.1, 0.3],  # i2
    [0.60, 0.1, 0.0],  # i3
    [0.10, 0.5, 0.0],  # i4
    [0.50, 0.1, 0.0],  # i5
    [0.05, 0.1, 0.0],  # i6
])
HAND_POSITIVES = PositiveSets.from_lists([[3, 4, 5, 6], [0], [0, 1]], n_images=7)


def test_complete_positive_ranks_worked_by_hand():
    ranks = complete_positive_ranks(HAND_SCORES, HAND_POSITIVES)
    # t2i, caption c0 (R = 4): ranking i0 .9 N, i1 .8 N, i2 .7 N, i3 .6 P, i5 .5 P, i4 .1 P, i6 .05 P.
    #   First positive at 0-based rank 3. Top 4 holds one positive: R-Precision 1/4.
    #   mAP@R = (1/4) * (P@4 * rel(4)) = (1/4) * (1/4) = 1/16.
    # t2i, c1 (R = 1): i0 .5 P ties with i4 .5 N; ties count against the query, so i4 first:
    #   rank 1 (an index tie-break would give 0), R-Precision 0, mAP@R 0.
    # t2i, c2 (R = 2): i0 .8 P, then the tie at .3 between i1 P and i2 N puts i2 first:
    #   ranking i0 P, i2 N, i1 P -> rank 0, R-Precision 1/2, mAP@R (1/2) * (1/1 + 0) = 1/2
    #   (an index tie-break would give i1 second: R-Precision 1, mAP@R 1).
    assert ranks["t2i_first_rank"].tolist() == [3, 1, 0]
    assert ranks["t2i_n_positives"].tolist() == [4, 1, 2]
    np.testing.assert_allclose(ranks["t2i_r_precision"], [1 / 4, 0.0, 1 / 2])
    np.testing.assert_allclose(ranks["t2i_map_at_r"], [1 / 16, 0.0, 1 / 2])
    # i2t, i0 (R = 2, captions c1, c2): c0 .9 N, c2 .8 P, c1 .5 P -> rank 1; top 2 holds one positive:
    #   R-Precision 1/2; mAP@R = (1/2) * (0 + P@2 * 1) = (1/2) * (1/2) = 1/4.
    # i1 (R = 1, c2): c0 .8 N, c2 .3 P -> rank 1, 0, 0.       i2: no positive -> -1, NaN, NaN.
    # i3 (c0 .6 above c1 .1, c2 0): rank 0, 1, 1.            i4 (c1 .5 above c0 .1): rank 1, 0, 0.
    # i5 (c0 .5 first): rank 0, 1, 1.                         i6 (c1 .1 above c0 .05): rank 1, 0, 0.
    assert ranks["i2t_first_rank"].tolist() == [1, 1, -1, 0, 1, 0, 1]
    assert ranks["i2t_n_positives"].tolist() == [2, 1, 0, 1, 1, 1, 1]
    nan = np.nan
    np.testing.assert_allclose(ranks["i2t_r_precision"], [1 / 2, 0, nan, 1, 0, 1, 0])
    np.testing.assert_allclose(ranks["i2t_map_at_r"], [1 / 4, 0, nan, 1, 0, 1, 0])


def test_complete_positive_metrics_worked_by_hand():
    result = complete_positive_metrics(HAND_SCORES, HAND_POSITIVES)
    # t2i over 3 captions: first ranks 3, 1, 0 -> R@1 = 1/3, R@5 = R@10 = 1;
    #   R-Precision (1/4 + 0 + 1/2) / 3 = 1/4; mAP@R (1/16 + 0 + 1/2) / 3 = 3/16.
    assert result["t2i"] == pytest.approx({"r1": 100 / 3, "r5": 100.0, "r10": 100.0,
                                           "r_precision": 25.0, "map_at_r": 18.75})
    # i2t over the 6 images with positives (i2 is left out): first ranks 1, 1, 0, 1, 0, 1 -> R@1 = 2/6;
    #   R-Precision (1/2 + 0 + 1 + 0 + 1 + 0) / 6 = 2.5/6; mAP@R (1/4 + 0 + 1 + 0 + 1 + 0) / 6 = 2.25/6.
    assert result["i2t"] == pytest.approx({"r1": 100 / 3, "r5": 100.0, "r10": 100.0,
                                           "r_precision": 250 / 6, "map_at_r": 37.5})
    assert result["rsum"] == pytest.approx(2 * (100 / 3 + 200))


def test_map_at_r_with_interleaved_positives():
    # 2 images x 6 captions, captions scored in falling order for both images.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]] * 2)
    # image 0: positives c0, c2, c4 (R = 3), ranked at positions 1, 3, 5 (P N P N P N):
    #   top 3 holds c0, c2 -> R-Precision 2/3; mAP@R = (1/3) * (P@1 + P@3) = (1/3) * (1 + 2/3) = 5/9.
    # image 1: positives c1, c2, c4, c5 (R = 4), at positions 2, 3, 5, 6:
    #   top 4 holds c1, c2 -> R-Precision 2/4; mAP@R = (1/4) * (P@2 + P@3) = (1/4) * (1/2 + 2/3) = 7/24.
    positives = PositiveSets.from_lists([[0], [1], [0, 1], [], [0, 1], [1]], n_images=2)
    ranks = complete_positive_ranks(scores, positives)
    assert ranks["i2t_first_rank"].tolist() == [0, 1]
    np.testing.assert_allclose(ranks["i2t_r_precision"], [2 / 3, 1 / 2])
    np.testing.assert_allclose(ranks["i2t_map_at_r"], [5 / 9, 7 / 24])
    # caption c3 has no image: -1 and NaN, and it is left out of the averages
    assert ranks["t2i_first_rank"][3] == -1 and np.isnan(ranks["t2i_map_at_r"][3])
    # t2i: both images score c0 .9 -> the tie counts against c0 (R = 1, image 0): rank 1.
    #      c2 (R = 2): both images positive -> ranks 0, R-Precision 1, mAP@R 1.
    assert ranks["t2i_first_rank"].tolist() == [1, 1, 0, -1, 0, 1]
    np.testing.assert_allclose(ranks["t2i_map_at_r"][[0, 2, 4]], [0.0, 1.0, 1.0])


def test_complete_positive_ties_count_against_the_query():
    caption_to_image = np.repeat(np.arange(10), 5)
    result = complete_positive_metrics(np.zeros((10, 50)), PositiveSets.strict(caption_to_image, 10))
    assert result["t2i"]["r1"] == 0.0 and result["i2t"]["r1"] == 0.0
    ranks = complete_positive_ranks(np.zeros((10, 50)), PositiveSets.strict(caption_to_image, 10))
    # every negative ties with every positive: a caption's image comes after the 9 others,
    # an image's 5 captions after the 45 others (positions 46..50 > R = 5: R-Precision 0)
    assert (ranks["t2i_first_rank"] == 9).all() and (ranks["i2t_first_rank"] == 45).all()
    assert (ranks["i2t_r_precision"] == 0).all() and (ranks["i2t_map_at_r"] == 0).all()


@pytest.mark.parametrize("shape, levels", [((10, 50), None), ((37, 185), None), ((20, 100), 4), ((64, 320), 16)])
def test_complete_positive_strict_equals_standard_protocol(shape, levels):
    rng = np.random.default_rng(shape[0])
    n_images, n_captions = shape
    caption_to_image = np.repeat(np.arange(n_images), n_captions // n_images)
    scores = rng.normal(size=shape)
    if levels:  # coarse scores: many ties, which both protocols count against the query
        scores = np.floor(rng.random(shape) * levels)
    complete = complete_positive_metrics(scores, PositiveSets.strict(caption_to_image, n_images))
    standard = retrieval_metrics(scores, caption_to_image)
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert complete[direction][f"r{k}"] == standard[direction][f"r{k}"]
    assert complete["rsum"] == standard["rsum"]
    ranks = complete_positive_ranks(scores, PositiveSets.strict(caption_to_image, n_images))
    assert np.array_equal(ranks["t2i_first_rank"], t2i_ranks(scores, caption_to_image))
    assert np.array_equal(ranks["i2t_first_rank"], i2t_ranks(scores, caption_to_image))


def _slow_reference(scores: np.ndarray, positives: PositiveSets, i2t_positives: PositiveSets | None = None) -> dict:
    """One query at a time, straight from the definitions: sort by (score descending, negatives first)."""
    i2t_positives = positives.transpose() if i2t_positives is None else i2t_positives
    result = {}
    for direction, matrix, sets in (("t2i", scores.T, positives), ("i2t", scores, i2t_positives)):
        first, r_precision, map_at_r = [], [], []
        for query in range(matrix.shape[0]):
            relevant = set(sets.images_of(query).tolist())
            if not relevant:
                first.append(-1)
                r_precision.append(float("nan"))
                map_at_r.append(float("nan"))
                continue
            items = sorted(range(matrix.shape[1]), key=lambda item: (-matrix[query, item], item in relevant))
            rel = [item in relevant for item in items]
            r = len(relevant)
            first.append(rel.index(True))
            r_precision.append(sum(rel[:r]) / r)
            map_at_r.append(sum(sum(rel[:k]) / k for k in range(1, r + 1) if rel[k - 1]) / r)
        result[f"{direction}_first_rank"] = np.array(first)
        result[f"{direction}_r_precision"] = np.array(r_precision)
        result[f"{direction}_map_at_r"] = np.array(map_at_r)
    return result


@pytest.mark.parametrize("seed", range(6))
def test_complete_positive_ranks_match_slow_reference(seed, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    n_images, n_captions = int(rng.integers(3, 30)), int(rng.integers(3, 60))
    scores = rng.normal(size=(n_images, n_captions)).astype(np.float32)
    if seed % 2:  # few distinct values: ties everywhere, between positives too
        scores = rng.integers(0, 4, size=(n_images, n_captions)).astype(np.float64)
    density = rng.uniform(0.05, 0.6)
    truth = rng.random((n_images, n_captions)) < density
    positives = PositiveSets.from_dense(truth)
    i2t_positives = None
    if seed >= 4:  # directions annotated separately, as ECCV Caption's are
        i2t_positives = PositiveSets.from_dense((rng.random((n_images, n_captions)) < density).T)
    monkeypatch.setattr(metrics_module, "_BLOCK_ELEMENTS", 3 * max(n_images, n_captions))  # several blocks
    ranks = complete_positive_ranks(scores, positives, i2t_positives=i2t_positives)
    expected = _slow_reference(scores, positives, i2t_positives)
    for key, value in expected.items():
        if key.endswith("first_rank"):
            assert np.array_equal(ranks[key], value), key
        else:
            np.testing.assert_allclose(ranks[key], value, rtol=0, atol=1e-12, err_msg=key)


def test_complete_positive_accepts_torch_and_checks_shapes():
    torch = pytest.importorskip("torch")
    expected = complete_positive_metrics(HAND_SCORES, HAND_POSITIVES)
    assert complete_positive_metrics(torch.tensor(HAND_SCORES), HAND_POSITIVES) == expected
    with pytest.raises(ValueError, match="positives cover"):
        complete_positive_ranks(HAND_SCORES[:, :2], HAND_POSITIVES)
    with pytest.raises(ValueError, match="i2t_positives"):
        complete_positive_ranks(HAND_SCORES, HAND_POSITIVES, i2t_positives=HAND_POSITIVES)
    with pytest.raises(ValueError, match="NaN"):
        complete_positive_ranks(np.full((7, 3), np.nan), HAND_POSITIVES)
    with pytest.raises(ValueError, match="no i2t query has a positive"):
        complete_positive_metrics(HAND_SCORES, PositiveSets.from_lists([[], [], []], n_images=7))


def test_non_finite_scores_are_an_error_not_a_perfect_hit():
    from mlasm.metrics import NonFiniteScores

    caption_to_image = np.repeat(np.arange(4), 2)
    scores = np.random.default_rng(0).random((4, 8))
    scores[1] = np.nan  # one image row gone NaN would rank its captions first
    with pytest.raises(NonFiniteScores, match="8 of 32 scores are NaN or infinite"):
        retrieval_metrics(scores, caption_to_image)
    scores[1] = np.inf
    with pytest.raises(NonFiniteScores):
        retrieval_metrics(scores, caption_to_image)


def test_a_non_finite_level_is_named():
    import torch

    from mlasm.evaluate import level_metrics
    from mlasm.metrics import NonFiniteScores

    caption_to_image = np.repeat(np.arange(3), 2)
    good = torch.rand(3, 6)
    levels = {"t2i": good, "global": torch.full((3, 6), float("nan")), "final": torch.full((3, 6), float("nan"))}
    with pytest.raises(NonFiniteScores, match=r"level 'final': 18 of 18 scores"):
        level_metrics(levels, caption_to_image)
    # an all-NaN global level is a local-only model's: left out, not an error
    assert set(level_metrics({**levels, "final": good}, caption_to_image)["levels"]) == {"t2i", "final"}
