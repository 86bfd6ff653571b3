"""`mlasm evaluate` on SCAN checkpoints: one, or SCAN's t-i + i-t ensemble, with SCAN's vocabulary and
precomp folder; the metrics are those SCAN's evaluation.evalrank computes (i2t, t2i, fold5)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_support import answer
from mlasm.checkpoint import load_model
from mlasm.config import MLASMConfig
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary
from mlasm.encoding import encode_split
from mlasm.model import MLASM
from mlasm.checkpoint import save_checkpoint
from mlasm.scan_model import SCANConfig, random_scan_model, write_scan_checkpoint
from mlasm.sources import open_split

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = list(SPECIAL_TOKENS) + ["a", "red", "blue", "green", "square", "circle", "triangle", "left", "right", "of"]
N_IMAGES, N_REGIONS, IMG_DIM = 10, 4, 6
SCAN = dict(agg_func="LogSumExp", raw_feature_norm="clipped_l2norm", precomp_enc_type="basic", bi_gru=True,
            no_imgnorm=False, no_txtnorm=False, img_dim=IMG_DIM, embed_size=8, word_dim=5, num_layers=1,
            vocab_size=len(WORDS))


# ------------------------------------------------------------------ SCAN's evalrank, from its description

def evalrank_i2t(sims):
    """Per image: the best rank among its 5 captions (caption k belongs to image k // 5), sorting by score."""
    ranks = np.zeros(sims.shape[0])
    for index in range(sims.shape[0]):
        order = np.argsort(sims[index])[::-1]
        ranks[index] = min(np.where(order == c)[0][0] for c in range(5 * index, 5 * index + 5))
    return ranks


def evalrank_t2i(sims):
    ranks = np.zeros(sims.shape[1])
    for caption in range(sims.shape[1]):
        order = np.argsort(sims[:, caption])[::-1]
        ranks[caption] = np.where(order == caption // 5)[0][0]
    return ranks


def summary(ranks):
    return {"r1": 100.0 * np.mean(ranks < 1), "r5": 100.0 * np.mean(ranks < 5), "r10": 100.0 * np.mean(ranks < 10),
            "medr": np.floor(np.median(ranks)) + 1, "meanr": ranks.mean() + 1}


def evalrank(sims):
    i2t, t2i = summary(evalrank_i2t(sims)), summary(evalrank_t2i(sims))
    return {"i2t": i2t, "t2i": t2i, "rsum": sum(i2t[k] + t2i[k] for k in ("r1", "r5", "r10"))}


def evalrank_fold5(sims):
    """SCAN's fold5: five folds of consecutive images (a fifth each) with their captions, metrics averaged."""
    n = sims.shape[0] // 5
    folds = [evalrank(sims[f * n:(f + 1) * n, 5 * f * n:5 * (f + 1) * n]) for f in range(5)]
    return {d: {k: np.mean([fold[d][k] for fold in folds]) for k in folds[0][d]} for d in ("i2t", "t2i")}


def assert_metrics_equal(result, expected):
    for direction in ("i2t", "t2i"):
        for key, value in expected[direction].items():
            assert result[direction][key] == pytest.approx(value, abs=1e-9), (direction, key)


# ------------------------------------------------------------------ a SCAN data folder, vocabulary, checkpoints

@pytest.fixture(scope="module")
def scan_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    rng = np.random.default_rng(5)
    data = root / "f30k_precomp"
    data.mkdir()
    np.save(data / "test_ims.npy", rng.normal(size=(N_IMAGES, N_REGIONS, IMG_DIM)).astype(np.float32))
    words = WORDS[4:]
    captions = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(5 * N_IMAGES)]
    (data / "test_caps.txt").write_text("".join(c + "\n" for c in captions))
    vocab = root / "f30k_precomp_vocab.json"
    Vocabulary(WORDS).save(vocab, file_format="scan")
    runs = {}
    for direction, legacy, seed in (("t2i", True, 1), ("i2t", False, 2)):
        lambdas = dict(lambda_softmax=9.0, lambda_lse=6.0) if direction == "t2i" else dict(lambda_softmax=4.0,
                                                                                          lambda_lse=5.0)
        model = random_scan_model(SCANConfig(cross_attn=direction, **SCAN, **lambdas), seed=seed)
        runs[direction] = root / f"runs/f30k_scan_{direction}/model_best.pth.tar"
        runs[direction].parent.mkdir(parents=True)
        write_scan_checkpoint(runs[direction], model, legacy=legacy, data_name="f30k_precomp")
    return {"data": data, "vocab": vocab, **runs}


def model_scores(path, vocab, data):
    model, model_vocab, _ = load_model(path, "cpu", vocab=vocab)
    split = open_split(data, "test")
    img, cap = encode_split(model, split, model_vocab)
    return model.score_all(img, cap, progress=False)


def test_one_scan_checkpoint_evaluates_with_its_vocabulary(scan_files, tmp_path, capsys):
    out = tmp_path / "eval"
    code, line, printed = answer(capsys, ["evaluate", "--checkpoint", str(scan_files["t2i"]), "--vocab",
                                          str(scan_files["vocab"]), "--data", str(scan_files["data"]), "--split",
                                          "test", "--out", str(out), "--threads", "1"])
    assert code == 0, line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"][0]["kind"] == "SCAN" and metrics["models"][0]["levels"] == ["t2i", "final"]
    assert metrics["models"][0]["options"]["cross_attn"] == "t2i"
    assert set(metrics["levels"]) == {"t2i", "final"}  # no i2t, local or global level it does not have
    assert metrics["objectives"] == ["scan"]
    sims = model_scores(scan_files["t2i"], scan_files["vocab"], scan_files["data"])["final"].numpy()
    assert_metrics_equal(metrics, evalrank(sims))
    assert "model: SCAN t-i LSE, lambda_lse=6" in printed and "final (SCAN)" in printed


def test_the_t2i_and_i2t_ensemble_averages_the_matrices_and_measures_as_evalrank(scan_files, tmp_path, capsys):
    out = tmp_path / "eval"
    code, line, _ = answer(capsys, ["evaluate", "--checkpoint", str(scan_files["t2i"]), "--checkpoint",
                                    str(scan_files["i2t"]), "--vocab", str(scan_files["vocab"]), "--data",
                                    str(scan_files["data"]), "--split", "test", "--out", str(out), "--threads", "1"])
    assert code == 0, line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoints"] == [str(scan_files["t2i"]), str(scan_files["i2t"])]
    assert [m["description"].split(",")[0] for m in metrics["models"]] == ["SCAN t-i LSE", "SCAN i-t LSE"]
    t2i = model_scores(scan_files["t2i"], scan_files["vocab"], scan_files["data"])["final"].double().numpy()
    i2t = model_scores(scan_files["i2t"], scan_files["vocab"], scan_files["data"])["final"].double().numpy()
    with np.load(out / "scores.npz") as saved:
        np.testing.assert_allclose(saved["final"], (t2i + i2t) / 2, rtol=0, atol=1e-6)
        np.testing.assert_allclose(saved["t2i"], t2i, rtol=0, atol=1e-6)  # each direction from its model
        np.testing.assert_allclose(saved["i2t"], i2t, rtol=0, atol=1e-6)
        final = saved["final"]
    assert_metrics_equal(metrics, evalrank(final))
    assert metrics["rsum"] == pytest.approx(evalrank(final)["rsum"], abs=1e-9)
    assert_metrics_equal(metrics["levels"]["t2i"], evalrank(t2i.astype(np.float32)))


def test_fold5_is_evalranks_fold5(scan_files, tmp_path, capsys):
    out = tmp_path / "eval"
    code, line, _ = answer(capsys, ["evaluate", "--checkpoint", str(scan_files["t2i"]), str(scan_files["i2t"]),
                                    "--vocab", str(scan_files["vocab"]), "--data", str(scan_files["data"]),
                                    "--split", "test", "--protocol", "5fold", "--out", str(out), "--threads", "1"])
    assert code == 0, line
    metrics = json.loads((out / "metrics.json").read_text())
    t2i = model_scores(scan_files["t2i"], scan_files["vocab"], scan_files["data"])["final"]
    i2t = model_scores(scan_files["i2t"], scan_files["vocab"], scan_files["data"])["final"]
    assert_metrics_equal(metrics, evalrank_fold5(torch.stack([t2i, i2t]).mean(0).numpy()))


def test_scan_and_mlasm_checkpoints_side_by_side_and_errors_in_one_line(scan_files, tmp_path, capsys):
    common = ["--data", str(scan_files["data"]), "--split", "test", "--threads", "1"]
    code, line, _ = answer(capsys, ["evaluate", "--checkpoint", str(scan_files["t2i"]), "--out",
                                    str(tmp_path / "a"), *common])
    assert code == 2 and line.endswith("a SCAN checkpoint; SCAN keeps its vocabulary apart: give it with --vocab "
                                       "VOCAB.json (e.g. vocab/f30k_precomp_vocab.json)")
    # an MLASM checkpoint beside a SCAN one: --vocab is the SCAN model's, the MLASM one reads with its own
    own_words = WORDS[:-2]
    config = MLASMConfig.cpu(region_dim=IMG_DIM, global_dim=IMG_DIM, vocab_size=len(own_words), embed_size=8,
                             word_dim=5, start_end_tokens=True)
    save_checkpoint(tmp_path / "mlasm.pt", MLASM(config), Vocabulary(own_words), {"epoch": 1})
    code, line, _ = answer(capsys, ["evaluate", "--checkpoint", str(scan_files["t2i"]), str(tmp_path / "mlasm.pt"),
                                    "--vocab", str(scan_files["vocab"]), "--out", str(tmp_path / "b"), *common])
    assert code == 0, line
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [m["kind"] for m in metrics["models"]] == ["SCAN", "MLASM"]
    # an option this workbench does not reproduce
    state = torch.load(scan_files["i2t"], weights_only=False)
    state["opt"].raw_feature_norm = "batchnorm"
    torch.save(state, tmp_path / "odd.pth.tar")
    code, line, _ = answer(capsys, ["evaluate", "--checkpoint", str(tmp_path / "odd.pth.tar"), "--vocab",
                                    str(scan_files["vocab"]), "--out", str(tmp_path / "c"), *common])
    assert code == 2 and line == (f"mlasm evaluate: error: {tmp_path / 'odd.pth.tar'}: SCAN option "
                                  f"raw_feature_norm='batchnorm' cannot be reproduced here; expected one of softmax, "
                                  f"l2norm, clipped_l2norm, l1norm, clipped_l1norm, clipped, no_norm")
