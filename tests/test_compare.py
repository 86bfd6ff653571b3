"""Comparing two models: fixed and broken queries from two rank arrays, worked out by hand."""
import numpy as np
import pandas as pd
import pytest

from mlasm.compare import (BOTH_RIGHT, BOTH_WRONG, BROKEN, FIXED, caption_tags, change_counts, changed,
                           comparison_table, filter_queries, fixed_and_broken, rank_changes, recall_at,
                           with_changes)

# Six caption queries; ranks are 0-based (rank 0 = retrieved first).
RANKS_A = np.array([0, 3, 0, 7, 1, 2])
RANKS_B = np.array([2, 0, 0, 9, 0, 0])


def test_rank_changes_at_k1_by_hand():
    # k=1: right means rank 0. A right: q0, q2. B right: q1, q2, q4, q5.
    assert rank_changes(RANKS_A, RANKS_B, 1).tolist() == [BROKEN, FIXED, BOTH_RIGHT, BOTH_WRONG, FIXED, FIXED]


def test_rank_changes_at_k3_by_hand():
    # k=3: right means rank < 3. A right: q0, q2, q4, q5. B right: q0, q1, q2, q4, q5.
    assert rank_changes(RANKS_A, RANKS_B, 3).tolist() == [BOTH_RIGHT, FIXED, BOTH_RIGHT, BOTH_WRONG, BOTH_RIGHT,
                                                          BOTH_RIGHT]


def test_fixed_and_broken_ordered_by_move():
    fixed, broken = fixed_and_broken(RANKS_A, RANKS_B, 1)
    # moves: q1 3 -> 0 (3), q4 1 -> 0 (1), q5 2 -> 0 (2): largest first
    assert fixed.tolist() == [1, 5, 4]
    assert broken.tolist() == [0]
    assert fixed_and_broken(RANKS_B, RANKS_A, 1)[1].tolist() == [1, 5, 4]  # swapping the models swaps the lists


def test_rank_changes_rejects_mismatch_and_bad_k():
    with pytest.raises(ValueError, match="different queries"):
        rank_changes(RANKS_A, RANKS_B[:3], 1)
    with pytest.raises(ValueError, match="at least 1"):
        rank_changes(RANKS_A, RANKS_B, 0)


CAPTIONS = ["Two red stars to the left of a blue circle.",   # image 0
            "The leftmost shape is a square.",               # image 0
            "A small green triangle on the left.",            # image 1
            "Three shapes: two circles and a cross."]         # image 1
CAPTION_TO_IMAGE = np.array([0, 0, 1, 1])


def query_table(t2i_ranks, t2i_valid, i2t_ranks, i2t_valid, i2t_caption):
    """A WorkbenchSession.query_table-like frame: four caption queries, then two image queries."""
    t2i = pd.DataFrame({"direction": "t2i", "query": range(4), "query_text": CAPTIONS, "image": CAPTION_TO_IMAGE,
                        "caption": range(4), "rank": t2i_ranks, "valid_rank": t2i_valid})
    i2t = pd.DataFrame({"direction": "i2t", "query": [0, 1], "query_text": ["im0", "im1"], "image": [0, 1],
                        "caption": i2t_caption, "rank": i2t_ranks, "valid_rank": i2t_valid})
    return pd.concat([t2i, i2t], ignore_index=True)


@pytest.fixture
def table():
    a = query_table([0, 2, 1, 0], [0, 0, 1, 0], [0, 4], [0, 0], [0, 2])
    b = query_table([1, 0, 0, 0], [0, 0, 0, 0], [3, 0], [1, 0], [1, 3])
    return comparison_table(a, b, CAPTIONS, CAPTION_TO_IMAGE, k=1)


def test_comparison_table_protocols_by_hand(table):
    # strict k=1: t2i A right q0,q3 ; B right q1,q2,q3 -> q0 broken, q1 fixed, q2 fixed, q3 both right
    #             i2t A right im0 ; B right im1 -> im0 broken, im1 fixed
    assert table["strict"].tolist() == [BROKEN, FIXED, FIXED, BOTH_RIGHT, BROKEN, FIXED]
    # complete k=1: t2i A valid ranks 0,0,1,0 ; B 0,0,0,0 -> only q2 fixed
    #               i2t A 0,0 ; B 1,0 -> im0 broken
    assert table["complete"].tolist() == [BOTH_RIGHT, BOTH_RIGHT, FIXED, BOTH_RIGHT, BROKEN, BOTH_RIGHT]
    assert table["caption"].tolist() == [0, 1, 2, 3, 0, 2]  # an image query opens A's best caption
    # at k=3 every strict t2i rank is < 3: nothing changes there; im0's 0 -> 3 is still broken, im1's 4 -> 0 fixed
    assert with_changes(table, 3)["strict"].tolist() == [BOTH_RIGHT] * 4 + [BROKEN, FIXED]


def test_caption_kinds_and_word_filters(table):
    assert caption_tags(CAPTIONS) == [frozenset({"count", "colour", "relation"}), frozenset({"extreme"}),
                                      frozenset({"size", "colour", "position"}), frozenset({"count"})]
    assert filter_queries(table, direction="t2i", kind="count")["query"].tolist() == [0, 3]
    assert filter_queries(table, direction="t2i", kind="extreme")["query"].tolist() == [1]
    # an image query speaks of what any of its own captions does
    assert filter_queries(table, direction="i2t", kind="extreme")["query"].tolist() == [0]
    assert filter_queries(table, direction="i2t", kind="position")["query"].tolist() == [1]
    assert filter_queries(table, direction="t2i", words="circle")["query"].tolist() == [0]
    assert filter_queries(table, direction="t2i", words=["two", "circles"])["query"].tolist() == [3]
    assert filter_queries(table, words="green")[["direction", "query"]].values.tolist() == [["t2i", 2], ["i2t", 1]]


def test_changed_lists_and_counts(table):
    fixed = changed(table, FIXED, "strict")
    # moves: t2i q1 2 -> 0 (2), t2i q2 1 -> 0 (1), i2t im1 4 -> 0 (4): largest first
    assert list(zip(fixed["direction"], fixed["query"])) == [("i2t", 1), ("t2i", 1), ("t2i", 2)]
    assert changed(table, BROKEN, "complete")[["direction", "query"]].values.tolist() == [["i2t", 0]]
    counts = change_counts(table)
    assert counts.loc[FIXED, ("strict", "t2i")] == 2 and counts.loc[BROKEN, ("strict", "i2t")] == 1
    assert counts.loc[BOTH_RIGHT, ("complete", "t2i")] == 3
    assert counts.sum().tolist() == [4, 2, 4, 2]
    recalls = recall_at(table, 1)
    assert recalls["strict t2i"] == {"a": 50.0, "b": 75.0}
    assert recalls["complete i2t"] == {"a": 100.0, "b": 50.0}
    with pytest.raises(ValueError, match="protocol"):
        changed(table, FIXED, "loose")


def test_comparison_table_refuses_different_queries():
    a = query_table([0, 2, 1, 0], [0, 0, 1, 0], [0, 4], [0, 0], [0, 2])
    with pytest.raises(ValueError, match="same queries"):
        comparison_table(a, a.iloc[:5], CAPTIONS, CAPTION_TO_IMAGE)


# --- the comparison session and view, on a tiny split with score matrices written by hand -------------

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import torch  # noqa: E402

from mlasm.config import MLASMConfig  # noqa: E402
from cli_support import TINY_MODEL, tiny_splits  # noqa: E402
from mlasm.data.shapescenes import NUMBER_WORDS  # noqa: E402
from mlasm.data.vocab import Vocabulary, tokenize  # noqa: E402
from mlasm.model import MLASM  # noqa: E402
from mlasm.train import config_for_data  # noqa: E402



def click(figure, x, y, point_index):
    """What plotly's front end sends when a point of trace 0 is clicked."""
    figure._js2py_pointsCallback = {
        "event_type": "plotly_click", "device_state": None, "selector": None,
        "points": {"xs": [x], "ys": [y], "point_indexes": [point_index], "trace_indexes": [0]}}


@pytest.fixture(scope="module")
def tiny_test(tiny_cache):
    return tiny_splits(tiny_cache, ("test",))["test"]


def hand_scores(split, fooled):
    """Scores where caption c's own image scores 1, except for captions in ``fooled``: there the next
    image scores 1 and the own image 0.5 (own rank 1). Every other pair scores below 0.1."""
    rng = np.random.default_rng(0)
    n, m = split.n_images, split.n_captions
    scores = rng.uniform(0, 0.1, size=(n, m))
    own = split.caption_to_image
    for c in range(m):
        if c in fooled:
            scores[(own[c] + 1) % n, c], scores[own[c], c] = 1.0, 0.5
        else:
            scores[own[c], c] = 1.0
    return scores.astype(np.float32)


@pytest.fixture(scope="module")
def comparison(tiny_test):
    from mlasm.compare import ModelComparison
    from mlasm.session import WorkbenchSession

    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"]
                       + sorted({t for c in tiny_test.captions for t in tokenize(c)}))
    torch.manual_seed(0)
    model = MLASM(config_for_data(MLASMConfig.cpu(**TINY_MODEL), tiny_test, vocab))
    m = tiny_test.n_captions
    fooled_a = {c for c in range(m) if c % 2 == 1}                  # A: odd captions miss their image
    fooled_b = {c for c in range(m) if c % 4 == 2}                  # B: captions 2, 6, 10 ... miss it
    sessions = {}
    for name, fooled in (("A", fooled_a), ("B", fooled_b)):
        scores = hand_scores(tiny_test, fooled)
        levels = {level: scores for level in ("t2i", "i2t", "local", "global", "final")}
        sessions[name] = WorkbenchSession(model, vocab, tiny_test, scores=levels)
    return ModelComparison(sessions), fooled_a, fooled_b


def test_model_comparison_fixed_and_broken_by_hand(comparison, tiny_test):
    comparison, fooled_a, fooled_b = comparison
    fixed, broken = comparison.fixed(k=1, direction="t2i"), comparison.broken(k=1, direction="t2i")
    # strict, k=1: right means its own image first. B fixes what A was fooled on and B is not, and so on.
    assert sorted(fixed["query"]) == sorted(fooled_a - fooled_b)
    assert sorted(broken["query"]) == sorted(fooled_b - fooled_a)
    # at k=2 the own image (second) is within the top 2 for every caption: nothing changes
    assert comparison.fixed(k=2, direction="t2i").empty and comparison.broken(k=2, direction="t2i").empty
    # complete positives: a fooled caption is still right when the image put first is also true of it
    def wrong(c, fooled):
        return c in fooled and (tiny_test.caption_to_image[c] + 1) % tiny_test.n_images not in \
            tiny_test.positive_sets().images_of(c)
    m = tiny_test.n_captions
    expected_fixed = [c for c in range(m) if wrong(c, fooled_a) and not wrong(c, fooled_b)]
    expected_broken = [c for c in range(m) if wrong(c, fooled_b) and not wrong(c, fooled_a)]
    assert sorted(comparison.fixed(k=1, protocol="complete", direction="t2i")["query"]) == expected_fixed
    assert sorted(comparison.broken(k=1, protocol="complete", direction="t2i")["query"]) == expected_broken
    counted = comparison.counts(1)
    assert counted.loc[FIXED, ("strict", "t2i")] == len(fooled_a - fooled_b)
    # swapping the models swaps the lists
    comparison.choose("B", "A")
    try:
        assert sorted(comparison.fixed(k=1, direction="t2i")["query"]) == sorted(fooled_b - fooled_a)
    finally:
        comparison.choose("A", "B")
    with pytest.raises(ValueError, match="two different models"):
        comparison.choose("A", "A")


def test_model_comparison_kind_and_word_filters(comparison, tiny_test):
    comparison = comparison[0]
    counting = {c for c, text in enumerate(tiny_test.captions)
                if set(tokenize(text)) & set(NUMBER_WORDS[2:])}
    rows = comparison.table(1)
    t2i = filter_queries(rows, direction="t2i", kind="count")
    assert set(t2i["query"]) == counting and counting
    word = tokenize(tiny_test.captions[0])[-2]      # the caption's last word before the full stop
    having = {c for c, text in enumerate(tiny_test.captions) if word in tokenize(text)}
    assert set(comparison.fixed(1, direction="t2i", words=word)["query"]) == \
        having & set(comparison.fixed(1, direction="t2i")["query"])


def test_comparison_view_lists_scatter_and_pair(comparison, tiny_test, tmp_path):
    from widgets.comparison import ComparisonView

    comparison, fooled_a, fooled_b = comparison
    view = ComparisonView(comparison, controls=False)
    assert len(view.fixed_list.options) == len(fooled_a - fooled_b)
    assert len(view.broken_list.options) == len(fooled_b - fooled_a)
    scatter = view.scatter.data[0]
    assert len(scatter.x) == tiny_test.n_captions
    # the scatter plots rank + 1 under A (x) and B (y): fooled captions sit at 2, the others at 1
    assert [x - 1 for x in scatter.x] == [int(c in fooled_a) for c in view.shown["query"]]
    assert [y - 1 for y in scatter.y] == [int(c in fooled_b) for c in view.shown["query"]]

    # a row fits its list (no text cut off at the right edge) and says the query and both ranks
    from widgets.comparison import LABEL_CHARS
    shown, label = view.fixed_list.options[0]
    row = view.table.loc[label]
    assert len(shown) <= LABEL_CHARS
    assert shown.replace("\u00a0", " ").startswith(f"{row['direction']} #{row['query']} {row['rank_a']}→{row['rank_b']}  ")

    # choosing a row of "fixed by B" selects its pair everywhere
    view.fixed_list.value = label
    caption = int(view.table.loc[label, "query"])
    assert (view.selection.caption, view.selection.image) == (caption, int(tiny_test.caption_to_image[caption]))
    # both models' scores of that pair, as written by hand
    levels = view.levels
    assert levels.loc["final", ("A", "score")] == pytest.approx(0.5)     # A was fooled on it
    assert levels.loc["final", ("B", "score")] == pytest.approx(1.0)
    assert levels.loc["final", ("A", "image_rank")] == 1 and levels.loc["final", ("B", "image_rank")] == 0
    assert len(view.figure.axes) >= 2 and view.figure.axes[0].get_title().startswith("A:")

    # a click on a point selects its query
    target = 3
    click(view.scatter, scatter.x[target], scatter.y[target], target)
    assert view.selection.caption == int(view.shown.iloc[target]["query"])

    # the filters narrow the scatter and the lists
    view.kind.value = "count"
    assert set(view.shown["query"]) <= {c for c, t in enumerate(tiny_test.captions)
                                        if set(tokenize(t)) & set(NUMBER_WORDS[2:])}
    view.kind.value = ""
    view.k.value = 2
    assert view.fixed_list.options == () and view.broken_list.options == ()

    # pictures save as PNG and SVG, from Python and from the buttons
    png, svg = view.save(tmp_path / "pair.png"), view.save(tmp_path / "ranks.svg", what="ranks")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:400]
    view.picture.save.stem.value = str(tmp_path / "button")
    view.picture.save.buttons["svg"].click()
    assert (tmp_path / "button.svg").is_file() and "wrote" in view.picture.save.status.value
    with pytest.raises(ValueError, match="png or .svg"):
        view.save(tmp_path / "pair.jpg")


def test_comparison_scatter_state_is_kept_for_reloaded_and_exported_pages(comparison):
    """The scatter's synced state holds the points drawn (what a static page rebuilds the figure from)."""
    from widgets.comparison import ComparisonView

    view = ComparisonView(comparison[0], controls=False)
    view.direction.value = "i2t"
    saved = view.scatter._widget_data[0]
    assert saved["x"] == [x + 1 for x in view.shown["rank_a"]] and len(saved["x"]) == len(view.shown) > 0


def test_an_ensemble_can_be_one_side(tiny_test, tmp_path):
    """An ensemble's session scores every pair by the mean of its models' scores, and compares like a model."""
    from mlasm.checkpoint import save_checkpoint
    from mlasm.evaluate import score_split
    from mlasm.compare import ModelComparison, ensemble_session
    from mlasm.session import WorkbenchSession

    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"]
                       + sorted({t for c in tiny_test.captions for t in tokenize(c)}))
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(MLASM(config_for_data(MLASMConfig.cpu(**TINY_MODEL), tiny_test, vocab)).eval())
        save_checkpoint(tmp_path / f"m{seed}.pt", models[-1], vocab, {})
    ensemble = ensemble_session([tmp_path / "m1.pt", tmp_path / "m2.pt"], tiny_test, device="cpu")
    one, two = (score_split(model, tiny_test, vocab)["final"].numpy() for model in models)
    np.testing.assert_allclose(ensemble.scores["final"], (one + two) / 2, rtol=1e-5, atol=1e-6)
    comparison = ModelComparison({"first": WorkbenchSession(models[0], vocab, tiny_test), "ensemble": ensemble})
    table = comparison.table(1)
    t2i = table[table["direction"] == "t2i"]
    own = tiny_test.caption_to_image
    expected_b = [int((np.delete(ensemble.scores["final"][:, c], own[c]) >= ensemble.scores["final"][own[c], c]).sum())
                  for c in range(tiny_test.n_captions)]
    assert t2i["rank_b"].tolist() == expected_b


def test_a_long_caption_is_cut_to_fit_its_list_row():
    import pandas as pd

    from widgets.comparison import LABEL_CHARS, _row_label

    text = "Two large triangles are above a small red circle and a purple diamond on a grey ground."
    row = pd.Series({"direction": "t2i", "query": 4711, "rank_a": 12, "rank_b": 0, "query_text": text})
    label = _row_label(row, "rank").replace("\u00a0", " ")
    assert len(label) == LABEL_CHARS and label.endswith("...")
    assert label == "t2i #4711 12→0  " + text[:LABEL_CHARS - len("t2i #4711 12→0  ") - 3] + "..."
    short = _row_label(row.replace(text, "A red circle."), "rank").replace("\u00a0", " ")
    assert short == "t2i #4711 12→0  A red circle."
