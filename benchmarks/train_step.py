"""The demo's training step, by way of computing it: seconds a step from ``mlasm.train.train`` itself.

    python benchmarks/train_step.py --from runs/demo/mlasm   # 3 rounds x 24 steps of each way, 2 threads
    python benchmarks/train_step.py --ways pairs,whole --rounds 2 --steps 16

Each way trains the demo's model (CPU preset, ShapeScenes train, batch 128, hardest negatives) for
``--steps`` steps and times each step from the end of the one before (forward, loss, backward,
clipping, Adam: what an epoch's steps are made of); the first 4 steps of a run are left out
(allocations, compiling). With ``--from`` a copy of a finished demo's run folder goes on for one more
epoch: the steps of a trained model, as most of the demo's are (how many hardest negatives are
inside the margin, and so scored with gradients, depends on it). Without it, an untrained model
with hardest negatives from the first step. The ways:

- ``pairs``: the default: every pair of the batch scored without gradients (the fused loop), then the
  positives and their hardest negatives with gradients (mlasm.loss.hardest_negative_loss);
- ``whole``: every pair of the batch with gradients (the way before the pair gradients, and what
  bfloat16, a compiled scorer and DDP still use);
- ``compile``: ``whole`` with the pair scorer compiled (``--compile``);
- ``amp``: ``whole`` under bfloat16 autocast (``--amp``; float32 where bfloat16 is not native).

Rounds alternate the ways so that a host that slows down slows each alike; the median of each run's
steps is printed per round, with the load average before it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlasm.train as training  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.shapescenes import load_shapescenes  # noqa: E402
from mlasm.threads import set_threads  # noqa: E402

WAYS = ("pairs", "whole", "compile", "amp")
LEFT_OUT = 4


class _Enough(Exception):
    pass


def step_seconds(way: str, config: MLASMConfig, splits: dict, steps: int, run: Path | None) -> list[float]:
    """Seconds of each step after the first LEFT_OUT of one short training run (from a copy of ``run``)."""
    times = [time.perf_counter()]

    def on_step(global_step: int) -> None:
        times.append(time.perf_counter())
        if len(times) > steps:  # (global_step counts from the run's start)
            raise _Enough

    whole = training._Training.gradients_from_pairs
    if way != "pairs":  # the whole batch with gradients, as the other ways train
        training._Training.gradients_from_pairs = property(lambda self: False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            if run is not None:
                shutil.copytree(run, folder, dirs_exist_ok=True)
            training.train(config, splits["train"], splits["dev"], folder, progress=False, on_step=on_step,
                           amp=way == "amp", compile_scorer=way == "compile", checkpoint_every=10**6,
                           resume=run is not None, overwrite=run is None)
    except _Enough:
        pass
    finally:
        training._Training.gradients_from_pairs = whole
    return [b - a for a, b in zip(times, times[1:])][LEFT_OUT:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ways", default="pairs,whole,compile,amp")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from", dest="run", type=Path, default=None,
                        help="a finished demo's run folder (runs/demo/mlasm): one more epoch of its model")
    args = parser.parse_args()
    ways = args.ways.split(",")
    if unknown := sorted(set(ways) - set(WAYS)):
        parser.error(f"--ways: unknown {', '.join(unknown)}; expected some of {', '.join(WAYS)}")
    if args.steps <= LEFT_OUT:
        parser.error(f"--steps must be more than the {LEFT_OUT} steps left out")
    threads = set_threads(args.threads)
    splits = {name: load_shapescenes(name, progress=False) for name in ("train", "dev")}
    if args.run is None:
        base = MLASMConfig.cpu(region_dim=splits["train"].region_dim, global_dim=splits["train"].global_dim)
        config, start = replace(base, warmup_epochs=0, epochs=1), "an untrained model"
    else:
        if not (args.run / "last.pt").is_file():
            parser.error(f"--from {args.run}: no last.pt there (expected a run folder such as runs/demo/mlasm)")
        base = MLASMConfig.from_dict(json.loads((args.run / "config.json").read_text()))
        config, start = replace(base, epochs=base.epochs + 1), f"the model of {args.run}, one epoch more"
    print(f"{threads} threads; the demo's training step (batch {config.batch_size}, d {config.embed_size}) from "
          f"{start}; {args.steps - LEFT_OUT} steps a run after {LEFT_OUT} left out")
    medians = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way in ways:
            load = os.getloadavg()[0]
            seconds = step_seconds(way, config, splits, args.steps, args.run)
            medians[way].append(statistics.median(seconds))
            print(f"round {round_ + 1}, {way:8s}: median {1000 * medians[way][-1]:6.0f} ms a step "
                  f"(from {1000 * min(seconds):.0f} to {1000 * max(seconds):.0f}), load average before {load:.1f}",
                  flush=True)
    print("\nmedian of the rounds' medians: " + ", ".join(
        f"{way} {1000 * statistics.median(values):.0f} ms" for way, values in medians.items()))


if __name__ == "__main__":
    main()
