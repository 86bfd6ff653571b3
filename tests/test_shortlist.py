"""Two-stage search (mlasm.shortlist): first-stage vectors, shortlists, the rank convention, re-scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlasm.data.positives import PositiveSets
from mlasm.metrics import complete_positive_metrics, complete_positive_ranks, i2t_ranks, retrieval_metrics, t2i_ranks
from mlasm.model import CaptionEncoding, ImageEncoding
from mlasm.shortlist import (
    FIRST_STAGES,
    FirstStage,
    TwoStageDirection,
    caption_vectors,
    check_shortlist,
    image_vectors,
    rescore_pairs,
    shortlists,
    text_query_scores,
    top_candidates,
    train_first_stage,
    two_stage,
)
from test_model import D, make_model  # the tiny model of the scorer's tests, in float64


def gallery(n_images=7, per_image=3, n_regions=5, n_words=6, seed=0):
    """Unit-free random encodings; masked regions and padded words hold large garbage."""
    g = torch.Generator().manual_seed(seed)
    n_captions = n_images * per_image
    mask = torch.rand(n_images, n_regions, generator=g) < 0.7
    mask[:, 0] = True
    regions = torch.randn(n_images, n_regions, D, generator=g, dtype=torch.float64)
    regions = torch.where(mask[..., None], regions, 100.0 * regions)
    lengths = torch.randint(1, n_words + 1, (n_captions,), generator=g)
    lengths[0] = n_words
    words = torch.randn(n_captions, n_words, D, generator=g, dtype=torch.float64)
    words = torch.where((torch.arange(n_words) < lengths[:, None])[..., None], words, 100.0 * words)
    img = ImageEncoding(regions, mask, torch.randn(n_images, D, generator=g, dtype=torch.float64))
    return img, CaptionEncoding(words, lengths), np.repeat(np.arange(n_images), per_image)


@pytest.mark.parametrize("rho", [0.8, 1.0])
def test_k_at_least_the_gallery_gives_the_exact_scores_ranks_and_metrics(rho):
    model = make_model(rho=rho)
    img, cap, owner = gallery()
    exact = model.score_all(img, cap)
    result = two_stage(model, img, cap, owner, k=50, first_stage="blend")
    for direction, ranks_of in (("t2i", t2i_ranks), ("i2t", i2t_ranks)):
        candidates = result.directions[direction].candidates
        assert candidates.shape[1] == (img.regions.shape[0] if direction == "t2i" else cap.words.shape[0])
        for level in model.levels:
            if level == "global" and rho == 1.0:
                continue
            scores = result.scores[direction][level]
            expected = exact[level].T if direction == "t2i" else exact[level]
            torch.testing.assert_close(scores, torch.gather(expected, 1, candidates), atol=1e-6, rtol=0)
            np.testing.assert_array_equal(result.ranks(level, direction), ranks_of(exact[level], owner))
    metrics = result.metrics()
    reference = retrieval_metrics(exact["final"], owner)
    for direction in ("i2t", "t2i"):
        assert metrics[direction] == pytest.approx(reference[direction])
    assert metrics["rsum"] == pytest.approx(reference["rsum"])
    assert metrics["two_stage"]["shortlist"] == 50
    assert metrics["two_stage"]["first_stage_recall"] == {"i2t": 100.0, "t2i": 100.0}


def assert_same_measures(found: dict, expected: dict) -> None:
    assert found["rsum"] == pytest.approx(expected["rsum"])
    for direction in ("i2t", "t2i"):
        assert found[direction] == pytest.approx(expected[direction])


def _random_positives(owner, n_images, seed):
    """Each caption true of its own image and, at random, of a few others."""
    g = np.random.default_rng(seed)
    return PositiveSets.from_lists([sorted({int(o), *g.choice(n_images, g.integers(0, 3), replace=False).tolist()})
                                    for o in owner], n_images)


def _by_hand(ordered: list[int], true: set[int]) -> tuple[int, float, float]:
    """First rank (0-based), R-Precision and mAP@R of one query's whole ranking, from their definitions."""
    r = len(true)
    hits = [item in true for item in ordered]
    precision_at = [sum(hits[:i + 1]) / (i + 1) for i in range(len(ordered))]
    return hits.index(True), sum(hits[:r]) / r, sum(p for p, h in zip(precision_at[:r], hits[:r]) if h) / r


@pytest.mark.parametrize("k", [1, 3, 7])
def test_complete_positive_ranks_of_a_two_stage_ranking_follow_its_rank_convention(k):
    """Every query's whole two-stage ranking written out (candidates by the full model, then the rest
    by first-stage score) and measured by hand; with strict positives the first ranks are ``ranks``'s."""
    model = make_model()
    img, cap, owner = gallery(n_images=8, per_image=2, seed=5)
    n_images, n_captions = 8, len(owner)
    result = two_stage(model, img, cap, owner, k=k, first_stage="blend")
    positives = _random_positives(owner, n_images, seed=k)
    ranks = result.complete_ranks("final", positives)
    first = (result.vectors["captions"] @ result.vectors["images"].T).numpy()    # (M, N) first-stage scores
    by_image = positives.transpose()
    for direction, n_queries in (("t2i", n_captions), ("i2t", n_images)):
        for q in range(n_queries):
            candidates = result.directions[direction].candidates[q].tolist()
            full = result.scores[direction]["final"][q].tolist()
            stage = first[q] if direction == "t2i" else first[:, q]
            rest = sorted(set(range(len(stage))) - set(candidates), key=lambda i: -stage[i])
            ordered = [c for _, c in sorted(zip(full, candidates), key=lambda pair: -pair[0])] + rest
            sets = positives if direction == "t2i" else by_image
            true = set(sets.indices[sets.indptr[q]:sets.indptr[q + 1]].tolist())
            rank, r_precision, map_at_r = _by_hand(ordered, true)
            assert ranks[f"{direction}_first_rank"][q] == rank
            assert ranks[f"{direction}_r_precision"][q] == pytest.approx(r_precision)
            assert ranks[f"{direction}_map_at_r"][q] == pytest.approx(map_at_r)
    strict = result.complete_ranks("final", PositiveSets.strict(owner, n_images))
    for direction in ("t2i", "i2t"):
        np.testing.assert_array_equal(strict[f"{direction}_first_rank"], result.ranks("final", direction))


def test_complete_metrics_of_a_shortlist_as_large_as_the_gallery_are_the_exact_ones():
    model = make_model()
    img, cap, owner = gallery(n_images=8, per_image=2, seed=6)
    positives = _random_positives(owner, 8, seed=0)
    exact = model.score_all(img, cap)
    result = two_stage(model, img, cap, owner, k=50)
    complete = {level: result.complete_ranks(level, positives) for level in model.levels}
    metrics = result.metrics(complete)
    for level in model.levels:
        reference = complete_positive_ranks(exact[level], positives)
        for key, value in reference.items():
            np.testing.assert_allclose(complete[level][key], value, rtol=1e-12)
        assert_same_measures(metrics["levels"][level]["complete"], complete_positive_metrics(exact[level], positives))
    assert "complete" not in result.metrics()["levels"]["final"]


def test_rescored_pairs_equal_score_all_on_any_pairs():
    model = make_model()
    img, cap, _ = gallery(n_images=5, per_image=2)
    exact = model.score_all(img, cap)
    g = torch.Generator().manual_seed(3)
    images, captions = torch.randint(5, (40,), generator=g), torch.randint(10, (40,), generator=g)
    scored = rescore_pairs(model, img, cap, images, captions, caption_chunk=3)
    for level in model.levels:
        torch.testing.assert_close(scored[level], exact[level][images, captions], atol=1e-6, rtol=0)


def test_candidates_are_a_brute_force_top_k_of_the_first_stage_scores():
    model = make_model()
    img, cap, owner = gallery(n_images=9)
    images, captions = image_vectors(model, img), caption_vectors(model, cap)
    first = (captions @ images.T).numpy()                                           # (M, N)
    for k in (1, 4, 9):
        found = top_candidates(captions, images, k, chunk=5).numpy()
        brute = np.argsort(-first, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(found, brute)                                 # distinct scores: one order
        direction = shortlists(images, captions, owner, k, chunk=4)["t2i"]
        np.testing.assert_array_equal(direction.candidates.numpy(), brute)


@pytest.mark.parametrize("kind", [*FIRST_STAGES, "trained"])
def test_padding_never_changes_a_first_stage_vector(kind):
    model = make_model()
    img, cap, owner = gallery()
    if kind == "trained":
        floats = ImageEncoding(img.regions.float(), img.mask, None), CaptionEncoding(cap.words.float(), cap.lengths)
        kind = train_first_stage(*floats, owner, epochs=1, batch_size=8).double()
    images, captions = image_vectors(model, img, kind), caption_vectors(model, cap, kind)
    assert torch.allclose(images.norm(dim=1), torch.ones(len(images), dtype=images.dtype))
    # other garbage where masked / padded, and more of it: the same vectors
    garbage = 1e3 * torch.randn(img.regions.shape[0], 3, D, dtype=torch.float64)
    padded = ImageEncoding(torch.cat([img.regions.masked_fill(~img.mask[..., None], -7.0), garbage], dim=1),
                           torch.cat([img.mask, torch.zeros(len(garbage), 3, dtype=torch.bool)], dim=1), img.glob)
    words = torch.cat([cap.words, 1e3 * torch.randn(cap.words.shape[0], 4, D, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(image_vectors(model, padded, kind), images)
    torch.testing.assert_close(caption_vectors(model, CaptionEncoding(words, cap.lengths), kind), captions)
    # the mean kind by hand: the caption's real words' mean, made unit length
    if kind == "mean":
        c = 2
        by_hand = cap.words[c, :int(cap.lengths[c])].mean(0)
        torch.testing.assert_close(captions[c], by_hand / by_hand.norm())


def test_rank_convention_on_a_hand_made_example():
    """Three queries, K = 2 candidates each, 6 items."""
    direction = TwoStageDirection(
        candidates=torch.tensor([[4, 1], [2, 3], [0, 5]]),
        positive=torch.tensor([[False, True], [False, False], [True, True]]),
        rest_rank=torch.tensor([0, 3, 0]),
        has_positive=torch.tensor([True, True, True]))
    scores = torch.tensor([[0.9, 0.5],      # the true item (1) is beaten by candidate 4: rank 1
                           [0.2, 0.1],      # no true candidate: K + 3 non-candidates above it = 5
                           [0.3, 0.8]])     # both candidates true: the best counts, rank 0
    np.testing.assert_array_equal(direction.ranks(scores), [1, 5, 0])
    assert direction.first_stage_recall() == pytest.approx(200 / 3)
    np.testing.assert_array_equal(direction.top(scores, 1), [[4], [2], [5]])
    # a tie with a wrong candidate counts against the query, as in mlasm.metrics
    np.testing.assert_array_equal(direction.ranks(torch.tensor([[0.5, 0.5], [0.2, 0.1], [0.3, 0.8]])), [1, 5, 0])


def test_ranks_outside_the_shortlist_follow_the_first_stage():
    """One caption query over 5 images, K = 2: its image 0 outside the shortlist, below two
    non-candidates by first-stage score (images 3 and 4) -> rank 2 + 2 = 4."""
    images = torch.eye(5, dtype=torch.float64)
    query = torch.tensor([[0.3, 0.95, 0.9, 0.5, 0.4]], dtype=torch.float64)  # dot with image j = query[j]
    direction = shortlists(images, query, np.array([0]), 2)["t2i"]
    assert sorted(direction.candidates[0].tolist()) == [1, 2]
    assert int(direction.rest_rank[0]) == 2
    np.testing.assert_array_equal(direction.ranks(torch.tensor([[0.1, 0.2]])), [4])
    assert direction.first_stage_recall() == 0.0


def test_first_stage_recall_against_an_independent_count():
    model = make_model()
    img, cap, owner = gallery(n_images=10, per_image=2, seed=4)
    images, captions = image_vectors(model, img), caption_vectors(model, cap)
    first = (captions @ images.T).numpy()                                           # (M, N)
    for k in (1, 3, 6):
        directions = shortlists(images, captions, owner, k, chunk=3)
        t2i = np.mean([owner[c] in np.argsort(-first[c])[:k] for c in range(len(owner))])
        i2t = np.mean([bool(set(np.flatnonzero(owner == i)) & set(np.argsort(-first[:, i])[:k]))
                       for i in range(10)])
        assert directions["t2i"].first_stage_recall() == pytest.approx(100 * t2i)
        assert directions["i2t"].first_stage_recall() == pytest.approx(100 * i2t)


def test_a_typed_query_scores_its_shortlist_and_leaves_the_rest_unscored():
    model = make_model()
    img, cap, _ = gallery()
    one = CaptionEncoding(cap.words[2:3], cap.lengths[2:3])
    exact = model.score_all(img, one)
    vectors = image_vectors(model, img)
    scores = text_query_scores(model, img, vectors, one, k=3)
    kept = np.flatnonzero(~np.isnan(scores["final"]))
    np.testing.assert_array_equal(np.sort(kept), np.sort(top_candidates(caption_vectors(model, one), vectors, 3)[0]))
    np.testing.assert_allclose(scores["final"][kept], exact["final"][kept, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", None, True])
def test_a_shortlist_that_is_not_a_positive_whole_number_is_refused_in_one_line(value):
    with pytest.raises(ValueError, match="whole number of candidates") as error:
        check_shortlist(value)
    assert "\n" not in str(error.value)
    assert check_shortlist(7) == 7 and check_shortlist(np.int64(3)) == 3


# --- mlasm evaluate --shortlist ----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(data_folder, tmp_path_factory, one_thread):
    """A 1-epoch tiny run trained by the command line."""
    from cli_support import TINY_OPTIONS

    from mlasm.cli import main

    out = tmp_path_factory.mktemp("shortlist") / "run"
    assert main(["train", "--data", str(data_folder), "--out", str(out), "--epochs", "1", *TINY_OPTIONS]) == 0
    return out / "best.pt"


def _evaluate(capsys, checkpoint, data_folder, out, *more):
    from cli_support import answer

    return answer(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data_folder), "--split", "dev",
                           "--out", str(out), "--threads", "1", *more])


def test_evaluate_with_a_shortlist_as_large_as_the_gallery_gives_the_exact_metrics(trained, data_folder, tmp_path,
                                                                                   capsys):
    import json

    assert _evaluate(capsys, trained, data_folder, tmp_path / "exact")[0] == 0
    code, _, printed = _evaluate(capsys, trained, data_folder, tmp_path / "two", "--shortlist", "1000")
    assert code == 0 and "two-stage" in printed and "first-stage recall i2t 100.0 %, t2i 100.0 %" in printed
    exact = json.loads((tmp_path / "exact" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["two_stage"]["shortlist"] == 1000 and two["two_stage"]["first_stage_recall"] == {"i2t": 100.0,
                                                                                                "t2i": 100.0}
    for level in two["levels"]:
        for direction in ("i2t", "t2i"):
            assert two["levels"][level][direction] == pytest.approx(exact["levels"][level][direction])
        assert two["levels"][level]["rsum"] == pytest.approx(exact["levels"][level]["rsum"])
    exact_ranks, two_ranks = np.load(tmp_path / "exact" / "ranks.npz"), np.load(tmp_path / "two" / "ranks.npz")
    for name in ("final_t2i_rank", "final_i2t_rank", "t2i_i2t_rank", "global_t2i_rank"):
        np.testing.assert_array_equal(two_ranks[name], exact_ranks[name])
    assert not (tmp_path / "two" / "scores.npz").exists()  # no full matrix exists to save
    assert "complete" in exact  # the tiny ShapeScenes splits have complete positive sets: so has two-stage
    for level in two["levels"]:
        assert_same_measures(two["levels"][level]["complete"], exact["levels"][level]["complete"])
    for name in ("final_t2i_first_valid_rank", "t2i_i2t_first_valid_rank", "i2t_r_precision", "t2i_map_at_r",
                 "t2i_n_positives"):
        np.testing.assert_allclose(two_ranks[name], exact_ranks[name], rtol=1e-6)


def test_evaluate_with_a_short_shortlist_says_so_and_ranks_outside_it_below_k(trained, data_folder, tmp_path, capsys):
    import json

    code, _, printed = _evaluate(capsys, trained, data_folder, tmp_path / "two", "--shortlist", "3")
    assert code == 0
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["two_stage"]["shortlist"] == 3 and metrics["two_stage"]["first_stage"] == "mean"
    ranks = np.load(tmp_path / "two" / "ranks.npz")
    shortlist, owner, t2i = ranks["shortlist_t2i"], ranks["caption_to_image"], ranks["final_t2i_rank"]
    inside = (shortlist == owner[:, None]).any(axis=1)
    assert (t2i[inside] < 3).all() and (t2i[~inside] >= 3).all()
    assert metrics["two_stage"]["first_stage_recall"]["t2i"] == pytest.approx(100 * inside.mean())


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "many"])
def test_evaluate_refuses_a_shortlist_that_is_not_a_positive_whole_number_in_one_line(value, data_folder, tmp_path,
                                                                                     capsys):
    code, line, _ = _evaluate(capsys, tmp_path / "any.pt", data_folder, tmp_path / "out", "--shortlist", value)
    assert code == 2 and "--shortlist" in line and "whole number" in line, line


# --- typed queries in the workbench --------------------------------------------------------------

def test_typed_queries_over_a_shortlist_score_its_images_as_exactly_and_the_ranking_says_so(trained, data_folder):
    from widgets import RankingBrowser, Selection

    from mlasm.session import WorkbenchSession

    exact = WorkbenchSession.from_checkpoint(trained, str(data_folder), "dev", saved_scores=False)
    two = WorkbenchSession(exact.model, exact.vocab, exact.split, typed_shortlist=3)
    assert exact.typed_shortlist is None and two.typed_shortlist == 3           # 16 images: "auto" is exact
    text = "a red circle"
    full, short = exact.image_scores(text), two.image_scores(text)
    kept = np.flatnonzero(~np.isnan(short))
    assert len(kept) == 3
    np.testing.assert_allclose(short[kept], full[kept], atol=1e-6)
    selection = Selection(image=0, caption=0)
    browser = RankingBrowser(two, selection, top_k=3)
    selection.select(text=text, query="text")
    assert set(item.index for item in browser.results) == set(kept.tolist())
    assert "two-stage" in browser.query_view.value and "3 best of 16 images" in browser.query_view.value
    assert "exact" in RankingBrowser(exact, Selection(image=0, caption=0, text=text, query="text")).query_view.value
    outside = int(np.flatnonzero(np.isnan(short))[0])                              # a pair's levels still show
    np.testing.assert_allclose(two.pair_levels(outside, text)["score"], exact.pair_levels(outside, text)["score"],
                               atol=1e-6)


def test_a_trained_first_stage_learns_the_pairs_and_reads_back_as_written(tmp_path):
    model = make_model()
    img, cap, owner = gallery(n_images=8, per_image=3, seed=5)
    img = ImageEncoding(img.regions.float(), img.mask, img.glob.float())
    cap = CaptionEncoding(cap.words.float(), cap.lengths)
    untrained = FirstStage(D).eval()
    stage = train_first_stage(img, cap, owner, epochs=60, batch_size=12)
    before = shortlists(image_vectors(model, img, untrained), caption_vectors(model, cap, untrained), owner, 1)
    after = shortlists(image_vectors(model, img, stage), caption_vectors(model, cap, stage), owner, 1)
    assert after["t2i"].first_stage_recall() > max(50.0, before["t2i"].first_stage_recall())  # fits its training data
    stage.save(tmp_path / "first_stage.pt", {"checkpoint": "x.pt"})
    again = FirstStage.load(tmp_path / "first_stage.pt", model)
    torch.testing.assert_close(image_vectors(model, img, again), image_vectors(model, img, stage))
    assert two_stage(model.float(), img, cap, owner, 2, first_stage=again).first_stage == "trained"
    with pytest.raises(ValueError, match="embedding size"):
        FirstStage.load(tmp_path / "first_stage.pt", make_model(embed_size=D + 4))


def test_a_first_stage_file_that_is_not_one_is_refused_in_one_line(tmp_path):
    untrained = FirstStage(D).eval()
    good = tmp_path / "first.pt"
    untrained.save(good)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    lying = tmp_path / "lying.pt"
    torch.save({"format": torch.load(good, weights_only=True)["format"], "embed_size": 10**9, "heads": 4,
                "state": {}}, lying)
    other = tmp_path / "other.pt"
    FirstStage(D + 2).save(other)
    for path, says in ((tmp_path / "absent.pt", "not found"), (text, "not a first stage"),
                       (lying, "expected whole numbers")):
        with pytest.raises(ValueError, match=says) as error:
            FirstStage.load(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    state = torch.load(other, weights_only=True)
    torch.save({**state, "embed_size": D}, other)  # sizes of one model, weights of another
    with pytest.raises(ValueError, match="do not fit a first stage"):
        FirstStage.load(other)

