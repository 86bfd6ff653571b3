"""Train ShapeScenes with variants of the CPU preset and print what each does to the scores.

Measures what issue "Scores that mean something" asks: does the model separate its positives
from its negatives (loss against 2 x batch x margin, mean positive and hardest-negative scores,
the share of comparisons inside the margin), and what does that cost in dev rSum (strict and with
complete positives)? Each variant is one training run; ``--seeds`` repeats them.

    python benchmarks/train_variants.py --variants preset,no_mask,no_warmup --seeds 0
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlasm.checkpoint import load_model
from mlasm.config import MLASMConfig
from mlasm.evaluate import grounding_accuracy, level_metrics, score_separation, score_split
from mlasm.sources import open_split
from mlasm.train import train

from table import print_markdown_table  # benchmarks/table.py, beside this script

VARIANTS = {
    "preset": {},                                             # the CPU preset: false negatives masked
    "no_mask": {"mask_false_negatives": False},               # every other image a negative (as before)
    "mask_decay4": {"lr_decay_epoch": 4},                     # the learning rate / 10 for the last 2 epochs
    "no_mask_decay4": {"mask_false_negatives": False, "lr_decay_epoch": 4},
    "no_warmup": {"warmup_epochs": 0},                        # hardest negatives from the first step
    "lr2e-4": {"learning_rate": 2e-4},
    "margin0.1": {"margin": 0.1},
    "d512": {"embed_size": 512},
    "levels0.5": {"level_weight": 0.5},                       # level-wise supervision beside the final score
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/variants")
    parser.add_argument("--split", default="dev", help="where scores and rSum are measured")
    args = parser.parse_args()
    splits = {name: open_split("shapescenes", name, progress=False) for name in ("train", "dev", args.split)}
    rows = []
    for name in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            overrides = dict(VARIANTS[name])
            if args.epochs:
                overrides.update(epochs=args.epochs, lr_decay_epoch=max(1, args.epochs - 1))
            config = MLASMConfig.cpu(**overrides)
            run = Path(args.out) / f"{name}-seed{seed}"
            started = time.time()
            summary = train(config, splits["train"], splits["dev"], run, seed=seed, progress=False)
            model, vocab, _ = load_model(summary["best"], "cpu")
            split = splits[args.split]
            scores = score_split(model, split, vocab)
            metrics = level_metrics({"final": scores["final"]}, split.caption_to_image, positives=split.positives)
            pointing = grounding_accuracy(model, split, vocab)
            last = summary["log"][-1]
            row = {"variant": name, "seed": seed, "minutes": round((time.time() - started) / 60, 1),
                   "loss_share_of_collapse": round(last["loss_share_of_collapse"], 3),
                   "inside_margin": round(last["inside_margin"], 3),
                   "rsum": round(metrics["rsum"], 1), "complete_rsum": round(metrics["complete"]["rsum"], 1),
                   "pointing": round(pointing["accuracy"], 1) if pointing else None,
                   **{k: round(v, 4) for k, v in score_separation(scores["final"], split.positives).items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
