"""From a detector's raw boxes to an image's regions: clip, threshold, NMS, budget, whole image.

The same policy applies to every proposer, so that swapping the detector changes the boxes
and nothing else.
"""
from __future__ import annotations

import numpy as np

from mlasm.extract.interfaces import Proposals

MIN_BOX_SIDE = 1.0  # pixels; thinner boxes left after clipping carry no picture
WHOLE_IMAGE_SCORE = 1.0


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(K, 4) x1 y1 x2 y2 -> the same, inside [0, width] x [0, height]."""
    limits = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(boxes, 0, limits).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, 4) and (M, 4) boxes -> (K, M) intersection over union."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return intersection / np.maximum(area_a[:, None] + area_b[None, :] - intersection, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression -> indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes[order], boxes[order])  # (K, K), K <= a detector's ~100 boxes
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for position in range(len(order)):
        if suppressed[position]:
            continue
        kept.append(order[position])
        suppressed |= overlaps[position] > iou_threshold
    return np.asarray(kept, dtype=np.int64)


def select_regions(proposals: Proposals, width: int, height: int, max_regions: int,
                   whole_image_label: int, score_threshold: float = 0.2, nms_iou: float = 0.5,
                   min_detections: int = 10) -> Proposals:
    """The regions of one image: the whole picture first, then up to ``max_regions - 1`` boxes.

    Boxes are clipped to the image and ones thinner than a pixel dropped; class-agnostic NMS at
    ``nms_iou`` removes one object seen as several classes; then boxes scoring at least
    ``score_threshold`` are kept, topped up with the next best ones to ``min_detections`` when
    fewer pass (bottom-up attention's 10-100 boxes at 0.2 policy). The whole-image box (score
    1.0, label ``whole_image_label``) is always region 0, so no image is ever empty.
    """
    if max_regions < 1:
        raise ValueError(f"max_regions must be at least 1, got {max_regions}")
    clipped = Proposals(clip_boxes(np.asarray(proposals.boxes, dtype=np.float32), width, height),
                        np.asarray(proposals.scores, dtype=np.float32),
                        np.asarray(proposals.labels, dtype=np.int32))
    sides = clipped.boxes[:, 2:] - clipped.boxes[:, :2]
    candidates = clipped.take(np.flatnonzero((sides >= MIN_BOX_SIDE).all(axis=1)))
    ranked = candidates.take(nms(candidates.boxes, candidates.scores, nms_iou))
    n_confident = int((ranked.scores >= score_threshold).sum())  # ranked is best first
    n_detections = min(max(n_confident, min_detections), len(ranked.scores), max_regions - 1)
    detections = ranked.take(np.arange(n_detections))
    return Proposals(
        np.concatenate([np.array([[0, 0, width, height]], np.float32), detections.boxes]),
        np.concatenate([np.array([WHOLE_IMAGE_SCORE], np.float32), detections.scores]),
        np.concatenate([np.array([whole_image_label], np.int32), detections.labels]),
    )
