"""The GPU path measured in one run, for a session that is lent a GPU machine for a few minutes.

    python benchmarks/gpu_check.py --out gpu_check               # on a CUDA machine
    python benchmarks/gpu_check.py --out /tmp/g --rehearsal      # the same steps on the CPU, tiny sizes

Steps, each timed:
  1. the machine (GPU names, torch and CUDA versions);
  2. the test suite's CUDA tests (``pytest -m cuda``: scores, a training step, training and a checkpoint
     against the CPU);
  3. ``mlasm demo`` on CUDA: its time, and its figures beside the CPU's over 3 seeds (README, "What the
     demo measures");
  4. the demo's trained model scored on the test split in float32, TF32 and bfloat16 autocast: rSum and
     the share of queries whose rank of the true item changes against float32;
  5. ``bench_scorer.py`` on CUDA in each precision (pairs/s, and the bare product, at 1,000 x 5,000);
  6. two-process NCCL training under torchrun, when the machine has 2 GPUs.
Each step's figures are added to OUT/gpu_check.json when it ends (written atomically), so a run cut
short by a time limit keeps what it measured, and OUT/gpu_check.md holds them as tables for
benchmarks/README.md. A step that fails is recorded with its last lines and the next one runs.
``--rehearsal`` runs every step on the CPU at tiny sizes (fast demo, quick benchmark, the CUDA tests on
the CPU, torchrun on gloo) so that the script itself is tested (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scorer import PRECISIONS, scoring_precision  # noqa: E402
from mlasm.checkpoint import load_model  # noqa: E402
from mlasm.encoding import encode_split  # noqa: E402
from mlasm.io import write_json  # noqa: E402
from mlasm.metrics import i2t_ranks, retrieval_metrics, t2i_ranks  # noqa: E402
from mlasm.sources import EMBEDDED, open_split  # noqa: E402

# the CPU demo over seeds 0, 1, 2 (README, "What the demo measures"): mean, sd
CPU_DEMO = {"rsum": (420.8, 3.0), "complete_rsum": (538.5, 2.0), "pointing_game": (95.4, 0.2), "gap": (0.171, 0.007)}


def run(command: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        printed = expired.stdout or b""
        printed = printed.decode(errors="replace") if isinstance(printed, bytes) else printed
        code, output = 124, f"timed out after {timeout:.0f} s\n" + printed[-2000:]
    return code, output, time.perf_counter() - started


def tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def machine(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())] if cuda else [],
            "cpu_threads": torch.get_num_threads()}


def cuda_tests(rehearsal: bool, timeout: float) -> dict:
    env = {"MLASM_CUDA_TESTS_DEVICE": "cpu"} if rehearsal else {}
    # addopts cleared: a GPU machine's Python may lack nbval, which the project's pytest options name
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "tests/test_cuda.py"]
    code, output, seconds = run(command, timeout, env)
    summary = re.findall(r"(\d+) (passed|failed|skipped|error)", tail(output, 1))
    return {"rc": code, "seconds": round(seconds, 1), **{kind: int(n) for n, kind in summary},
            **({} if code == 0 else {"output": tail(output, 20)})}


def demo(device: torch.device, out: Path, rehearsal: bool, timeout: float) -> dict:
    command = [sys.executable, "-m", "mlasm", "demo", "--device", str(device), "--out", str(out), "--overwrite"]
    code, output, seconds = run(command + (["--fast"] if rehearsal else []), timeout)
    result = {"rc": code, "seconds": round(seconds, 1)}
    if code != 0:
        return {**result, "output": tail(output, 20)}
    metrics = json.loads((out / "metrics.json").read_text())
    figures = {"rsum": metrics["rsum"], "complete_rsum": metrics.get("complete", {}).get("rsum"),
               "pointing_game": metrics.get("grounding", {}).get("accuracy"),
               "gap": metrics.get("score_separation", {}).get("gap")}
    figures = {name: None if value is None else round(value, 3) for name, value in figures.items()}
    times = json.loads((out / "demo.json").read_text()).get("main_job_breakdown")
    # how far from the CPU's mean, in the CPU's seed standard deviations
    apart = {name: round((value - CPU_DEMO[name][0]) / CPU_DEMO[name][1], 1)
             for name, value in figures.items() if value is not None}
    return {**result, **figures, "sd_from_cpu_mean": apart, "breakdown_s": times}


def _per_precision(device: torch.device, measure) -> dict:
    """``measure(name)`` for each precision the device has (TF32 is CUDA's alone)."""
    return {name: measure(name) if name != "tf32" or device.type == "cuda" else {"skipped": "TF32 is a CUDA setting"}
            for name in PRECISIONS}


def precisions(device: torch.device, checkpoint: Path, rehearsal: bool) -> dict:
    """The trained model on the test split in each precision: rSum, time, and ranks changed against float32."""
    model, vocab, _ = load_model(checkpoint, device=device)
    split = open_split(EMBEDDED, "test", fast=rehearsal)
    img, cap = encode_split(model, split, vocab, progress=False)
    float32_ranks = []

    def measure(name: str) -> dict:
        with torch.no_grad(), scoring_precision(name, device):
            model.score_all(img, cap, progress=False)  # warm-up
            started = time.perf_counter()
            scores = model.score_all(img, cap, progress=False)["final"].float()
            seconds = time.perf_counter() - started
        ranks = np.concatenate([i2t_ranks(scores, split.caption_to_image), t2i_ranks(scores, split.caption_to_image)])
        float32_ranks.append(ranks)  # float32 comes first
        return {"rsum": round(retrieval_metrics(scores, split.caption_to_image)["rsum"], 1),
                "seconds": round(seconds, 2),
                "ranks_changed_pct": round(100 * float(np.mean(ranks != float32_ranks[0])), 2)}

    return {"images": split.n_images, "captions": split.n_captions, **_per_precision(device, measure)}


def scorer(device: torch.device, rehearsal: bool, timeout: float) -> dict:
    def measure(name: str) -> dict:
        command = [sys.executable, "benchmarks/bench_scorer.py", "--device", str(device), "--precision", name]
        code, output, seconds = run(command + (["--quick", "--naive-captions", "2"] if rehearsal else []), timeout)
        found = {key: re.search(rf"\({key}\)[^:]*:\s+([\d,]+) pairs/s", output) for key in "abc"}
        row = {"rc": code, "seconds": round(seconds, 1), **{
            label: int(match.group(1).replace(",", "")) for label, match in
            zip(("fast_pairs_s", "naive_pairs_s", "bare_pairs_s"), found.values()) if match}}
        return row if code == 0 else {**row, "output": tail(output, 12)}

    return _per_precision(device, measure)


def distributed(device: torch.device, out: Path, rehearsal: bool, timeout: float) -> dict:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if not rehearsal and gpus < 2:
        return {"skipped": f"{gpus} GPU{'s' if gpus != 1 else ''}: 2-process NCCL training needs 2"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mlasm",
               "train", "--data", "shapescenes", "--out", str(out), "--overwrite", "--epochs", "1",
               "--device", "cpu" if rehearsal else "cuda"]
    small = ["--embed-size", "32", "--word-dim", "16", "--batch-size", "16"] if rehearsal else []
    code, output, seconds = run(command + small, timeout, {"MLASM_FAST": "1"} if rehearsal else {})
    result = {"rc": code, "seconds": round(seconds, 1), "backend": "gloo" if rehearsal else "nccl"}
    if code != 0:
        return {**result, "output": tail(output, 20)}
    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    return {**result, "epoch_steps": last["steps"], "epoch_seconds": last["seconds"],
            "val_rsum": last["val_rsum"]}


def markdown(results: dict) -> str:
    lines = [f"GPU check, {results['machine']}", ""]
    for step, value in results.items():
        if step != "machine":
            lines.append(f"- **{step}**: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json, .md and the runs")
    parser.add_argument("--rehearsal", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--timeout", type=float, default=420, help="seconds for any one step's command")
    args = parser.parse_args()
    if not args.rehearsal and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to measure; "
              "--rehearsal runs the steps on the CPU")
        return
    device = torch.device("cpu" if args.rehearsal else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(device)}
    steps = [("cuda_tests", lambda: cuda_tests(args.rehearsal, args.timeout)),
             ("demo", lambda: demo(device, out / "demo", args.rehearsal, args.timeout)),
             ("precision_on_trained_model", lambda: precisions(device, out / "demo" / "mlasm" / "best.pt",
                                                               args.rehearsal)),
             ("scorer", lambda: scorer(device, args.rehearsal, args.timeout)),
             ("torchrun", lambda: distributed(device, out / "ddp", args.rehearsal, args.timeout))]
    for name, step in steps:
        started = time.perf_counter()
        try:
            results[name] = step()
        except Exception as error:  # recorded; the next step still runs
            results[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
        print(f"{name} ({time.perf_counter() - started:.0f} s): {json.dumps(results[name])}", flush=True)
        write_json(out / "gpu_check.json", results)
        (out / "gpu_check.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
