"""RetrievalSplit, the precomp folder, bottom-up TSV and caption JSON: round trips and bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mlasm.data import (DataError, RetrievalSplit, TsvRecord, Vocabulary, caption_tensors, image_tensors,
                        list_splits, read_coco_captions, read_karpathy_split, read_split, read_tsv, write_split,
                        write_tsv)
from mlasm.data import dataset as dataset_module
from mlasm.data.dataset import RegionMeans, check_features

N, R, D = 4, 3, 5


def make_split(with_extras: bool = True, tmp_path=None) -> RetrievalSplit:
    """4 images of 3 regions (the last image has 2), 5 captions each."""
    rng = np.random.default_rng(0)
    mask = np.ones((N, R), bool)
    mask[-1, -1] = False
    captions = [f"image {i} caption {k} ." for i in range(N) for k in range(5)]
    extras = {}
    if with_extras:
        paths = [None] * N
        if tmp_path is not None:
            Image.new("RGB", (6, 4), (10, 200, 30)).save(tmp_path / "picture.png")
            paths[1] = str(tmp_path / "picture.png")
        extras = dict(
            boxes=rng.uniform(0, 50, (N, R, 4)).astype(np.float32),
            image_sizes=np.full((N, 2), 64, np.int32),
            image_ids=[f"img{i}" for i in range(N)],
            image_paths=paths,
            grounding=[[[1, [0]], [3, [0, 1]]] if c % 2 else [] for c in range(len(captions))],
            image_attributes=[{"n": i, "colours": ["red"]} for i in range(N)],
            region_scores=rng.uniform(size=(N, R)).astype(np.float32),
            region_labels=rng.integers(0, 3, (N, R)).astype(np.int32),
            label_names=["dog", None, "cat"],
        )
    return RetrievalSplit(name="test", regions=rng.normal(size=(N, R, D)).astype(np.float32), region_mask=mask,
                          global_features=rng.normal(size=(N, 7)).astype(np.float32), captions=captions,
                          caption_to_image=np.arange(len(captions)) // 5, **extras)


# ------------------------------------------------------------------------------ RetrievalSplit

def test_split_defaults_and_properties():
    regions = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    split = RetrievalSplit("s", regions, np.array([[True, False], [True, True]]), None,
                           ["a", "b", "c"], np.array([0, 1, 1]))
    assert (split.n_images, split.n_captions, split.max_regions, split.region_dim, split.global_dim) == (2, 3, 2, 3, 3)
    np.testing.assert_allclose(split.global_features, [regions[0, 0], regions[1].mean(axis=0)])
    assert split.image_ids == ["0", "1"]
    assert split.image_to_captions(1).tolist() == [1, 2]
    assert split.get_image(0) is None
    assert "images=2, captions=3" in repr(split)


@pytest.mark.parametrize("change, message", [
    (dict(regions=np.zeros((4, 3))), r"regions must be \(N, R, D\)"),
    (dict(region_mask=np.ones((4, 2), bool)), r"region_mask must have shape \(4, 3\)"),
    (dict(region_mask=np.zeros((4, 3), bool)), "image 0 has no real region"),
    (dict(global_features=np.zeros((3, 7))), r"global_features must be \(N=4, Dg\)"),
    (dict(caption_to_image=np.arange(20) // 4), r"caption_to_image must lie in \[0, 4\)"),
    (dict(caption_to_image=np.zeros(19, int)), r"caption_to_image must have shape \(20,\)"),
    (dict(captions=["x"] * 19 + ["  "]), "caption 19 is empty"),
    (dict(boxes=np.zeros((4, 3, 5))), r"boxes must have shape \(4, 3, 4\)"),
    (dict(image_ids=["a"]), "image_ids must have 4 entries, got 1"),
    (dict(grounding=[[]] * 3), "grounding must have 20 entries"),
    (dict(regions=np.full((4, 3, 5), np.nan, np.float32), global_features=None), "image 0 has NaN"),
])
def test_split_validates_on_construction(change, message):
    split = make_split()
    fields = {f: getattr(split, f) for f in split.__dataclass_fields__}
    with pytest.raises(DataError, match=message):
        RetrievalSplit(**{**fields, **change})


def test_subset_remaps_captions_grounding_and_extras(tmp_path):
    split = make_split(tmp_path=tmp_path)
    part = split.subset([3, 1])
    assert part.n_images == 2 and part.n_captions == 10
    assert part.captions[:5] == split.captions[15:20] and part.captions[5:] == split.captions[5:10]
    assert part.caption_to_image.tolist() == [0] * 5 + [1] * 5
    assert part.grounding == split.grounding[15:20] + split.grounding[5:10]
    assert part.image_ids == ["img3", "img1"]
    np.testing.assert_array_equal(part.regions, split.regions[[3, 1]])
    np.testing.assert_array_equal(part.region_labels, split.region_labels[[3, 1]])
    assert part.get_image(1).size == (6, 4)
    with pytest.raises(DataError, match="distinct"):
        split.subset([1, 1])


def test_subset_keeps_the_renderer_pointing_at_the_right_images():
    split = make_split(with_extras=False)
    split.renderer = lambda i: Image.new("RGB", (1, 1), (i, 0, 0))
    assert split.subset([2, 0]).get_image(0).getpixel((0, 0)) == (2, 0, 0)


def test_batching_helpers():
    split = make_split()
    regions, mask, glob = image_tensors(split, [2, 3])
    assert regions.dtype == torch.float32 and regions.shape == (2, R, D)
    assert mask.tolist() == [[True] * 3, [True, True, False]]
    assert torch.equal(glob, torch.from_numpy(split.global_features[[2, 3]]))
    vocab = Vocabulary.build(["a dog", "a cat"], min_count=1)
    tokens, lengths = caption_tensors(vocab, ["a dog runs", "cat"])
    assert lengths.tolist() == [3, 1]
    assert tokens.tolist() == [[vocab.word_to_id["a"], vocab.word_to_id["dog"], vocab.unk_id],
                               [vocab.word_to_id["cat"], 0, 0]]
    with pytest.raises(DataError, match="caption 1 of the batch has no tokens"):
        caption_tensors(vocab, ["a dog", " "])


# ------------------------------------------------------------------------------------ precomp

def test_precomp_round_trip_with_every_extra(tmp_path):
    split = make_split(tmp_path=tmp_path)
    folder = tmp_path / "data"
    write_split(folder, "test", split, meta={"producer": {"name": "unit test"}})
    assert not list(folder.glob("*.tmp"))
    back = read_split(folder, "test")
    assert isinstance(back.regions, np.memmap)
    for field in ("regions", "region_mask", "global_features", "caption_to_image", "boxes", "image_sizes",
                  "region_scores", "region_labels"):
        np.testing.assert_array_equal(getattr(back, field), getattr(split, field), err_msg=field)
    for field in ("captions", "image_ids", "grounding", "image_attributes", "label_names"):
        assert getattr(back, field) == getattr(split, field), field
    assert back.image_paths[0] is None and back.get_image(1).size == (6, 4)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "mlasm-precomp" and meta["producer"] == {"name": "unit test"}
    assert list_splits(folder) == ["test"]


def test_precomp_minimal_scan_layout(tmp_path):
    """Only ims.npy and caps.txt, as SCAN releases them: defaults for everything else."""
    regions = np.random.default_rng(1).normal(size=(3, 2, 4)).astype(np.float32)
    np.save(tmp_path / "dev_ims.npy", regions)
    (tmp_path / "dev_caps.txt").write_text("".join(f"caption {k}\n" for k in range(15)))
    split = read_split(tmp_path, "dev")
    assert split.caption_to_image.tolist() == [k // 5 for k in range(15)]
    assert split.region_mask.all() and split.boxes is None and split.grounding is None
    np.testing.assert_allclose(split.global_features, regions.mean(axis=1), rtol=1e-6)
    assert split.image_ids == ["0", "1", "2"]
    np.save(tmp_path / "train_ims.npy", regions)
    np.save(tmp_path / "extra_ims.npy", regions)
    assert list_splits(tmp_path) == ["train", "dev", "extra"]


def test_precomp_captions_per_image_from_argument_or_meta(tmp_path):
    np.save(tmp_path / "all_ims.npy", np.ones((3, 2, 4), np.float32))
    (tmp_path / "all_caps.txt").write_text("a\nb\nc\nd\ne\nf\n")
    with pytest.raises(DataError, match=r"6 captions for the 3 images of all_ims.npy; expected 5 per image \(15\)"):
        read_split(tmp_path, "all")
    assert read_split(tmp_path, "all", captions_per_image=2).caption_to_image.tolist() == [0, 0, 1, 1, 2, 2]
    (tmp_path / "meta.json").write_text(json.dumps({"format": "mlasm-precomp", "version": 1, "captions_per_image": 2}))
    assert read_split(tmp_path, "all").caption_to_image.tolist() == [0, 0, 1, 1, 2, 2]


def test_write_split_removes_extras_of_an_earlier_write(tmp_path):
    write_split(tmp_path, "test", make_split())
    write_split(tmp_path, "test", make_split(with_extras=False))
    back = read_split(tmp_path, "test")
    assert back.boxes is None and back.grounding is None and back.region_labels is None


@pytest.fixture
def folder(tmp_path):
    """A valid precomp folder whose files each test breaks in one way."""
    write_split(tmp_path, "test", make_split())
    return tmp_path


def _break_file(folder, name, content):
    path = folder / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, content, message", [
    ("test_ims.npy", np.zeros((4, 3), np.float32), r"test_ims.npy: expected 3 dimensions, got shape \(4, 3\)"),
    ("test_ims.npy", np.zeros((4, 3, 5), np.int64), "test_ims.npy: expected floating-point values, got dtype int64"),
    ("test_ims.npy", b"not an array", "test_ims.npy: not a readable .npy array"),
    ("test_mask.npy", np.ones((4, 2), bool), r"test_mask.npy: expected shape \(4, 3\), got \(4, 2\)"),
    ("test_mask.npy", np.zeros((4, 3), bool), "test_mask.npy: image 0 has no real region"),
    ("test_boxes.npy", np.zeros((4, 3, 2), np.float32), r"test_boxes.npy: expected shape \(4, 3, 4\)"),
    ("test_cap2img.npy", np.full(20, 9), r"test_cap2img.npy: image indices must lie in \[0, 4\)"),
    ("test_cap2img.npy", np.zeros(19, int), r"test_cap2img.npy: expected shape \(20,\)"),
    ("test_caps.txt", "a\n" * 7 + "\n" + "b\n" * 12, "test_caps.txt: line 8 is empty"),
    ("test_caps.txt", b"ok\n" * 4 + b"caf\xe9\n" + b"ok\n" * 15, r"test_caps.txt: line 5 is not valid UTF-8"),
    ("test_ids.txt", "a\nb\n", r"test_ids.txt: expected 4 lines \(one per image\), found 2"),
    ("test_grounding.json", "[]", "test_grounding.json: expected a list with one entry per caption"),
    ("test_grounding.json", json.dumps([[[0, [7]]]] * 20), r"test_grounding.json: entry 0 .*\[region indices < 3\]"),
    ("test_grounding.json", json.dumps([[[9, [0]]]] * 20), r"entry 0 .*\[token position < 5,"),
    ("test_attributes.json", "[{}]", "test_attributes.json: expected a list of 4 JSON objects"),
    ("test_attributes.json", "[{", "test_attributes.json: invalid JSON at line 1"),
    ("meta.json", json.dumps({"format": "other"}), "meta.json: format 'other'"),
])
def test_read_split_names_the_bad_file_and_what_was_expected(folder, name, content, message):
    _break_file(folder, name, content)
    with pytest.raises(DataError, match=message):
        read_split(folder, "test")


def test_nan_features_are_reported_when_read_naming_the_file_and_the_image(folder, monkeypatch):
    regions = np.ones((4, 3, 5), np.float32)
    regions[2, 1, 3] = np.nan
    _break_file(folder, "test_ims.npy", regions)
    split = read_split(folder, "test")  # opening reads no feature
    image_tensors(split, [0, 1, 3])     # batches without the bad image are fine
    expected = f"{folder / 'test_ims.npy'}: image 2 has NaN or infinite region features"
    with pytest.raises(DataError, match=re.escape(expected)):
        image_tensors(split, [3, 2])
    with pytest.raises(DataError, match=re.escape(expected)):
        split.subset([1, 2])
    monkeypatch.setattr(dataset_module, "CHUNK_BYTES", 60)  # one image per chunk: found in a later chunk
    with pytest.raises(DataError, match=re.escape(expected)):
        check_features(split)

    (folder / "test_global.npy").unlink()  # the global vector is then the mean of the regions, read alike
    split = read_split(folder, "test")
    assert isinstance(split.global_features, RegionMeans) and split.global_dim == 5
    np.testing.assert_allclose(split.global_features[[0, 3]], 1.0)
    with pytest.raises(DataError, match=re.escape(expected)):
        split.global_features[2]
    with pytest.raises(DataError, match=re.escape(expected)):
        image_tensors(split, [2])


def test_nan_global_features_are_reported_when_read(folder):
    global_features = np.ones((4, 7), np.float32)
    global_features[1, 6] = np.inf
    _break_file(folder, "test_global.npy", global_features)
    split = read_split(folder, "test")
    assert isinstance(split.global_features, np.memmap)
    image_tensors(split, [0, 2])
    expected = f"{folder / 'test_global.npy'}: image 1 has NaN or infinite global features"
    with pytest.raises(DataError, match=re.escape(expected)):
        image_tensors(split, [0, 1])
    with pytest.raises(DataError, match=re.escape(expected)):
        check_features(split)


def test_region_means_of_a_memory_map_match_the_eager_mean(tmp_path):
    split = make_split(with_extras=False)
    write_split(tmp_path, "test", split)
    (tmp_path / "test_global.npy").unlink()
    lazy = read_split(tmp_path, "test")
    eager = read_split(tmp_path, "test", mmap=False)  # in memory: computed when the split is made
    assert isinstance(eager.global_features, np.ndarray)
    np.testing.assert_allclose(np.asarray(lazy.global_features), eager.global_features, rtol=1e-6)
    np.testing.assert_allclose(lazy.global_features[3], split.regions[3, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(image_tensors(lazy, [3, 0])[2].numpy(), eager.global_features[[3, 0]], rtol=1e-6)
    np.testing.assert_allclose(lazy.subset([3]).global_features, eager.global_features[[3]], rtol=1e-6)


def test_read_split_missing_things(folder, tmp_path):
    with pytest.raises(DataError, match=r"no split 'train' \(no train_ims.npy\); available: \['test'\]"):
        read_split(folder, "train")
    with pytest.raises(DataError, match="dataset folder not found"):
        read_split(tmp_path / "nowhere", "test")
    (folder / "test_caps.txt").unlink()
    with pytest.raises(DataError, match="test_caps.txt: file not found"):
        read_split(folder, "test")


def test_write_split_refuses_a_caption_with_a_line_break(tmp_path):
    split = make_split()
    split.captions[3] = "two\nlines"
    with pytest.raises(DataError, match="caption 3 contains a line break"):
        write_split(tmp_path, "test", split)


# ---------------------------------------------------------------------------------------- TSV

def _boxes(rng, k: int) -> np.ndarray:
    """k boxes x1 y1 x2 y2 (x1 <= x2, y1 <= y2: a TSV's boxes with a negative width are refused)."""
    corners = rng.uniform(0, 400, (k, 2, 2))
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)


def _records():
    rng = np.random.default_rng(2)
    return [TsvRecord(str(100 + i), 640, 480, _boxes(rng, k),
                      rng.normal(size=(k, 6)).astype(np.float32)) for i, k in enumerate([3, 1, 2])]


def test_tsv_round_trip_pads_with_a_mask(tmp_path):
    path = tmp_path / "features.tsv"
    records = _records()
    write_tsv(path, records)
    features = read_tsv(path)
    assert features.image_ids == ["100", "101", "102"]
    assert features.features.shape == (3, 3, 6) and features.boxes.shape == (3, 3, 4)
    assert features.mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    for i, record in enumerate(records):
        k = len(record.boxes)
        np.testing.assert_array_equal(features.features[i, :k], record.features)
        np.testing.assert_array_equal(features.boxes[i, :k], record.boxes)
    assert features.image_sizes.tolist() == [[640, 480]] * 3
    assert read_tsv(path, max_regions=5).features.shape == (3, 5, 6)
    split = features.to_split("test", ["a"] * 15, np.arange(15) // 5)
    np.testing.assert_allclose(split.global_features[1], records[1].features[0])


def test_tsv_bad_input(tmp_path):
    path = tmp_path / "bad.tsv"
    write_tsv(path, _records())
    good = path.read_text().splitlines()
    fields = good[1].split("\t")
    with pytest.raises(DataError, match="image 100 has 3 boxes, more than max_regions = 2"):
        read_tsv(path, max_regions=2)
    cases = [
        ("101\t640\t480", "line 2 has 3 tab-separated fields, expected 6"),
        ("\t".join(fields[:4] + ["@@@@", fields[5]]), "line 2, field boxes: not valid base64"),
        ("\t".join(fields[:3] + ["2"] + fields[4:]), r"line 2, field boxes: 4 values, expected num_boxes x 4 = 8"),
        ("\t".join(fields[:3] + ["0"] + fields[4:]), "line 2: num_boxes is 0"),
        ("\t".join(fields[:1] + ["wide"] + fields[2:]), "line 2: image_w, image_h and num_boxes must be integers"),
    ]
    for line, message in cases:
        path.write_text("\n".join([good[0], line, good[2]]) + "\n")
        with pytest.raises(DataError, match=message):
            read_tsv(path)
    write_tsv(path, [TsvRecord("7", 9, 9, np.zeros((1, 4), np.float32), np.full((1, 3), np.nan, np.float32))])
    with pytest.raises(DataError, match=r"line 1 \(image 7\): NaN or infinite"):
        read_tsv(path)
    write_tsv(path, [_records()[0], TsvRecord("8", 9, 9, np.zeros((1, 4), np.float32), np.zeros((1, 2), np.float32))])
    with pytest.raises(DataError, match=r"features of different sizes \[2, 6\]"):
        read_tsv(path)
    with pytest.raises(DataError, match="TSV file not found"):
        read_tsv(tmp_path / "missing.tsv")


# ------------------------------------------------------------------------------- caption JSON

def test_read_coco_captions_on_coco_mini(coco_mini):
    images = read_coco_captions(coco_mini / "annotations" / "captions_train2017.json")
    assert len(images) == 80 and all(len(image.captions) == 5 for image in images)
    first = images[0]
    assert (first.image_id, first.file_name, first.width, first.height) == ("493652", "000000493652.jpg", 640, 399)
    assert all((coco_mini / "train2017" / image.file_name).is_file() for image in images)


def _write_json(tmp_path, content):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_read_coco_captions_bad_input(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}]
    annotations = [{"image_id": 1, "id": 10, "caption": "A cat. "}]
    good = read_coco_captions(_write_json(tmp_path, {"images": images, "annotations": annotations}))
    assert good[0].captions == ["A cat."]
    cases = [
        ({"images": images}, "expected a JSON object with a list \"annotations\""),
        ({"images": images, "annotations": [{"image_id": 1, "id": 11, "caption": " "}]},
         r"annotations\[0\] \(id 11\) has an empty caption"),
        ({"images": images, "annotations": [{"image_id": "1", "caption": "x"}]},
         r"annotations\[0\], field \"image_id\": expected int"),
        ({"images": images + [{"id": 2, "file_name": "b.jpg"}], "annotations": annotations},
         r"images\[1\] \(id 2\) has no caption"),
        ({"images": images, "annotations": annotations + [{"image_id": 5, "caption": "x"}]},
         "annotations refer to image ids not in \"images\", e.g. 5"),
    ]
    for content, message in cases:
        with pytest.raises(DataError, match=message):
            read_coco_captions(_write_json(tmp_path, content))
    (tmp_path / "captions.json").write_bytes(b'{"images": "\xff"}')
    with pytest.raises(DataError, match="not UTF-8"):
        read_coco_captions(tmp_path / "captions.json")


def test_read_karpathy_split(tmp_path):
    def entry(i, split, **more):
        return {"filename": f"{i}.jpg", "split": split, "imgid": i,
                "sentences": [{"raw": f"Caption {i}.", "tokens": ["caption", str(i)]}], **more}

    path = _write_json(tmp_path, {"images": [entry(0, "train"), entry(1, "test", cocoid=42, filepath="val2014"),
                                             entry(2, "restval")]})
    everything = read_karpathy_split(path)
    assert [(e.image_id, e.file_name, e.split) for e in everything] == \
        [("0", "0.jpg", "train"), ("42", "val2014/1.jpg", "test"), ("2", "2.jpg", "restval")]
    assert everything[0].captions == ["Caption 0."] and everything[0].tokens == [["caption", "0"]]
    assert [e.image_id for e in read_karpathy_split(path, ["train", "restval"])] == ["0", "2"]
    with pytest.raises(DataError, match=r"no split \['val'\]; available: \['restval', 'test', 'train'\]"):
        read_karpathy_split(path, "val")
    path = _write_json(tmp_path, {"images": [entry(0, "train", sentences=[{"raw": "", "tokens": []}])]})
    with pytest.raises(DataError, match=r"images\[0\].sentences\[0\] is an empty caption"):
        read_karpathy_split(path)
