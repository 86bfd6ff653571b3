"""The two replaceable parts of extraction: who proposes boxes, and who turns boxes into vectors.

The defaults (SSD MobileNet v2 boxes, EfficientNet-Lite0 features) are small and offline; a user
with other weights (a torchvision detector, bottom-up-attention features) implements these two
protocols and passes the objects to :func:`mlasm.extract.extract_dataset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Proposals:
    """Candidate regions of one image."""

    boxes: np.ndarray   # (K, 4) float32, x1 y1 x2 y2 in pixels of the image
    scores: np.ndarray  # (K,) float32
    labels: np.ndarray  # (K,) int32, indices into the proposer's label_names

    def __post_init__(self) -> None:
        k = len(self.scores)
        if np.shape(self.boxes) != (k, 4) or np.shape(self.labels) != (k,):
            raise ValueError(f"proposals: boxes {np.shape(self.boxes)}, scores {np.shape(self.scores)} "
                             f"and labels {np.shape(self.labels)} must be (K, 4), (K,), (K,)")

    def take(self, indices: np.ndarray | Sequence[int]) -> "Proposals":
        indices = np.asarray(indices, dtype=np.int64)
        return Proposals(self.boxes[indices], self.scores[indices], self.labels[indices])


class RegionProposer(Protocol):
    """Finds candidate object boxes. Thresholds, NMS and the region budget are applied afterwards
    by :func:`mlasm.extract.boxes.select_regions`, identically for every proposer."""

    label_names: Sequence[str | None]  # label id -> class name (None for an unused id)

    def propose(self, image: Image.Image) -> Proposals:
        """Boxes in pixels of ``image`` (an RGB picture), any number, any order."""
        ...

    def describe(self) -> dict[str, Any]:
        """What produced the boxes (model, files, package versions, settings), for meta.json."""
        ...


class RegionFeatureExtractor(Protocol):
    """Pools one feature vector per box and one for the whole picture."""

    dim: int  # D, the size of both the region and the global vectors

    def features(self, image: Image.Image, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, 4) boxes in pixels of ``image`` -> regions (K, D) float32 and global (D,) float32."""
        ...

    def describe(self) -> dict[str, Any]:
        """What produced the features (model, weights, preprocessing), for meta.json."""
        ...
