"""RetrievalSplit: one in-memory view of a split, whatever its source (precomp, TSV, ShapeScenes).

Region features may be a read-only memory map of a file of many gigabytes (COCO's training
split: 33 GB). Opening one reads none of them: features already in memory are checked when the
split is made, memory-mapped ones when a batch is read (``image_tensors``: a NaN names the file
and the image) or all at once by ``check_features`` (``mlasm check``), in chunks. Without a global
vector, each image's is the masked mean of its regions, computed for the rows read (``RegionMeans``).
"""
from __future__ import annotations

import hashlib
import mmap
import os
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mlasm.data.errors import DataError
from mlasm.data.pictures import open_picture, picture_inside
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import Vocabulary, tokenize

CHUNK_BYTES = 64 * 2**20
# Words a caption keeps (<start> and <end> aside): every caption is padded to the longest of its batch,
# and the scorer holds (captions x longest x embedding) at once, so one 10,000-word caption among 500
# would ask for hundreds of GB. COCO's and Flickr30K's longest captions have under 100 words.
MAX_CAPTION_WORDS = 100


class CaptionsCutWarning(UserWarning):
    """Some captions were longer than MAX_CAPTION_WORDS words and were cut to it."""


def _chunk_rows(array_shape: tuple) -> int:
    """Images per chunk of about CHUNK_BYTES of float32."""
    return max(1, CHUNK_BYTES // max(1, 4 * int(np.prod(array_shape[1:]))))


def scan_features(features: np.ndarray, source: str, what: str, region_mask: np.ndarray | None = None,
                  progress: bool = False) -> np.ndarray | None:
    """One chunked pass over (N, ...) features: fail on NaN/inf; with ``region_mask`` (the features are
    regions), return each image's masked mean."""
    n_images = features.shape[0]
    rows = _chunk_rows(features.shape)
    means = None if region_mask is None else np.empty((n_images, features.shape[2]), np.float32)
    for start in tqdm(range(0, n_images, rows), desc=f"reading {source}", unit="chunk", disable=not progress):
        chunk = checked_rows(features, np.arange(start, min(start + rows, n_images)), source, what)
        if means is not None:
            means[start:start + rows] = _masked_mean(chunk, region_mask[start:start + rows])
    return means


def _check_not_cut_short(array, source: str) -> None:
    """A memory map whose file was cut short since it was opened kills the process (SIGBUS) when a page
    beyond the new end is read: look at the file's size before each chunk and stop with one line."""
    if not isinstance(array, np.memmap) or not getattr(array, "filename", None):
        return
    try:
        size = os.stat(array.filename).st_size
    except OSError as e:
        raise DataError(f"{source}: can no longer be read ({e.strerror}) while being read") from None
    needed = int(array.offset) + int(array.nbytes)
    if size < needed:
        raise DataError(f"{source}: the file is now {size:,} bytes, {needed:,} when it was opened: it was cut short "
                        f"while being read (another program changed it); nothing more is read")


def checked_rows(array, indices: np.ndarray, source: str, what: str) -> np.ndarray:
    """Rows ``indices`` of ``array`` as float32, read from disk if it is a memory map; a row holding NaN
    or infinity is a DataError naming ``source`` (the file) and the image."""
    _check_not_cut_short(array, source)
    rows = np.asarray(array[indices], dtype=np.float32)
    finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
    if not finite.all():
        bad = int(np.asarray(indices).reshape(-1)[int(np.flatnonzero(~finite)[0])])
        raise DataError(f"{source}: image {bad} has NaN or infinite {what}")
    return rows


def _masked_mean(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, R, D) regions, (B, R) mask -> (B, D) the mean of each image's real regions."""
    weights = np.asarray(mask, dtype=np.float32)[..., None]
    return (regions * weights).sum(axis=1) / weights.sum(axis=1)


class RegionMeans:
    """The global vector of images that have none: the masked mean of their regions (spec section 1).

    Array-like, (N, Dr) float32, computed for the rows asked for, so that a memory-mapped split
    of any size opens without reading its features; ``np.asarray`` computes every row, in chunks.
    """

    def __init__(self, regions: np.ndarray, region_mask: np.ndarray, source: str):
        self.regions, self.region_mask, self.source = regions, region_mask, source
        self.shape = (int(regions.shape[0]), int(regions.shape[2]))
        self.ndim, self.dtype = 2, np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        indices = np.arange(self.shape[0])[key]
        rows = checked_rows(self.regions, np.atleast_1d(indices), self.source, "region features")
        means = _masked_mean(rows, self.region_mask[np.atleast_1d(indices)])
        return means[0] if np.ndim(indices) == 0 else means

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        means = scan_features(self.regions, self.source, "region features", self.region_mask)
        return means if dtype is None else means.astype(dtype)

    def __repr__(self) -> str:
        return f"RegionMeans(shape={self.shape}, of {self.source})"


def _is_index(value: Any) -> bool:
    """A whole number; True and False are ints to Python, but as indices they are a mistake."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_boxes(boxes: np.ndarray, where: str) -> None:
    """Boxes x1 y1 x2 y2 must be finite: a NaN box would silently never be pointed at, nor drawn."""
    boxes = np.asarray(boxes)
    finite = np.isfinite(boxes).all(axis=2)
    if not finite.all():
        image, region = (int(i) for i in np.argwhere(~finite)[0])
        coordinates = ", ".join(f"{value:g}" for value in boxes[image, region])
        raise DataError(f"{where}: image {image}, region {region} has NaN or infinite box coordinates "
                        f"[{coordinates}]; expected pixels x1 y1 x2 y2")


def check_grounding(grounding: Any, captions: Sequence[str], region_mask: np.ndarray,
                    caption_to_image: np.ndarray, where: str) -> None:
    """Per caption a list of [token position, [region indices]]: positions among its tokens, indices of
    real regions of its own image (a word cannot name padding)."""
    if not isinstance(grounding, list) or len(grounding) != len(captions):
        got = f"{len(grounding)} entries" if isinstance(grounding, list) else type(grounding).__name__
        raise DataError(f"{where}: expected a list with one entry per caption ({len(captions)}), got {got}")
    n_regions = region_mask.shape[1]
    for k, entry in enumerate(grounding):
        if not entry:
            continue
        n_tokens = len(tokenize(captions[k]))
        pairs_ok = isinstance(entry, list) and all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], list) for pair in entry)
        values = [] if not pairs_ok else [value for pair in entry for value in (pair[0], *pair[1])]
        if any(isinstance(value, (bool, np.bool_)) for value in values):
            raise DataError(f"{where}: entry {k} (caption {captions[k]!r}) uses true or false as an index; "
                            f"token positions and region indices must be whole numbers")
        if not pairs_ok or not all(
                _is_index(pair[0]) and 0 <= pair[0] < n_tokens
                and all(_is_index(i) and 0 <= i < n_regions for i in pair[1]) for pair in entry):
            raise DataError(f"{where}: entry {k} (caption {captions[k]!r}) must be a list of "
                            f"[token position < {n_tokens}, [region indices < {n_regions}]]")
        image = int(caption_to_image[k])
        padding = [i for pair in entry for i in pair[1] if not region_mask[image, i]]
        if padding:
            raise DataError(f"{where}: entry {k} (caption {captions[k]!r}) points at region {padding[0]} of "
                            f"image {image}, which is padding (its mask is False); a word can only name a "
                            f"real region")


@dataclass(repr=False)
class RetrievalSplit:
    """N images (R region vectors each, a mask, a global vector) and M captions, each of one image.

    ``region_mask`` None means every region is real; ``global_features`` None means the masked
    mean of the regions (spec section 1); ``image_ids`` None means "0".."N-1". Region features
    in memory are checked here; memory-mapped ones (a ``np.memmap``) when read (module docstring).
    """

    name: str
    regions: np.ndarray                      # (N, R, Dr) float, possibly a memory map
    region_mask: np.ndarray | None           # (N, R) bool, True = a real region
    global_features: np.ndarray | None       # (N, Dg) float
    captions: list[str]                      # M
    caption_to_image: np.ndarray             # (M,) int64
    boxes: np.ndarray | None = None          # (N, R, 4) x1 y1 x2 y2 in pixels
    image_sizes: np.ndarray | None = None    # (N, 2) width, height
    image_ids: list[str] | None = None       # N
    image_paths: list[str | None] | None = None
    grounding: list | None = None            # per caption: [[token position, [region indices]], ...]
    image_attributes: list[dict] | None = None
    renderer: Callable[[int], Image.Image] | None = None
    region_scores: np.ndarray | None = None  # (N, R) detector scores
    region_labels: np.ndarray | None = None  # (N, R) int label ids into label_names
    label_names: list[str] | None = None
    positives: PositiveSets | None = None    # per caption, every image it is true of (complete positives)
    regions_file: str | None = None          # the files memory-mapped features are read from, named in errors
    global_file: str | None = None
    # pictures are read only inside these folders (read_split: the dataset folder and the picture folder its
    # meta.json records); None: no rule (a split made in memory, or meta.json's pictures_outside_allowed)
    picture_folders: list[str] | None = None
    image_paths_file: str | None = None      # where image_paths came from, named in errors

    def __post_init__(self) -> None:
        where = f"split {self.name!r}"
        if getattr(self.regions, "ndim", None) != 3:
            raise DataError(f"{where}: regions must be (N, R, D), got shape {getattr(self.regions, 'shape', None)}")
        n, r, _ = self.regions.shape
        if n == 0 or r == 0:
            raise DataError(f"{where}: regions of shape {self.regions.shape} hold no image or no region")
        if self.region_mask is None:
            self.region_mask = np.ones((n, r), bool)
        self.region_mask = np.asarray(self.region_mask, dtype=bool)
        self._check_shape("region_mask", self.region_mask, (n, r))
        empty = np.flatnonzero(~self.region_mask.any(axis=1))
        if empty.size:
            raise DataError(f"{where}: image {int(empty[0])} has no real region (region_mask all False)")
        if self.global_features is None:
            source = self.regions_file or f"{where} regions"
            self.global_features = (RegionMeans(self.regions, self.region_mask, source)
                                    if isinstance(self.regions, np.memmap) else
                                    scan_features(self.regions, source, "region features", self.region_mask))
        if getattr(self.global_features, "ndim", None) != 2 or self.global_features.shape[0] != n:
            raise DataError(f"{where}: global_features must be (N={n}, Dg), "
                            f"got {getattr(self.global_features, 'shape', None)}")
        self.captions = list(self.captions)
        m = len(self.captions)
        empty = [k for k, caption in enumerate(self.captions) if not caption.strip()]
        if empty:
            raise DataError(f"{where}: caption {empty[0]} is empty")
        self.caption_to_image = np.asarray(self.caption_to_image)
        self._check_shape("caption_to_image", self.caption_to_image, (m,))
        if m and not np.issubdtype(self.caption_to_image.dtype, np.integer):
            raise DataError(f"{where}: caption_to_image must hold integers, got {self.caption_to_image.dtype}")
        self.caption_to_image = self.caption_to_image.astype(np.int64)
        if m and (self.caption_to_image.min() < 0 or self.caption_to_image.max() >= n):
            raise DataError(f"{where}: caption_to_image must lie in [0, {n}), "
                            f"got [{self.caption_to_image.min()}, {self.caption_to_image.max()}]")
        if self.image_ids is None:
            self.image_ids = [str(i) for i in range(n)]
        self._check_optional(n, r, m)
        if self.positives is not None:
            if self.positives.n_images != n:
                raise DataError(f"{where}: positives are over {self.positives.n_images} images, the split has {n}")
            self.positives.check_own_images(self.caption_to_image, f"{where} positives")

    def _check_shape(self, field: str, value: Any, expected: tuple) -> None:
        if tuple(np.shape(value)) != expected:
            raise DataError(f"split {self.name!r}: {field} must have shape {expected}, got {tuple(np.shape(value))}")

    def _check_optional(self, n: int, r: int, m: int) -> None:
        for field, expected in (("boxes", (n, r, 4)), ("image_sizes", (n, 2)),
                                ("region_scores", (n, r)), ("region_labels", (n, r))):
            if getattr(self, field) is not None:
                self._check_shape(field, getattr(self, field), expected)
        for field, expected in (("image_ids", n), ("image_paths", n), ("image_attributes", n), ("grounding", m)):
            value = getattr(self, field)
            if value is not None and len(value) != expected:
                raise DataError(f"split {self.name!r}: {field} must have {expected} entries, got {len(value)}")
        if self.boxes is not None:
            check_boxes(self.boxes, f"split {self.name!r} boxes")
        if self.grounding is not None:
            check_grounding(self.grounding, self.captions, self.region_mask, self.caption_to_image,
                            f"split {self.name!r} grounding")

    def __repr__(self) -> str:
        extras = [f for f in ("boxes", "image_sizes", "image_paths", "grounding", "image_attributes", "renderer",
                              "region_scores", "region_labels", "positives") if getattr(self, f) is not None]
        return (f"RetrievalSplit(name={self.name!r}, images={self.n_images}, captions={self.n_captions}, "
                f"regions={self.max_regions}x{self.region_dim}, global={self.global_dim}, extras={extras})")

    @property
    def n_images(self) -> int:
        return int(self.regions.shape[0])

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def max_regions(self) -> int:
        return int(self.regions.shape[1])

    @property
    def region_dim(self) -> int:
        return int(self.regions.shape[2])

    @property
    def global_dim(self) -> int:
        return int(self.global_features.shape[1])

    def image_to_captions(self, i: int) -> np.ndarray:
        """Indices of the captions of image ``i``."""
        return np.flatnonzero(self.caption_to_image == i)

    def get_image(self, i: int) -> Image.Image | None:
        """The picture of image ``i`` for display: rendered, read from its file, or None when there is none."""
        if self.renderer is not None:
            return self.renderer(i)
        path = self.image_paths[i] if self.image_paths is not None else None
        if not path:
            return None
        if self.picture_folders is not None:
            where = f"{self.image_paths_file}: line {i + 1}" if self.image_paths_file else \
                f"split {self.name!r}, image {i}"
            path = picture_inside(self.picture_folders, path, where, " or ".join(self.picture_folders), hint=(
                "the workbench reads pictures only inside the dataset folder and the picture folder its meta.json "
                "records (mlasm prepare / extract --allow-images-outside records pictures kept elsewhere)"))
        try:  # upright as extraction saw it, so boxes line up; a picture too large is refused unread
            return open_picture(path)
        except OSError as e:
            raise DataError(f"split {self.name!r}: cannot open the picture of image {i} at {path} ({e})") from None

    def identity(self) -> dict:
        """Name, sizes and a digest of the captions: enough to notice other data under the same name
        (a resumed training run, saved score matrices)."""
        digest = hashlib.sha256("\n".join(self.captions).encode("utf-8")).hexdigest()[:16]
        return {"split": self.name, "n_images": self.n_images, "n_captions": self.n_captions, "captions": digest}

    def subset(self, image_indices: Sequence[int]) -> "RetrievalSplit":
        """The split restricted to these images (in this order) and their captions, indices remapped."""
        images = np.asarray(image_indices, dtype=np.int64)
        if images.ndim != 1 or images.size == 0 or images.min() < 0 or images.max() >= self.n_images:
            raise DataError(f"split {self.name!r}: subset needs image indices in [0, {self.n_images})")
        if np.unique(images).size != images.size:
            raise DataError(f"split {self.name!r}: subset image indices must be distinct")
        new_index = np.full(self.n_images, -1, np.int64)
        new_index[images] = np.arange(images.size)
        kept = np.flatnonzero(new_index[self.caption_to_image] >= 0)
        captions = kept[np.argsort(new_index[self.caption_to_image[kept]], kind="stable")]

        def pick(values):
            if values is None:
                return None
            return values[images] if isinstance(values, np.ndarray) else [values[i] for i in images]

        regions, mask, global_features = _read_images(self, images)
        return replace(
            self,
            regions=regions,
            region_mask=mask,
            global_features=global_features,
            regions_file=None,  # in memory now, and numbered anew
            global_file=None, image_paths_file=None,
            captions=[self.captions[c] for c in captions],
            caption_to_image=new_index[self.caption_to_image[captions]],
            boxes=pick(self.boxes), image_sizes=pick(self.image_sizes), image_ids=pick(self.image_ids),
            image_paths=pick(self.image_paths), image_attributes=pick(self.image_attributes),
            region_scores=pick(self.region_scores), region_labels=pick(self.region_labels),
            grounding=None if self.grounding is None else [self.grounding[c] for c in captions],
            renderer=None if self.renderer is None else _SubsetRenderer(self.renderer, images.tolist()),
            positives=None if self.positives is None else self.positives.subset(images, captions),
        )

    def positive_sets(self) -> PositiveSets:
        """The complete positives where the split knows them, else the standard one image per caption."""
        return self.positives if self.positives is not None else PositiveSets.strict(self.caption_to_image,
                                                                                     self.n_images)


@dataclass(frozen=True)
class _SubsetRenderer:
    """Renders image j of a subset as image ``images[j]`` of its parent (a class, so that it pickles)."""

    parent: Callable[[int], Image.Image]
    images: list[int]

    def __call__(self, j: int) -> Image.Image:
        return self.parent(self.images[j])


def _read_images(split: RetrievalSplit, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regions (B, R, Dr), mask (B, R) and global vectors (B, Dg) of some images, read and checked."""
    regions = checked_rows(split.regions, indices, split.regions_file or f"split {split.name!r} regions",
                           "region features")
    mask = np.ascontiguousarray(split.region_mask[indices])
    if isinstance(split.global_features, RegionMeans):  # from the rows just read, not read again
        global_features = _masked_mean(regions, mask)
    else:
        global_features = checked_rows(split.global_features, indices,
                                       split.global_file or f"split {split.name!r} global features", "global features")
    return regions, mask, global_features


def release_read_features(split: RetrievalSplit) -> None:
    """Give back the pages of memory-mapped region features that this process has read (the rows read
    are copies): the kernel keeps them cached, a later read maps them again. Without this, every feature
    an evaluation has encoded stays in its resident memory beside the scoring (64 MB for 10 images of
    10,000 regions)."""
    mapped = getattr(split.regions, "_mmap", None)  # np.memmap's own mapping (None for arrays in memory)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def image_tensors(split: RetrievalSplit, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of images: regions float32 (B, R, Dr), mask bool (B, R), global float32 (B, Dg).

    Only these rows are read (from the memory map, where the split is one); a NaN or infinite
    value among them is a DataError naming the file and the image.
    """
    regions, mask, global_features = _read_images(split, np.asarray(indices, dtype=np.int64))
    return torch.from_numpy(regions), torch.from_numpy(mask), torch.from_numpy(global_features)


def check_features(split: RetrievalSplit, progress: bool = False) -> None:
    """Read every feature of ``split`` once, in chunks, and fail on the first NaN or infinite value
    (what ``mlasm check`` does; training and evaluation check only the batches they read)."""
    scan_features(split.regions, split.regions_file or f"split {split.name!r} regions", "region features",
                  progress=progress)
    if not isinstance(split.global_features, RegionMeans):
        scan_features(split.global_features, split.global_file or f"split {split.name!r} global features",
                      "global features", progress=progress)


@dataclass(frozen=True)
class EncodedCaptions:
    """Captions as word ids, tokenised once: ``ids`` of every caption one after another, caption c
    at ``ids[offsets[c]:offsets[c + 1]]``. NLTK's tokenizer takes a fraction of a millisecond a
    caption, so a trainer encodes its captions once rather than every epoch."""

    ids: np.ndarray      # int32, all captions' ids
    offsets: np.ndarray  # (M + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids long (B, L) padded with 0 (<pad>), lengths long (B,)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, stops = self.offsets[indices], self.offsets[indices + 1]
        lengths = stops - starts
        tokens = np.zeros((len(indices), int(lengths.max())), np.int64)
        for row, (start, stop) in enumerate(zip(starts, stops)):
            tokens[row, : stop - start] = self.ids[start:stop]
        return torch.from_numpy(tokens), torch.from_numpy(lengths)


def cut_caption(items: list, boundaries: bool, max_words: int = MAX_CAPTION_WORDS) -> list:
    """A caption's ids or tokens as the model reads them: its first ``max_words`` words, <start> and
    <end> kept in their places when the vocabulary adds them."""
    first = 1 if boundaries else 0
    if len(items) - 2 * first <= max_words:
        return items
    return items[:first + max_words] + items[len(items) - first:]


def encode_captions(vocab: Vocabulary, texts: Sequence[str], progress: bool = False,
                    where: str = "", max_words: int = MAX_CAPTION_WORDS) -> EncodedCaptions:
    """Every caption as ids (with <start> and <end> where the vocabulary adds them); a caption
    without a word is a DataError naming it (``where`` follows its number in the message). A
    caption of more than ``max_words`` words keeps its first ``max_words``, and one
    CaptionsCutWarning says how many were cut."""
    if not len(texts):
        raise DataError("no caption to encode")
    ids, lengths = [], np.empty(len(texts), np.int64)
    cut, longest = 0, (0, 0)  # captions cut; (words, caption) of the longest
    for c, text in enumerate(tqdm(texts, desc="tokenising captions", unit="caption", disable=not progress,
                                  mininterval=1.0)):
        encoded = vocab.encode(text)
        if not encoded.words:
            raise DataError(f"caption {c} {where}has no tokens: {text!r}")
        caption_ids = encoded.ids
        if len(encoded.words) > max_words:
            cut, longest = cut + 1, max(longest, (len(encoded.words), c))
            caption_ids = cut_caption(caption_ids, vocab.boundaries, max_words)
        ids.extend(caption_ids)
        lengths[c] = len(caption_ids)
    if cut:
        warnings.warn(f"{cut} of {len(texts)} captions {where}have more than {max_words} words and were cut to "
                      f"their first {max_words} (the longest: caption {longest[1]}, {longest[0]} words)",
                      CaptionsCutWarning, stacklevel=2)
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return EncodedCaptions(np.asarray(ids, dtype=np.int32), offsets)


def caption_tensors(vocab: Vocabulary, texts: Sequence[str], where: str = "of the batch "
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of captions: ids long (B, L) padded with 0 (<pad>), lengths long (B,), each >= 1.

    <start> and <end> are added where the vocabulary says (``Vocabulary.with_boundaries``, from
    the config's ``start_end_tokens``), so training, evaluation and the widgets read a caption alike.
    """
    if not texts:
        raise DataError("caption_tensors needs at least one caption")
    return encode_captions(vocab, texts, where=where).batch(np.arange(len(texts)))
