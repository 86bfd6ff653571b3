"""Pairs per second of MLASM's all-pairs scorer against the reference code's naive loop.

    python benchmarks/bench_scorer.py                   # 1,000 images x 5,000 captions, Flickr30K-like lengths
    python benchmarks/bench_scorer.py --lengths coco    # COCO-like lengths; fixed:12 for every caption at 12
    python benchmarks/bench_scorer.py --quick           # 100 x 500
    python benchmarks/bench_scorer.py --sweep           # pairs/s against a fixed length L from 8 to 80
    python benchmarks/bench_scorer.py --budgets 32,64,512   # pairs/s against the block memory budget
    python benchmarks/bench_scorer.py --device cuda --precision tf32   # or bfloat16 (autocast); float32 by default

Caption lengths are drawn from a log-normal with the mean and 99th percentile of NLTK tokens on
the real test captions (Flickr30K: mean 13.5, 99th pct 33, longest 75; COCO 1K: 11.3, 20, 38),
clipped to [3, longest] with one caption at the longest.

(a) fast: MLASM.score_all, every level (both attention directions + global level);
(b) naive: the reference code's way, each caption at its own length repeated against every
    image with the d-dim attended contexts built and projected (timed on a subset of the
    captions spread over the lengths, and extrapolated to pairs/s);
(c) bare: only the matrix product of every real word against every region, the floor any
    cross-attention scorer pays.
Random unit-length encodings stand in for encoded data; weights are the model's initial ones.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlasm import fused  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.model import EPS, LEAKY_SLOPE, MLASM, CaptionEncoding, ImageEncoding, l2norm  # noqa: E402
from mlasm.threads import set_threads  # noqa: E402

SIZES = {"full": (1000, 5000), "quick": (100, 500)}
PRECISIONS = ("float32", "tf32", "bfloat16")


# (mean, 99th percentile, longest) of NLTK tokens per caption on the real test splits
LENGTH_STATISTICS = {"f30k": (13.5, 33, 75), "coco": (11.3, 20, 38)}


def caption_lengths(kind: str, n_captions: int, seed: int = 0) -> torch.Tensor:
    """``f30k``, ``coco`` (log-normal with that mean and 99th percentile) or ``fixed:L``."""
    if kind.startswith("fixed:"):
        return torch.full((n_captions,), int(kind.split(":")[1]))
    mean, p99, longest = LENGTH_STATISTICS[kind]
    # log-normal: mean = exp(mu + s^2 / 2), p99 = exp(mu + 2.326 s); solve the quadratic for s
    z99 = 2.3263
    gap = math.log(p99) - math.log(mean)
    sigma = z99 - math.sqrt(z99**2 - 2 * gap)
    mu = math.log(mean) - sigma**2 / 2
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(mu + sigma * torch.randn(n_captions, generator=generator)).round().clamp(3, longest).long()
    lengths[torch.randint(n_captions, (1,), generator=generator)] = longest
    return lengths


def random_encodings(n_images: int, lengths: torch.Tensor, n_regions: int, d: int,
                     device: torch.device) -> tuple[ImageEncoding, CaptionEncoding]:
    """All regions real (a 36-box release); captions of the given lengths, padded to the longest."""
    generator = torch.Generator().manual_seed(0)
    regions = l2norm(torch.randn(n_images, n_regions, d, generator=generator))
    glob = torch.randn(n_images, d, generator=generator)
    words = l2norm(torch.randn(len(lengths), int(lengths.max()), d, generator=generator))
    words = words * (torch.arange(words.shape[1]) < lengths[:, None])[..., None]
    img = ImageEncoding(regions.to(device), torch.ones(n_images, n_regions, dtype=torch.bool, device=device),
                        glob.to(device))
    return img, CaptionEncoding(words.to(device), lengths.to(device))


def naive_attend(queries: torch.Tensor, keys: torch.Tensor, lambda_softmax: float):
    """SCAN's func_attention on (N, Q, d) queries and (N, K, d) keys: contexts (N, Q, d), cosines (N, Q)."""
    sim = F.leaky_relu(torch.bmm(keys, queries.transpose(1, 2)), LEAKY_SLOPE)   # (N, K, Q)
    weights = torch.softmax(lambda_softmax * l2norm(sim, dim=2).transpose(1, 2), dim=2)  # (N, Q, K)
    contexts = torch.bmm(weights, keys)
    cosines = (queries * contexts).sum(-1) / (queries.norm(dim=-1) * contexts.norm(dim=-1)).clamp_min(EPS)
    return contexts, cosines


def naive_scores(model: MLASM, img: ImageEncoding, cap: CaptionEncoding, captions) -> dict[str, torch.Tensor]:
    """The reference code's loop: for each caption, repeat it against every image. (N, len(captions)) per level."""
    config = model.config
    columns = {level: [] for level in ("t2i", "i2t", "global", "final")}
    n_images = img.regions.shape[0]
    for c in captions:
        words = cap.words[c, :int(cap.lengths[c])].expand(n_images, -1, -1)       # (N, L, d)
        word_contexts, word_cosines = naive_attend(words, img.regions, config.lambda_t2i)
        region_contexts, region_cosines = naive_attend(img.regions, words, config.lambda_i2t)
        t2i, i2t = word_cosines.mean(1), region_cosines.mean(1)
        x = model.image_context_proj(word_contexts.mean(1))                       # (N, d)
        gate = torch.sigmoid(model.gate(torch.cat([img.glob, x], dim=1)))
        image_side = l2norm(gate * img.glob + (1 - gate) * x)
        text_side = l2norm(model.text_context_proj(region_contexts.mean(1)))
        glob = (image_side * text_side).sum(1)
        for level, value in zip(columns, (t2i, i2t, glob, config.rho * (t2i + i2t) / 2 + (1 - config.rho) * glob)):
            columns[level].append(value)
    return {level: torch.stack(values, dim=1).cpu() for level, values in columns.items()}


def bare_similarities(img: ImageEncoding, cap: CaptionEncoding, block_images: int = 128,
                      block_words: int = 2048) -> None:
    """Every real word against every region, block by block (the whole matrix would not fit)."""
    n_images, n_regions, d = img.regions.shape
    real = torch.arange(cap.words.shape[1], device=cap.words.device) < cap.lengths[:, None]
    all_words = cap.words[real]                                                  # (sum of lengths, d)
    for i in range(0, n_images, block_images):
        block_regions = img.regions[i:i + block_images].reshape(-1, d)
        for j in range(0, all_words.shape[0], block_words):
            block_regions @ all_words[j:j + block_words].T


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs (other jobs on the machine only ever slow a run down)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def scoring_precision(name: str, device: torch.device):
    """float32 products (the default), TF32 products (CUDA only: torch's "high" float32 matmul precision)
    or bfloat16 autocast, for the timed runs; float32 is restored afterwards."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    if name == "tf32" and device.type != "cuda":
        raise ValueError("precision tf32 is a CUDA setting; on the CPU use float32 or bfloat16")
    before = torch.get_float32_matmul_precision()
    if name == "tf32":
        torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bfloat16"):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def spread_subset(lengths: torch.Tensor, size: int) -> list[int]:
    """``size`` captions at evenly spaced quantiles of the length (the loop's cost grows with it)."""
    order = torch.argsort(lengths, stable=True)
    return [int(order[round(q)]) for q in torch.linspace(0, len(lengths) - 1, size).tolist()]


def sweep(model: MLASM, n_images: int, n_captions: int, n_regions: int, d: int, device, budget: float) -> None:
    """Pairs/s of the scorer and of the bare product against a fixed caption length."""
    print(f"\n{n_images} images x {n_captions} captions, every caption of length L:")
    print(f"{'L':>4} {'score_all pairs/s':>18} {'bare pairs/s':>14} {'score_all / bare':>17}")
    for length in (8, 12, 20, 33, 50, 80):
        img, cap = random_encodings(n_images, caption_lengths(f"fixed:{length}", n_captions), n_regions, d, device)
        with torch.no_grad():
            fast_s = timed(lambda: model.score_all(img, cap, memory_budget_mb=budget, progress=False))
            bare_s = timed(lambda: (bare_similarities(img, cap), device.type == "cuda" and torch.cuda.synchronize()))
        pairs = n_images * n_captions
        print(f"{length:>4} {pairs / fast_s:>18,.0f} {pairs / bare_s:>14,.0f} {bare_s / fast_s:>17.2f}", flush=True)


def budgets(model: MLASM, lengths_kind: str, sizes_mb: list[float], n_regions: int, d: int, device) -> None:
    """Pairs/s of the scorer against its block memory budget (200 x 1,000, the given lengths)."""
    n_images, n_captions = 200, 1000
    img, cap = random_encodings(n_images, caption_lengths(lengths_kind, n_captions), n_regions, d, device)
    print(f"\n{n_images} images x {n_captions} captions, lengths {lengths_kind}, against memory_budget_mb:")
    with torch.no_grad():
        for budget in sizes_mb:
            seconds = timed(lambda: model.score_all(img, cap, memory_budget_mb=budget, progress=False), repeats=2)
            print(f"{budget:>8.0f} MB {n_images * n_captions / seconds:>12,.0f} pairs/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 images x 500 captions")
    parser.add_argument("--lengths", default="f30k", help="f30k (default), coco, or fixed:L")
    parser.add_argument("--sweep", action="store_true", help="pairs/s against L = 8 ... 80 (200 x 1,000)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--naive-captions", type=int, default=20,
                        help="captions the naive loop is timed on (against every image), spread over the lengths")
    parser.add_argument("--budgets", help="comma-separated block memory budgets in MB to compare")
    parser.add_argument("--memory-budget-mb", type=float, default=None, help="default: the scorer's own")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="products in float32 (default), TF32 (CUDA) or bfloat16 autocast, for (a) to (c)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the usable cores that are not busy, as the mlasm commands)")
    args = parser.parse_args()

    set_threads(args.threads)
    device = torch.device(args.device)
    try:
        with scoring_precision(args.precision, device):  # refuses TF32 on the CPU before any work
            pass
    except ValueError as error:
        parser.error(str(error))
    n_regions, d = 36, 1024
    config = MLASMConfig(region_dim=2048, global_dim=2048, vocab_size=4, embed_size=d)
    torch.manual_seed(0)
    model = MLASM(config).to(device).eval()
    print(f"device {device}, {torch.get_num_threads()} threads, {args.precision}, R={n_regions}, d={d}, "
          f"pooling {config.pooling}, rho {config.rho}; load average before: {os.getloadavg()[0]:.1f}")
    scorer = (fused.status() if device.type == "cpu" and args.precision == "float32" else
              "torch (the fused loop: CPU, float32 only)")
    print(f"scorer: {scorer}")
    if args.sweep:
        sweep(model, 200, 1000, n_regions, d, device, args.memory_budget_mb)
        return
    if args.budgets:
        budgets(model, args.lengths, [float(b) for b in args.budgets.split(",")], n_regions, d, device)
        return
    n_images, n_captions = SIZES["quick" if args.quick else "full"]
    lengths = caption_lengths(args.lengths, n_captions)
    img, cap = random_encodings(n_images, lengths, n_regions, d, device)
    subset = spread_subset(lengths, args.naive_captions)
    n_pairs, n_subset_pairs = n_images * n_captions, n_images * len(subset)
    print(f"{n_images} images x {n_captions} captions, lengths {args.lengths}: mean {lengths.float().mean():.1f}, "
          f"99th pct {int(lengths.float().quantile(0.99))}, longest {int(lengths.max())}")

    with torch.no_grad(), scoring_precision(args.precision, device):
        model.score_all(img, CaptionEncoding(cap.words[:50], cap.lengths[:50]), progress=False)  # warm-up
        fast_s = timed(lambda: model.score_all(img, cap, memory_budget_mb=args.memory_budget_mb, progress=False))
        naive_s = timed(lambda: naive_scores(model, img, cap, subset), repeats=3)
        bare_s = timed(lambda: (bare_similarities(img, cap), device.type == "cuda" and torch.cuda.synchronize()))
    # the loop's time per caption grows with its length: scale the subset's time by the lengths' mean
    naive_s *= float(lengths.float().mean() / lengths[subset].float().mean())
    fast, naive, bare = n_pairs / fast_s, n_subset_pairs / naive_s, n_pairs / bare_s
    print(f"(a) fast scorer, score_all, every level : {fast:12,.0f} pairs/s  ({n_pairs:,} pairs in {fast_s:.1f} s)")
    print(f"(b) naive per-caption loop, own lengths : {naive:12,.0f} pairs/s  (timed on {len(subset)} captions x "
          f"{n_images} images, best of 3, extrapolated)")
    print(f"(c) bare matmul, real words x regions   : {bare:12,.0f} pairs/s  ({n_pairs:,} pairs in {bare_s:.1f} s)")
    print(f"fast / naive = {fast / naive:.1f}x; fast / bare matmul = {fast / bare:.2f}x")

    # agreement on the subset, in float64 so that float32 rounding does not hide a real difference
    model.double()
    img64 = ImageEncoding(img.regions.double(), img.mask, img.glob.double())
    cap64 = CaptionEncoding(cap.words[subset].double(), cap.lengths[subset])
    with torch.no_grad():
        fast_levels = model.score_all(img64, cap64, progress=False)
        naive_levels = naive_scores(model, img64, cap64, range(len(subset)))
    worst = max((fast_levels[level] - naive_levels[level]).abs().max().item() for level in naive_levels)
    print(f"max |fast - naive| over t2i, i2t, global, final on the {len(subset)}-caption subset (float64): {worst:.2e}")


if __name__ == "__main__":
    main()
