"""Where the time goes: one training step and one scoring block, by operation (torch.profiler).

    python benchmarks/profile_step.py                 # the demo's shapes: CPU preset, batch 128, ShapeScenes sizes
    python benchmarks/profile_step.py --threads 1 --top 12 --repeats 5
    python benchmarks/profile_step.py --whole-batch   # the training step as it was before the pair gradients

The training step is the demo's: the CPU preset (d 256, bi-GRU, level-wise supervision), a batch of
128 ShapeScenes training captions and their images (real features from the cache), forward, the
hinges, backward, clipping and Adam, on an untrained model (nearly every hardest negative inside the
margin). It is computed as training computes it with hardest negatives (every pair without
gradients, then the positives and hardest negatives with them: mlasm.loss.hardest_negative_loss);
``--whole-batch`` backpropagates through every pair. The scoring block is one block of ``score_all`` at
Flickr30K-like caption lengths (random unit encodings, d 256, 36 regions), the size the CPU budget
picks, scored as ``score_all`` scores it (the fused loop's C calls are the rows
``mlasm::fused_local_level`` and ``mlasm::fused_semantic_level``; ``MLASM_FUSED=0`` for torch's). Each is run once to warm up, then ``--repeats`` times under the profiler; the table lists
the operations with the most self CPU time, their share, and the machine's load average, since
other work on the cores stretches every figure.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scorer import caption_lengths, random_encodings  # noqa: E402  benchmarks/, beside this script
from table import print_markdown_table  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.dataset import encode_captions, image_tensors  # noqa: E402
from mlasm.data.shapescenes import load_shapescenes  # noqa: E402
from mlasm.data.vocab import Vocabulary  # noqa: E402
from mlasm.loss import hardest_negative_loss, rows_and_columns_loss  # noqa: E402
from mlasm.train import level_weights  # noqa: E402
from mlasm.blocks import _slice, _trim, default_memory_budget_mb, plan_blocks  # noqa: E402
from mlasm.model import MLASM  # noqa: E402
from mlasm.threads import set_threads  # noqa: E402


def training_step(batch_size: int, whole_batch: bool):
    """A closure doing one training step of the demo's model on one ShapeScenes batch."""
    split = load_shapescenes("train", progress=False)
    vocab = Vocabulary.build(split.captions)
    config = MLASMConfig.cpu(region_dim=split.region_dim, global_dim=split.global_dim, vocab_size=len(vocab))
    model = MLASM(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    caption_ids = np.random.default_rng(0).permutation(split.n_captions)[:batch_size]
    regions, mask, global_features = image_tensors(split, split.caption_to_image[caption_ids])
    tokens, lengths = encode_captions(vocab, [split.captions[c] for c in caption_ids]).batch(np.arange(batch_size))
    positives = torch.eye(batch_size, dtype=torch.bool)
    weights = level_weights(config)

    def step():
        if whole_batch:
            levels = model(regions, mask, global_features, tokens, lengths, all_levels=True)
            loss = sum(weight * rows_and_columns_loss(levels[level], levels[level], 0, config.margin, True, positives,
                                                      positives) for level, weight in weights.items())
        else:
            img, cap = model.encode_images(regions, mask, global_features), model.encode_captions(tokens, lengths)
            with torch.no_grad():
                scores = model.pair_levels(img, cap)
            loss = hardest_negative_loss(scores, weights, config.margin, positives,
                                         lambda images, captions: model.pair_levels_at(img, cap, images, captions))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    return step, f"batch {batch_size}, mean caption {float(lengths.float().mean()):.1f} words"


def scoring_block():
    """A closure scoring one block of score_all's plan at Flickr30K-like lengths."""
    config = MLASMConfig.cpu(region_dim=8, global_dim=8, vocab_size=10)
    model = MLASM(config).eval()
    lengths = torch.sort(caption_lengths("f30k", 5000)).values
    img, cap = random_encodings(1000, lengths, 36, config.embed_size, torch.device("cpu"))
    typical = int(lengths.float().mean().ceil())
    plan = plan_blocks(1000, 36, config.embed_size, lengths, 4, default_memory_budget_mb("cpu"))
    start, stop = next(chunk for chunk in plan.chunks if chunk[1] > 2500)  # a run of captions of typical length
    n_images, n_captions = plan.rows, stop - start
    regions = model._image_terms(_slice(img, 0, n_images), plan.gram)
    words = _trim(model._caption_terms(_slice(cap, start, stop)), int(lengths[stop - 1]))

    def block():
        with torch.no_grad():
            model._block_levels(regions, words)  # score_all's scorer: the fused loop where it applies
    return block, f"{n_images} images x {n_captions} captions of about {typical} words"


def profiled(work, repeats: int, top: int) -> tuple[list[dict], float]:
    work()  # warm-up: allocations, lazy initialisation
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            work()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"operation": e.key, "ms a run": f"{e.self_cpu_time_total / repeats / 1e3:.1f}",
             "% of the run": f"{100 * e.self_cpu_time_total / total:.1f}", "calls a run": e.count // repeats}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    return rows, total / repeats / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--whole-batch", action="store_true",
                        help="the training step with gradients through every pair of the batch")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} thread(s), load average before: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, (work, shape) in (("training step", training_step(args.batch_size, args.whole_batch)), ("scoring block", scoring_block())):
        rows, per_run = profiled(work, args.repeats, args.top)
        print(f"\n### {name} ({shape}): {per_run:.0f} ms of self CPU time a run, mean of {args.repeats}")
        print_markdown_table(rows)


if __name__ == "__main__":
    main()
