"""The paper's objective against level-wise supervision, over seeds, on ShapeScenes test.

    python benchmarks/level_supervision.py --seeds 0,1,2 --weight 0.5 --out runs/levels
    python benchmarks/level_supervision.py --seeds 0,1,2 --paper-from runs/seeds --out runs/levels

The paper trains only the final score; its levels (t2i, i2t, global) are then never asked to rank
on their own, though the workbench shows each of them. Level-wise supervision adds WEIGHT x the
hinge of each level alone. Each run trains the CPU preset on train, picks the checkpoint by dev
rSum and evaluates once on test. The table has every level's rSum (standard protocol and complete
positives) as mean ± sd over the seeds, each level as a share of its model's final level, and the
pointing game. ``--paper-from`` reads the paper objective's results from ``mlasm demo`` runs that
already exist (``DIR/seed{N}/metrics.json``, as benchmarks/demo_seeds.py writes them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mlasm.demo import EMBEDDED, demo_config
from mlasm.evaluate import evaluate_checkpoints
from mlasm.sources import open_split
from mlasm.train import train

LEVELS = ("t2i", "i2t", "global", "final")


def _spread(values) -> str:
    values = np.asarray(list(values), dtype=float)
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if values.size > 1 else f"{values[0]:.1f}"


def run(objective: str, weight: float, seed: int, out: Path, splits: dict) -> dict:
    folder = out / f"{objective}-seed{seed}"
    if not (folder / "metrics.json").is_file():
        summary = train(demo_config(level_weight=weight), splits["train"], splits["dev"], folder, seed=seed)
        evaluate_checkpoints([summary["best"]], splits["test"], out_dir=folder)
    return json.loads((folder / "metrics.json").read_text())


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| objective | level | rSum | complete rSum | share of final (rSum) | share of final (complete) |",
             "|---|---|---|---|---|---|"]
    for objective, runs in results.items():
        for level in LEVELS:
            strict = [r["levels"][level]["rsum"] for r in runs]
            complete = [r["levels"][level]["complete"]["rsum"] for r in runs]
            share = [100 * r["levels"][level]["rsum"] / r["levels"]["final"]["rsum"] for r in runs]
            share_complete = [100 * r["levels"][level]["complete"]["rsum"] / r["levels"]["final"]["complete"]["rsum"]
                              for r in runs]
            lines.append(f"| {objective} | {level} | {_spread(strict)} | {_spread(complete)} | "
                         f"{_spread(share)} % | {_spread(share_complete)} % |")
    lines.append("")
    for objective, runs in results.items():
        lines.append(f"Pointing game, {objective}: {_spread(r['grounding']['accuracy'] for r in runs)} % "
                     f"(seeds: {', '.join(str(round(r['grounding']['accuracy'], 1)) for r in runs)}); "
                     f"final-level gap true - false: {_spread(100 * r['score_separation']['gap'] for r in runs)} "
                     f"(x 100).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weight", type=float, default=0.5, help="level_weight of the level-wise runs")
    parser.add_argument("--out", default="runs/levels")
    parser.add_argument("--paper-from", default=None,
                        help="read the paper objective's test results from DIR/seed{N}/metrics.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    splits = {name: open_split(EMBEDDED, name) for name in ("train", "dev", "test")}
    results = {}
    if args.paper_from:
        results["paper"] = [json.loads((Path(args.paper_from) / f"seed{s}" / "metrics.json").read_text())
                            for s in seeds]
    else:
        results["paper"] = [run("paper", 0.0, s, out, splits) for s in seeds]
    results[f"level-wise {args.weight:g}"] = [run(f"levels{args.weight:g}", args.weight, s, out, splits)
                                              for s in seeds]
    print(table(results))


if __name__ == "__main__":
    main()
