"""The workbench reuses the score matrices an evaluation saved, and scores one query alone until then."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cli_support import TINY
from mlasm.config import MLASMConfig
from mlasm.evaluate import evaluate_checkpoints
from mlasm.model import MLASM
from mlasm.saved_scores import SCORES_FILE, rank_changes_in_half_precision
from mlasm.train import train
from mlasm.session import WorkbenchSession

pytestmark = pytest.mark.usefixtures("one_thread")  # splits, data_folder: tests/conftest.py


@pytest.fixture(scope="module")
def evaluated(splits, tmp_path_factory):
    """A tiny model trained for one epoch and evaluated on its dev split, metrics in the run's eval/ folder."""
    run = tmp_path_factory.mktemp("run")
    summary = train(MLASMConfig.cpu(**{**TINY, "epochs": 1}), splits["train"], splits["dev"], run / "model",
                    progress=False)
    evaluate_checkpoints([summary["best"]], splits["dev"], out_dir=run, progress=False)
    return summary["best"], run


def _open(checkpoint, data_folder, split="dev", **options) -> WorkbenchSession:
    return WorkbenchSession.from_checkpoint(checkpoint, str(data_folder), split, device="cpu", **options)


def test_a_session_on_an_evaluated_checkpoint_reads_its_scores_instead_of_scoring(evaluated, data_folder, monkeypatch):
    checkpoint, run = evaluated
    assert (run / SCORES_FILE).is_file() and (run / "metrics.json").is_file()
    def no_scoring(*args, **kwargs):
        raise AssertionError("the saved scores should have been used")

    monkeypatch.setattr(MLASM, "score_all", no_scoring)
    session = _open(checkpoint, data_folder)
    assert session.scores_source == run / SCORES_FILE
    saved = {level: session.scores[level] for level in session.levels}
    monkeypatch.undo()
    fresh = _open(checkpoint, data_folder, saved_scores=False)  # scored now
    assert fresh.scores_source is None
    for level in session.levels:
        np.testing.assert_allclose(saved[level], fresh.scores[level], rtol=0, atol=1e-6)
    assert fresh.scores_source == "computed"
    for key, ranks in session.ranks.items():  # so every rank of the workbench is the one evaluate saved
        np.testing.assert_array_equal(ranks, np.load(run / "ranks.npz")[key], err_msg=key)


def test_saved_scores_of_another_checkpoint_or_split_are_not_used(evaluated, data_folder, tmp_path):
    checkpoint, run = evaluated
    other_run = tmp_path / "other"
    shutil.copytree(run, other_run)
    retrained = other_run / "model" / "best.pt"
    state = torch.load(retrained, weights_only=True)
    state["model"]["region_proj.bias"] += 0.01
    torch.save(state, retrained)  # the same path, another model: its scores.npz is stale
    assert _open(retrained, data_folder).scores_source is None
    assert _open(checkpoint, data_folder, "train").scores_source is None  # another split


def test_before_the_gallery_is_scored_one_query_scores_alone_and_agrees(evaluated, data_folder):
    checkpoint, _ = evaluated
    session = _open(checkpoint, data_folder, saved_scores=False)
    caption, image = 7, 3
    column = {level: session.image_scores(caption, level) for level in session.levels}
    row = {level: session.caption_scores(image, level) for level in session.levels}
    table = session.pair_levels(image, caption)
    assert session._scores is None  # none of it scored the whole gallery
    for level in session.levels:
        np.testing.assert_allclose(column[level], session.scores[level][:, caption], rtol=0, atol=1e-6)
        np.testing.assert_allclose(row[level], session.scores[level][image], rtol=0, atol=1e-6)
    whole = session.pair_levels(image, caption)  # now read from the whole gallery's matrices
    np.testing.assert_allclose(table["score"], whole["score"], rtol=0, atol=1e-6)
    assert table[["image_rank", "caption_rank"]].equals(whole[["image_rank", "caption_rank"]])


def test_half_precision_changes_ranks_that_differ_past_its_digits():
    # caption 0 belongs to image 0 and caption 1 to image 1; image 2 scores 1e-4 below image 0 for
    # caption 0: a float16 step at 0.8 is about 5e-4, so the two tie and image 2 ranks level with it
    scores = np.array([[0.8003, 0.1],
                       [0.2, 0.9],
                       [0.8002, 0.3]], dtype=np.float32)
    changed = rank_changes_in_half_precision(scores, np.array([0, 1]))
    assert changed["t2i"] == pytest.approx(0.5) and changed["i2t"] == 0.0


def test_the_attention_records_saved_with_the_scores_open_the_statistics_tab_as_computed(evaluated, data_folder,
                                                                                          tmp_path, monkeypatch):
    import pandas as pd

    from mlasm import attention_stats
    from mlasm.saved_scores import RECORDS_FILE
    from widgets import attention_stats as stats_view

    checkpoint, run = evaluated
    opened = _open(checkpoint, data_folder, saved_scores=False)
    if not attention_stats.knows_word_and_region_kinds(opened.split):
        pytest.skip("this split knows no word and region kinds: no statistics, no records")
    evaluate_checkpoints([checkpoint], opened.split, out_dir=tmp_path, progress=False)  # the split as the session reads it
    assert (tmp_path / RECORDS_FILE).is_file()
    session = _open(checkpoint, data_folder, saved_scores=[tmp_path])
    assert session.scores_source == tmp_path / SCORES_FILE and session.attention_records is not None
    fresh = attention_stats.model_records(opened.model, opened.split, opened.vocab, opened.images, opened.captions)
    pd.testing.assert_frame_equal(session.attention_records, fresh, check_dtype=False)

    monkeypatch.setattr(stats_view, "model_records", lambda *a, **k: pytest.fail("the saved records were not used"))
    view = stats_view.AttentionStatsView(session)
    pd.testing.assert_frame_equal(view.records, fresh, check_dtype=False)
    monkeypatch.undo()
    assert opened.attention_records is None  # nothing read: computed when asked
    # the run's records were made from the split generated in memory, which knows more than the folder:
    # read only where the reading is the same, so whatever a session reads equals what it would compute
    default = _open(checkpoint, data_folder)
    assert (run / RECORDS_FILE).is_file() and default.scores_source == run / SCORES_FILE
    if default.attention_records is not None:
        pd.testing.assert_frame_equal(default.attention_records, fresh, check_dtype=False)
