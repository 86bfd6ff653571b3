"""RetrievalSplit: one in-memory view of a split, whatever its source (precomp, TSV, ShapeScenes).

Region features may be a read-only memory map of a file of many gigabytes: nothing here reads
all of them at once; the checks that must see every value go through them in chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import Vocabulary

CHUNK_BYTES = 64 * 2**20


def scan_regions(regions: np.ndarray, region_mask: np.ndarray, source: str,
                 with_mean: bool) -> np.ndarray | None:
    """One chunked pass over region features: fail on NaN/inf, and return the masked mean if asked."""
    n_images, n_regions, dim = regions.shape
    rows = max(1, CHUNK_BYTES // max(1, 4 * n_regions * dim))
    means = np.empty((n_images, dim), np.float32) if with_mean else None
    for start in range(0, n_images, rows):
        chunk = np.asarray(regions[start:start + rows], dtype=np.float32)
        finite = np.isfinite(chunk).all(axis=(1, 2))
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise DataError(f"{source}: image {bad} has NaN or infinite region features")
        if with_mean:
            mask = np.asarray(region_mask[start:start + rows], dtype=np.float32)[..., None]
            means[start:start + rows] = (chunk * mask).sum(axis=1) / mask.sum(axis=1)
    return means


@dataclass(repr=False)
class RetrievalSplit:
    """N images (R region vectors each, a mask, a global vector) and M captions, each of one image.

    ``region_mask`` None means every region is real; ``global_features`` None means the masked
    mean of the regions (spec section 1); ``image_ids`` None means "0".."N-1".
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
            self.global_features = scan_regions(self.regions, self.region_mask, f"{where} regions", with_mean=True)
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
        try:
            with Image.open(path) as image:  # upright as extraction saw it, so boxes line up
                return ImageOps.exif_transpose(image).convert("RGB")
        except OSError as e:
            raise DataError(f"split {self.name!r}: cannot open the picture of image {i} at {path} ({e})") from None

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

        return replace(
            self,
            regions=np.asarray(self.regions[images]),
            region_mask=self.region_mask[images],
            global_features=np.asarray(self.global_features[images]),
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


def image_tensors(split: RetrievalSplit, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of images: regions float32 (B, R, Dr), mask bool (B, R), global float32 (B, Dg)."""
    indices = np.asarray(indices, dtype=np.int64)
    return (torch.from_numpy(np.asarray(split.regions[indices], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(split.region_mask[indices])),
            torch.from_numpy(np.asarray(split.global_features[indices], dtype=np.float32)))


def caption_tensors(vocab: Vocabulary, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of captions: ids long (B, L) padded with 0 (<pad>), lengths long (B,), each >= 1."""
    if not texts:
        raise DataError("caption_tensors needs at least one caption")
    encoded = [vocab.encode(text).ids for text in texts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise DataError(f"caption {empty[0]} of the batch has no tokens: {texts[empty[0]]!r}")
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
    tokens = torch.zeros((len(encoded), int(lengths.max())), dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens, lengths
