"""Pairs per second of MLASM's all-pairs scorer against the reference code's naive loop.

    python benchmarks/bench_scorer.py            # 1,000 images x 5,000 captions (Flickr30K test size)
    python benchmarks/bench_scorer.py --quick    # 100 x 500

(a) fast: MLASM.score_all, every level (both attention directions + global level);
(b) naive: the reference code's way, each caption repeated against every image with the
    d-dim attended contexts built and projected (timed on a subset of the captions and
    extrapolated to pairs/s);
(c) bare: only the matrix product of all words against all regions, the floor any
    cross-attention scorer pays.
Random unit-length encodings stand in for encoded data; weights are the model's initial ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.model import EPS, LEAKY_SLOPE, MLASM, CaptionEncoding, ImageEncoding, l2norm  # noqa: E402

SIZES = {"full": (1000, 5000), "quick": (100, 500)}


def random_encodings(n_images: int, n_captions: int, n_regions: int, n_words: int, d: int,
                     device: torch.device) -> tuple[ImageEncoding, CaptionEncoding]:
    """All regions real and every caption n_words long (a 36-box release, captions padded to 12)."""
    generator = torch.Generator().manual_seed(0)
    regions = l2norm(torch.randn(n_images, n_regions, d, generator=generator))
    glob = torch.randn(n_images, d, generator=generator)
    words = l2norm(torch.randn(n_captions, n_words, d, generator=generator))
    img = ImageEncoding(regions.to(device), torch.ones(n_images, n_regions, dtype=torch.bool, device=device),
                        glob.to(device))
    return img, CaptionEncoding(words.to(device), torch.full((n_captions,), n_words, device=device))


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


def bare_similarities(img: ImageEncoding, cap: CaptionEncoding, block_images: int, block_captions: int) -> None:
    """All words x all regions, block by block (the whole (N R, M L) matrix would not fit)."""
    n_images, n_regions, d = img.regions.shape
    all_words = cap.words.reshape(-1, d)
    n_words = cap.words.shape[1]
    for i in range(0, n_images, block_images):
        block_regions = img.regions[i:i + block_images].reshape(-1, d)
        for j in range(0, cap.words.shape[0], block_captions):
            block_regions @ all_words[j * n_words:(j + block_captions) * n_words].T


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs (other jobs on the machine only ever slow a run down)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 images x 500 captions")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--naive-captions", type=int, default=20,
                        help="captions the naive loop is timed on (against every image)")
    parser.add_argument("--memory-budget-mb", type=float, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_images, n_captions = SIZES["quick" if args.quick else "full"]
    n_regions, n_words, d = 36, 12, 1024
    config = MLASMConfig(region_dim=2048, global_dim=2048, vocab_size=4, embed_size=d)
    torch.manual_seed(0)
    model = MLASM(config).to(device).eval()
    img, cap = random_encodings(n_images, n_captions, n_regions, n_words, d, device)
    subset = range(args.naive_captions)
    n_pairs, n_subset_pairs = n_images * n_captions, n_images * len(subset)
    print(f"device {device}, {torch.get_num_threads()} threads, float32; {n_images} images x {n_captions} captions, "
          f"R={n_regions}, L={n_words}, d={d}, pooling {config.pooling}, rho {config.rho}; "
          f"load average before: {os.getloadavg()[0]:.1f}")

    with torch.no_grad():
        model.score_all(img, CaptionEncoding(cap.words[:50], cap.lengths[:50]), progress=False)  # warm-up
        fast_s = timed(lambda: model.score_all(img, cap, memory_budget_mb=args.memory_budget_mb, progress=False))
        naive_s = timed(lambda: naive_scores(model, img, cap, subset), repeats=3)
        bare_s = timed(lambda: (bare_similarities(img, cap, block_images=128, block_captions=128),
                                device.type == "cuda" and torch.cuda.synchronize()))
    fast, naive, bare = n_pairs / fast_s, n_subset_pairs / naive_s, n_pairs / bare_s
    print(f"(a) fast scorer, score_all, every level : {fast:12,.0f} pairs/s  ({n_pairs:,} pairs in {fast_s:.1f} s)")
    print(f"(b) naive per-caption loop              : {naive:12,.0f} pairs/s  (timed on {len(subset)} captions x "
          f"{n_images} images = {n_subset_pairs:,} pairs in {naive_s:.1f} s, best of 3, extrapolated)")
    print(f"(c) bare matmul, all words x all regions: {bare:12,.0f} pairs/s  ({n_pairs:,} pairs in {bare_s:.1f} s)")
    print(f"fast / naive = {fast / naive:.1f}x; fast / bare matmul = {fast / bare:.2f}x")

    # agreement on the subset, in float64 so that float32 rounding does not hide a real difference
    model.double()
    img64 = ImageEncoding(img.regions.double(), img.mask, img.glob.double())
    cap64 = CaptionEncoding(cap.words[:len(subset)].double(), cap.lengths[:len(subset)])
    with torch.no_grad():
        fast_levels = model.score_all(img64, cap64, progress=False)
        naive_levels = naive_scores(model, img64, cap64, subset)
    worst = max((fast_levels[level] - naive_levels[level]).abs().max().item() for level in naive_levels)
    print(f"max |fast - naive| over t2i, i2t, global, final on the {len(subset)}-caption subset (float64): {worst:.2e}")


if __name__ == "__main__":
    main()
