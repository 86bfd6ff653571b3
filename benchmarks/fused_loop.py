"""The fused pair loop alone (mlasm/kernels/pair_levels.c) on one block of score_all, two versions alternated.

    python benchmarks/fused_loop.py                          # this checkout's loop
    git show 368e648:mlasm/kernels/pair_levels.c > /tmp/before.c   # the loop before its tuning
    python benchmarks/fused_loop.py --against /tmp/before.c        # the two alternated, round by round

One block the size that score_all's CPU budget cuts at the bench_scorer.py settings (d 1,024, 36
regions, Flickr30K-like lengths: 45 images x 60 captions of the gallery's typical length, a sixth of
the regions masked), random unit encodings. Each round times fused.local_terms (both attentions,
the cosines, the pooling, the mean weights) and fused.semantic_scores (with its batched product for
the text sides) for each version, the mean of --repeats calls; the medians over the rounds follow,
then the largest difference between the two versions' outputs (0 where they add in the same order).
The similarity product is left out: it is bench_scorer.py's "bare" line.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scorer import caption_lengths, random_encodings  # noqa: E402  benchmarks/, beside this script
from mlasm import fused  # noqa: E402
from mlasm.blocks import _slice, _trim, default_memory_budget_mb, plan_blocks  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.model import LEAKY_SLOPE, MLASM, _similarities  # noqa: E402
from mlasm.threads import set_threads  # noqa: E402


def use(source: Path):
    """This version of the loop for the calls that follow (each build is kept in the cache folder)."""
    fused.SOURCE = source
    fused.library.cache_clear()
    if fused.library() is None:
        raise SystemExit(f"{source}: {fused.status()}")
    return fused.status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="another version of pair_levels.c, alternated with this one")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    config = MLASMConfig(region_dim=2048, global_dim=2048, vocab_size=4, embed_size=1024)
    torch.manual_seed(0)
    model = MLASM(config).eval()
    lengths = torch.sort(caption_lengths("f30k", 5000)).values
    plan = plan_blocks(1000, 36, config.embed_size, lengths, 4, default_memory_budget_mb("cpu"))
    start, stop = next(chunk for chunk in plan.chunks if chunk[1] > 2500)  # a run of captions of typical length
    img, cap = random_encodings(plan.rows, lengths[start:stop], 36, config.embed_size, torch.device("cpu"))
    img.mask[:, 30:] = False  # masked regions: the loop skips them as keys and leaves them out of the sums
    with torch.no_grad():
        regions = model._image_terms(img, plan.gram)
        words = _trim(model._caption_terms(cap), int(cap.lengths.max()))
        sim = _similarities(regions, words).contiguous()
    versions = {"this checkout": Path(fused.SOURCE)}
    if args.against:
        versions = {f"{args.against}": args.against, **versions}
    print(f"{threads} thread(s), load average before: {os.getloadavg()[0]:.1f}; block of {plan.rows} images x "
          f"{stop - start} captions of {int(cap.lengths.min())} to {int(cap.lengths.max())} words, d {config.embed_size}")
    for name, source in versions.items():
        print(f"{name}: {use(source)}")

    times = {(name, part): [] for name in versions for part in ("local", "semantic")}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, source in versions.items():
                use(source)
                started = time.perf_counter()
                for _ in range(args.repeats):
                    local = fused.local_terms(sim, regions, words, config, LEAKY_SLOPE)
                times[name, "local"].append((time.perf_counter() - started) / args.repeats)
                started = time.perf_counter()
                for _ in range(args.repeats):
                    semantic = fused.semantic_scores(regions, words, local.region_weights, local.word_weights)
                times[name, "semantic"].append((time.perf_counter() - started) / args.repeats)
                outputs[name] = (*local, semantic)
    pairs = plan.rows * (stop - start)
    for (name, part), seconds in times.items():
        median = statistics.median(seconds)
        print(f"{part:>8} level, {name}: {median * 1e3:6.2f} ms a block ({pairs / median:10,.0f} pairs/s); rounds: "
              + " ".join(f"{s * 1e3:.2f}" for s in seconds))
    if args.against:
        first, second = outputs.values()
        names = ("t2i", "i2t", "region weights", "word weights", "semantic")
        print("largest difference between the versions: " + ", ".join(
            f"{name} {(a - b).abs().max().item():.1e}" for name, a, b in zip(names, first, second)))


if __name__ == "__main__":
    main()
