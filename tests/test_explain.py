"""Score explanations (mlasm.explain): every level's contributions sum to its score, padding adds nothing.

The model is random and float32 (as a trained one runs); each expectation comes from the
model's own scorer (score_all, explain's per-word and per-region cosines) or is built by hand.
"""
import dataclasses

import numpy as np
import pytest
import torch

from mlasm.config import MLASMConfig
from mlasm.explain import LevelContributions, compare_contributions, explain_scores
from mlasm.model import LEVELS, MLASM, CaptionEncoding, ImageEncoding

D = 16


def make_model(**overrides):
    settings = dict(region_dim=8, global_dim=6, vocab_size=30, embed_size=D, word_dim=10)
    settings.update(overrides)
    torch.manual_seed(0)
    return MLASM(MLASMConfig(**settings)).eval()


def gallery(model, n_images=3, n_captions=4, n_regions=6, n_words=7, seed=0):
    """Encoded images with some regions masked, captions of assorted lengths (padding holds garbage)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_images, n_regions, 8, generator=g)
    mask = torch.rand(n_images, n_regions, generator=g) < 0.7
    mask[:, 0] = True
    tokens = torch.randint(1, 30, (n_captions, n_words), generator=g)
    lengths = torch.tensor([n_words, 1, 3, 5][:n_captions])
    tokens[torch.arange(n_words) >= lengths[:, None]] = 0
    with torch.no_grad():
        img = model.encode_images(features, mask, torch.randn(n_images, 6, generator=g))
        cap = model.encode_captions(tokens, lengths)
    return img, cap


CONFIGS = {"mean": {}, "lse": dict(pooling="lse", lambda_lse=6.0), "local only": dict(rho=1.0),
           "sharp": dict(lambda_t2i=30.0, pooling="lse", lambda_lse=20.0)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_level_sums_to_its_score_for_every_pair(name):
    model = make_model(**CONFIGS[name])
    img, cap = gallery(model)
    matrices = model.score_all(img, cap)
    expected_levels = [level for level in LEVELS if model.config.uses_global_level or level != "global"]
    for i in range(img.regions.shape[0]):
        for j in range(cap.words.shape[0]):
            explained = explain_scores(model, img, cap, i, j)
            assert list(explained.levels) == expected_levels
            n_words, n_regions = int(cap.lengths[j]), int(img.mask[i].sum())
            for level, parts in explained.levels.items():
                assert parts.joint.shape == (n_words, n_regions) and parts.joint_whole.shape == (n_words,)
                assert abs(parts.total - float(matrices[level][i, j])) < 1e-5, (level, i, j)
                assert abs(parts.words.sum() - parts.score) < 1e-5
                assert abs(parts.regions.sum() + parts.whole_image - parts.score) < 1e-5
                if level not in ("global", "final"):
                    assert parts.whole_image == 0.0


def test_mean_pooling_gives_each_word_and_region_its_cosine_over_the_count():
    model = make_model()
    img, cap = gallery(model)
    explained = explain_scores(model, img, cap, 1, 0)
    pair = explained.pair
    np.testing.assert_allclose(explained.levels["t2i"].words, pair.word_cosines / len(pair.word_cosines), atol=1e-6)
    np.testing.assert_allclose(explained.levels["i2t"].regions, pair.region_cosines / len(pair.region_cosines),
                               atol=1e-6)
    # a region's part of a word's cosine: alpha u.v / (|u| |a|), here by hand for one word and region
    u = cap.words[0, 2].double()
    regions = img.regions[1][img.mask[1]].double()
    alpha = torch.as_tensor(pair.t2i_attention[2], dtype=torch.float64)
    context = alpha @ regions
    by_hand = float(alpha[1] * (u @ regions[1]) / (u.norm() * context.norm())) / len(pair.word_cosines)
    assert abs(explained.levels["t2i"].joint[2, 1] - by_hand) < 1e-6


def test_logsumexp_gives_each_word_its_softmax_share_of_the_score():
    model = make_model(pooling="lse", lambda_lse=5.0)
    img, cap = gallery(model)
    explained = explain_scores(model, img, cap, 0, 0)
    cosines = torch.as_tensor(explained.pair.word_cosines, dtype=torch.float64)
    shares = torch.softmax(5.0 * cosines, 0).numpy()
    t2i = explained.levels["t2i"]
    np.testing.assert_allclose(t2i.words, shares * t2i.score, atol=1e-6)


def test_the_gate_decides_between_the_whole_image_and_the_regions():
    for bias, whole_share in ((40.0, 1.0), (-40.0, 0.0)):  # t = 1: all h; t = 0: all attended regions
        model = make_model()
        with torch.no_grad():
            model.gate.bias.fill_(bias)
        img, cap = gallery(model)
        glob = explain_scores(model, img, cap, 2, 3).levels["global"]
        assert abs(glob.whole_image - whole_share * glob.score) < 1e-6
        assert np.abs(glob.regions).sum() < 1e-6 if whole_share == 1.0 else glob.whole_image == pytest.approx(0)


def test_padding_words_and_masked_regions_change_nothing():
    model = make_model(pooling="lse")
    img, cap = gallery(model)
    g = torch.Generator().manual_seed(5)
    n_images, n_regions, d = img.regions.shape
    padded_img = ImageEncoding(torch.cat([img.regions, 30 * torch.randn(n_images, 3, d, generator=g)], 1),
                               torch.cat([img.mask, torch.zeros(n_images, 3, dtype=torch.bool)], 1), img.glob)
    n_captions, n_words, _ = cap.words.shape
    padded_cap = CaptionEncoding(torch.cat([cap.words, 30 * torch.randn(n_captions, 4, d, generator=g)], 1),
                                 cap.lengths)
    for i, j in ((0, 0), (1, 2), (2, 1)):
        plain, padded = explain_scores(model, img, cap, i, j), explain_scores(model, padded_img, padded_cap, i, j)
        np.testing.assert_array_equal(plain.region_indices, padded.region_indices)
        for level in plain.levels:
            a, b = plain.levels[level], padded.levels[level]
            assert a.score == pytest.approx(b.score, abs=1e-6)
            np.testing.assert_allclose(b.joint, a.joint, atol=1e-6)
            np.testing.assert_allclose(b.joint_whole, a.joint_whole, atol=1e-6)


def test_other_lambdas_are_refused():
    model = make_model()
    img, cap = gallery(model)
    with pytest.raises(ValueError, match="model's own lambdas"):
        explain_scores(model, img, cap, 0, 0, pair=model.explain(img, cap, 0, 0, lambda_t2i=2.0))


def contributions(words, score=None):
    words = np.asarray(words, dtype=float)
    return LevelContributions("final", float(words.sum()) if score is None else score, words[:, None],
                              np.zeros(len(words)), "by hand")


def test_the_fewest_words_that_give_most_of_the_difference():
    truth = contributions([0.1, 0.1, 0.1, 0.1, 0.1])
    preferred = contributions([0.1, 0.5, 0.05, 0.3, 0.15])    # deltas 0, .4, -.05, .2, .05: difference .6
    diff = compare_contributions(truth, preferred, "words", ["a", "red", "small", "circle", "two"])
    assert diff.difference == pytest.approx(0.6)
    np.testing.assert_allclose(diff.deltas, [0, 0.4, -0.05, 0.2, 0.05], atol=1e-12)
    assert diff.top == [1, 3] and diff.covered == pytest.approx(1.0)  # .4 + .2 >= .8 x .6
    assert diff.sentence() == "These two words (“red”, “circle”) gave 100 % of the final difference " \
                              "(+0.600 for the preferred item)."
    one = compare_contributions(truth, preferred, "words", list("abcde"), share=0.5)
    assert one.top == [1] and one.sentence().startswith("One word (“b”) gave 67 %")
    won = compare_contributions(preferred, truth, "words", list("abcde"))
    assert won.top == [] and "no difference to explain" in won.sentence()
    with pytest.raises(ValueError, match="3 names for 5 words"):
        compare_contributions(truth, preferred, "words", list("abc"))
    with pytest.raises(ValueError, match="kind must be"):
        compare_contributions(truth, preferred, "pixels", list("abcde"))


def test_regions_compared_on_one_image_keep_the_whole_image_apart():
    model = make_model()
    img, cap = gallery(model)
    a, b = explain_scores(model, img, cap, 0, 0), explain_scores(model, img, cap, 0, 2)
    diff = compare_contributions(a.levels["global"], b.levels["global"], "regions",
                                 [f"r{r}" for r in a.region_indices])
    assert diff.deltas.sum() + diff.rest == pytest.approx(diff.difference, abs=1e-5)
    assert dataclasses.is_dataclass(diff)


def test_showcase_pairs_are_clear_successes_and_the_failure_a_near_miss():
    from mlasm.data.positives import PositiveSets
    from mlasm.explain import showcase_failure, showcase_pairs

    # 3 images x 5 captions, by hand; caption c belongs to image c // 2 (caption 4 to image 2)
    caption_to_image = np.array([0, 0, 1, 1, 2])
    scores = np.array([[0.9, 0.5, 0.1, 0.2, 0.3],
                       [0.1, 0.6, 0.8, 0.5, 0.3],
                       [0.2, 0.4, 0.3, 0.45, 0.7]])
    # margins: c0 0.9-0.2=0.7, c1 0.5-0.6<0 (fails), c2 0.8-0.3=0.5, c3 0.5-0.45=0.05, c4 0.7-0.3=0.4
    assert showcase_pairs(scores, caption_to_image, count=3) == [0, 2, 4]
    assert showcase_pairs(scores, caption_to_image, count=10) == [0, 2, 4, 3]
    # caption 0 also true of image 2: still right (image 2 no longer counts against it) but not unique
    positives = PositiveSets.from_lists([[0, 2], [0], [1], [1], [2]], 3)
    assert showcase_pairs(scores, caption_to_image, positives, count=2) == [2, 4]
    assert showcase_pairs(scores, caption_to_image, positives, count=2, unique=False) == [0, 2]
    assert showcase_failure(scores, caption_to_image) == (1, 1)        # the one failure: image 1 above image 0
    scores[2, 3] = 0.52                                                # caption 3 now fails by 0.02, nearer than 0.1
    assert showcase_failure(scores, caption_to_image) == (3, 2)
    assert showcase_failure(np.eye(3)[:, [0, 0, 1, 1, 2]], caption_to_image) is None


def test_more_than_the_whole_difference_says_the_others_took_some_back():
    diff = compare_contributions(contributions([0.0, 0.0, 0.0]), contributions([0.5, -0.2, 0.0]), "words",
                                 ["purple", "square", "a"])
    assert diff.top == [0] and diff.covered == pytest.approx(0.5 / 0.3)
    assert diff.sentence() == ("One word (“purple”) gave 167 % of the final difference (+0.300 for the preferred "
                               "item; the other words took some back).")
