"""`mlasm demo` end to end on tiny data: the files it promises, and the comparison table."""
import json

import pytest

import mlasm.demo
import mlasm.sources
from mlasm.cli import main


@pytest.fixture
def tiny_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("MLASM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mlasm.sources, "FAST_SIZES", {"train": 48, "dev": 16, "test": 16})
    monkeypatch.setattr(mlasm.demo, "FAST_OVERRIDES", dict(embed_size=32, word_dim=16, epochs=1, batch_size=16))
    return tmp_path / "demo"


def test_demo_writes_run_metrics_figures_and_comparison(tiny_demo, capsys):
    assert main(["demo", "--fast", "--compare", "--out", str(tiny_demo)]) == 0
    for name in ("mlasm/best.pt", "mlasm/train_log.jsonl", "metrics.json", "ranks.npz", "comparison.json",
                 "demo.json", "figures/attention.png", "figures/recall_per_level.png", "figures/training.png",
                 "local_only/metrics.json"):
        assert (tiny_demo / name).is_file(), name
    metrics = json.loads((tiny_demo / "metrics.json").read_text())
    comparison = json.loads((tiny_demo / "comparison.json").read_text())
    assert comparison["MLASM (final)"]["rsum"] == metrics["rsum"]
    assert comparison["MLASM local level"]["rsum"] == metrics["levels"]["local"]["rsum"]
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
