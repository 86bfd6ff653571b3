"""ROI-align style pooling of a feature map inside boxes, in plain torch (torchvision is optional).

A box is covered by a regular grid of sample points; the map is bilinearly interpolated at each
point and the values are averaged. Coordinates follow ROI-align's ``aligned=True`` convention:
feature cell j covers input pixels [j * stride, (j + 1) * stride), so its centre is at
(j + 0.5) * stride and pixel x lies at feature coordinate x / stride - 0.5.
"""
from __future__ import annotations

import torch


def pixels_to_feature_coords(boxes: torch.Tensor, stride: float) -> torch.Tensor:
    """(K, 4) x1 y1 x2 y2 in pixels of the network input -> the same in feature-map cells."""
    return boxes / stride - 0.5


def roi_align_mean(feature_map: torch.Tensor, boxes: torch.Tensor, stride: float,
                   samples: tuple[int, int] | None = None) -> torch.Tensor:
    """Average of the bilinearly interpolated ``feature_map`` (C, H, W) over each box -> (K, C).

    ``boxes`` (K, 4) are x1 y1 x2 y2 in pixels of the network input. ``samples`` = (rows,
    columns) of the sample grid; the default, two per feature cell of the whole map, puts at
    least two samples in every cell that any box touches. Points are clamped to the map, so a
    box reaching the image border sees the border cells.

    Bilinear interpolation is separable, so the grid average factorises into a weight per row
    and per column of the map: region = sum_ij wy[i] * F[:, i, j] * wx[j]. This gives exactly
    the sampled-grid average without materialising K x samples x C values.
    """
    _, height, width = feature_map.shape
    rows, columns = samples if samples is not None else (2 * height, 2 * width)
    cells = pixels_to_feature_coords(boxes.to(feature_map.dtype), stride)  # (K, 4)
    column_weights = _axis_weights(cells[:, 0], cells[:, 2], width, columns)  # (K, W)
    row_weights = _axis_weights(cells[:, 1], cells[:, 3], height, rows)       # (K, H)
    return torch.einsum("ky,cyx,kx->kc", row_weights, feature_map, column_weights)


def _axis_weights(start: torch.Tensor, end: torch.Tensor, n_cells: int, n_samples: int) -> torch.Tensor:
    """(K,) box extents along one axis -> (K, n_cells): each cell's mean bilinear weight over
    ``n_samples`` evenly spaced points (the centres of n_samples equal bins of the box)."""
    fractions = (torch.arange(n_samples, dtype=start.dtype, device=start.device) + 0.5) / n_samples
    points = start[:, None] + (end - start)[:, None] * fractions       # (K, S)
    points = points.clamp(0, n_cells - 1)
    centres = torch.arange(n_cells, dtype=start.dtype, device=start.device)
    hat = (1 - (points[:, :, None] - centres).abs()).clamp(min=0)      # (K, S, n_cells)
    return hat.mean(dim=1)
