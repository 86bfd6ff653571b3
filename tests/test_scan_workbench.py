"""A SCAN checkpoint in the workbench: the session, every tab, saved scores and the comparison with an
MLASM model, each saying honestly which levels and which attention direction the model has."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cli_support import TINY_SIZES, tiny_folder  # noqa: E402
from mlasm.checkpoint import save_checkpoint  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.shapescenes import load_shapescenes  # noqa: E402
from mlasm.data.vocab import Vocabulary  # noqa: E402
from mlasm.evaluate import evaluate_checkpoints  # noqa: E402
from mlasm.model import MLASM  # noqa: E402
from mlasm.scan_model import SCANConfig, random_scan_model, write_scan_checkpoint  # noqa: E402
from widgets import AttentionExplorer, FailureExplorer, LevelPanel, RankingBrowser, Workbench, WorkbenchSession  # noqa: E402,E501
from mlasm.compare import ModelComparison, ensemble_session  # noqa: E402
from widgets.comparison import ComparisonView  # noqa: E402
from widgets.workbench import TABS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = TINY_SIZES


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    splits = {name: load_shapescenes(name, sizes=SIZES, cache=cache, progress=False) for name in ("train", "dev")}
    root = tmp_path_factory.mktemp("scan")
    data = tiny_folder(splits, root / "data")
    vocab = Vocabulary.build(splits["train"].captions, min_count=1)
    vocab_file = root / "shapes_precomp_vocab.json"
    vocab.save(vocab_file, file_format="scan")
    common = dict(agg_func="Mean", raw_feature_norm="clipped_l2norm", precomp_enc_type="basic", bi_gru=True,
                  no_imgnorm=False, no_txtnorm=False, img_dim=splits["dev"].region_dim, embed_size=16, word_dim=8,
                  num_layers=1, vocab_size=len(vocab), lambda_lse=6.0)
    paths = {}
    for direction, lam in (("t2i", 9.0), ("i2t", 4.0)):
        paths[direction] = root / direction / "model_best.pth.tar"
        paths[direction].parent.mkdir()
        write_scan_checkpoint(paths[direction], random_scan_model(SCANConfig(cross_attn=direction, lambda_softmax=lam,
                                                                             **common), seed=7))
    config = MLASMConfig.cpu(region_dim=splits["dev"].region_dim, global_dim=splits["dev"].global_dim,
                             vocab_size=len(vocab), embed_size=16, word_dim=8, start_end_tokens=True)
    torch.manual_seed(0)
    paths["mlasm"] = root / "mlasm" / "best.pt"
    paths["mlasm"].parent.mkdir()
    save_checkpoint(paths["mlasm"], MLASM(config), vocab, {"epoch": 1})
    return {"data": data, "vocab": vocab_file, **paths}


def open_session(files, direction):
    return WorkbenchSession.from_checkpoint(files[direction], source=str(files["data"]), split="dev",
                                            vocab=files["vocab"], saved_scores=False)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_a_scan_session_has_the_levels_and_direction_of_its_model(files, direction):
    session = open_session(files, direction)
    assert session.levels == (direction, "final") and session.directions == (direction,)
    assert session.level_caveat == ""
    assert set(session.scores) == {direction, "final"}
    np.testing.assert_array_equal(session.scores[direction], session.scores["final"])
    # a caption's tokens as SCAN reads them
    assert session.tokens(0)[0] == "<start>" and session.tokens(0)[-1] == "<end>"
    table = session.pair_levels(0, 0)
    assert list(table.index) == [direction, "final"]
    assert table.loc["final", "score"] == pytest.approx(float(session.scores["final"][0, 0]), abs=1e-6)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_every_tab_opens_on_a_scan_model_and_says_what_it_lacks(files, direction):
    session = open_session(files, direction)
    bench = Workbench(session)
    for tab in TABS:
        assert bench.component(tab) is not None
    levels = bench.levels
    assert isinstance(levels, LevelPanel) and list(levels.table.index) == [direction, "final"]
    other = "i2t" if direction == "t2i" else "t2i"
    assert f"This SCAN model scores one direction ({direction}): it has no {other} attention" in levels.summary.value
    assert levels.gate_mean is None
    assert levels.explained is None and "scores are not split into them" in levels.why.value  # said, not guessed
    explorer = bench.explorer
    assert isinstance(explorer, AttentionExplorer)
    assert explorer.matrix_choice.options == (direction,)
    hidden = explorer.lambda_i2t if direction == "t2i" else explorer.lambda_t2i
    assert hidden.layout.display == "none"
    assert np.isfinite(explorer.region_weights).all() and np.isfinite(explorer.word_weights).all()
    assert np.isfinite(explorer.matrix).all()
    explanation = session.explain(0, 0)
    expected = explanation.t2i_attention if direction == "t2i" else explanation.i2t_attention.T
    np.testing.assert_array_equal(explorer.matrix, expected)
    assert isinstance(bench.ranking, RankingBrowser) and isinstance(bench.failures, FailureExplorer)
    assert tuple(bench.ranking.level_choice.options) == (direction, "final")
    statistics = bench.component("Attention statistics")
    if direction == "i2t":
        assert "has no word-to-region attention" in statistics.value
    failures = session.failures(k=1)
    assert set(failures["right_under"]) <= {"", direction}


def test_saved_scores_of_mlasm_evaluate_are_reused(files, tmp_path):
    split = open_session(files, "t2i").split
    evaluate_checkpoints([files["t2i"]], split, out_dir=files["t2i"].parent / "eval-dev", vocab=files["vocab"],
                         progress=False)
    session = WorkbenchSession.from_checkpoint(files["t2i"], source=str(files["data"]), split="dev",
                                               vocab=files["vocab"], saved_scores=[files["t2i"].parent / "eval-dev"])
    assert str(session.scores_source).endswith("scores.npz")
    assert set(session.scores) == {"t2i", "final"}
    # where mlasm evaluate writes by default (CHECKPOINT_FOLDER/eval-SPLIT), found without being named
    found = WorkbenchSession.from_checkpoint(files["t2i"], source=str(files["data"]), split="dev", vocab=files["vocab"])
    assert found.scores_source == files["t2i"].parent / "eval-dev" / "scores.npz"


def test_scan_against_mlasm_in_the_comparison(files):
    comparison = ModelComparison.from_checkpoints({"SCAN t-i": files["t2i"], "MLASM": files["mlasm"]},
                                                  source=str(files["data"]), split="dev", vocab=files["vocab"])
    assert comparison.sessions["MLASM"].levels == ("t2i", "i2t", "local", "global", "final")
    assert comparison.sessions["SCAN t-i"].levels == ("t2i", "final")
    levels = comparison.pair_levels(0, 0)
    assert np.isnan(levels.loc["global", ("SCAN t-i", "score")])  # a level SCAN does not have stays empty
    assert not np.isnan(levels.loc["global", ("MLASM", "score")])
    table = comparison.table(k=1)
    assert len(table) == comparison.split.n_captions + comparison.split.n_images
    view = ComparisonView(comparison)
    assert "SCAN t-i" in view.levels_html.value or view.levels is not None
    ensemble = ensemble_session([files["t2i"], files["i2t"]], comparison.split, vocab=files["vocab"])
    t2i, i2t = open_session(files, "t2i"), open_session(files, "i2t")
    np.testing.assert_allclose(ensemble.scores["final"], (t2i.scores["final"] + i2t.scores["final"]) / 2, atol=1e-6)


def test_attention_statistics_of_an_i2t_model_are_refused_in_words(files):
    from mlasm.attention_stats import model_records

    session = open_session(files, "i2t")
    with pytest.raises(ValueError, match="a SCAN i2t model\\) has no word-to-region attention"):
        model_records(session.model, session.split, session.vocab, session.images, session.captions)
    t2i = open_session(files, "t2i")
    records = model_records(t2i.model, t2i.split, t2i.vocab, t2i.images, t2i.captions)
    assert len(records) > 0 and np.isfinite(records["entropy"]).all()
