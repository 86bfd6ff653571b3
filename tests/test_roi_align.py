"""ROI-align mean pooling (mlasm.extract.roi): hand-checkable cases and a naive reference."""
from __future__ import annotations

import pytest
import torch

from mlasm.extract.roi import pixels_to_feature_coords, roi_align_mean

STRIDE = 32


def naive_roi_mean(feature_map: torch.Tensor, box: torch.Tensor, stride: float, rows: int, columns: int):
    """The definition, point by point: bilinear value at each grid point, averaged."""
    _, height, width = feature_map.shape
    x1, y1, x2, y2 = pixels_to_feature_coords(box, stride).tolist()
    total = torch.zeros(feature_map.shape[0], dtype=torch.float64)
    for r in range(rows):
        for c in range(columns):
            y = min(max(y1 + (y2 - y1) * (r + 0.5) / rows, 0), height - 1)
            x = min(max(x1 + (x2 - x1) * (c + 0.5) / columns, 0), width - 1)
            top, left = int(y), int(x)
            bottom, right = min(top + 1, height - 1), min(left + 1, width - 1)
            dy, dx = y - top, x - left
            value = ((1 - dy) * (1 - dx) * feature_map[:, top, left] + (1 - dy) * dx * feature_map[:, top, right]
                     + dy * (1 - dx) * feature_map[:, bottom, left] + dy * dx * feature_map[:, bottom, right])
            total += value.double()
    return total / (rows * columns)


def test_pixel_boxes_map_to_feature_cells_by_the_stride():
    # cell (row 2, column 3) covers pixels x 96..128, y 64..96: centre at cell coordinate (3, 2)
    box = torch.tensor([[96.0, 64.0, 128.0, 96.0]])
    assert pixels_to_feature_coords(box, STRIDE).tolist() == [[2.5, 1.5, 3.5, 2.5]]


def test_a_constant_map_pools_to_that_constant_anywhere():
    feature_map = torch.full((3, 7, 9), 2.5)
    boxes = torch.tensor([[0, 0, 288, 224], [10, 20, 30, 40], [250, 200, 288, 224], [5, 5, 6, 6]], dtype=torch.float32)
    assert torch.allclose(roi_align_mean(feature_map, boxes, STRIDE), torch.full((4, 3), 2.5))


def test_a_linear_ramp_pools_to_its_value_at_the_box_centre():
    height, width = 7, 9
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    columns = torch.arange(width, dtype=torch.float32)[None, :]
    feature_map = (3.0 * columns - 2.0 * rows + 1.0)[None]  # (1, H, W), value at cell (y, x)
    boxes = torch.tensor([[40, 50, 200, 150], [100, 33, 101, 190], [64, 64, 96, 96]], dtype=torch.float32)
    centre = pixels_to_feature_coords(boxes, STRIDE)
    centre_x, centre_y = (centre[:, 0] + centre[:, 2]) / 2, (centre[:, 1] + centre[:, 3]) / 2
    expected = 3.0 * centre_x - 2.0 * centre_y + 1.0
    assert torch.allclose(roi_align_mean(feature_map, boxes, STRIDE)[:, 0], expected, atol=1e-5)


def test_a_box_covering_one_cell():
    feature_map = torch.zeros(2, 7, 9)
    feature_map[0, 3, 4] = 1.0  # a single hot cell, row 3, column 4
    feature_map[1] = torch.randn(7, 9)
    cell = torch.tensor([[4 * STRIDE, 3 * STRIDE, 5 * STRIDE, 4 * STRIDE]], dtype=torch.float32)
    # one sample sits on the cell centre: exactly the cell's vector
    assert torch.allclose(roi_align_mean(feature_map, cell, STRIDE, samples=(1, 1))[0], feature_map[:, 3, 4])
    # an even grid spans offsets -0.5..0.5 around the centre; the hot cell's bilinear weight
    # averages 1 - mean|t| = 0.75 along each axis, so 0.75 ** 2 in all
    pooled = roi_align_mean(feature_map, cell, STRIDE)
    assert pooled[0, 0].item() == pytest.approx(0.5625, abs=1e-6)


def test_the_separable_sum_equals_pointwise_bilinear_sampling():
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.randn(4, 5, 8, generator=generator)
    boxes = torch.tensor([[0, 0, 256, 160], [13, 7, 90, 150], [200, 100, 256, 160], [31, 31, 33, 33]],
                         dtype=torch.float32)
    for samples in [(3, 5), (10, 16)]:
        pooled = roi_align_mean(feature_map, boxes, STRIDE, samples=samples)
        for k, box in enumerate(boxes):
            reference = naive_roi_mean(feature_map, box, STRIDE, *samples)
            assert torch.allclose(pooled[k].double(), reference, atol=1e-5)


def test_the_whole_image_box_pools_to_the_map_mean():
    feature_map = torch.randn(6, 7, 9)
    whole = torch.tensor([[0, 0, 9 * STRIDE, 7 * STRIDE]], dtype=torch.float32)
    assert torch.allclose(roi_align_mean(feature_map, whole, STRIDE)[0], feature_map.mean(dim=(1, 2)), atol=1e-5)
