"""ECCV Caption / CxC through the eccv-caption package (optional extra: pip install -e ".[eccv]").

The package scores ranked lists of COCO ids with its own loops; ``complete_positive_metrics``
scores the matrix with ``PositiveSets``. On the same matrix (hence the same rankings, ties
broken against the query on both sides) they must agree.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import mlasm.eccv as eccv
from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.metrics import complete_positive_metrics, retrieval_metrics


@pytest.fixture(scope="module")
def package():
    return pytest.importorskip("eccv_caption", reason='eccv-caption is not installed (pip install -e ".[eccv]")')


@pytest.fixture(scope="module")
def scores(package):
    """A (5000, 25000) float32 matrix in SCAN testall order: noise on 256 levels (ties in every row)
    plus a bonus on COCO, CxC and ECCV positives, so that the metrics are far from 0 and from 100."""
    rng = np.random.default_rng(2022)
    matrix = np.floor(rng.random((eccv.N_IMAGES, eccv.N_CAPTIONS), dtype=np.float32) * 256) / 256
    for which, bonus in (("coco", 0.25), ("cxc", 0.125), ("eccv", 0.25)):
        sets = eccv.eccv_positive_sets(which)
        for per_caption in (sets.t2i, sets.i2t.transpose()):
            captions = np.repeat(np.arange(per_caption.n_captions), per_caption.sizes())
            matrix[per_caption.indices, captions] += np.float32(bonus / 2)
    return matrix


@pytest.fixture(scope="module")
def ours_eccv(scores):
    sets = eccv.eccv_positive_sets("eccv")
    return complete_positive_metrics(scores, sets.t2i, i2t_positives=sets.i2t)


def _only_test_captions(package):
    """The package's Metrics with ECCV's i2t lists cut to the 25,000 test captions (2 phantom positives dropped)."""
    metrics = package.Metrics()
    in_test = set(metrics.coco_ids.tolist())
    metrics.eccv_gts = {"t2i": metrics.eccv_gts["t2i"],
                        "i2t": {i: [c for c in v if c in in_test] for i, v in metrics.eccv_gts["i2t"].items()}}
    return metrics


def test_package_ids_are_scan_testall_order(package):
    image_ids, caption_ids = eccv.coco_5k_test_ids()
    assert image_ids.shape == (5000,) and caption_ids.shape == (25000,)
    assert image_ids[:3].tolist() == [391895, 60623, 483108]  # 391895 is imgid 0 (split test) of dataset_coco.json
    assert caption_ids[:5].tolist() == [770337, 771687, 772707, 776154, 781998]  # its sentids there
    coco = eccv.eccv_positive_sets("coco")
    strict = PositiveSets.strict(np.repeat(np.arange(5000), 5), 5000)
    assert coco.t2i == strict and coco.i2t == strict.transpose() and coco.dropped == 0


def test_positive_sets_follow_a_given_image_order(package):
    rng = np.random.default_rng(0)
    image_ids, caption_ids = eccv.coco_5k_test_ids()
    permutation = rng.permutation(5000)
    default = eccv.eccv_positive_sets("eccv")
    permuted = eccv.eccv_positive_sets("eccv", image_ids=image_ids[permutation])
    columns = (5 * permutation[:, None] + np.arange(5)).reshape(-1)  # the permuted images' five captions
    assert permuted.t2i == default.t2i.subset(permutation, columns)
    assert permuted.dropped == default.dropped == 2
    assert (default.t2i.sizes() > 0).sum() == 1332 and (default.i2t.sizes() > 0).sum() == 1261
    with pytest.raises(DataError, match="not in the COCO 5K test"):
        eccv.eccv_positive_sets("eccv", caption_ids=np.arange(25000))
    with pytest.raises(DataError, match="repeat"):
        eccv.eccv_positive_sets("cxc", image_ids=np.concatenate([image_ids[:-1], image_ids[:1]]))


def test_complete_positive_metrics_equal_the_package(package, scores, ours_eccv, monkeypatch):
    trimmed = _only_test_captions(package)
    monkeypatch.setattr(eccv, "_metrics_object", lambda: trimmed)
    from_package = eccv.eccv_caption_metrics(scores)
    monkeypatch.undo()
    cxc = eccv.eccv_positive_sets("cxc")
    for which, ours in (("eccv", ours_eccv), ("cxc", complete_positive_metrics(scores, cxc.t2i, i2t_positives=cxc.i2t))):
        for direction in ("i2t", "t2i"):
            for name, value in from_package[which][direction].items():
                assert ours[direction][name] == pytest.approx(value, abs=1e-6), (which, direction, name)
    for direction in ("i2t", "t2i"):  # not a degenerate case
        assert 5 < ours_eccv[direction]["map_at_r"] < 95 and 5 < ours_eccv[direction]["r_precision"] < 95
    standard = retrieval_metrics(scores, np.repeat(np.arange(5000), 5))
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert from_package["coco_5k"][direction][f"r{k}"] == pytest.approx(standard[direction][f"r{k}"], abs=1e-9)


def test_shipped_eccv_lists_count_two_unretrievable_captions(package, scores, ours_eccv):
    shipped = eccv.eccv_caption_metrics(scores)["eccv"]
    for name in ("map_at_r", "r_precision", "r1"):
        assert ours_eccv["t2i"][name] == pytest.approx(shipped["t2i"][name], abs=1e-6)
    assert ours_eccv["i2t"]["r1"] == pytest.approx(shipped["i2t"]["r1"], abs=1e-6)
    # two of the 1,261 image queries have one more positive in the package's R than can be
    # retrieved: the package's mAP@R and R-Precision are lower, by at most 2/1261 of a share
    for name in ("map_at_r", "r_precision"):
        difference = ours_eccv["i2t"][name] - shipped["i2t"][name]
        assert 1e-9 < difference <= 100 * 2 / 1261, name


def test_wrong_shape_is_refused(package):
    with pytest.raises(DataError, match=r"\(5000, 25000\)"):
        eccv.eccv_caption_metrics(np.zeros((1000, 5000), np.float32))


def test_missing_package_names_the_extra(monkeypatch):
    eccv._metrics_object.cache_clear()
    monkeypatch.setitem(sys.modules, "eccv_caption", None)  # import fails as if not installed
    try:
        with pytest.raises(ImportError, match=r'pip install -e "\.\[eccv\]"'):
            eccv.coco_5k_test_ids()
        with pytest.raises(DataError):
            eccv.eccv_positive_sets("eccv")
    finally:
        eccv._metrics_object.cache_clear()


def test_evaluation_reports_eccv_only_for_the_coco_5k_test_in_its_order(scores):
    """mlasm evaluate's hook: the package's numbers on the 5K test, a note for anything else."""
    from mlasm.data.dataset import RetrievalSplit
    from mlasm.evaluate import _eccv_caption

    import torch

    def split(image_ids=None):
        return RetrievalSplit(name="testall", regions=np.ones((eccv.N_IMAGES, 1, 2), np.float32), region_mask=None,
                              global_features=None, captions=["a caption"] * eccv.N_CAPTIONS,
                              caption_to_image=np.repeat(np.arange(eccv.N_IMAGES), 5), image_ids=image_ids)

    reported = _eccv_caption(torch.from_numpy(scores), split())
    assert reported == eccv.eccv_caption_metrics(scores)
    # rows named by their COCO ids, in another order: matched by id (captions follow their rows)
    shuffled = np.random.default_rng(0).permutation(eccv.N_IMAGES)
    image_ids, _ = eccv.coco_5k_test_ids()
    order = np.repeat(shuffled * 5, 5) + np.tile(np.arange(5), eccv.N_IMAGES)   # the captions of those rows
    by_id = _eccv_caption(torch.from_numpy(scores[shuffled][:, order]),
                          split([str(i) for i in image_ids[shuffled]]))
    assert by_id == reported
    # captions that do not belong to the rows the package thinks: its COCO recalls differ from ours
    mismatched = split()
    mismatched.caption_to_image = mismatched.caption_to_image[::-1].copy()
    assert "not in the COCO 5K test order" in _eccv_caption(torch.from_numpy(scores), mismatched)["skipped"]
    names = _eccv_caption(torch.from_numpy(scores), split([f"img{i}" for i in range(eccv.N_IMAGES)]))
    assert "not COCO ids" in names["skipped"]
