"""`mlasm demo` end to end on tiny data: the files it promises, and the comparison table."""
import json

import numpy as np
import torch
import pytest

import mlasm.demo
import mlasm.sources
from cli_support import TINY_MODEL, TINY_SIZES
from mlasm.cli import main
from mlasm.data.shapescenes import bag_of_words_scores
from mlasm.metrics import retrieval_metrics
from mlasm.sources import EMBEDDED, open_split


@pytest.fixture
def tiny_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("MLASM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mlasm.sources, "FAST_SIZES", dict(TINY_SIZES))
    monkeypatch.setattr(mlasm.demo, "FAST_OVERRIDES", dict(TINY_MODEL, epochs=1, batch_size=16))
    return tmp_path / "demo"


def test_demo_writes_run_metrics_figures_and_comparison(tiny_demo, capsys):
    assert main(["demo", "--fast", "--compare", "--out", str(tiny_demo)]) == 0
    for name in ("mlasm/best.pt", "mlasm/train_log.jsonl", "metrics.json", "ranks.npz", "comparison.json",
                 "demo.json", "figures/attention.png", "figures/recall_per_level.png", "figures/training.png",
                 "local_only/metrics.json"):
        assert (tiny_demo / name).is_file(), name
    comparison = json.loads((tiny_demo / "comparison.json").read_text())
    ranks = np.load(tiny_demo / "ranks.npz")  # every level's ranks, as evaluation wrote them
    for row, level in (("MLASM (final)", "final"), ("MLASM local level", "local"), ("MLASM global level", "global")):
        recalls = [100 * (ranks[f"{level}_{direction}_rank"] < k).mean() for direction in ("i2t", "t2i") for k in (1, 5, 10)]
        assert comparison[row]["rsum"] == pytest.approx(sum(recalls)), row
    local_only = json.loads((tiny_demo / "local_only" / "metrics.json").read_text())
    assert comparison["local-only model"]["rsum"] == local_only["rsum"]
    test = open_split(EMBEDDED, "test", fast=True, progress=False)
    oracle = retrieval_metrics(bag_of_words_scores(test), test.caption_to_image)
    assert comparison["bag-of-words oracle"]["rsum"] == pytest.approx(oracle["rsum"])
    assert set(comparison) >= {"local-only model", "bag-of-words oracle", "chance", "grounding", "score_separation"}
    for name in ("MLASM (final)", "local-only model", "bag-of-words oracle"):
        assert set(comparison[name]["complete"]["t2i"]) == {"r1", "r5", "r10", "r_precision", "map_at_r"}, name
    separation = comparison["score_separation"]["MLASM"]
    assert separation["gap"] == pytest.approx(separation["positive"] - separation["negative"])
    log = [json.loads(line) for line in (tiny_demo / "mlasm" / "train_log.jsonl").read_text().splitlines()]
    assert {"mean_positive", "mean_hardest_negative", "inside_margin", "loss_share_of_collapse"} <= set(log[-1])
    printed = capsys.readouterr().out
    assert "final (MLASM)" in printed and "side by side on the test split" in printed
    assert "complete positives" in printed and "final scores: true pairs" in printed


def test_comparison_after_a_demo_without_compare_trains_the_real_baseline_once(tiny_demo, monkeypatch, capsys):
    """After the README's `mlasm demo` (no --compare) notebook 08 must compare two real models: the
    local-only baseline is trained then with the demo's settings and seed, and is the very model
    that `mlasm demo --compare` would have trained."""
    assert main(["demo", "--fast", "--out", str(tiny_demo), "--threads", "1"]) == 0
    assert not (tiny_demo / "local_only").exists()
    splits = {name: open_split(EMBEDDED, name, fast=True, progress=False) for name in ("train", "dev")}
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference below: the same weights need the same thread count
    try:
        best = mlasm.demo.train_missing_baseline(tiny_demo, progress=False, splits=splits)
    finally:
        torch.set_num_threads(threads)
    assert "training it now with the demo's settings" in capsys.readouterr().out
    config = json.loads((tiny_demo / "mlasm" / "config.json").read_text())
    assert json.loads((tiny_demo / "local_only" / "config.json").read_text()) == {**config, "rho": 1.0, "level_weight": 0.0}

    reference = tiny_demo.parent / "reference"
    assert main(["demo", "--fast", "--compare", "--out", str(reference), "--threads", "1"]) == 0
    ours, theirs = (torch.load(path, map_location="cpu", weights_only=True)["model"]
                    for path in (best, reference / "local_only" / "best.pt"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # the notebooks' pair: both real models once both exist; a demo without its baseline gets it trained
    monkeypatch.setattr(mlasm.demo, "runs_dir", lambda: tiny_demo.parent)
    assert mlasm.demo.demo_pair(fast=False) == {"local-only": best, "MLASM": tiny_demo / "mlasm" / "best.pt"}
    trained = []
    monkeypatch.setattr(mlasm.demo, "train_missing_baseline", lambda demo, progress: trained.append(demo))
    (best.parent / "best.pt").rename(best.parent / "kept.pt")
    mlasm.demo.demo_pair(fast=False)
    assert trained == [tiny_demo]
