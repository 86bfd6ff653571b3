"""Attention statistics over a split, on a hand-made split whose attention is known.

A stand-in model returns attention written by hand, so every expected figure (pointing, chance,
entropy, the word-kind x region-kind shares) is worked out here from those numbers.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from mlasm.attention_stats import (LABEL_REGION_KINDS, REGION_KINDS, SplitReader, attention_table, caption_kinds,
                                   entropy, examples, kind_matrix, model_records, statistics, summarize,
                                   word_kinds)
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.shapescenes.build import SceneRenderer
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary, tokenize


def test_word_kinds_read_in_context():
    tokens = tokenize("Two small red stars to the left of a circle in the top left corner.")
    assert list(zip(tokens, word_kinds(tokens))) == [
        ("two", "count"), ("small", "size"), ("red", "colour"), ("stars", "shape"), ("to", "function"),
        ("the", "function"), ("left", "relation"), ("of", "function"), ("a", "function"), ("circle", "shape"),
        ("in", "function"), ("the", "function"), ("top", "position"), ("left", "position"),
        ("corner", "position"), (".", "function")]
    tokens = ["<start>"] + tokenize("The leftmost object is on a striped background.") + ["<end>"]
    assert word_kinds(tokens) == ["function", "function", "extreme", "generic noun", "function", "function",
                                  "function", "background", "background", "function", "function"]
    assert caption_kinds(tokenize("A blue square above two circles.")) == {"colour", "relation", "count"}


def test_entropy_by_hand():
    assert entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))


# Image 0: a star (object r0, its part r2) above a circle (object r1), and a background patch r3.
# Image 1: a pair box r1 of two squares (object r0 is one of them), background r2, r3 is padding.
SCENES = [{"regions": [{"kind": "object"}, {"kind": "object"}, {"kind": "part"}, {"kind": "background"}]},
          {"regions": [{"kind": "object"}, {"kind": "pair"}, {"kind": "background"}]}]
CAPTIONS = ["A red star above a blue circle.", "Two squares on the left."]
# caption 0 tokens: a red star above a blue circle .   caption 1: two squares on the left .
GROUNDING = [[[1, [0, 2]], [2, [0, 2]], [5, [1]], [6, [1]]], [[1, [0]]]]
UNIFORM4, UNIFORM3 = [0.25] * 4, [1 / 3] * 3
ATTENTION = {
    0: np.array([UNIFORM4,
                 [0.7, 0.1, 0.1, 0.1],     # red: top r0, a box of the star: pointed
                 [0.1, 0.1, 0.8, 0.0],     # star: top r2, the star's part: pointed
                 UNIFORM4,                 # above
                 UNIFORM4,
                 [0.5, 0.3, 0.1, 0.1],     # blue: top r0, the star: missed
                 [0.0, 1.0, 0.0, 0.0],     # circle: all on r1: pointed, entropy 0
                 UNIFORM4]),
    1: np.array([UNIFORM3,                 # two
                 [0.2, 0.6, 0.2],          # squares: top r1, the pair box: missed
                 UNIFORM3, UNIFORM3,
                 [0.1, 0.1, 0.8],          # left: mostly on the background
                 UNIFORM3]),
}


class HandModel:
    """Stands in for MLASM: explain returns the attention above; image 1's padding region is not kept."""

    config = SimpleNamespace(start_end_tokens=False)
    directions = ("t2i", "i2t")

    def explain(self, img, cap, image, caption):
        return SimpleNamespace(t2i_attention=ATTENTION[caption], region_indices=np.arange(4 if image == 0 else 3))


@pytest.fixture
def split():
    mask = np.array([[True] * 4, [True, True, True, False]])
    return RetrievalSplit(name="hand", regions=np.ones((2, 4, 3), np.float32), region_mask=mask,
                          global_features=np.ones((2, 3), np.float32), captions=CAPTIONS,
                          caption_to_image=np.array([0, 1]), grounding=GROUNDING, renderer=SceneRenderer(SCENES))


@pytest.fixture
def records(split):
    vocab = Vocabulary(list(SPECIAL_TOKENS) + sorted({t for c in CAPTIONS for t in tokenize(c)}))
    return model_records(HandModel(), split, vocab, img="encoded", cap="encoded")


def test_records_per_word(records):
    assert len(records) == 8 + 6
    red = records.iloc[1]
    assert (red["word"], red["kind"], red["top_region"], red["top_region_kind"]) == ("red", "colour", 0, "object")
    assert red["pointed"] and red["pointing_chance"] == pytest.approx(2 / 4)
    assert red["entropy"] == pytest.approx(-(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)))
    assert red["normalised_entropy"] == pytest.approx(red["entropy"] / math.log(4))
    assert (red["share object"], red["share part"], red["share pair"], red["share background"]) == \
        pytest.approx((0.8, 0.1, 0.0, 0.1))
    squares = records[(records["caption"] == 1) & (records["word"] == "squares")].iloc[0]
    assert squares["top_region_kind"] == "pair" and not squares["pointed"]
    assert squares["pointing_chance"] == pytest.approx(1 / 3)   # three kept regions, the padding is not one
    assert records[records["word"] == "above"]["grounded"].tolist() == [False]


def test_summary_by_word_kind(records):
    table = summarize(records)
    assert list(table.index) == ["colour", "shape", "count", "position", "relation", "function"]
    colour, shape = table.loc["colour"], table.loc["shape"]
    assert (colour["words"], colour["grounded"]) == (2, 2)
    assert colour["pointing %"] == pytest.approx(50.0)                       # red yes, blue no
    assert colour["chance %"] == pytest.approx(100 * (2 / 4 + 1 / 4) / 2)
    assert shape["pointing %"] == pytest.approx(100 * 2 / 3)                # star, circle yes; squares no
    assert shape["chance %"] == pytest.approx(100 * (2 / 4 + 1 / 4 + 1 / 3) / 3)
    assert math.isnan(table.loc["relation", "pointing %"])                  # "above" is never grounded
    assert table.loc["count", "entropy"] == pytest.approx(math.log(3))
    assert table.loc["count", "normalised entropy"] == pytest.approx(1.0)
    # function words: a, a, . (uniform over 4) and on, the, . (uniform over 3)
    assert table.loc["function", "entropy"] == pytest.approx((3 * math.log(4) + 3 * math.log(3)) / 6)


def test_kind_matrix_and_drill_down(records):
    matrix = kind_matrix(records, REGION_KINDS)
    assert list(matrix.columns) == list(REGION_KINDS)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    # colour: red (0.8, 0.1, 0, 0.1) and blue (0.8, 0.1, 0, 0.1)
    np.testing.assert_allclose(matrix.loc["colour"], [0.8, 0.1, 0.0, 0.1])
    # shape: star (0.2, 0.8, 0, 0), circle (1, 0, 0, 0), squares (0.2, 0, 0.6, 0.2)
    np.testing.assert_allclose(matrix.loc["shape"], [(0.2 + 1 + 0.2) / 3, 0.8 / 3, 0.6 / 3, 0.2 / 3])
    np.testing.assert_allclose(matrix.loc["position"], [0.1, 0.0, 0.1, 0.8])
    behind = examples(records, "shape", "pair")
    assert behind["word"].tolist()[0] == "squares" and len(behind) == 3
    assert examples(records, "shape", "object", limit=1)["word"].tolist() == ["circle"]


def test_statistics_json_and_table(records):
    stats = statistics(records, REGION_KINDS)
    assert stats["words"]["colour"]["pointing %"] == pytest.approx(50.0)
    assert stats["words"]["relation"]["pointing %"] is None
    assert stats["matrix"]["position"]["background"] == pytest.approx(0.8)
    lines = attention_table(stats).splitlines()
    assert lines[0].split()[:2] == ["word", "kind"] and "background" in lines[0]
    colour_line = next(line for line in lines if line.startswith("colour"))
    red, blue = entropy(np.array([0.7, .1, .1, .1])), entropy(np.array([0.5, .3, .1, .1]))
    assert colour_line.split() == ["colour", "2", "50.0", "37.5", f"{(red + blue) / 2:.2f}",
                                   f"{(red + blue) / 2 / math.log(4):.2f}", "0.80", "0.10", "0.00", "0.10"]
    assert next(line for line in lines if line.startswith("relation")).split()[2:4] == ["-", "-"]


def test_pointing_game_by_hand_and_one_pass_with_the_statistics(split):
    """evaluate's pointing game reads the attention records: one explanation a caption serves both."""
    from mlasm.attention_stats import attention_statistics_and_records
    from mlasm.evaluate import _pointing_and_statistics, grounding_accuracy

    vocab = Vocabulary(list(SPECIAL_TOKENS) + sorted({t for c in CAPTIONS for t in tokenize(c)}))
    # grounded: red (r0 in {0, 2}), star (r2 in {0, 2}), circle (r1 in {1}) point right; blue (r0) and squares
    # (r1, the pair box, not {0}) miss. Chance: 2/4, 2/4, 1/4, 1/4 on image 0, 1/3 on image 1 (3 real regions)
    expected = {"accuracy": 100 * 3 / 5, "words": 5, "hits": 3,
                "chance": 100 * (2 / 4 + 2 / 4 + 1 / 4 + 1 / 4 + 1 / 3) / 5}
    alone = grounding_accuracy(HandModel(), split, vocab, img="encoded", cap="encoded")
    assert alone == pytest.approx(expected)

    calls = []

    class Counting(HandModel):
        def explain(self, img, cap, image, caption):
            calls.append(caption)
            return super().explain(img, cap, image, caption)

    pointing, stats, records = _pointing_and_statistics(Counting(), split, vocab, "encoded", "encoded")
    assert calls == [0, 1]  # one pass: not once for the statistics and again for the pointing game
    assert pointing == alone and stats == statistics(records, REGION_KINDS) | {"captions": 2}
    # a sample of the captions for the statistics, read from records made over more captions: as made alone
    sampled, _ = attention_statistics_and_records(HandModel(), split, vocab, "encoded", "encoded", max_captions=1,
                                                  records=records)
    made, _ = attention_statistics_and_records(HandModel(), split, vocab, "encoded", "encoded", max_captions=1)
    assert sampled == made and made["captions"] == 1 and made["words"]["colour"]["words"] == 2


def test_start_token_shifts_grounding(split):
    """A model that reads <start> has one more attention row: grounding positions move by one."""
    reader = SplitReader(split)
    tokens = ["<start>"] + tokenize(CAPTIONS[0]) + ["<end>"]
    attended = reader.attended(0, 0, tokens, np.full((len(tokens), 4), 0.25), np.arange(4))
    assert sorted(attended.targets) == [2, 3, 6, 7]
    assert [attended.kinds[p] for p in sorted(attended.targets)] == ["colour", "shape", "colour", "shape"]


def test_detector_labels():
    """Detector data: words that name a label of the image point right when the top region carries it."""
    split = RetrievalSplit(name="coco-like", regions=np.ones((1, 3, 2), np.float32), region_mask=None,
                           global_features=np.ones((1, 2), np.float32), captions=["Dogs chase a frisbee and a cat."],
                           caption_to_image=np.array([0]), region_labels=np.array([[0, 1, 0]]),
                           label_names=["dog", "frisbee", "cat"])
    reader = SplitReader(split)
    assert reader.region_kind_names == LABEL_REGION_KINDS
    tokens = tokenize(split.captions[0])   # dogs chase a frisbee and a cat .
    attention = np.full((len(tokens), 3), 1 / 3)
    attention[0] = [0.1, 0.1, 0.8]   # dogs: top r2, a dog: pointed
    attention[3] = [0.6, 0.3, 0.1]   # frisbee: top r0, a dog: missed
    from mlasm.attention_stats import records_frame
    records = records_frame([reader.attended(0, 0, tokens, attention, np.arange(3))], LABEL_REGION_KINDS)
    assert records["kind"].tolist() == ["detected label", "other word", "other word", "detected label",
                                        "other word", "other word", "other label", "other word"]
    assert records["pointed"].iloc[[0, 3]].tolist() == [True, False]
    assert records["share same label"].iloc[[0, 3]].tolist() == pytest.approx([0.9, 0.3])
    assert summarize(records).loc["detected label", "pointing %"] == pytest.approx(50.0)


# --- the view, on a tiny ShapeScenes split and an untrained model --------------------------------------

import matplotlib  # noqa: E402

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory):
    import torch

    from mlasm.config import MLASMConfig
    from cli_support import TINY_MODEL, tiny_splits
    from mlasm.model import MLASM
    from mlasm.train import config_for_data
    from mlasm.session import WorkbenchSession

    split = tiny_splits(tmp_path_factory.mktemp("cache"), ("test",))["test"]
    vocab = Vocabulary(list(SPECIAL_TOKENS) + sorted({t for c in split.captions for t in tokenize(c)}))
    torch.manual_seed(0)
    model = MLASM(config_for_data(MLASMConfig.cpu(**TINY_MODEL), split, vocab)).eval()
    return WorkbenchSession(model, vocab, split)


def test_view_agrees_with_the_pointing_game_and_drills_down(tiny_session, tmp_path):
    from mlasm.evaluate import grounding_accuracy
    from widgets.attention import AttentionExplorer
    from widgets.attention_stats import AttentionStatsView

    session = tiny_session
    explorer = AttentionExplorer(session, controls=False)
    view = AttentionStatsView(session, explorer.selection, explorer=explorer)
    records = view.records
    assert len(records) == sum(len(session.tokens(c)) for c in range(session.split.n_captions))
    # the pointing game of evaluate (its own loop over the grounding) counts the same hits
    game = grounding_accuracy(session.model, session.split, session.vocab, session.images, session.captions)
    grounded = records[records["grounded"]]
    assert len(grounded) == game["words"] and int(grounded["pointed"].sum()) == game["hits"]
    # the region kinds are those of the scenes: shares of each word sum to one
    np.testing.assert_allclose(records[[f"share {kind}" for kind in REGION_KINDS]].sum(axis=1), 1.0, atol=1e-5)
    assert set(view.matrix.index) >= {"colour", "shape", "function"}

    # a click on a cell lists its words, the largest share first
    view.heatmap._js2py_pointsCallback = {
        "event_type": "plotly_click", "device_state": None, "selector": None,
        "points": {"xs": ["background"], "ys": ["colour"], "point_indexes": [[0, 3]], "trace_indexes": [0]}}
    assert view.cell == ("colour", "background")
    shares = view.cell_examples["share background"].tolist()
    assert shares == sorted(shares, reverse=True) and set(view.cell_examples["kind"]) == {"colour"}
    assert len(view.example_list.options) == len(view.cell_examples) > 0

    # choosing an example opens its pair, and its word in the attention explorer
    label = view.example_list.options[2][1]
    view.example_list.value = label
    record = records.loc[label]
    assert (view.selection.image, view.selection.caption) == (record["image"], record["caption"])
    assert explorer.word == record["position"] and explorer.words[explorer.word] == record["word"]

    saved = view.save(tmp_path / "stats.svg")
    assert b"<svg" in saved.read_bytes()[:400]
    with pytest.raises(ValueError, match="no cell"):
        view.open_cell("colour", "sky")


def test_evaluate_writes_and_prints_the_statistics(tiny_session, tmp_path):
    """``mlasm evaluate``'s result holds the statistics; its grounded words are the pointing game's words."""
    from mlasm.checkpoint import save_checkpoint
    from mlasm.evaluate import evaluate_checkpoints
    from mlasm.report import format_result

    save_checkpoint(tmp_path / "model.pt", tiny_session.model, tiny_session.vocab, {})
    result = evaluate_checkpoints([tmp_path / "model.pt"], tiny_session.split, progress=False)
    stats, game = result["attention_statistics"], result["grounding"]
    assert stats["captions"] == tiny_session.split.n_captions and stats["region_kinds"] == list(REGION_KINDS)
    grounded = {kind: row for kind, row in stats["words"].items() if row["grounded"]}
    assert sum(row["grounded"] for row in grounded.values()) == game["words"]
    hits = sum(row["pointing %"] * row["grounded"] / 100 for row in grounded.values())
    assert hits == pytest.approx(game["hits"])
    printed = format_result(result)
    assert "attention per word kind, over" in printed
    assert attention_table(stats) in printed
    # an ensemble's result lists each model's statistics: each is printed under its checkpoint
    ensemble = {**result, "checkpoints": ["a.pt", "b.pt"], "attention_statistics": [stats, stats]}
    printed = format_result(ensemble)
    assert "attention per word kind of a.pt" in printed and "attention per word kind of b.pt" in printed


def test_every_view_picture_saves_as_png_and_svg(tiny_session, tmp_path):
    """The existing views draw through PictureView: their pictures save from Python and from buttons."""
    from widgets.attention import AttentionExplorer
    from widgets.levels import LevelPanel
    from widgets.drawing import save_view

    explorer = AttentionExplorer(tiny_session, controls=False)
    png = save_view(explorer, tmp_path / "explorer.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    levels = LevelPanel(tiny_session, explorer.selection, controls=False)
    assert b"<svg" in save_view(levels, tmp_path / "levels.svg").read_bytes()[:400]
    buttons = explorer.picture.save  # every picture has its own buttons
    buttons.stem.value = str(tmp_path / "clicked")
    buttons.buttons["svg"].click()
    assert buttons.saved == tmp_path / "clicked.svg" and b"<svg" in buttons.saved.read_bytes()[:400]
    levels.gate_plot.save.stem.value = str(tmp_path / "gate")
    levels.gate_plot.save.buttons["png"].click()
    assert (tmp_path / "gate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="shows the pictures"):
        save_view(explorer, tmp_path / "x.png", picture="heatmap")
