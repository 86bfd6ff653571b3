"""Peak memory of `mlasm evaluate` on 10 images x 10,000 regions under a block budget (issue 26's worst case).

Builds, in --work: tiny ShapeScenes (train 48, dev 16 images) as a precomp folder, a model trained one
epoch on it (embedding 32), and a split of 10 images x 10,000 random regions of ShapeScenes' 167-d
features (64 MB) with the captions and global vectors of the dev split's first 10 images. Then, round
by round, `mlasm evaluate --threads 1 --memory-budget-mb B` in a fresh process on the normal dev split
and on the many-region split, each with a fresh --out (saved scores would skip the scoring), and
prints each one's peak RSS (/proc/self/status's VmHWM: ru_maxrss is kept across fork and exec) and
the many-region run's peak above the normal run's just before it.

    python benchmarks/many_regions_memory.py                        # this checkout, 2 rounds
    python benchmarks/many_regions_memory.py --code /path/to/other  # another checkout's mlasm (before a change)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TINY_SIZES = {"train": 48, "dev": 16, "test": 16}
TRAIN_OPTIONS = ["--epochs", "1", "--embed-size", "32", "--word-dim", "16", "--batch-size", "16",
                 "--lr-decay-epoch", "1", "--learning-rate", "1e-3", "--threads", "1"]
EVALUATE = textwrap.dedent("""
    import json, sys
    from mlasm.cli import main
    code = main(["evaluate", *sys.argv[1:]])
    print(json.dumps({"code": code, "peak_mb": next(
        int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024}))
""")


def build(work: Path, n_images: int, n_regions: int, env: dict) -> None:
    """The tiny precomp folder, the many-region split and the 1-epoch model, unless already there."""
    sys.path.insert(0, str(REPO))
    from mlasm.data.dataset import RetrievalSplit
    from mlasm.data.precomp import write_split
    from mlasm.data.shapescenes import load_shapescenes

    if not (work / "many" / "meta.json").exists():
        splits = {name: load_shapescenes(name, sizes=TINY_SIZES, cache=work / "cache", progress=False)
                  for name in ("train", "dev")}
        for name, split in splits.items():
            write_split(work / "tiny", name, split)
        dev = splits["dev"]
        keep = np.flatnonzero(dev.caption_to_image < n_images)
        regions = np.random.default_rng(0).normal(size=(n_images, n_regions, dev.regions.shape[2])).astype(np.float32)
        write_split(work / "many", "dev", RetrievalSplit(
            "dev", regions, np.ones((n_images, n_regions), bool), np.asarray(dev.global_features[:n_images]),
            [dev.captions[k] for k in keep], np.asarray(dev.caption_to_image)[keep]))
    if not (work / "model" / "best.pt").exists():
        subprocess.run([sys.executable, "-m", "mlasm", "train", "--data", str(work / "tiny"), "--out",
                        str(work / "model"), *TRAIN_OPTIONS], env=env, cwd=work, check=True, capture_output=True)


def peak(work: Path, data: str, out: Path, budget: float, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)  # saved scores there would be read instead of scoring
    args = ["--checkpoint", str(work / "model" / "best.pt"), "--data", str(work / data), "--split", "dev",
            "--out", str(out), "--threads", "1", "--memory-budget-mb", str(budget)]
    result = subprocess.run([sys.executable, "-c", EVALUATE, *args], env=env, cwd=work, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"mlasm evaluate on {data} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="folder for the data, model and outputs (default: a temporary one)")
    parser.add_argument("--code", help="a checkout whose mlasm the measured processes run (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-budget-mb", type=float, default=64.0)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--regions", type=int, default=10_000)
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": args.code or str(REPO)}
    work = Path(args.work or tempfile.mkdtemp(prefix="many-regions-"))
    env["MLASM_CACHE_DIR"] = str(work / "cache")
    build(work, args.images, args.regions, env)
    print(f"{args.images} images x {args.regions:,} regions, budget {args.memory_budget_mb:g} MB, code "
          f"{args.code or REPO}; peak RSS (MiB):")
    for round_ in range(1, args.rounds + 1):
        normal = peak(work, "tiny", work / "out" / f"tiny-{round_}", args.memory_budget_mb, env)
        many = peak(work, "many", work / "out" / f"many-{round_}", args.memory_budget_mb, env)
        print(f"round {round_}: normal dev split {normal:,.0f}, many regions {many:,.0f}, above {many - normal:+,.0f}",
              flush=True)


if __name__ == "__main__":
    main()
