"""Two-stage search (mlasm.shortlist) against exact all-pairs scoring: accuracy, speed, typed queries.

    python benchmarks/shortlist.py shapescenes --checkpoint runs/demo/mlasm/best.pt   # accuracy, K = 20..200
    python benchmarks/shortlist.py coco --k 100          # COCO-5K-shaped: two-stage at full size vs all-pairs
    python benchmarks/shortlist.py typed                 # a typed query over 5,000 and 50,000 images

``shapescenes``: on ShapeScenes test (1,000 images x 5,000 captions), every first stage's recall
(how often the true item is among the K; ``trained``: a FirstStage trained here on the train
split's encodings) and, for the trained one, every metric of the final level under two-stage
ranking minus exact all-pairs, and the scoring time of each.

``coco``: a COCO-5K-shaped gallery (5,000 images x 36 regions, 25,000 captions of COCO-like lengths
as in bench_scorer.py, embedding 1,024, the model's initial weights): random unit-length encodings
stand in for encoded features (encoding costs both methods the same and is not timed). All-pairs
at full size takes about 22 minutes, so it is timed on a subset (--subset, 500 x 2,500 by default)
and extrapolated per pair; two-stage is timed at full size.

``typed``: one typed caption (12 words) against 5,000 and 50,000 images at real shapes. The
first-stage vectors of the gallery are made once when a session opens (random unit vectors
stand in for them here); per query: the caption's vector, the matrix product and top-K, the K
candidates' encodings (taken from a pool of distinct random images, standing in for reading
their rows of a memory-mapped file) and the full model on the K pairs. Exact scores every image:
timed on --exact-images and extrapolated per image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scorer import caption_lengths, random_encodings  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.metrics import retrieval_metrics  # noqa: E402
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding, l2norm  # noqa: E402
from mlasm.shortlist import (  # noqa: E402
    FIRST_STAGES, FirstStage, caption_vectors, image_vectors, rescore_pairs, shortlists, top_candidates,
    train_first_stage, two_stage,
)
from mlasm.threads import set_threads  # noqa: E402

KS = (20, 50, 100, 200)
METRICS = [(d, m) for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "medr", "meanr")]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def real_shape_model() -> MLASM:
    torch.manual_seed(0)
    return MLASM(MLASMConfig(region_dim=2048, global_dim=2048, vocab_size=10000, embed_size=1024,
                             word_dim=300)).eval()


def shapescenes(args) -> None:
    from mlasm.checkpoint import load_model
    from mlasm.encoding import encode_split
    from mlasm.sources import EMBEDDED, open_split

    model, vocab, _ = load_model(args.checkpoint, "cpu")
    split = open_split(EMBEDDED, "test", progress=False)
    img, cap = encode_split(model, split, vocab.with_boundaries(model.config.start_end_tokens))
    owner = split.caption_to_image
    print(f"{args.checkpoint}: ShapeScenes test, {split.n_images} images x {split.n_captions} captions, "
          f"embedding {model.config.embed_size}, {torch.get_num_threads()} thread(s)")
    train_split = open_split(EMBEDDED, "train", progress=False)
    (train_img, train_cap), encode_s = timed(lambda: encode_split(model, train_split, vocab.with_boundaries(
        model.config.start_end_tokens)))
    stage, train_s = timed(lambda: train_first_stage(train_img, train_cap, train_split.caption_to_image))
    print(f"trained first stage: encoding the train split {encode_s:.1f} s, training {train_s:.1f} s")
    if args.save_first_stage:
        stage.save(args.save_first_stage, {"checkpoint": str(args.checkpoint), "split": "train"})
    exact_scores, exact_s = timed(lambda: model.score_all(img, cap, progress=False))
    exact = retrieval_metrics(exact_scores["final"], owner)
    print(f"exact all-pairs: {exact_s:.1f} s, rSum {exact['rsum']:.1f}")
    print("\nfirst-stage recall (% of queries whose true item is among the K), i2t / t2i:")
    print("| first stage | " + " | ".join(f"K = {k}" for k in KS) + " |")
    print("|---|" + "---|" * len(KS))
    for kind in (*FIRST_STAGES, stage):
        images, captions = image_vectors(model, img, kind), caption_vectors(model, cap, kind)
        cells = []
        for k in KS:
            found = shortlists(images, captions, owner, k)
            cells.append(f"{found['i2t'].first_stage_recall():.1f} / {found['t2i'].first_stage_recall():.1f}")
        print(f"| {'trained' if kind is stage else kind} | " + " | ".join(cells) + " |")
    print("\ntwo-stage (trained first stage) minus exact, final level (R@K in points, medr/meanr in ranks):")
    print("| K | first-stage recall i2t / t2i | rSum | " + " | ".join(f"{d} {m}" for d, m in METRICS)
          + " | time (s) | speed-up |")
    print("|---|---|---|" + "---|" * len(METRICS) + "---|---|")
    for k in KS:
        result, seconds = timed(lambda: two_stage(model, img, cap, owner, k, first_stage=stage))
        metrics = result.metrics()
        recall = result.first_stage_recall()
        deltas = [f"{metrics[d][m] - exact[d][m]:+.1f}" for d, m in METRICS]
        print(f"| {k} | {recall['i2t']:.1f} / {recall['t2i']:.1f} | {metrics['rsum'] - exact['rsum']:+.1f} | "
              + " | ".join(deltas) + f" | {seconds:.1f} | {exact_s / seconds:.1f}x |")
        exact_rsum = {level: retrieval_metrics(exact_scores[level], owner)["rsum"] for level in metrics["levels"]}
        levels = ", ".join(f"{level} {metrics['levels'][level]['rsum'] - exact_rsum[level]:+.1f}"
                           for level in metrics["levels"])
        print(f"|   | rSum change per level: {levels} |")
    print(f"exact: {', '.join(f'{d} {m} {exact[d][m]:.1f}' for d, m in METRICS)}")


def coco(args) -> None:
    n_images = args.images
    n_captions = 5 * n_images
    model = real_shape_model()
    stage = FirstStage(1024).eval()  # untrained weights cost what trained ones do
    lengths = caption_lengths("coco", n_captions)
    img, cap = random_encodings(n_images, lengths, 36, 1024, torch.device("cpu"))
    owner = np.repeat(np.arange(n_images), 5)
    print(f"COCO-shaped: {n_images} images x 36 regions, {n_captions} captions (COCO-like lengths, mean "
          f"{lengths.float().mean():.1f}), d 1024, {torch.get_num_threads()} thread(s)")
    sub_images, sub_captions = args.subset
    sub_img = ImageEncoding(img.regions[:sub_images], img.mask[:sub_images], img.glob[:sub_images])
    sub_cap = CaptionEncoding(cap.words[:sub_captions], cap.lengths[:sub_captions])
    _, sub_s = timed(lambda: model.score_all(sub_img, sub_cap, progress=False))
    per_pair = sub_s / (sub_images * sub_captions)
    all_pairs_s = per_pair * n_images * n_captions
    print(f"all-pairs on {sub_images} x {sub_captions}: {sub_s:.1f} s = {1 / per_pair:,.0f} pairs/s; "
          f"extrapolated to {n_images} x {n_captions}: {all_pairs_s:.0f} s ({all_pairs_s / 60:.1f} min)")
    print("| K | pairs scored | first stage (s) | two-stage total (s) | all-pairs, extrapolated (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for k in args.k:
        _, first_s = timed(lambda: shortlists(image_vectors(model, img, stage), caption_vectors(model, cap, stage),
                                              owner, k))
        result, total_s = timed(lambda: two_stage(model, img, cap, owner, k, stage))
        pairs = len(torch.unique(torch.cat([
            (result.directions["t2i"].candidates * n_captions + torch.arange(n_captions)[:, None]).flatten(),
            (torch.arange(n_images)[:, None] * n_captions + result.directions["i2t"].candidates).flatten()])))
        print(f"| {k} | {pairs:,} | {first_s:.1f} | {total_s:.1f} | {all_pairs_s:.0f} | "
              f"{all_pairs_s / total_s:.0f}x |", flush=True)


def typed(args) -> None:
    model = real_shape_model()
    stage = FirstStage(1024).eval()  # untrained weights cost what trained ones do
    pool_img, _ = random_encodings(args.pool, caption_lengths("fixed:12", 1), 36, 1024, torch.device("cpu"))
    _, one = random_encodings(1, caption_lengths("fixed:12", 1), 36, 1024, torch.device("cpu"))
    tokens, token_lengths = torch.randint(4, 10000, (1, 12)), torch.tensor([12])
    print(f"typed query: one caption of 12 words, 36 regions x 1024, {torch.get_num_threads()} thread(s)")
    # exact: every image against the caption, timed on a part of the gallery, per image
    part = ImageEncoding(*(t[:args.exact_images] for t in pool_img))
    _, exact_part_s = timed(lambda: model.score_all(part, one, progress=False))
    per_image = exact_part_s / args.exact_images
    print("| images | exact (s, extrapolated per image) | two-stage K | two-stage (s, median of 5) |")
    print("|---|---|---|---|")
    for n_images in (5000, 50000):
        index = l2norm(torch.randn(n_images, 1024, generator=torch.Generator().manual_seed(n_images)))
        for k in args.k:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                with torch.no_grad():
                    encoded = model.encode_captions(tokens, token_lengths)
                    candidates = top_candidates(caption_vectors(model, encoded, stage), index, k)[0]
                    rows = candidates % args.pool  # the candidates' rows, as read from the gallery's file
                    chosen = ImageEncoding(*(t[rows] for t in pool_img))
                    rescore_pairs(model, chosen, one, torch.arange(k), torch.zeros(k, dtype=torch.long))
                times.append(time.perf_counter() - start)
            print(f"| {n_images:,} | {per_image * n_images:.1f} | {k} | {float(np.median(times)):.3f} |", flush=True)
    print(f"(exact measured on {args.exact_images} images: {exact_part_s:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("shapescenes", "coco", "typed"))
    parser.add_argument("--checkpoint", default="runs/demo/mlasm/best.pt")
    parser.add_argument("--save-first-stage", help="shapescenes: write the trained first stage here")
    parser.add_argument("--k", type=lambda text: [int(v) for v in text.split(",")], default=None)
    parser.add_argument("--subset", type=lambda text: [int(v) for v in text.split("x")], default=[500, 2500])
    parser.add_argument("--images", type=int, default=5000, help="coco: images (5 captions each)")
    parser.add_argument("--pool", type=int, default=500, help="typed: distinct random images behind the gallery")
    parser.add_argument("--exact-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    args.k = args.k or {"shapescenes": list(KS), "coco": [100], "typed": [50, 100]}[args.part]
    {"shapescenes": shapescenes, "coco": coco, "typed": typed}[args.part](args)


if __name__ == "__main__":
    main()
