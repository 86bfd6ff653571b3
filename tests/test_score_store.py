"""Large galleries: evaluate writes a score store (one .npy per level) band by band, resumes after an
interrupt, and measures it in chunks; nothing changes a number against scores.npz."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from cli_support import TINY
from mlasm import score_store, store_measures
from mlasm.config import MLASMConfig
from mlasm.checkpoint import save_checkpoint
from mlasm.data.vocab import Vocabulary
from mlasm.evaluate import evaluate_checkpoints, level_metrics, level_ranks
from mlasm.metrics import i2t_ranks, t2i_ranks
from mlasm.model import MLASM
from mlasm.saved_scores import SCORES_FILE, SavedScoresIgnored, scores_fingerprint
from mlasm.run_folder import config_for_data

pytestmark = pytest.mark.usefixtures("one_thread")  # splits: tests/conftest.py
BUDGET = 0.05  # MB: blocks of a few images, so the dev split's 16 images make several bands


@pytest.fixture(scope="module")
def checkpoint(splits, tmp_path_factory):
    torch.manual_seed(0)
    vocab = Vocabulary.build(splits["train"].captions)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, MLASM(config_for_data(MLASMConfig.cpu(**TINY), splits["train"], vocab)), vocab, {})
    return path


@pytest.fixture(scope="module")
def as_npz(checkpoint, splits, tmp_path_factory):
    """Today's layout: scores.npz, evaluated as a small gallery always was."""
    out = tmp_path_factory.mktemp("npz")
    result = evaluate_checkpoints([checkpoint], splits["dev"], out_dir=out, progress=False, memory_budget_mb=BUDGET)
    return result, out


def _evaluate(checkpoint, split, out):
    return evaluate_checkpoints([checkpoint], split, out_dir=out, progress=False, memory_budget_mb=BUDGET,
                                score_store=True)


def _assert_same_outputs(npz_out, store_out, split, checkpoint):
    assert json.loads((npz_out / "metrics.json").read_text()) == json.loads((store_out / "metrics.json").read_text())
    before, after = np.load(npz_out / "ranks.npz"), np.load(store_out / "ranks.npz")
    assert sorted(before.files) == sorted(after.files)
    for key in before.files:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    saved = np.load(npz_out / SCORES_FILE)
    stored = score_store.open_store(store_out / score_store.STORE_DIR, scores_fingerprint([checkpoint], split),
                                    _model_of(checkpoint).levels, verify=True)
    assert stored is not None
    for level, matrix in stored.items():
        assert isinstance(matrix, np.memmap) and matrix.dtype == np.float32
        np.testing.assert_array_equal(saved[level], matrix, err_msg=level)


def _model_of(checkpoint):
    from mlasm.checkpoint import load_model
    return load_model(checkpoint, "cpu")[0]


def test_the_store_holds_the_matrices_and_metrics_of_scores_npz(checkpoint, splits, as_npz, tmp_path):
    result, npz_out = as_npz
    stored = _evaluate(checkpoint, splits["dev"], tmp_path)
    assert stored == result
    assert not (tmp_path / SCORES_FILE).exists() and not (tmp_path / score_store.PARTIAL_DIR).exists()
    assert sorted(p.name for p in (tmp_path / score_store.STORE_DIR).iterdir()) == \
        ["final.npy", "global.npy", "i2t.npy", "local.npy", "manifest.json", "t2i.npy"]
    _assert_same_outputs(npz_out, tmp_path, splits["dev"], checkpoint)


def test_an_interrupted_evaluation_resumes_at_its_last_band_with_the_same_result(checkpoint, splits, as_npz,
                                                                                 tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(score_store, "RECORD_EVERY_S", 0.0)  # every band recorded
    write_band = score_store.StoreWriter.write_band
    written = []

    def interrupted(self, start, band):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two bands
        written.append(start)
        write_band(self, start, band)

    monkeypatch.setattr(score_store.StoreWriter, "write_band", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(checkpoint, splits["dev"], tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    progress = json.loads((tmp_path / score_store.PARTIAL_DIR / score_store.PROGRESS).read_text())
    assert 0 < progress["done_rows"] < splits["dev"].n_images
    monkeypatch.setattr(score_store.StoreWriter, "write_band", write_band)
    score_blocks, firsts = MLASM.score_blocks, []

    def recording(self, *args, **kwargs):
        firsts.append(kwargs.get("from_image", 0))
        return score_blocks(self, *args, **kwargs)

    monkeypatch.setattr(MLASM, "score_blocks", recording)
    capsys.readouterr()
    assert _evaluate(checkpoint, splits["dev"], tmp_path) == as_npz[0]
    assert firsts == [progress["done_rows"]]  # the finished bands were not scored again
    assert "resuming an interrupted evaluation after image" in capsys.readouterr().err
    _assert_same_outputs(as_npz[1], tmp_path, splits["dev"], checkpoint)


def test_a_partial_store_of_other_scores_is_started_over_with_one_line(checkpoint, splits, tmp_path, capsys):
    partial = tmp_path / score_store.PARTIAL_DIR
    writer = score_store.StoreWriter(tmp_path, {"checkpoints": ["another"]}, (16, 48), ("final",), 4)
    writer.write_band(0, {"final": np.ones((4, 48), np.float32)})
    writer.sync()
    capsys.readouterr()
    again = score_store.StoreWriter(tmp_path, {"checkpoints": ["ours"]}, (16, 48), ("final",), 4)
    assert again.done_rows == 0 and "scoring starts over" in capsys.readouterr().err
    assert not np.load(partial / "final.npy").any()  # the other scores are gone


def test_a_damaged_store_is_ignored_with_one_line_and_a_full_check_finds_a_changed_byte(checkpoint, splits, tmp_path):
    _evaluate(checkpoint, splits["dev"], tmp_path)
    folder, fingerprint = tmp_path / score_store.STORE_DIR, scores_fingerprint([checkpoint], splits["dev"])
    levels = ("final", "t2i")
    data = bytearray((folder / "final.npy").read_bytes())
    data[-1] ^= 0x40  # one flipped bit: the size and header are right, the checksum is not
    (folder / "final.npy").write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score_store.open_store(folder, fingerprint, levels) is not None  # checked by size, header
    with pytest.warns(SavedScoresIgnored, match="final.npy does not match its checksum"):
        assert score_store.open_store(folder, fingerprint, levels, verify=True) is None
    assert score_store.verify_store(folder) == ["final"]
    (folder / "t2i.npy").write_bytes((folder / "t2i.npy").read_bytes()[:-4])  # truncated
    with pytest.warns(SavedScoresIgnored, match="t2i.npy has"):
        assert score_store.open_store(folder, fingerprint, levels) is None
    assert score_store.open_store(folder, {**fingerprint, "split": "other"}, levels) is None  # another run's


def test_chunked_measures_equal_the_whole_matrix_ones(splits, monkeypatch):
    """Chunks of 3 rows / columns: ranks, top results and metrics as mlasm.metrics computes them whole."""
    split = splits["dev"]
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(split.n_images, split.n_captions)).astype(np.float32)
    matrix[:, 5] = matrix[0, 5]  # ties count against the query, in chunks too
    monkeypatch.setattr(store_measures, "CHUNK_ELEMENTS", 3 * split.n_captions)
    i2t, t2i = store_measures.ranks_in_chunks(matrix, split.caption_to_image)
    np.testing.assert_array_equal(i2t, i2t_ranks(matrix, split.caption_to_image))
    np.testing.assert_array_equal(t2i, t2i_ranks(matrix, split.caption_to_image))
    scores = {"final": matrix, "t2i": -matrix}
    tensors = {level: torch.from_numpy(m) for level, m in scores.items()}
    metrics, ranks = store_measures.measure_store(scores, split.caption_to_image, split.positives)
    assert metrics == level_metrics(tensors, split.caption_to_image, positives=split.positives)
    expected = level_ranks(tensors, split.caption_to_image, split.positives)
    assert sorted(ranks) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(ranks[key], expected[key], err_msg=key)


def test_a_session_memory_maps_a_store_and_shows_what_scores_npz_shows(checkpoint, data_folder, tmp_path,
                                                                       monkeypatch):
    from mlasm.session import WorkbenchSession
    from mlasm.sources import open_split

    split = open_split(str(data_folder), "dev")
    store_out, npz_out = tmp_path / "store", tmp_path / "npz"
    evaluate_checkpoints([checkpoint], split, out_dir=store_out, progress=False, score_store=True)
    evaluate_checkpoints([checkpoint], split, out_dir=npz_out, progress=False)  # today's scores.npz

    def no_scoring(*args, **kwargs):
        raise AssertionError("the saved scores should have been used")

    monkeypatch.setattr(MLASM, "score_all", no_scoring)
    large = WorkbenchSession.from_checkpoint(checkpoint, str(data_folder), "dev", device="cpu",
                                             saved_scores=[store_out])
    small = WorkbenchSession.from_checkpoint(checkpoint, str(data_folder), "dev", device="cpu",
                                             saved_scores=[npz_out])
    assert large.scores_source == store_out / score_store.STORE_DIR and small.scores_source == npz_out / SCORES_FILE
    assert large._encodings is None and isinstance(large.scores["final"], np.memmap)  # nothing encoded, mapped
    assert large._ranks is not None  # evaluate's ranks.npz, not computed again
    for key, ranks in small.ranks.items():
        np.testing.assert_array_equal(large.ranks[key], ranks, err_msg=key)
    pd_testing = pytest.importorskip("pandas.testing")
    for k in (1, 5):
        pd_testing.assert_frame_equal(large.query_table(k), small.query_table(k))
        pd_testing.assert_frame_equal(large.failures(k, include_valid=True), small.failures(k, include_valid=True))
    # in chunks of 1, 3 and 16 images: the best image of each caption is carried across chunks
    from mlasm import session_tables, store_measures
    assert small.positives.indices.size > split.n_captions  # complete positives: alternatives to find
    for rows in (1, 3, 16):
        monkeypatch.setattr(session_tables, "row_chunks", lambda n, m, rows=rows: store_measures.row_chunks(n, m, rows * m))
        pd_testing.assert_frame_equal(session_tables.query_table_in_chunks(large), small.query_table(1)
                                      .drop(columns=["hit", "valid_alternative", "outcome"]))
    large._ranks = None  # computed in chunks when ranks.npz is not there
    for key, ranks in small.ranks.items():
        np.testing.assert_array_equal(large.ranks[key], ranks, err_msg=key)
    pd_testing.assert_frame_equal(large.pair_levels(3, 7), small.pair_levels(3, 7))
    np.testing.assert_array_equal(large.image_scores(7), small.image_scores(7))
    for level, value in small.explain(3, 7).scores.items():  # the pair encoded alone: the same scores
        assert large.explain(3, 7).scores[level] == pytest.approx(value, abs=1e-6)
    assert large._encodings is None


def test_the_command_line_writes_a_store_when_asked(checkpoint, data_folder, tmp_path, capsys):
    from cli_support import answer

    code, _, _ = answer(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data_folder),
                                 "--split", "dev", "--out", str(tmp_path), "--score-store", "yes", "--threads", "1"])
    assert code == 0 and (tmp_path / score_store.STORE_DIR / score_store.MANIFEST).is_file()
    assert not (tmp_path / SCORES_FILE).exists()
    manifest = score_store.read_manifest(tmp_path / score_store.STORE_DIR)
    assert manifest["shape"] == [16, 80] and score_store.verify_store(tmp_path / score_store.STORE_DIR) == []


def test_a_ranks_file_declaring_more_than_ranks_can_take_is_not_decompressed(tmp_path, monkeypatch):
    from mlasm import session_tables

    final = np.zeros((4, 10), np.float32)
    path = tmp_path / "ranks.npz"
    np.savez_compressed(path, final_t2i_rank=np.zeros(10, np.int64), final_i2t_rank=np.zeros(4, np.int64),
                        padding=np.zeros(1_000_000, np.uint8))  # 1 MB of zeros: a few KB on disk
    monkeypatch.setattr(session_tables.np, "load", lambda *a, **k: pytest.fail("decompressed"))
    assert session_tables.saved_ranks(path, ("final",), False, final, np.arange(10) % 4) is None
