"""Run ``mlasm demo --compare`` over several seeds and print the README's results table (mean ± sd).

    python benchmarks/demo_seeds.py --seeds 0,1,2 --out runs/seeds         # runs, then the table
    python benchmarks/demo_seeds.py --seeds 0,1,2 --out runs/seeds --table-only

Each seed trains MLASM and the local-only model on ShapeScenes train, picks the checkpoint by
dev rSum and evaluates once on test; the table has the standard protocol (one true image per
caption) and complete positives (any image the caption is true of counts), with the pointing
game and how far the final level's true pairs score above its false ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mlasm.demo import run_demo

ROWS = ("MLASM (final)", "MLASM local level", "MLASM global level", "local-only model", "bag-of-words oracle",
        "chance")


def _spread(values) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return "-"
    if values.size == 1:
        return f"{values[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def table(folders: list[Path]) -> str:
    comparisons = [json.loads((f / "comparison.json").read_text()) for f in folders]
    lines = [f"Mean ± sd over {len(folders)} seeds. Standard protocol: R@1 both directions and rSum; "
             "complete positives: rSum, R@1 and mAP@R both directions.", "",
             "| | i2t R@1 | t2i R@1 | rSum | complete rSum | i2t R@1 | t2i R@1 | i2t mAP@R | t2i mAP@R |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        rows = [c[name] for c in comparisons if name in c]
        cells = [_spread(r["i2t"]["r1"] for r in rows), _spread(r["t2i"]["r1"] for r in rows),
                 _spread(r["rsum"] for r in rows)]
        complete = [r.get("complete") for r in rows]
        if all(complete):
            cells += [_spread(c["rsum"] for c in complete), _spread(c["i2t"]["r1"] for c in complete),
                      _spread(c["t2i"]["r1"] for c in complete), _spread(c["i2t"].get("map_at_r") for c in complete),
                      _spread(c["t2i"].get("map_at_r") for c in complete)]
        else:
            cells += ["-"] * 5
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pointing = [c["grounding"]["MLASM"]["accuracy"] for c in comparisons if c["grounding"].get("MLASM")]
    pointing_local = [c["grounding"]["local-only"]["accuracy"] for c in comparisons if c["grounding"].get("local-only")]
    lines += ["", f"Pointing game: MLASM {_spread(pointing)} %, local-only model {_spread(pointing_local)} %."]
    for model in ("MLASM", "local-only"):
        separation = [c["score_separation"][model] for c in comparisons]
        lines.append(f"{model} final scores on test: true pairs {_spread(100 * s['positive'] for s in separation)}, "
                     f"false pairs {_spread(100 * s['negative'] for s in separation)}, "
                     f"gap {_spread(100 * s['gap'] for s in separation)} (x 100).")
    logs = [[json.loads(line) for line in (f / "mlasm" / "train_log.jsonl").read_text().splitlines() if line.strip()]
            for f in folders]
    lines.append("MLASM last epoch: loss at "
                 f"{_spread(100 * log[-1]['loss_share_of_collapse'] for log in logs)} % of its value at collapse (every pair scored alike), "
                 f"{_spread(100 * log[-1]['inside_margin'] for log in logs)} % of in-batch comparisons inside the margin.")
    demo = [json.loads((f / "demo.json").read_text()) for f in folders]
    lines.append(f"Time per seed (both models): {_spread(d['seconds'] / 60 for d in demo)} min.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--table-only", action="store_true", help="only print the table of runs already there")
    args = parser.parse_args()
    folders = [Path(args.out) / f"seed{s}" for s in args.seeds.split(",")]
    if not args.table_only:
        for seed, folder in zip(args.seeds.split(","), folders):
            if not (folder / "comparison.json").is_file():
                run_demo(folder, compare=True, seed=int(seed))
    print(table([f for f in folders if (f / "comparison.json").is_file()]))


if __name__ == "__main__":
    main()
