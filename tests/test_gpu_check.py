"""benchmarks/gpu_check.py, rehearsed on the CPU: a GPU session has a few minutes, none to lose to a
mistake in the script. Every step must run and record figures of the kind the GPU run will."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_rehearsed_on_the_cpu_runs_every_step(tmp_path):
    out = tmp_path / "gpu_check"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--rehearsal"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["machine"]["device"] == "cpu"
    assert results["cuda_tests"]["rc"] == 0 and results["cuda_tests"]["passed"] >= 6  # run on the CPU, not skipped
    demo = results["demo"]
    assert demo["rc"] == 0 and 0 < demo["rsum"] <= 600 and 0 <= demo["pointing_game"] <= 100
    assert set(demo["sd_from_cpu_mean"]) == {"rsum", "complete_rsum", "pointing_game", "gap"}
    precision = results["precision_on_trained_model"]
    assert precision["float32"]["ranks_changed_pct"] == 0.0
    assert 0 <= precision["bfloat16"]["ranks_changed_pct"] <= 100 and "skipped" in precision["tf32"]
    for name in ("float32", "bfloat16"):
        row = results["scorer"][name]
        assert row["rc"] == 0 and row["fast_pairs_s"] > 0 and row["bare_pairs_s"] > 0
    assert results["torchrun"]["rc"] == 0 and results["torchrun"]["backend"] == "gloo"
    assert results["torchrun"]["epoch_steps"] > 0
    assert "cuda_tests" in (out / "gpu_check.md").read_text()


def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "g")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0
    assert "no CUDA device here" in done.stdout
    assert not (tmp_path / "g" / "gpu_check.json").exists()
