"""A folder of photos and their captions -> a precomp-plus-extras dataset folder.

Per picture: boxes from a :class:`RegionProposer`, the region policy of
:func:`mlasm.extract.boxes.select_regions` (whole picture first, then the best detections),
and features from a :class:`RegionFeatureExtractor`. Each finished picture is cached in
``out/.work/<settings fingerprint>/`` as one atomically written ``.npz``, so an interrupted run
resumes where it stopped and a rerun with other settings never mixes in stale results. The
splits are then assembled and written with :func:`mlasm.data.precomp.write_split`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import mlasm
from mlasm.data.coco import CaptionedImage
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.pictures import MAX_PICTURE_PIXELS, open_picture, picture_inside
from mlasm.data.precomp import write_split
from mlasm.extract.boxes import select_regions
from mlasm.extract.captions import read_captions
from mlasm.extract.interfaces import RegionFeatureExtractor, RegionProposer
from mlasm.io import atomic_path, check_output_folder, npz_declared_sizes, remove_stale_temporaries

WORK_FOLDER = ".work"
WHOLE_IMAGE_NAME = "whole image"
PAD_LABEL = -1
SPLIT_NAMES = ("train", "dev", "test")
RECORDED_PACKAGES = ("torch", "numpy", "pillow", "opencv-python-headless", "opencv-python")


class DamagedWorkFileWarning(UserWarning):
    """A picture's file in the work folder could not be used; the picture is extracted again."""


class UnreadableImageWarning(UserWarning):
    """A picture was missing or could not be decoded; it is skipped and listed in meta.json."""


@dataclass(frozen=True)
class ImageRegions:
    """The extracted regions of one picture, unpadded (K <= R, region 0 = the whole picture)."""

    boxes: np.ndarray           # (K, 4) float32, x1 y1 x2 y2 in pixels
    scores: np.ndarray          # (K,) float32
    labels: np.ndarray          # (K,) int32
    regions: np.ndarray         # (K, D) float32
    global_feature: np.ndarray  # (D,) float32
    size: np.ndarray            # (2,) int32, width and height

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **vars(self))

    @classmethod
    def load(cls, path: Path) -> "ImageRegions":
        with np.load(path, allow_pickle=False) as arrays:
            return cls(**{name: arrays[name] for name in arrays.files})

    @classmethod
    def load_checked(cls, path: Path, max_regions: int, dim: int) -> "ImageRegions | str":
        """The regions a work file holds, or why it cannot be used: not a readable .npz, members
        declaring more bytes than ``max_regions`` regions of ``dim`` floats (checked before
        decompressing), missing or of other shapes, or not finite."""
        limits = {"boxes": 16 * max_regions, "scores": 4 * max_regions, "labels": 4 * max_regions,
                  "regions": 4 * max_regions * dim, "global_feature": 4 * dim, "size": 8}
        try:
            declared = npz_declared_sizes(path)
            if set(declared) != set(limits):
                return f"members {sorted(declared)}, expected {sorted(limits)}"
            large = [name for name, size in declared.items() if size > limits[name] + 4096]
            if large:
                return f"{large[0]}.npy declares {declared[large[0]]:,} bytes, more than {max_regions} regions take"
            regions = cls.load(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            return f"unreadable ({type(error).__name__}: {error})"
        k = len(regions.scores)
        shapes = {"boxes": (k, 4), "scores": (k,), "labels": (k,), "regions": (k, dim), "global_feature": (dim,),
                  "size": (2,)}
        if not 1 <= k <= max_regions or any(getattr(regions, n).shape != shape for n, shape in shapes.items()):
            return "arrays of other shapes than one picture's regions"
        if not all(np.isfinite(getattr(regions, n)).all() for n in ("boxes", "scores", "regions", "global_feature")):
            return "NaN or infinite values"
        return regions


@dataclass
class ExtractionResult:
    """What a run wrote and how much of it came from the work folder of an earlier run."""

    out_dir: Path
    split_sizes: dict[str, int]  # split name -> number of images
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file_name", "reason"}
    n_computed: int = 0          # pictures run through the models by this call
    n_cached: int = 0            # pictures read back from out/.work


def extract_image(image: Image.Image, proposer: RegionProposer, extractor: RegionFeatureExtractor,
                  max_regions: int = 36, score_threshold: float = 0.2, nms_iou: float = 0.5,
                  min_detections: int = 10) -> ImageRegions:
    """Regions and features of one RGB picture; see :func:`select_regions` for the policy."""
    width, height = image.size
    proposals = proposer.propose(image)
    _check_proposals(proposals, len(proposer.label_names), type(proposer).__name__)
    selected = select_regions(proposals, width, height, max_regions,
                              whole_image_label=len(proposer.label_names), score_threshold=score_threshold,
                              nms_iou=nms_iou, min_detections=min_detections)
    regions, global_feature = extractor.features(image, selected.boxes)
    regions, global_feature = np.asarray(regions, np.float32), np.asarray(global_feature, np.float32)
    expected = ((len(selected.boxes), extractor.dim), (extractor.dim,))
    if (regions.shape, global_feature.shape) != expected:
        raise ValueError(f"{type(extractor).__name__}.features returned shapes {regions.shape} and "
                         f"{global_feature.shape}, expected {expected[0]} and {expected[1]}")
    if not (np.isfinite(regions).all() and np.isfinite(global_feature).all()):
        raise DataError(f"{type(extractor).__name__}.features returned NaN or infinite values")
    return ImageRegions(selected.boxes, selected.scores, selected.labels, regions, global_feature,
                        np.array([width, height], np.int32))


def _check_proposals(proposals, n_labels: int, proposer: str) -> None:
    """Detections that would be dropped or mis-ranked without a word: NaN boxes or scores, unknown labels."""
    boxes, scores, labels = (np.asarray(a) for a in (proposals.boxes, proposals.scores, proposals.labels))
    if not np.isfinite(boxes).all():
        raise DataError(f"{proposer}.propose returned NaN or infinite box coordinates")
    if not np.isfinite(scores).all():
        raise DataError(f"{proposer}.propose returned NaN or infinite scores")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise DataError(f"{proposer}.propose returned label ids outside [0, {n_labels}) (its label_names)")


def _default_models(proposer: RegionProposer | None, extractor: RegionFeatureExtractor | None,
                    device: str | None, short_side: int) -> tuple[RegionProposer, RegionFeatureExtractor]:
    """The given proposer and extractor, or SSD MobileNet v2 and EfficientNet-Lite0 (loaded only when
    needed: they need the [extract] extra)."""
    if proposer is None:
        from mlasm.extract.detector import SSDMobileNetV2Proposer
        proposer = SSDMobileNetV2Proposer()
    if extractor is None:
        from mlasm.extract.backbone import EfficientNetLite0Extractor
        extractor = EfficientNetLite0Extractor(device=device, short_side=short_side)
    return proposer, extractor


def extract_dataset(images_dir: str | os.PathLike, captions_file: str | os.PathLike, out_dir: str | os.PathLike,
                    max_regions: int = 36, split_fractions: Sequence[float] | None = None, seed: int = 0,
                    device: str | None = None, progress: bool = True, *, score_threshold: float = 0.2,
                    nms_iou: float = 0.5, min_detections: int = 10, short_side: int = 224,
                    limit: int | None = None, proposer: RegionProposer | None = None,
                    extractor: RegionFeatureExtractor | None = None,
                    clean_work: bool = False, allow_images_outside: bool = False,
                    max_picture_pixels: int = MAX_PICTURE_PIXELS) -> ExtractionResult:
    """Extract every captioned picture and write the dataset folder ``out_dir``.

    ``captions_file`` is COCO caption JSON or a ``file_name,caption`` CSV, file names relative
    to ``images_dir``; ``limit`` keeps its first pictures only. Split ``all`` by default;
    ``split_fractions`` (train, dev, test), e.g. (0.8, 0.1, 0.1), splits by picture with
    ``seed``. ``proposer`` / ``extractor`` default to SSD MobileNet v2 and EfficientNet-Lite0
    (``device``, ``short_side``). Unreadable pictures are skipped with an
    :class:`UnreadableImageWarning` and listed in meta.json. The work folder ``out/.work`` is
    kept for resuming and reruns unless ``clean_work``. A file name that leads out of
    ``images_dir`` (``..``, an absolute path, a symlink) is refused before anything is read, unless
    ``allow_images_outside`` (:func:`mlasm.data.pictures.picture_inside`). A picture whose header
    declares more than ``max_picture_pixels`` is skipped unread (:func:`~mlasm.data.pictures.open_picture`).
    """
    images_dir, out_dir = Path(images_dir).resolve(), Path(out_dir)
    # everything that can be refused is refused before any model is loaded or picture extracted
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"limit must be a whole number of pictures >= 1 (or None for all), got {limit!r}")
    if split_fractions is not None:
        check_split_fractions(split_fractions)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no such folder of pictures")
    pictures = read_captions(captions_file)[:limit]
    files = {picture.file_name: picture_inside(images_dir, picture.file_name,
                                               f"{captions_file}: {picture.row or picture.image_id}",
                                               f"--images {images_dir}", allow_images_outside)
             for picture in pictures}
    check_output_folder(out_dir, "out_dir")
    proposer, extractor = _default_models(proposer, extractor, device, short_side)
    region_settings = {"max_regions": max_regions, "score_threshold": score_threshold,
                       "nms_iou": nms_iou, "min_detections": min_detections}
    producer = {"proposer": proposer.describe(), "extractor": extractor.describe(), "regions": region_settings}
    fingerprint = hashlib.sha1(json.dumps(producer, sort_keys=True).encode()).hexdigest()[:12]  # of the settings
    work_dir = out_dir / WORK_FOLDER / fingerprint
    for folder in (out_dir, work_dir):  # what a killed run was writing
        remove_stale_temporaries(folder)

    result = ExtractionResult(out_dir=out_dir, split_sizes={})
    extracted: list[tuple[CaptionedImage, ImageRegions]] = []
    for picture in tqdm(pictures, desc="extract", unit="image", disable=not progress):
        regions = _cached_or_extracted(picture, files[picture.file_name], work_dir / _cache_name(picture.file_name),
                                       proposer, extractor, region_settings, result, max_picture_pixels)
        if regions is not None:
            extracted.append((picture, regions))
    if not extracted:
        raise DataError(f"{captions_file}: none of its {len(pictures)} pictures could be read from {images_dir}")

    splits = split_indices(len(extracted), split_fractions, seed)
    meta = {
        "producer": {"name": "mlasm extract", "mlasm": mlasm.__version__, **producer,
                     "packages": _package_versions()},
        "source": {"images": str(images_dir), "captions": str(Path(captions_file).resolve())},
        "region_order": "region 0 is the whole picture (label 'whole image', score 1); then detections, "
                        "best first; then padding (mask False, label -1)",
        "orientation": "pictures were turned upright by their EXIF orientation before extraction",
        "captions_per_image": _captions_per_image(picture for picture, _ in extracted),
        "splits": {name: len(indices) for name, indices in splits.items()},
        "split_fractions": None if split_fractions is None else list(split_fractions),
        "seed": seed,
        "skipped_images": result.skipped,
        "picture_folder": str(images_dir), "pictures_outside_allowed": bool(allow_images_outside),
    }
    label_names = [*proposer.label_names, WHOLE_IMAGE_NAME]
    for name, indices in splits.items():
        split = _assemble(name, [extracted[i] for i in indices], images_dir, max_regions, label_names)
        write_split(out_dir, name, split, meta=meta)
        result.split_sizes[name] = len(indices)
    if clean_work:
        shutil.rmtree(out_dir / WORK_FOLDER)
    return result


def _cached_or_extracted(picture: CaptionedImage, picture_file: Path, cache: Path, proposer: RegionProposer,
                         extractor: RegionFeatureExtractor, region_settings: dict[str, Any],
                         result: ExtractionResult, max_picture_pixels: int = MAX_PICTURE_PIXELS
                         ) -> ImageRegions | None:
    """One picture's regions from the work folder, else extracted and cached; None if unreadable.
    Counts the picture in ``result`` as cached, computed or skipped."""
    if cache.is_file():
        regions = ImageRegions.load_checked(cache, region_settings["max_regions"], extractor.dim)
        if not isinstance(regions, str):
            result.n_cached += 1
            return regions
        warnings.warn(f"{cache}: a damaged work file ({regions}); extracting {picture.file_name} again",
                      DamagedWorkFileWarning, stacklevel=3)
    try:
        image = open_picture(picture_file, max_picture_pixels)
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # ValueError: a mode with no RGB,
        # PictureTooLarge (a DataError, so a ValueError): a decompression bomb
        reason = f"{type(error).__name__}: {error}"
        warnings.warn(f"skipping {picture.file_name}: {reason}", UnreadableImageWarning, stacklevel=3)
        result.skipped.append({"file_name": picture.file_name, "reason": reason})
        return None
    try:
        regions = extract_image(image, proposer, extractor, **region_settings)
    except DataError as error:
        raise DataError(f"{picture.file_name}: {error}") from None
    regions.save(cache)
    result.n_computed += 1
    return regions


def split_indices(n_images: int, fractions: Sequence[float] | None, seed: int) -> dict[str, np.ndarray]:
    """Picture indices per split: {"all": 0..n-1}, or a seeded train/dev/test partition."""
    if fractions is None:
        return {"all": np.arange(n_images)}
    check_split_fractions(fractions)
    order = np.random.default_rng(seed).permutation(n_images)
    n_train, n_dev = round(fractions[0] * n_images), round(fractions[1] * n_images)
    parts = np.split(order, [n_train, n_train + n_dev])
    for name, part, fraction in zip(SPLIT_NAMES, parts, fractions):
        if fraction > 0 and len(part) == 0:
            raise DataError(f"split {name!r} would get no picture: {n_images} pictures split {list(fractions)}")
    return {name: np.sort(part) for name, part in zip(SPLIT_NAMES, parts) if len(part)}


def check_split_fractions(fractions: Sequence[float]) -> None:
    """ValueError unless ``fractions`` are (train, dev, test) shares summing to 1."""
    if len(fractions) != len(SPLIT_NAMES) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers (train, dev, test) "
                         f"summing to 1, got {list(fractions)}")


def _assemble(name: str, pictures: list[tuple[CaptionedImage, ImageRegions]], images_dir: Path,
              max_regions: int, label_names: list[str | None]) -> RetrievalSplit:
    """Pad each picture's K regions to R and stack them into one split."""
    n, dim = len(pictures), pictures[0][1].regions.shape[1]
    regions = np.zeros((n, max_regions, dim), np.float32)
    mask = np.zeros((n, max_regions), bool)
    boxes = np.zeros((n, max_regions, 4), np.float32)
    scores = np.zeros((n, max_regions), np.float32)
    labels = np.full((n, max_regions), PAD_LABEL, np.int32)
    for i, (_, extracted) in enumerate(pictures):
        k = len(extracted.scores)
        regions[i, :k], mask[i, :k], boxes[i, :k] = extracted.regions, True, extracted.boxes
        scores[i, :k], labels[i, :k] = extracted.scores, extracted.labels
    # captions are stored one per line: line breaks and runs of spaces become one space
    captions = [(" ".join(caption.split()), i)
                for i, (picture, _) in enumerate(pictures) for caption in picture.captions]
    return RetrievalSplit(
        name=name, regions=regions, region_mask=mask,
        global_features=np.stack([extracted.global_feature for _, extracted in pictures]),
        captions=[caption for caption, _ in captions],
        caption_to_image=np.array([i for _, i in captions], np.int64),
        boxes=boxes, image_sizes=np.stack([extracted.size for _, extracted in pictures]),
        image_ids=[picture.image_id for picture, _ in pictures],
        image_paths=[str(images_dir / picture.file_name) for picture, _ in pictures],
        region_scores=scores, region_labels=labels, label_names=label_names,
    )


def _cache_name(file_name: str) -> str:
    """A readable, collision-free work file name for a picture path."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", file_name)[-80:]
    return f"{readable}-{hashlib.sha1(file_name.encode()).hexdigest()[:10]}.npz"


def _captions_per_image(pictures: Iterable[CaptionedImage]) -> int | None:
    """The number of captions of every picture, or None when it varies (cap2img is always written)."""
    counts = {len(picture.captions) for picture in pictures}
    return counts.pop() if len(counts) == 1 else None


def _package_versions() -> dict[str, str]:
    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
