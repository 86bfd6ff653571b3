"""The workbench widgets, driven without a browser: set a value, check what is drawn or listed.

Every expectation is computed independently of the widget (from the model, the score
matrices or mlasm.metrics), on a tiny ShapeScenes model trained in seconds.
"""
import dataclasses
import io
from concurrent.futures import ThreadPoolExecutor

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cli_support import TINY as TINY_SETTINGS, TINY_SIZES  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.positives import PositiveSets  # noqa: E402
from mlasm.data.shapescenes import shapescenes_folder  # noqa: E402
from mlasm.data.vocab import Vocabulary  # noqa: E402
from mlasm.evaluate import evaluate_checkpoints  # noqa: E402
from mlasm.metrics import i2t_ranks, t2i_ranks  # noqa: E402
from mlasm.model import MLASM  # noqa: E402
from mlasm.checkpoint import load_model, save_checkpoint  # noqa: E402
from mlasm.report import format_result  # noqa: E402
from mlasm.train import config_for_data, train  # noqa: E402
from widgets import (  # noqa: E402
    AttentionExplorer,
    EmbeddingMap,
    FailureExplorer,
    LevelPanel,
    RankingBrowser,
    Selection,
    SelectionControls,
    Workbench,
    WorkbenchSession,
)
from widgets import failures as failures_module  # noqa: E402
from widgets.drawing import PictureView, draw_pair_attention, new_figure  # noqa: E402
from widgets.embedding import (  # noqa: E402
    ZOOMS, attribute_options, embedding_vectors, map_of, principal_components_2d, zoom_ranges)
from widgets.ranking import ALSO_TRUE, TRUTH  # noqa: E402

TINY = dict(TINY_SETTINGS, epochs=1)  # one epoch is enough for the views


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    return train(MLASMConfig.cpu(**TINY), tiny_data["train"], tiny_data["dev"], out, progress=False)["best"]


@pytest.fixture(scope="module")
def session(checkpoint, tiny_data):
    model, vocab, _ = load_model(checkpoint, "cpu")
    return WorkbenchSession(model, vocab, tiny_data["test"])


def click(figure, trace_index, x, y, point_index):
    """What plotly's front end sends when a point (or heatmap cell) is clicked."""
    figure._js2py_pointsCallback = {
        "event_type": "plotly_click", "device_state": None, "selector": None,
        "points": {"xs": [x], "ys": [y], "point_indexes": [point_index], "trace_indexes": [trace_index]}}


def caption_with(split, word):
    return next(c for c, text in enumerate(split.captions) if word in text.lower().split())


def first_valid_ranks(scores, truth):
    """Per caption and per image, the rank of the best-scored item true of it, by plain loops (ties against)."""
    n_images, n_captions = scores.shape
    t2i = [sum(scores[j, c] >= max(scores[truth[:, c], c]) for j in range(n_images) if not truth[j, c])
           for c in range(n_captions)]
    i2t = [sum(scores[i, j] >= max(scores[i, truth[i]]) for j in range(n_captions) if not truth[i, j])
           if truth[i].any() else -1 for i in range(n_images)]
    return np.array(t2i), np.array(i2t)


@pytest.fixture(autouse=True)
def no_figure_left_open():
    yield
    assert plt.get_fignums() == [], "a widget left a matplotlib figure open"


# ------------------------------------------------------------------------------ session

def test_scores_are_computed_once_and_ranks_agree_with_ranks_npz(session, checkpoint, tiny_data, tmp_path,
                                                                  monkeypatch):
    fresh = WorkbenchSession(session.model, session.vocab, session.split)
    calls = []
    score_all = session.model.score_all
    monkeypatch.setattr(session.model, "score_all",  # records images x captions of each call
                        lambda img, cap, **k: calls.append((len(img.regions), len(cap.words))) or score_all(img, cap, **k))
    selection = Selection()
    AttentionExplorer(fresh, selection)
    assert calls == []  # explaining one pair needs no score matrix
    browser = RankingBrowser(fresh, selection)
    for caption in range(4):
        selection.select(caption=caption)
    n_images = tiny_data["test"].n_images
    assert set(calls) == {(n_images, 1)} and fresh._scores is None  # one caption at a time, never the gallery
    calls.clear()
    assert fresh.scores is browser.session.scores and calls == [(n_images, tiny_data["test"].n_captions)]
    assert fresh.scores is fresh.scores and len(calls) == 1  # scored once
    assert fresh.scores["final"].shape == (tiny_data["test"].n_images, tiny_data["test"].n_captions)
    np.testing.assert_array_equal(fresh.scores["final"], session.scores["final"])

    evaluate_checkpoints([checkpoint], tiny_data["test"], out_dir=tmp_path, device="cpu", progress=False)
    saved = np.load(tmp_path / "ranks.npz")
    for level in session.levels:
        for direction in ("t2i", "i2t"):
            np.testing.assert_array_equal(session.ranks[f"{level}_{direction}_rank"],
                                          saved[f"{level}_{direction}_rank"])


def test_scores_computed_elsewhere_are_used_as_they_are(session):
    given = {level: torch.from_numpy(matrix) for level, matrix in session.scores.items()}
    reused = WorkbenchSession(session.model, session.vocab, session.split, scores=given)
    np.testing.assert_array_equal(reused.scores["final"], session.scores["final"])
    with pytest.raises(ValueError, match="scores must be"):
        WorkbenchSession(session.model, session.vocab, session.split,
                         scores={level: matrix[:, :3] for level, matrix in session.scores.items()})


def test_typed_text_scores_and_explains_like_the_same_caption(session):
    caption = 3
    text = session.split.captions[caption]
    np.testing.assert_allclose(session.image_scores(text), session.scores["final"][:, caption], atol=1e-5)
    a, b = session.explain(1, text), session.explain(1, caption)
    np.testing.assert_allclose(a.t2i_attention, b.t2i_attention, atol=1e-5)
    assert session.encode_text("a red zebra").unknown == ["zebra"]
    with pytest.raises(ValueError, match="no words"):
        session.encode_text("   ")


def test_pair_levels_rank_the_pair_among_all_images_and_captions(session):
    split, scores = session.split, session.scores
    caption = 7
    image = int(split.caption_to_image[caption])
    table = session.pair_levels(image, caption)
    assert list(table.index) == list(session.levels)
    for level in session.levels:
        assert table.loc[level, "score"] == pytest.approx(scores[level][image, caption])
        assert table.loc[level, "image_rank"] == t2i_ranks(scores[level], split.caption_to_image)[caption]
        others = np.delete(scores[level][image], caption)
        assert table.loc[level, "caption_rank"] == (others >= scores[level][image, caption]).sum()


def test_failures_list_exactly_the_queries_ranked_k_or_worse(session):
    split, scores = session.split, session.scores
    k = 2
    failures = session.failures(k, include_valid=True)  # every query whose ground truth misses the top k
    t2i = t2i_ranks(scores["final"], split.caption_to_image)
    i2t = i2t_ranks(scores["final"], split.caption_to_image)
    assert set(failures[failures.direction == "t2i"]["query"]) == set(np.flatnonzero(t2i >= k))
    assert set(failures[failures.direction == "i2t"]["query"]) == set(np.flatnonzero(i2t >= k))
    order = list(zip(failures["valid_rank"], failures["rank"]))
    assert order == sorted(order, reverse=True)  # worst first: real failures, then valid alternatives
    truth = split.positive_sets().dense()
    valid = {level: first_valid_ranks(scores[level], truth) for level in session.levels}
    real = session.failures(k)  # by default, only the queries with nothing true of them in the top k
    assert set(real[real.direction == "t2i"]["query"]) == set(np.flatnonzero(valid["final"][0] >= k))
    assert set(real[real.direction == "i2t"]["query"]) == set(np.flatnonzero(valid["final"][1] >= k))
    for _, row in failures.iterrows():
        side = 0 if row["direction"] == "t2i" else 1
        right = {level for level in session.levels if level != "final" and valid[level][side][row["query"]] < k}
        assert set(filter(None, row["right_under"].split(", "))) == right
        if row["direction"] == "t2i":
            column = scores["final"][:, row["query"]].copy()
            column[split.caption_to_image[row["query"]]] = -np.inf
            assert row["preferred"] == column.argmax() and row["image"] == split.caption_to_image[row["query"]]
        else:
            assert split.caption_to_image[row["preferred"]] != row["query"]
            assert split.caption_to_image[row["caption"]] == row["query"]


def test_session_from_a_checkpoint_and_a_precomp_folder(checkpoint, tiny_cache):
    folder = shapescenes_folder(sizes=TINY_SIZES, cache=tiny_cache)
    session = WorkbenchSession.from_checkpoint(checkpoint, source=folder, split="test", device="cpu")
    assert session.split.n_images == TINY_SIZES["test"] and session.picture(0) is None  # no renderer there
    explorer = AttentionExplorer(session)
    assert "blank canvas" in explorer.figure.axes[0].get_title()  # boxes drawn without the picture


# ------------------------------------------------------------------------------ selection

def test_selection_batches_changes_and_a_caption_replaces_a_typed_query():
    selection = Selection()
    seen = []
    selection.observe(lambda change: seen.append((selection.image, selection.caption)), names=["image", "caption"])
    selection.select(image=2, caption=11)
    assert seen == [(2, 11), (2, 11)]  # every observer sees the final state
    selection.select(text="red circle", query="text")
    assert selection.text_side == "red circle"
    selection.select(caption=4)
    assert selection.query == "caption" and selection.text_side == 4
    selection.select(query="image", caption=5)
    assert selection.query == "image" and selection.text_side == 5


# ------------------------------------------------------------------------------ attention explorer

def test_choosing_a_word_lights_up_its_regions(session):
    split = session.split
    caption = caption_with(split, "red")
    image = int(split.caption_to_image[caption])
    explorer = AttentionExplorer(session, Selection(image=image, caption=caption))
    word = session.tokens(caption).index("red")
    explorer.word_choice.value = word
    explanation = session.model.explain(session.images, session.captions, image, caption)
    np.testing.assert_allclose(explorer.region_weights, explanation.t2i_attention[word], atol=1e-6)
    ax = explorer.figure.axes[0]
    assert "“red”" in ax.get_title()
    assert len(ax.patches) == min(4, len(explanation.region_indices)) + 1  # top boxes + the chosen region
    np.testing.assert_allclose(np.asarray(explorer.heatmap.data[0].z, float), explanation.t2i_attention, atol=1e-6)
    assert list(explorer.heatmap.layout.yaxis.ticktext) == session.tokens(caption)

    region = int(explanation.region_indices[-1])
    explorer.region_choice.value = region
    np.testing.assert_allclose(explorer.word_weights, explanation.i2t_attention[-1], atol=1e-6)
    assert f"region r{region}</b>" in explorer.word_row.value

    explorer.matrix_choice.value = "i2t"
    np.testing.assert_allclose(np.asarray(explorer.heatmap.data[0].z, float), explanation.i2t_attention.T, atol=1e-6)


def test_clicking_a_matrix_cell_chooses_its_word_and_region(session):
    explorer = AttentionExplorer(session)
    kept = explorer.explanation.region_indices
    click(explorer.heatmap, 0, x=len(kept) - 1, y=1, point_index=[1, len(kept) - 1])
    assert explorer.word == 1 and explorer.region == kept[-1]
    shape = explorer.heatmap.layout.shapes[0]
    assert (shape.x0 + shape.x1) / 2 == len(kept) - 1 and (shape.y0 + shape.y1) / 2 == 1


def test_lambda_sliders_recompute_the_attention(session):
    explorer = AttentionExplorer(session)
    image, caption = explorer.selection.image, explorer.selection.caption
    before = explorer.region_weights.copy()
    word = explorer.word
    explorer.lambda_t2i.value = 1.0
    expected = session.model.explain(session.images, session.captions, image, caption, lambda_t2i=1.0)
    np.testing.assert_allclose(explorer.region_weights, expected.t2i_attention[word], atol=1e-6)
    assert not np.allclose(before, explorer.region_weights)
    assert "λ t2i 1" in explorer.header.value and explorer.word == word  # the word stays chosen
    explorer.reset_lambdas.click()
    np.testing.assert_allclose(explorer.region_weights, before, atol=1e-6)


def test_masked_regions_map_to_their_boxes(session):
    split = session.split
    image = int(np.flatnonzero(~split.region_mask.all(axis=1))[0])  # an image with padded regions
    caption = int(split.image_to_captions(image)[0])
    explorer = AttentionExplorer(session, Selection(image=image, caption=caption))
    real = np.flatnonzero(split.region_mask[image])
    assert [value for _, value in explorer.region_choice.options] == real.tolist()
    assert explorer.region_weights.shape == (len(real),)
    assert len(explorer.heatmap.layout.xaxis.ticktext) == len(real)


def test_a_typed_query_is_explained_and_its_unknown_words_listed(session):
    selection = Selection()
    explorer = AttentionExplorer(session, selection)
    selection.select(text="a red zebra", query="text")
    assert explorer.words == ["a", "red", "zebra"]
    assert explorer.word == 1  # the first word that names something, not "a"
    assert "zebra" in explorer.controls.notice.value and "Unknown" in explorer.controls.notice.value
    assert "Unknown" not in explorer.header.value  # the notice is shown once, in the bar of controls
    assert ("2: zebra (unknown)", 2) in explorer.word_choice.options
    assert int(explorer.word_choice.layout.width[:-2]) >= 110 + 8 * len("2: zebra (unknown)")


def test_a_split_without_boxes_shows_the_matrix_only(session, tiny_data):
    bare = WorkbenchSession(session.model, session.vocab,
                            dataclasses.replace(tiny_data["test"], boxes=None, renderer=None))
    explorer = AttentionExplorer(bare)
    assert explorer.figure is None
    assert np.asarray(explorer.heatmap.data[0].z).shape == explorer.explanation.t2i_attention.shape


# ------------------------------------------------------------------------------ levels

def test_level_panel_shows_every_level_the_ranks_and_the_gate(session):
    selection = Selection(image=1, caption=int(session.split.image_to_captions(1)[0]))
    panel = LevelPanel(session, selection)
    expected = session.pair_levels(selection.image, selection.caption)
    assert panel.table.equals(expected)
    gate = session.model.explain(session.images, session.captions, selection.image, selection.caption).gate
    assert panel.gate_mean == pytest.approx(gate.mean())
    for level in session.levels:
        assert f">{level}</td>" in panel.summary.value
    selection.select(caption=0)
    assert panel.table.equals(session.pair_levels(1, 0))
    selection.select(text="a red circle", query="text")  # a typed text, placed among the images and captions
    column = session.text_scores("a red circle")["final"]
    assert panel.table.loc["final", "image_rank"] == (np.delete(column, 1) >= column[1]).sum()
    assert panel.table.loc["final", "caption_rank"] == (session.scores["final"][1] >= column[1]).sum()


def test_a_local_only_model_has_no_global_level_nor_gate(tiny_data):
    torch.manual_seed(0)
    vocab = Vocabulary.build(tiny_data["train"].captions)
    model = MLASM(config_for_data(MLASMConfig.cpu(**TINY, rho=1.0), tiny_data["train"], vocab))  # untrained
    local = WorkbenchSession(model, vocab, tiny_data["test"])
    assert "global" not in local.levels and "global" not in local.scores
    panel = LevelPanel(local)
    assert panel.gate_mean is None and "global" not in panel.table.index
    images, _ = embedding_vectors(local)  # no h: the mean of the region vectors
    regions = local.images.regions * local.images.mask[..., None]
    expected = regions.sum(1) / local.images.mask.sum(1, keepdim=True)
    np.testing.assert_allclose(images, torch.nn.functional.normalize(expected, dim=1).numpy(), atol=1e-5)
    assert "rank_global" not in FailureExplorer(local).table.columns


@pytest.mark.parametrize("level_weight, objective", [(0.0, "paper"), (0.5, "level-wise")])
def test_the_checkpoint_records_its_objective_and_the_workbench_warns_for_the_papers(
        tiny_data, tmp_path, level_weight, objective):
    vocab = Vocabulary.build(tiny_data["train"].captions)
    config = config_for_data(MLASMConfig.cpu(**TINY, level_weight=level_weight), tiny_data["train"], vocab)
    save_checkpoint(tmp_path / "model.pt", MLASM(config), vocab, {})
    model, _, state = load_model(tmp_path / "model.pt", "cpu")
    assert state["objective"] == objective and model.config.level_weight == level_weight
    result = evaluate_checkpoints([tmp_path / "model.pt"], tiny_data["test"], progress=False)
    assert result["objectives"] == [objective]
    session = WorkbenchSession(model, vocab, tiny_data["test"])
    shown = [LevelPanel(session).summary.value, FailureExplorer(session).level_caveat.value, format_result(result)]
    warned = ["never trained to rank on their own" in text for text in shown]
    assert warned == [objective == "paper"] * 3


# ------------------------------------------------------------------------------ ranking

def test_ranking_of_a_caption_puts_the_best_scored_image_first(session):
    split = session.split
    selection = Selection(image=0, caption=5)
    browser = RankingBrowser(session, selection, top_k=4)
    column = session.scores["final"][:, 5]
    assert browser.results[0].index == column.argmax() and len(browser.results) == 4
    truth = browser.truths[0]
    assert truth.index == split.caption_to_image[5] and truth.rank == t2i_ranks(session.scores["final"],
                                                                                 split.caption_to_image)[5]
    browser.level_choice.value = "t2i"
    assert browser.results[0].index == session.scores["t2i"][:, 5].argmax()
    tile = browser.result_view.children[1]
    tile.button.click()  # select the second result everywhere
    assert selection.image == browser.results[1].index


def test_ranking_of_an_image_lists_captions_and_its_own_ones(session):
    selection = Selection(image=2, caption=0, query="image")
    browser = RankingBrowser(session, selection)
    row = session.scores["final"][2]
    assert browser.results[0].index == row.argmax()
    assert {item.index for item in browser.truths} == set(session.split.image_to_captions(2).tolist())
    assert min(item.rank for item in browser.truths) == i2t_ranks(session.scores["final"],
                                                                  session.split.caption_to_image)[2]
    browser.result_view.children[0].button.click()
    assert selection.caption == browser.results[0].index and selection.query == "image"


def test_a_typed_query_is_ranked_and_unknown_words_are_shown(session):
    selection = Selection()
    browser = RankingBrowser(session, selection)
    browser.children[0].text_box.value = "a small red zebra"  # typed, then Enter
    assert selection.query == "text" and selection.text == "a small red zebra"
    assert browser.results[0].index == session.text_scores("a small red zebra")["final"].argmax()
    assert browser.truths == [] and "zebra" in browser.query_view.value


# ------------------------------------------------------------------------------ failures

def test_failure_table_filters_shrink_it_correctly(session):
    explorer = FailureExplorer(session, k=1)
    everything = session.failures(1)
    assert explorer.table.equals(everything)
    explorer.k.value = 3
    at_3 = session.failures(3)
    assert explorer.table.equals(at_3) and 0 < len(at_3) < len(everything)
    explorer.direction.value = "t2i"
    assert explorer.table.equals(at_3[at_3.direction == "t2i"]) and len(explorer.table) < len(at_3)
    explorer.right_under.value = "t2i"
    assert explorer.table.equals(at_3[(at_3.direction == "t2i") & (at_3.valid_rank_t2i < 3)])
    explorer.right_under.value = "none"
    assert explorer.table.equals(at_3[(at_3.direction == "t2i") & (at_3.right_under == "")])
    explorer.direction.value, explorer.right_under.value = "both", "all"
    explorer.ranks.value = (5, 8)
    assert explorer.table.equals(at_3[at_3["rank"].between(5, 8)]) and len(explorer.table) > 0
    assert [label for _, label in explorer.rows.options] == list(explorer.table.index)


def test_choosing_a_failure_opens_it_everywhere(session):
    selection = Selection()
    attention = AttentionExplorer(session, selection)
    ranking = RankingBrowser(session, selection)
    failures = FailureExplorer(session, selection, k=1)
    row = failures.table[failures.table.direction == "t2i"].iloc[0]
    failures.open_row(row.name)
    assert (selection.image, selection.caption, selection.query) == (row["image"], row["caption"], "caption")
    assert attention.shown_pair == (row["image"], row["caption"])
    assert attention.words == session.tokens(int(row["caption"]))
    assert ranking.results[0].index == row["preferred"]
    assert [ax.get_title().split(":")[0] for ax in failures.figure.axes] == ["ground truth", "preferred instead"]

    row = failures.table[failures.table.direction == "i2t"].iloc[0]
    failures.open_row(row.name)
    assert (selection.image, selection.query) == (row["image"], "image")
    assert ranking.results[0].index == row["preferred"]


# ------------------------------------------------------------------------------ valid alternatives
# Three images of the tiny test split with their fifteen captions (c0-c4 of image 0, c5-c9 of
# image 1, c10-c14 of image 2), hand-made positives and hand-made final scores, so every rank,
# label and list below is worked out by hand.

HAND_POSITIVES = {0: [0, 1], 5: [0, 1, 2], 10: [0, 2]}  # caption -> every image it is true of; others: own only
HAND_FINAL = np.zeros((3, 15), np.float32)
HAND_FINAL[:, 0] = [0.1, 0.9, 0.5]    # own image 0 at rank 2, but image 1 (also true) first: valid alternative
HAND_FINAL[:, 1] = [0.3, 0.8, 0.85]   # own image 0 at rank 2, nothing else true of it: failure
HAND_FINAL[0, 2:5] = 1.0              # hits
HAND_FINAL[:, 5] = [0.2, 0.3, 0.8]    # own image 1 at rank 1, image 2 (also true) first
HAND_FINAL[:, 6] = [0.5, 0.5, 0.1]    # own image 1 tied with image 0: rank 1 (ties count against), failure at 1
HAND_FINAL[1, 7:10] = 0.4             # hits
HAND_FINAL[:, 10] = [0.7, 0.6, 0.2]   # own image 2 at rank 2, image 0 (also true) first
HAND_FINAL[2, 11:15] = 0.3            # hits


def hand_split(split, positives=True):
    three = split.subset([0, 1, 2])
    assert three.caption_to_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    rows = [HAND_POSITIVES.get(c, [int(three.caption_to_image[c])]) for c in range(15)]
    return dataclasses.replace(three, positives=PositiveSets.from_lists(rows, 3) if positives else None)


def hand_scores(session):
    """final as above; the t2i level ranks every own item first; the other levels as final."""
    perfect = (np.arange(3)[:, None] == np.repeat(np.arange(3), 5)[None, :]).astype(np.float32)
    return {level: perfect if level == "t2i" else HAND_FINAL for level in session.levels}


@pytest.fixture(scope="module")
def hand(session, tiny_data):
    return WorkbenchSession(session.model, session.vocab, hand_split(tiny_data["test"]), scores=hand_scores(session))


def test_query_table_tells_hits_valid_alternatives_and_failures_apart(hand):
    table = hand.query_table(1)
    t2i, i2t = table[table.direction == "t2i"], table[table.direction == "i2t"]
    assert t2i["query"].tolist() == list(range(15)) and i2t["query"].tolist() == [0, 1, 2]
    #                          c0  c1  c2  c3  c4  c5  c6  c7  c8  c9 c10 c11 c12 c13 c14
    assert t2i["rank"].tolist() == [2, 2, 0, 0, 0, 1, 1, 0, 0, 0, 2, 0, 0, 0, 0]
    assert t2i["valid_rank"].tolist() == [0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert t2i["n_valid"].tolist() == [2, 1, 1, 1, 1, 3, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    h, a, f = "hit", "valid alternative", "failure"
    assert t2i["outcome"].tolist() == [a, f, h, h, h, a, f, h, h, h, a, h, h, h, h]
    assert t2i["hit"].tolist() == [o == h for o in t2i["outcome"]]
    assert t2i["valid_alternative"].tolist() == [o == a for o in t2i["outcome"]]
    assert t2i["preferred"][[0, 1, 5, 6, 10]].tolist() == [1, 2, 2, 0, 0]
    assert t2i["preferred_valid"][[0, 1, 5, 6, 10]].tolist() == [True, False, True, False, True]
    assert t2i["alternative"][[0, 1, 5, 10]].tolist() == [1, -1, 2, 0]
    # image 1: own captions c5-c9 best at 0.5 (c6), beaten by c0 0.9, c1 0.8, c10 0.6; c0 is true of it
    # image 2: own best 0.3, beaten by c1 0.85, c5 0.8 (true of it), c0 0.5; c1 (not true) is first
    assert i2t["rank"].tolist() == [0, 3, 3]
    assert i2t["valid_rank"].tolist() == [0, 0, 1]
    assert i2t["n_valid"].tolist() == [7, 6, 6]
    assert i2t["outcome"].tolist() == [h, a, f]
    assert i2t["preferred"].tolist()[1:] == [0, 1] and i2t["preferred_valid"].tolist()[1:] == [True, False]
    assert i2t["alternative"].tolist() == [10, 0, 5]
    # the t2i level ranks every own item first
    assert (table["rank_t2i"] == 0).all() and (table["valid_rank_t2i"] == 0).all()

    at_2 = hand.query_table(2)
    assert at_2[at_2.direction == "t2i"]["outcome"].tolist() == [a, f, h, h, h, h, h, h, h, h, a, h, h, h, h]
    assert at_2[at_2.direction == "i2t"]["outcome"].tolist() == [h, a, a]
    assert at_2.index.equals(table.index)  # the same row labels at every k


def test_failures_leave_out_valid_alternatives_unless_asked(hand):
    real = hand.failures(1)
    assert list(zip(real["direction"], real["query"])) == [("t2i", 1), ("i2t", 2), ("t2i", 6)]
    assert (real["outcome"] == "failure").all() and (real["right_under"] == "t2i").all()
    every = hand.failures(1, include_valid=True)
    assert list(zip(every["direction"], every["query"])) == [
        ("t2i", 1), ("i2t", 2), ("t2i", 6),                                # failures, worst first
        ("i2t", 1), ("t2i", 0), ("t2i", 10), ("t2i", 5)]                   # then the valid alternatives
    assert every["outcome"].tolist() == ["failure"] * 3 + ["valid alternative"] * 4
    assert ("t2i", 0) not in set(zip(real["direction"], real["query"]))   # its top-1 is true of it
    at_3 = hand.failures(3)
    assert at_3.empty and list(zip(*[hand.failures(3, include_valid=True)[c] for c in ("direction", "query")])) \
        == [("i2t", 2), ("i2t", 1)]  # first valid at rank 1, then at rank 0


def test_without_positives_the_failures_are_the_strict_ones(session, tiny_data):
    strict_split = dataclasses.replace(tiny_data["test"], positives=None)
    strict = WorkbenchSession(session.model, session.vocab, strict_split, scores=session.scores)
    assert not strict.complete_positives
    t2i = t2i_ranks(session.scores["final"], strict_split.caption_to_image)
    i2t = i2t_ranks(session.scores["final"], strict_split.caption_to_image)
    table = strict.query_table(1)
    assert (table["valid_rank"] == table["rank"]).all() and (table["n_valid"][table.direction == "t2i"] == 1).all()
    assert not table["valid_alternative"].any()
    for k in (1, 2, 5):
        failures = strict.failures(k)
        assert failures.equals(strict.failures(k, include_valid=True))
        assert set(failures[failures.direction == "t2i"]["query"]) == set(np.flatnonzero(t2i >= k))
        assert set(failures[failures.direction == "i2t"]["query"]) == set(np.flatnonzero(i2t >= k))
        assert (failures["outcome"] == "failure").all()
        assert (failures["rank"].diff().dropna() <= 0).all()
        for _, row in failures.iterrows():
            right = {level for level in strict.levels if level != "final" and row[f"rank_{level}"] < k}
            assert set(filter(None, row["right_under"].split(", "))) == right
    # the hand-made split without positives: every miss of the own item is a failure
    bare = WorkbenchSession(session.model, session.vocab, hand_split(tiny_data["test"], positives=False),
                            scores=hand_scores(session))
    failures = bare.failures(1)
    assert list(zip(failures["direction"], failures["query"])) == [
        ("i2t", 1), ("i2t", 2), ("t2i", 0), ("t2i", 1), ("t2i", 10), ("t2i", 5), ("t2i", 6)]


def test_failure_explorer_hides_valid_alternatives_until_asked_and_shows_what_is_true(hand, monkeypatch):
    explorer = FailureExplorer(hand, k=1)
    assert not explorer.include_valid.value
    assert explorer.table.equals(hand.failures(1))
    assert "4</b> more are valid alternatives" in explorer.summary.value
    explorer.include_valid.value = True
    assert explorer.table.equals(hand.failures(1, include_valid=True))
    labels = {value: label for label, value in explorer.rows.options}
    for label, row in explorer.table.iterrows():
        assert ("valid\u00a0alternative" in labels[label]) == (row["outcome"] == "valid alternative")
        assert ("failure" in labels[label]) == (row["outcome"] == "failure")

    row = explorer.table[(explorer.table.direction == "t2i") & (explorer.table["query"] == 0)].iloc[0]
    explorer.open_row(row.name)
    # caption 0 is true of images 0 (its own, ranked third) and 1 (ranked first)
    assert explorer.valid[["index", "own", "rank"]].values.tolist() == [[1, False, 0], [0, True, 2]]
    assert "valid alternative" in explorer.detail.value and "true of <b>2</b> images" in explorer.detail.value
    assert explorer.detail.value.count("data:image/png;base64") == 2  # a thumbnail per picture true of it
    assert "also true" in explorer.detail.value
    assert "(also true)" in explorer.figure.axes[1].get_title()

    row = explorer.table[(explorer.table.direction == "i2t") & (explorer.table["query"] == 1)].iloc[0]
    explorer.open_row(row.name)
    assert explorer.valid["index"].tolist() == [0, 6, 7, 8, 9, 5]  # c0 0.9, c6 0.5, c7-c9 0.4, c5 0.3
    assert explorer.valid["own"].tolist() == [False] + [True] * 5
    assert "<b>6</b> captions are true of this image" in explorer.detail.value
    assert hand.split.captions[0] in explorer.detail.value

    monkeypatch.setattr(failures_module, "VALID_SHOWN", 2)  # many: the first few, and how many
    row = explorer.table[(explorer.table.direction == "t2i") & (explorer.table["query"] == 5)].iloc[0]
    explorer.open_row(row.name)
    assert len(explorer.valid) == 3 and "true of <b>3</b> images, the best-ranked 2 shown" in explorer.detail.value
    assert explorer.detail.value.count("data:image/png;base64") == 2

    explorer.include_valid.value = False  # the chosen row is no longer listed
    assert explorer.row is None and explorer.valid is None and explorer.detail.value == ""
    assert len(explorer.table) == 3


def test_ranking_marks_own_also_true_and_wrong_items(hand):
    selection = Selection(image=0, caption=0)
    browser = RankingBrowser(hand, selection, top_k=3)
    # caption 0: image 1 (0.9, also true), image 2 (0.5, wrong), image 0 (0.1, its own)
    assert [(item.index, item.kind) for item in browser.results] == [(1, "also true"), (2, "wrong"), (0, "own")]
    tiles = browser.result_view.children
    assert [ALSO_TRUE in tile.layout.border for tile in tiles] == [True, False, False]
    assert TRUTH in tiles[2].layout.border
    assert "also true" in tiles[0].label.value and "wrong" in tiles[1].label.value
    assert "ground truth" in tiles[2].label.value
    assert [(item.index, item.rank) for item in browser.also_true] == [(1, 0)]
    assert "also true</b> of 1 other image" in browser.query_view.value

    selection.select(caption=1)  # nothing but its own image is true of caption 1
    assert [item.kind for item in browser.results] == ["wrong", "wrong", "own"] and browser.also_true == []

    selection.select(image=1, query="image")
    # image 1: c0 0.9 (also true), c1 0.8, c10 0.6 (wrong), c6 0.5, c7 0.4 (own)
    browser.top_k.value = 5
    assert [(item.index, item.kind) for item in browser.results] == [
        (0, "also true"), (1, "wrong"), (10, "wrong"), (6, "own"), (7, "own")]
    assert ALSO_TRUE in browser.result_view.children[0].layout.border_left

    selection.select(text="a red circle", query="text")  # a typed text: nothing is known to be true of it
    assert {item.kind for item in browser.results} == {"not judged"} and browser.also_true == []


# ------------------------------------------------------------------------------ embedding map

def test_embedding_map_points_select_images_and_captions(session):
    selection = Selection()
    embedding = EmbeddingMap(session, selection)
    images, captions = embedding_vectors(session)
    np.testing.assert_allclose(images, torch.nn.functional.normalize(session.images.glob, dim=1).numpy(),
                               atol=1e-5)
    # each kind centred on its own mean first, then the principal components of all of them
    expected = principal_components_2d(np.concatenate([images - images.mean(0), captions - captions.mean(0)]))
    np.testing.assert_allclose(embedding.coordinates["image"], expected[:len(images)], atol=1e-5)

    split = session.split
    click(embedding.figure, 0, *embedding.coordinates["image"][3], point_index=3)
    assert selection.image == 3 and selection.caption == split.image_to_captions(3)[0]  # a matching pair
    click(embedding.figure, 1, *embedding.coordinates["caption"][9], point_index=9)
    image = int(split.caption_to_image[9])
    assert (selection.image, selection.caption) == (image, 9)  # a caption comes with its own image
    ringed = embedding.figure.data[2]
    assert (ringed.x[0], ringed.x[1]) == (embedding.coordinates["image"][image][0],
                                          embedding.coordinates["caption"][9][0])
    assert embedding.figure.layout.title.text.startswith("images and captions")
    embedding.show_choice.value = "images"
    assert embedding.figure.layout.title.text.startswith("images,")  # the title says what is shown
    embedding.show_choice.value = "images and captions"

    embedding.colour_choice.value = "colours"  # a list attribute: coloured by "contains the chosen colour"
    colour = embedding.value_choice.value
    has = [colour in a["colours"] for a in session.split.image_attributes]
    assert list(embedding.figure.data[0].marker.color) == ["#d62728" if h else "#c7c7c7" for h in has]
    embedding.colour_choice.value = "variant"
    names = {trace.name for trace in embedding.figure.data[3:]}
    assert names == {a["variant"] for a in session.split.image_attributes}



def test_the_projection_is_deterministic_signed_and_centres_each_kind(session):
    images, captions = embedding_vectors(session)
    both = np.concatenate([images - images.mean(0), captions - captions.mean(0)])
    points = principal_components_2d(both)
    np.testing.assert_array_equal(points, principal_components_2d(both))  # the same vectors, the same map
    order = np.random.default_rng(0).permutation(len(both))
    np.testing.assert_allclose(principal_components_2d(both[order]), points[order], atol=1e-6)  # order-free
    np.testing.assert_allclose(principal_components_2d(-both), points, atol=1e-6)  # signed by its data
    assert (points[np.abs(points).argmax(0), [0, 1]] > 0).all()
    _, _, right = np.linalg.svd(both - both.mean(0), full_matrices=False)  # independently: the SVD's axes
    np.testing.assert_allclose(np.abs(points), np.abs((both - both.mean(0)) @ right[:2].T), atol=1e-6)
    coordinates = map_of(session).coordinates("images and captions")
    for kind in ("image", "caption"):  # centred per kind: no gap between images and captions is left
        np.testing.assert_allclose(coordinates[kind].mean(0), 0, atol=1e-6)
    assert map_of(session) is map_of(session)  # computed once per session, for every map on it


def test_the_map_opens_zoomed_to_the_selection_where_single_points_stand_apart(session):
    from scipy.spatial import cKDTree

    selection = Selection.start(session)
    embedding = EmbeddingMap(session, selection)
    assert embedding.zoom.value == ZOOMS[0]
    every = np.concatenate([embedding.coordinates["image"], embedding.coordinates["caption"]])
    selected = embedding.coordinates["image"][selection.image]
    x_range, y_range = embedding.view_ranges()
    assert [list(embedding.figure.layout.xaxis.range), list(embedding.figure.layout.yaxis.range)] == \
        [x_range, y_range]
    assert x_range[0] < selected[0] < x_range[1] and y_range[0] < selected[1] < y_range[1]
    nearest = np.argsort(np.linalg.norm(every - selected, axis=1))[:41]  # its 40 nearest are in view
    assert ((every[nearest] >= [x_range[0], y_range[0]]) & (every[nearest] <= [x_range[1], y_range[1]])).all()
    # Single images can be picked: the plot is about 650 px across and a click picks the point within 6 px
    # (hoverdistance), so the median distance from an image to the nearest other image in view should be at
    # least 1.5 % of the view (about 10 px). (The demo's whole map of 1,000 images has 1 %, in a
    # 1.5-pixel-per-point crowd of 6,000 with the captions; captions of the same words share one point.)
    embedding.show_choice.value = "images"
    images = embedding.coordinates["image"]
    x_view, y_view = embedding.view_ranges()
    inside = images[(images[:, 0] >= x_view[0]) & (images[:, 0] <= x_view[1])
                    & (images[:, 1] >= y_view[0]) & (images[:, 1] <= y_view[1])]
    distances, _ = cKDTree(inside).query(inside, k=2)
    assert np.median(distances[:, 1]) / max(np.ptp(x_view), np.ptp(y_view)) >= 0.015
    embedding.show_choice.value = "images and captions"

    split = session.split
    image = int(nearest[nearest < split.n_images][-1])  # a point in view, clicked: it is what gets selected
    click(embedding.figure, 0, *embedding.coordinates["image"][image], point_index=image)
    assert selection.image == image
    ringed = embedding.figure.data[2]
    assert (ringed.x[0], ringed.y[0]) == tuple(embedding.coordinates["image"][image])
    assert [list(embedding.figure.layout.xaxis.range), list(embedding.figure.layout.yaxis.range)] == \
        list(zoom_ranges(every, embedding.coordinates["image"][image]))  # the view follows the selection
    embedding.zoom.value = ZOOMS[1]
    assert embedding.view_ranges() is None and embedding.figure.layout.xaxis.autorange is True


# ------------------------------------------------------------------------------ workbench

def test_selection_controls_set_and_follow_the_selection(session):
    selection = Selection()
    controls = SelectionControls(session, selection)
    controls.image_index.value = 3
    assert selection.image == 3
    own = session.split.image_to_captions(3)
    assert [value for _, value in controls.own_captions.options] == own.tolist()
    controls.own_captions.value = int(own[1])
    assert selection.caption == own[1] and controls.caption_index.value == own[1]
    selection.select(image=5, caption=2)
    assert (controls.image_index.value, controls.caption_index.value) == (5, 2)
    assert controls.own_captions.value == 2  # caption 2 is not one of image 5's: listed apart, as another's
    assert controls.own_captions.options[0][0].endswith("(a caption of image 0, not this one)")


def test_workbench_builds_tabs_on_demand_and_links_them(session):
    bench = Workbench(session)
    assert set(bench._built) == {"Attention"}
    bench.tabs.selected_index = 3  # opening the tab builds it
    assert set(bench._built) == {"Attention", "Failures"}
    failures = bench.failures
    assert bench.tabs.children[3] is failures
    row = failures.table.iloc[0]
    failures.open_row(row.name)
    assert bench.explorer.shown_pair[0] == row["image"]
    assert bench.levels.table.equals(session.pair_levels(int(row["image"]), int(row["caption"])))
    statistics = bench.attention_statistics  # its chosen word opens in the Attention tab's explorer
    examples = statistics.open_cell("shape", "object")
    statistics.open_example(examples.index[0])
    record = examples.iloc[0]
    assert bench.explorer.shown_pair == (int(record["image"]), int(record["caption"]))
    assert bench.explorer.word == int(record["position"])


def test_a_workbench_run_for_a_static_page_builds_every_tab(session, monkeypatch):
    from mlasm.export import STATIC_EXPORT

    monkeypatch.setenv(STATIC_EXPORT, "1")
    bench = Workbench(session)
    assert list(bench._built) == list(bench.tabs.titles)
    assert [type(child) for child in bench.tabs.children] == [type(bench._built[tab]) for tab in bench.tabs.titles]


def count_redraws(bench, monkeypatch) -> dict:
    """tab -> how many times its view drew the selection (its show_selection ran) from now on."""
    counts = {}
    for tab, view in bench._built.items():
        counts[tab] = []
        original = view.show_selection
        monkeypatch.setattr(view, "show_selection",
                            lambda original=original, tab=tab, view=view: (counts[tab].append(view.selection_key()),
                                                                           original()))
    return counts


def test_only_the_tab_on_screen_redraws_and_a_hidden_tab_catches_up_once_when_shown(session, monkeypatch):
    bench = Workbench(session)
    tabs = list(bench.tabs.titles)
    for index in range(len(tabs)):  # every tab built, as a visitor who looked at each
        bench.tabs.selected_index = index
    bench.tabs.selected_index = tabs.index("Attention")
    drawn = count_redraws(bench, monkeypatch)
    controls = bench.children[1]
    for image in (3, 7, 11, 2, 5):
        controls.image_index.value = image
    assert len(drawn["Attention"]) == 5
    assert all(drawn[tab] == [] for tab in tabs if tab != "Attention")  # hidden: nothing drawn
    pair = (5, int(session.split.image_to_captions(5)[0]))
    assert (bench.selection.image, bench.selection.caption) == pair

    for tab in ("Levels", "Ranking", "Embedding map"):  # shown: one drawing, of the selection of now
        bench.tabs.selected_index = tabs.index(tab)
        assert len(drawn[tab]) == 1 and drawn[tab][0][:2] == (5, pair[1])
    assert bench.levels.table.equals(session.pair_levels(*pair))
    assert [item.index for item in bench.ranking.results] == \
        list(np.argsort(-session.image_scores(pair[1]), kind="stable")[:bench.ranking.top_k.value])
    ringed = bench.embedding.figure.data[2]
    assert (ringed.x[0], ringed.y[0]) == tuple(bench.embedding.coordinates["image"][5])
    bench.tabs.selected_index = tabs.index("Levels")  # shown again, nothing changed since: no redraw
    assert len(drawn["Levels"]) == 1
    assert drawn["Failures"] == []  # the failure list does not follow the selection at all

    bench.tabs.selected_index = tabs.index("Attention")
    assert len(drawn["Attention"]) == 5  # it drew this pair last: shown again, not drawn again
    bench.selection.select(query="image")  # the pair in view is the same: the explorer does not redraw
    assert len(drawn["Attention"]) == 5
    bench.tabs.selected_index = tabs.index("Ranking")  # the ranking's query changed: drawn once, as images ranked
    assert len(drawn["Ranking"]) == 2
    assert [item.index for item in bench.ranking.results] == \
        list(np.argsort(-session.caption_scores(5), kind="stable")[:bench.ranking.top_k.value])


def test_a_hidden_view_read_through_the_workbench_shows_the_current_selection(session):
    bench = Workbench(session)
    levels = bench.levels  # built while the Attention tab is on screen: hidden
    assert not levels.on_screen and bench.explorer.on_screen
    bench.selection.select(image=4, caption=int(session.split.image_to_captions(4)[0]))
    assert levels._shown != bench.explorer._shown  # it waited
    assert bench.levels.table.equals(session.pair_levels(4, bench.selection.caption))  # read: caught up
    bench.tabs.selected_index = list(bench.tabs.titles).index("Levels")
    bench.selection.select(image=6, caption=int(session.split.image_to_captions(6)[1]))
    explorer = bench._built["Attention"]  # as another view holds it (the statistics tab does), not caught up
    assert explorer._shown != (6, bench.selection.caption)  # hidden now: it waited
    explorer.select(word=1)  # choosing a word in it is about the selection of now
    assert explorer.shown_pair == (6, bench.selection.caption) and explorer.word == 1


# ------------------------------------------------------------------------------ drawing and plumbing

def _pixel_spread(png: bytes) -> float:
    """Standard deviation of the picture's pixel values: about 0 for a blank picture."""
    with Image.open(io.BytesIO(png)) as picture:
        return float(np.asarray(picture.convert("L"), dtype=float).std())


def test_pictures_drawn_from_many_threads_equal_those_drawn_one_at_a_time(session):
    explorer = AttentionExplorer(session)
    image, explanation = explorer.shown_pair[0], explorer.explanation

    def picture(word: int) -> bytes:
        view = PictureView(width=440)
        view.draw((4.4, 4.4), lambda ax: draw_pair_attention(
            session, image, explanation.region_indices, explanation.t2i_attention[word], ax, f"word {word}"))
        return view.png

    words = list(range(len(explorer.words)))
    one_at_a_time = [picture(word) for word in words]
    with ThreadPoolExecutor(max_workers=8) as pool:  # widget callbacks may run on several threads
        at_once = list(pool.map(picture, words * 4))
    assert at_once == one_at_a_time * 4
    assert min(_pixel_spread(png) for png in one_at_a_time) > 10
    assert plt.get_fignums() == []  # no figure went through pyplot


def test_a_picture_is_rendered_as_matplotlib_saves_it_to_the_pixel(session):
    from widgets.drawing import render_png

    explorer = AttentionExplorer(session)
    image, explanation = explorer.shown_pair[0], explorer.explanation

    def figure():
        fig, (ax,) = new_figure((3.8, 3.8))
        draw_pair_attention(session, image, explanation.region_indices, explanation.t2i_attention[0], ax, "word 0",
                            highlight=int(explanation.region_indices[0]))
        return fig

    fast = np.asarray(Image.open(io.BytesIO(render_png(figure()))).convert("RGB"))
    saved = figure()
    saved.get_layout_engine().execute(saved)  # as render_png lays it out: twice, the second in the drawing
    buffer = io.BytesIO()
    saved.savefig(buffer, format="png", dpi=100)
    np.testing.assert_array_equal(fast, np.asarray(Image.open(buffer).convert("RGB")))
    assert fast.shape == (380, 380, 3) and _pixel_spread(render_png(figure())) > 10


def test_going_back_to_a_pair_shows_its_kept_picture_without_drawing_it(session, monkeypatch):
    from widgets import attention as attention_module

    painted = []
    paint = attention_module.draw_pair_attention
    monkeypatch.setattr(attention_module, "draw_pair_attention",
                        lambda *args, **kwargs: (painted.append(args[1]), paint(*args, **kwargs)))
    selection = Selection.start(session)
    explorer = AttentionExplorer(session, selection, controls=False)
    first, first_png, first_figure = explorer.shown_pair, explorer.picture.png, explorer.figure
    other = (first[0] + 1) % session.split.n_images
    selection.select(image=other, caption=int(session.split.image_to_captions(other)[0]))
    assert len(painted) == 2 and explorer.picture.png != first_png
    selection.select(image=first[0], caption=first[1])  # back: the same picture, not drawn again
    assert len(painted) == 2 and explorer.picture.png == first_png and explorer.figure is first_figure
    explorer.select(word=(explorer.word + 1) % len(explorer.words))  # another word: drawn
    assert len(painted) == 3
    explorer.set_lambdas(explorer.lambda_t2i.value + 1, explorer.lambda_i2t.value)  # other weights: drawn
    assert len(painted) == 4
    kept = explorer.picture._kept
    for image in range(session.split.n_images):  # the kept pictures are bounded
        selection.select(image=image, caption=int(session.split.image_to_captions(image)[0]))
    assert len(kept) <= 12


VIEWS = (AttentionExplorer, LevelPanel, RankingBrowser, FailureExplorer, EmbeddingMap)


@pytest.mark.parametrize("view_class", VIEWS, ids=lambda cls: cls.__name__)
def test_every_view_takes_controls_and_draws_once_per_choice(session, view_class, monkeypatch):
    bare = view_class(session, Selection(), controls=False)
    assert bare.controls is None and not any(isinstance(c, SelectionControls) for c in bare.children)
    selection = Selection()
    view = view_class(session, selection, controls=True)
    assert isinstance(view.controls, SelectionControls) and view.children[0] is view.controls
    drawn = []
    monkeypatch.setattr(view, "show_selection", lambda: drawn.append(view.selection_key()))
    image = 3
    selection.select(image=image, caption=int(session.split.image_to_captions(image)[1]), query="image")
    follows = view_class is not FailureExplorer  # the failure list writes to the selection, never follows it
    assert len(drawn) == int(follows)  # three traits changed, one redraw
    view.controls.image_index.value = 5  # the bar is linked to the selection
    assert selection.image == 5 and len(drawn) == 2 * int(follows)


def test_selection_controls_link_the_query_kind_both_ways(session):
    selection = Selection()
    controls = SelectionControls(session, selection)
    controls.query_kind.value = "image"
    assert selection.query == "image"
    selection.select(query="caption")
    assert controls.query_kind.value == "caption"


def test_id_attributes_are_groups_coloured_by_the_chosen_one(session):
    synthetic = [{"family": n // 2, "n_objects": n % 3, "area": n * 0.5} for n in range(40)]
    assert attribute_options(synthetic) == {"family": "group", "n_objects": "category", "area": "number"}
    n_images = session.split.n_images
    families = [{"family": 200 + n} for n in range(n_images)]  # more ids than colours, as ShapeScenes' 250
    split = dataclasses.replace(session.split, image_attributes=families)
    embedding = EmbeddingMap(WorkbenchSession(session.model, session.vocab, split), Selection(image=5),
                             controls=False)
    embedding.colour_choice.value = "family"
    assert embedding.value_choice.value == 205  # starts on the selected image's own
    members = [n == 5 for n in range(n_images)]
    assert list(embedding.figure.data[0].marker.color) == ["#d62728" if m else "#c7c7c7" for m in members]
    assert not any(trace.marker.showscale for trace in embedding.figure.data)  # no colour scale on ids


def test_failure_explorer_starts_at_k_5_as_notebook_05_and_the_workbench_passes_k(session):
    assert FailureExplorer(session, controls=False).k.value == 5
    assert Workbench(session, k=3).failures.k.value == 3


# ------------------------------------------------------------------------------ score explanations

def test_level_panel_explains_every_level_by_words_and_regions(session):
    selection = Selection(image=2, caption=int(session.split.image_to_captions(2)[0]))
    panel = LevelPanel(session, selection)
    words = session.tokens(selection.caption)
    for level in session.levels:
        parts = panel.explained.levels[level]
        assert parts.total == pytest.approx(float(session.scores[level][2, selection.caption]), abs=1e-5)
        assert len(parts.words) == len(words)
    for word in words:
        assert f">{word}<br>" in panel.why.value
    assert panel.why.value.count("<tr>") == len(session.levels) + 1  # a header and one row per level
    selection.select(text="a red circle", query="text")
    assert panel.explained.levels["final"].total == pytest.approx(
        float(session.text_scores("a red circle")["final"][2]), abs=1e-5)
    selection.select(text="   ", query="text")  # a query with no words: nothing to explain, nothing left over
    assert panel.explained is None and panel.why.value == ""


def test_failure_explorer_says_which_items_made_the_difference(session):
    failures = FailureExplorer(session, Selection(), k=1)
    scores = session.scores
    for direction, kind in (("t2i", "words"), ("i2t", "regions")):
        row = failures.table[failures.table.direction == direction].iloc[0]
        failures.open_row(row.name)
        truth, preferred = failures.pairs()
        for level in ("final", "t2i"):
            failures.why_level.value = level
            diff = failures.difference
            expected = float(scores[level][preferred]) - float(scores[level][truth])
            assert diff.kind == kind and diff.level == level
            assert diff.difference == pytest.approx(expected, abs=1e-5)
            assert diff.deltas.sum() + diff.rest == pytest.approx(expected, abs=1e-5)
            assert html_unescape(diff.sentence()) in html_unescape(failures.why.value)
        failures.why_level.value = "final"
        assert diff.difference <= 0 or diff.deltas[diff.top].sum() >= 0.8 * diff.difference - 1e-9
        if kind == "words":
            assert diff.items == session.tokens(int(row["caption"]))


def html_unescape(text):
    import html

    return html.unescape(text)


# ------------------------------------------------------------------------------ one selection

def check_selection_agrees(session, selection, controls, panel, failures):
    split = session.split
    own = split.image_to_captions(selection.image).tolist()
    assert (controls.image_index.value, controls.caption_index.value) == (selection.image, selection.caption)
    assert controls.own_captions.value == selection.caption
    listed = [value for _, value in controls.own_captions.options]
    assert listed == own if selection.caption in own else listed == [selection.caption] + own
    assert controls.query_kind.value == selection.query
    assert controls.text_box.value == selection.text
    assert selection.query == "text" or selection.text == ""
    assert panel._shown == (selection.image, selection.text_side)
    if failures.rows.value is not None:
        row = failures._failures.loc[failures.rows.value]
        assert (int(row["image"]), int(row["caption"])) == (selection.image, selection.caption)


def test_two_hundred_random_selection_changes_keep_every_control_in_agreement(session):
    import random

    split = session.split
    selection = Selection.start(session)
    controls = SelectionControls(session, selection)
    panel = LevelPanel(session, selection, controls=False)
    failures = FailureExplorer(session, selection, controls=False, k=1)
    labels = [value for _, value in failures.rows.options]
    rng = random.Random(25)
    texts = ["a red circle", "two small squares", "a zebra", "   "]
    kinds = []
    for step in range(200):
        kind = rng.choice(["image box", "caption box", "captions menu", "query kind", "typed text",
                           "ranked image", "ranked caption", "failure row", "failure row again"])
        kinds.append(kind)
        # a value typed or chosen that is already there changes nothing: each choice here is a new one
        if kind == "image box":
            controls.image_index.value = rng.choice([i for i in range(split.n_images) if i != selection.image])
        elif kind == "caption box":
            controls.caption_index.value = rng.choice([c for c in range(split.n_captions) if c != selection.caption])
        elif kind == "captions menu":
            own = split.image_to_captions(selection.image).tolist()
            controls.own_captions.value = rng.choice([c for c in own if c != selection.caption])
        elif kind == "query kind":
            controls.query_kind.value = rng.choice(["caption", "image", "text"])
        elif kind == "typed text":
            controls.text_box.value = rng.choice(texts)
        elif kind == "ranked image":  # a click on an image of the ranking: a pair that need not match
            selection.select(image=rng.randrange(split.n_images))
        elif kind == "ranked caption":
            selection.select(caption=rng.randrange(split.n_captions))
        elif kind == "failure row":
            failures.rows.value = rng.choice(labels)
        else:  # the row of the last failure chosen, clicked again: it selects its pair again
            if failures.row is None:
                continue
            label = failures.row.name
            if failures.rows.value == label:  # still highlighted: the selection is already its pair
                assert (selection.image, selection.caption) == (failures.row["image"], failures.row["caption"])
            else:
                failures.rows.value = label
        check_selection_agrees(session, selection, controls, panel, failures)
        if kind in ("image box", "caption box", "captions menu"):  # chosen in the bar: a matching pair
            assert selection.caption in split.image_to_captions(selection.image)
        if kind.startswith("failure row") and failures.row is not None:
            assert failures.rows.value == failures.row.name
            assert (selection.image, selection.caption) == (failures.row["image"], failures.row["caption"])
    assert len(set(kinds)) == 9


def test_a_failure_row_left_and_clicked_again_selects_its_pair_again(session):
    selection = Selection()
    failures = FailureExplorer(session, selection, controls=False, k=1)
    label = failures.rows.options[0][1]
    failures.rows.value = label
    pair = (selection.image, selection.caption)
    selection.select(image=(pair[0] + 1) % session.split.n_images)
    assert failures.rows.value is None  # no longer highlighted: the selection shows another pair
    failures.rows.value = label
    assert (selection.image, selection.caption) == pair


def test_comparison_titles_and_legends_stay_inside_the_picture(session):
    failures = FailureExplorer(session, Selection(), controls=False, k=1)
    for direction in ("t2i", "i2t"):
        failures.open_row(failures.table[failures.table.direction == direction].index[0])
        fig = failures.figure
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            drawn = ax.get_tightbbox(renderer)  # the picture, its title, labels and legend
            assert drawn.x0 >= -1 and drawn.y0 >= -1 and drawn.x1 <= fig.bbox.x1 + 1 and drawn.y1 <= fig.bbox.y1 + 1, \
                (direction, drawn, fig.bbox)
