"""Time of `mlasm evaluate` on a SCAN checkpoint against an MLASM checkpoint of the same size.

    python benchmarks/scan_evaluate.py                     # 200 images x 1,000 captions (1/25 of the pairs of 1K x 5K)
    python benchmarks/scan_evaluate.py --images 1000       # the Flickr30K test size, 1,000 x 5,000
    python benchmarks/scan_evaluate.py --threads 1

Both at SCAN's sizes: 36 regions of 2,048-d features, d = 1,024, 300-d words, a bidirectional GRU;
captions of 12 random words (14 tokens with <start> and <end>). Random features and untrained
weights: the cost of scoring does not depend on them. Each row is `evaluate_checkpoints` (what
`mlasm evaluate` runs: read the checkpoint, encode the split, score every pair, measure, no files
written), once, on a SCAN t2i, a SCAN i2t, SCAN's t-i + i-t ensemble, and an MLASM checkpoint
(the paper's settings: both directions and the semantic level).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from table import print_markdown_table  # noqa: E402  benchmarks/table.py, beside this script
from mlasm.checkpoint import save_checkpoint  # noqa: E402
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.precomp import read_split  # noqa: E402
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary  # noqa: E402
from mlasm.evaluate import evaluate_checkpoints  # noqa: E402
from mlasm.model import MLASM  # noqa: E402
from mlasm.scan_model import SCANConfig, random_scan_model, write_scan_checkpoint  # noqa: E402
from mlasm.threads import set_threads  # noqa: E402

REGIONS, IMG_DIM, EMBED, WORD_DIM, WORDS_PER_CAPTION, VOCAB_WORDS = 36, 2048, 1024, 300, 12, 2000


def make_files(folder: Path, n_images: int, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    data = folder / "f30k_precomp"
    data.mkdir()
    features = np.lib.format.open_memmap(data / "test_ims.npy", mode="w+", dtype=np.float32,
                                         shape=(n_images, REGIONS, IMG_DIM))
    for start in range(0, n_images, 100):
        features[start:start + 100] = rng.random((min(100, n_images - start), REGIONS, IMG_DIM), dtype=np.float32)
    del features
    words = [f"word{i}" for i in range(VOCAB_WORDS)]
    captions = [" ".join(rng.choice(words, WORDS_PER_CAPTION)) for _ in range(5 * n_images)]
    (data / "test_caps.txt").write_text("".join(c + "\n" for c in captions))
    vocab = Vocabulary(list(SPECIAL_TOKENS) + words)
    vocab_file = folder / "f30k_precomp_vocab.json"
    vocab.save(vocab_file, file_format="scan")
    files = {"data": data, "vocab": vocab_file}
    common = dict(raw_feature_norm="clipped_l2norm", precomp_enc_type="basic", bi_gru=True, no_imgnorm=False,
                  no_txtnorm=False, img_dim=IMG_DIM, embed_size=EMBED, word_dim=WORD_DIM, num_layers=1,
                  vocab_size=len(vocab))
    for direction, options in (("t2i", dict(agg_func="LogSumExp", lambda_lse=6.0, lambda_softmax=9.0)),
                               ("i2t", dict(agg_func="LogSumExp", lambda_lse=5.0, lambda_softmax=4.0))):
        files[direction] = folder / f"scan_{direction}" / "model_best.pth.tar"
        files[direction].parent.mkdir()
        write_scan_checkpoint(files[direction], random_scan_model(SCANConfig(cross_attn=direction, **common,
                                                                             **options)))
    config = MLASMConfig.paper(region_dim=IMG_DIM, global_dim=IMG_DIM, vocab_size=len(vocab), embed_size=EMBED,
                               word_dim=WORD_DIM, bidirectional=True)
    files["mlasm"] = folder / "mlasm" / "best.pt"
    files["mlasm"].parent.mkdir()
    save_checkpoint(files["mlasm"], MLASM(config), vocab, {"epoch": 0})
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="test images (5 captions each); 1000 = Flickr30K")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.images} images x {5 * args.images} captions, R={REGIONS}, Dr={IMG_DIM}, d={EMBED}, "
          f"{WORDS_PER_CAPTION + 2} tokens per caption; cpu, {torch.get_num_threads()} threads, "
          f"load average before {load:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args.images)
        split = read_split(files["data"], "test")
        runs = {"SCAN t-i (LSE)": [files["t2i"]], "SCAN i-t (LSE)": [files["i2t"]],
                "SCAN t-i + i-t ensemble": [files["t2i"], files["i2t"]], "MLASM (paper settings)": [files["mlasm"]]}
        for name, checkpoints in runs.items():
            started = time.perf_counter()
            result = evaluate_checkpoints(checkpoints, split, device="cpu", progress=False, vocab=files["vocab"])
            seconds = time.perf_counter() - started
            pairs = split.n_images * split.n_captions * len(checkpoints)
            rows.append({"checkpoint": name, "levels": ", ".join(result["levels"]), "seconds": f"{seconds:.1f}",
                         "pairs/s": f"{pairs / seconds:,.0f}"})
            print(f"{name:<24} {seconds:7.1f} s", flush=True)
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
