"""``mlasm extract``: the arguments and the run, for ``mlasm.cli`` to mount as a subcommand."""
from __future__ import annotations

import argparse
import time

from mlasm.arguments import at_least, device_name, fraction, positive_number
from mlasm.data.pictures import BYTES_PER_PIXEL, MAX_PICTURE_PIXELS
from mlasm.extract.backbone import MIN_SHORT_SIDE
from mlasm.extract.pipeline import check_split_fractions, extract_dataset
from mlasm.io import check_output_folder


def _fractions(text: str) -> tuple[float, ...]:
    """``--split 0.8,0.1,0.1`` -> (0.8, 0.1, 0.1), checked."""
    try:
        fractions = tuple(float(part) for part in text.split(","))
        check_split_fractions(fractions)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return fractions


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``mlasm extract``'s options to ``parser``."""
    parser.add_argument("--images", required=True, help="folder of the pictures")
    parser.add_argument("--captions", required=True,
                        help="COCO caption .json, or .csv with header file_name,caption (one row per caption)")
    parser.add_argument("--out", required=True, help="dataset folder to write (precomp plus extras)")
    parser.add_argument("--max-regions", type=at_least(1), default=36,
                        help="regions per picture R, the whole picture included (default 36)")
    parser.add_argument("--split", type=_fractions, default=None, metavar="TRAIN,DEV,TEST",
                        help="e.g. 0.8,0.1,0.1: write train/dev/test by picture (default: one split 'all')")
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the split (default 0)")
    parser.add_argument("--score-threshold", type=fraction, default=0.2,
                        help="keep detections scoring at least this (default 0.2)")
    parser.add_argument("--min-detections", type=at_least(0), default=10,
                        help="top up to this many detections when fewer pass the threshold (default 10)")
    parser.add_argument("--nms-iou", type=fraction, default=0.5,
                        help="class-agnostic NMS overlap threshold (default 0.5)")
    parser.add_argument("--short-side", type=at_least(MIN_SHORT_SIDE), default=224,
                        help=f"shorter side of the backbone input in pixels (default 224, its training size; "
                             f"at least {MIN_SHORT_SIDE}, one cell of its feature map)")
    parser.add_argument("--device", type=device_name, default=None,
                        help="torch device for the backbone (default: cuda if available)")
    parser.add_argument("--limit", type=at_least(1), default=None, help="extract only the first N pictures")
    parser.add_argument("--clean-work", action="store_true",
                        help="delete OUT/.work (the per-picture cache used for resuming) when done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--max-picture-megapixels", type=positive_number, default=MAX_PICTURE_PIXELS / 1e6,
                        help=f"skip, unread, a picture whose header declares more pixels (or more than "
                             f"{BYTES_PER_PIXEL} bytes a pixel of that, decoded); default {MAX_PICTURE_PIXELS / 1e6:g}")
    parser.add_argument("--allow-images-outside", action="store_true",
                        help="read pictures whose file names lead out of --images (.., an absolute path, a "
                             "symlink); by default such a row is refused")


def run_extract(args: argparse.Namespace) -> int:
    """Run the extraction the parsed arguments describe; print a summary; exit status 0."""
    check_output_folder(args.out, "--out")  # before the models are loaded
    started = time.perf_counter()
    result = extract_dataset(
        args.images, args.captions, args.out, max_regions=args.max_regions, split_fractions=args.split,
        seed=args.seed, device=args.device, progress=not args.no_progress,
        score_threshold=args.score_threshold, nms_iou=args.nms_iou, min_detections=args.min_detections,
        short_side=args.short_side, limit=args.limit, clean_work=args.clean_work,
        allow_images_outside=args.allow_images_outside,
        max_picture_pixels=int(args.max_picture_megapixels * 1e6))
    splits = ", ".join(f"{name} {n}" for name, n in result.split_sizes.items())
    print(f"wrote {result.out_dir}: {splits} pictures ({result.n_computed} extracted, "
          f"{result.n_cached} from an earlier run) in {time.perf_counter() - started:.1f} s")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable pictures (listed in meta.json):")
        for entry in result.skipped:
            print(f"  {entry['file_name']}: {entry['reason']}")
    return 0
