"""Complete positive sets: the CSR container, its file format, and splits that carry them."""
from __future__ import annotations

import numpy as np
import pytest

from mlasm.data import DataError, RetrievalSplit, read_split, write_split
from mlasm.data.positives import PositiveSets, read_positives, write_positives

ROWS = [[0, 2], [0], [1], [1, 2], [2], [2, 0]]  # 6 captions over 3 images; caption c belongs to image c // 2
OWN = np.array([0, 0, 1, 1, 2, 2])


def test_rows_dense_transpose_and_batch_masks_agree():
    positives = PositiveSets.from_lists(ROWS, 3)
    assert positives.images_of(5).tolist() == [0, 2]            # sorted
    assert positives.sizes().tolist() == [2, 1, 1, 2, 1, 2]
    dense = positives.dense()
    assert dense.shape == (3, 6) and dense.sum() == 9
    assert positives.captions_of(0).tolist() == [0, 1, 5]
    assert positives.captions_of(2).tolist() == [0, 3, 4, 5]
    assert PositiveSets.from_dense(dense) == positives
    images, captions = np.array([2, 0, 0]), np.array([5, 1, 3])
    np.testing.assert_array_equal(positives.mask(images, captions), dense[np.ix_(images, captions)])
    strict = PositiveSets.strict(OWN, 3)
    assert strict.dense().tolist() == (OWN[None, :] == np.arange(3)[:, None]).tolist()


def test_subset_renumbers_images_and_drops_the_others():
    positives = PositiveSets.from_lists(ROWS, 3)
    sub = positives.subset(np.array([2, 0]), np.array([4, 5, 0]))
    assert sub.n_images == 2
    assert [sub.images_of(c).tolist() for c in range(3)] == [[0], [0, 1], [0, 1]]


def test_file_round_trip(tmp_path):
    positives = PositiveSets.from_lists(ROWS, 3)
    path = tmp_path / "test_positives.txt"
    write_positives(path, positives)
    assert path.read_text().splitlines() == ["0 2", "0", "1", "1 2", "2", "0 2"]
    assert read_positives(path, 3, OWN) == positives


@pytest.mark.parametrize("text, message", [
    ("0 2\n0\n1\n1 x\n2\n0\n", r"line 4 must hold image indices"),
    ("0 2\n0\n1\n1 7\n2\n0\n", r"line 4: image index 7 is outside \[0, 3\)"),
    ("0 2\n0\n1\n\n2\n0\n", r"line 4 is empty"),
    ("0 2\n1\n1\n1\n2\n0\n", r"line 2 \(caption 1\) does not list its own image 0"),
    ("0 2\n0\n1\n", r"3 lines for 6 captions"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "test_positives.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_positives(path, 3, OWN)
    assert str(path) in str(error.value)


def _split(positives=None):
    return RetrievalSplit(name="test", regions=np.random.default_rng(0).random((3, 2, 4), dtype=np.float32),
                          region_mask=None, global_features=None, captions=[f"caption {c}" for c in range(6)],
                          caption_to_image=OWN, positives=positives)


def test_a_precomp_folder_carries_its_positives(tmp_path):
    positives = PositiveSets.from_lists(ROWS, 3)
    write_split(tmp_path, "test", _split(positives))
    back = read_split(tmp_path, "test")
    assert back.positives == positives
    assert back.subset([2, 1]).positives.images_of(0).tolist() == [0]   # caption 4 -> image 2 only
    write_split(tmp_path, "test", _split())                              # rewritten without: the file goes
    assert read_split(tmp_path, "test").positives is None
    assert read_split(tmp_path, "test").positive_sets() == PositiveSets.strict(OWN, 3)


def test_a_split_refuses_positives_that_miss_a_caption_s_own_image():
    rows = [list(r) for r in ROWS]
    rows[2] = [0]
    with pytest.raises(DataError, match=r"line 3 \(caption 2\) does not list its own image 1"):
        _split(PositiveSets.from_lists(rows, 3))


def test_chance_under_complete_positives_by_hand():
    from mlasm.evaluate import chance_metrics

    positives = PositiveSets.from_lists(ROWS, 3)  # captions true of 2, 1, 1, 2, 1, 2 of the 3 images
    chance = chance_metrics(3, OWN, positives)
    # t2i R@1: a random image is true of the caption with probability R / 3
    assert chance["complete"]["t2i"]["r1"] == pytest.approx(100 * (2 + 1 + 1 + 2 + 1 + 2) / 18)
    assert chance["complete"]["t2i"]["r_precision"] == pytest.approx(100 * 9 / 18)
    assert chance["complete"]["t2i"]["r5"] == pytest.approx(100.0)  # 5 >= 3 images: always found
    # i2t R@1: images 0, 1, 2 have 3, 2, 4 true captions among 6
    assert chance["complete"]["i2t"]["r1"] == pytest.approx(100 * (3 / 6 + 2 / 6 + 4 / 6) / 3)
    # i2t R@5: only 4 of image 1's 6 captions are false, so 5 random ones always hold a true one
    assert chance["complete"]["i2t"]["r5"] == pytest.approx(100.0)
    assert chance["t2i"]["r1"] == pytest.approx(100 / 3) and "complete" not in chance_metrics(3, OWN)


def test_rows_must_be_sorted_and_distinct():
    with pytest.raises(DataError, match="ascending"):
        PositiveSets(np.array([0, 2]), np.array([2, 0]), 3)
    with pytest.raises(DataError, match="ascending"):
        PositiveSets(np.array([0, 2]), np.array([1, 1]), 3)
    ok = PositiveSets(np.array([0, 1, 3]), np.array([2, 0, 1]), 3)  # rows may start lower than the last ended
    assert ok.contains([0, 1, 1, 0], [2, 0, 2, 0]).tolist() == [True, True, False, False]


def test_score_separation_against_a_dense_mask():
    from mlasm.evaluate import score_separation

    positives = PositiveSets.from_lists(ROWS, 3)
    scores = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32)
    truth = positives.dense()
    result = score_separation(scores, positives)
    assert result["positive"] == pytest.approx(scores[truth].mean(), abs=1e-6)
    assert result["negative"] == pytest.approx(scores[~truth].mean(), abs=1e-6)
    assert result["gap"] == pytest.approx(scores[truth].mean() - scores[~truth].mean(), abs=1e-6)
