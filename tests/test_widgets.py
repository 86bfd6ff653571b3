"""The workbench widgets, driven without a browser: set a value, check what is drawn or listed.

Every expectation is computed independently of the widget (from the model, the score
matrices or mlasm.metrics), on a tiny ShapeScenes model trained in seconds.
"""
import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.shapescenes import load_shapescenes, shapescenes_folder  # noqa: E402
from mlasm.data.vocab import Vocabulary  # noqa: E402
from mlasm.evaluate import evaluate_checkpoints  # noqa: E402
from mlasm.metrics import i2t_ranks, t2i_ranks  # noqa: E402
from mlasm.model import MLASM  # noqa: E402
from mlasm.train import config_for_data, load_model, train  # noqa: E402
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
from widgets.embedding import embedding_vectors, principal_components_2d  # noqa: E402

TINY_SIZES = {"train": 48, "dev": 16, "test": 16}
TINY = dict(embed_size=32, word_dim=16, batch_size=16, epochs=1, learning_rate=1e-3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_data(cache):
    return {split: load_shapescenes(split, sizes=TINY_SIZES, cache=cache, progress=False)
            for split in ("train", "dev", "test")}


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
    monkeypatch.setattr(session.model, "score_all", lambda *a, **k: calls.append(1) or score_all(*a, **k))
    selection = Selection()
    AttentionExplorer(fresh, selection)
    assert calls == []  # explaining one pair needs no score matrix
    browser = RankingBrowser(fresh, selection)
    for caption in range(4):
        selection.select(caption=caption)
    assert calls == [1] and fresh.scores is browser.session.scores
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
    failures = session.failures(k)
    t2i = t2i_ranks(scores["final"], split.caption_to_image)
    i2t = i2t_ranks(scores["final"], split.caption_to_image)
    assert set(failures[failures.direction == "t2i"]["query"]) == set(np.flatnonzero(t2i >= k))
    assert set(failures[failures.direction == "i2t"]["query"]) == set(np.flatnonzero(i2t >= k))
    assert (failures["rank"].diff().dropna() <= 0).all()  # worst first
    for _, row in failures.iterrows():
        right = {level for level in session.levels if level != "final" and row[f"rank_{level}"] < k}
        assert set(filter(None, row["right_under"].split(", "))) == right
        if row["direction"] == "t2i":
            column = scores["final"][:, row["query"]].copy()
            column[split.caption_to_image[row["query"]]] = -np.inf
            assert row["preferred"] == column.argmax() and row["image"] == split.caption_to_image[row["query"]]
        else:
            assert split.caption_to_image[row["preferred"]] != row["query"]
            assert split.caption_to_image[row["caption"]] == row["query"]


def test_session_from_a_checkpoint_and_a_precomp_folder(checkpoint, cache):
    folder = shapescenes_folder(sizes=TINY_SIZES, cache=cache)
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
    assert "zebra" in explorer.header.value and "Unknown" in explorer.header.value
    controls = explorer.children[0]
    assert "zebra" in controls.notice.value


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
    assert explorer.table.equals(at_3[(at_3.direction == "t2i") & (at_3.rank_t2i < 3)])
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
    assert attention._pair == (row["image"], row["caption"])
    assert attention.words == session.tokens(int(row["caption"]))
    assert ranking.results[0].index == row["preferred"]
    assert [ax.get_title().split(":")[0] for ax in failures.figure.axes] == ["ground truth", "preferred instead"]

    row = failures.table[failures.table.direction == "i2t"].iloc[0]
    failures.open_row(row.name)
    assert (selection.image, selection.query) == (row["image"], "image")
    assert ranking.results[0].index == row["preferred"]


# ------------------------------------------------------------------------------ embedding map

def test_embedding_map_points_select_images_and_captions(session):
    selection = Selection()
    embedding = EmbeddingMap(session, selection)
    images, captions = embedding_vectors(session)
    np.testing.assert_allclose(images, torch.nn.functional.normalize(session.images.glob, dim=1).numpy(),
                               atol=1e-5)
    expected = principal_components_2d(np.concatenate([images, captions]))
    np.testing.assert_allclose(embedding.coordinates["image"], expected[:len(images)], atol=1e-5)

    click(embedding.figure, 0, *embedding.coordinates["image"][3], point_index=3)
    assert selection.image == 3
    click(embedding.figure, 1, *embedding.coordinates["caption"][9], point_index=9)
    assert selection.caption == 9
    ringed = embedding.figure.data[2]
    assert (ringed.x[0], ringed.x[1]) == (embedding.coordinates["image"][3][0], embedding.coordinates["caption"][9][0])

    embedding.colour_choice.value = "colours"  # a list attribute: coloured by "contains the chosen colour"
    colour = embedding.value_choice.value
    has = [colour in a["colours"] for a in session.split.image_attributes]
    assert list(embedding.figure.data[0].marker.color) == ["#d62728" if h else "#c7c7c7" for h in has]
    embedding.colour_choice.value = "variant"
    names = {trace.name for trace in embedding.figure.data[3:]}
    assert names == {a["variant"] for a in session.split.image_attributes}


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
    assert controls.own_captions.value is None  # caption 2 is not one of image 5's


def test_workbench_builds_tabs_on_demand_and_links_them(session):
    bench = Workbench(session)
    assert set(bench._built) == {"Attention"}
    bench.tabs.selected_index = 3  # opening the tab builds it
    assert set(bench._built) == {"Attention", "Failures"}
    failures = bench.failures
    assert bench.tabs.children[3] is failures
    row = failures.table.iloc[0]
    failures.open_row(row.name)
    assert bench.explorer._pair[0] == row["image"]
    assert bench.levels.table.equals(session.pair_levels(int(row["image"]), int(row["caption"])))
