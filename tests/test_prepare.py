"""``mlasm prepare``: bottom-up-attention TSV + caption JSON, and a SCAN precomp folder + its vocabulary,
turned into dataset folders that train; resumable; malformed input named by file, line and field."""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest

from cli_support import TINY, answer
from mlasm.config import MLASMConfig
from mlasm.data import TsvRecord, read_split, write_tsv
from mlasm.data.errors import DataError
from mlasm.data.prepare import STATE_FILE, prepare_from_tsv
from mlasm.data.prepare_scan import prepare_from_scan
from mlasm.data.vocab import Vocabulary
from mlasm.train import train

DIM = 6
WORDS = ["red", "blue", "green", "dog", "cat", "ball", "car", "tree"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _records(n: int, seed: int = 0) -> list[TsvRecord]:
    """Flickr30K-like TSV records: the image id is the file name without extension; 2 to 5 boxes each."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        k = 2 + i % 4
        boxes = np.sort(rng.uniform(0, 100, (k, 4)).astype(np.float32), axis=1)
        records.append(TsvRecord(str(1000 + i), 120 + i, 90, boxes, rng.normal(size=(k, DIM)).astype(np.float32)))
    return records


def _karpathy(n: int, splits: dict[int, str], extra_captions: int = 1) -> dict:
    """dataset_flickr30k.json in miniature: per image its split, file name, and 5 + extra sentences."""
    images = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
        sentences = [{"raw": f"A {a} {b} number {j}, in  picture {i}.\n", "tokens": []}
                     for j in range(5 + extra_captions)]
        images.append({"imgid": i, "filename": f"{1000 + i}.jpg", "split": splits.get(i, "train"),
                       "sentences": sentences})
    return {"dataset": "flickr30k", "images": images}


N = 60
SPLITS = {i: "val" for i in range(40, 50)} | {i: "test" for i in range(50, 60)}


@pytest.fixture
def tsv_and_captions(tmp_path):
    records = _records(N)
    write_tsv(tmp_path / "features.tsv", records[::-1])  # the TSV's order is not the caption file's
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(_karpathy(N, SPLITS)))
    return tmp_path / "features.tsv", tmp_path / "dataset_flickr30k.json", records


def test_tsv_and_karpathy_json_give_splits_that_train(tsv_and_captions, tmp_path, capsys):
    tsv, captions, records = tsv_and_captions
    out = tmp_path / "f30k"
    code, line, printed = answer(capsys, ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions),
                                          "--out", str(out), "--max-regions", "6", "--images", str(tmp_path)])
    assert code == 0, line
    assert "TSV lines matched by image file name; 0 TSV images in no chosen split were skipped" in printed
    assert "train: 40 images, 200 captions" in printed and "test: 10 images, 50 captions" in printed
    assert not list(out.glob(".*"))  # no partial or state file left
    train_split, dev, test = (read_split(out, name) for name in ("train", "dev", "test"))
    assert (train_split.n_images, dev.n_images, test.n_images) == (40, 10, 10)
    image = 42  # Karpathy's image 42 is image 2 of dev
    record = records[image]
    k = len(record.boxes)
    np.testing.assert_array_equal(dev.regions[2, :k], record.features)
    assert not dev.regions[2, k:].any() and dev.region_mask[2].tolist() == [True] * k + [False] * (6 - k)
    np.testing.assert_array_equal(dev.boxes[2, :k], record.boxes)
    assert dev.image_sizes[2].tolist() == [record.width, record.height]
    assert dev.image_ids[2] == "42" and dev.image_paths[2] == str(tmp_path / "1042.jpg")
    # the first 5 sentences, whitespace made single spaces
    assert dev.captions[10:15] == [f"A {WORDS[42 % 8]} {WORDS[127 % 8]} number {j}, in picture 42." for j in range(5)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["captions_per_image"] == 5 and meta["producer"]["splits"] == {
        "train": ["train"], "dev": ["val"], "test": ["test"]}  # Flickr30K has no restval

    config = MLASMConfig.cpu(**{**TINY, "epochs": 2, "batch_size": 20})
    summary = train(config, train_split, dev, tmp_path / "run", vocab=Vocabulary.build(train_split.captions, 1),
                    progress=False)
    assert np.isfinite(summary["best_rsum"]) and len(summary["log"]) == 2
    assert summary["unknown_token_share"] == 0.0


def test_a_stopped_conversion_continues_where_it_stopped(tsv_and_captions, tmp_path):
    tsv, captions, _ = tsv_and_captions
    reference = prepare_from_tsv(tsv, captions, tmp_path / "whole", max_regions=6, progress=False)

    class Stop(Exception):
        pass

    def stop_at(records):
        if records == 23:
            raise Stop

    out = tmp_path / "stopped"
    with pytest.raises(Stop):
        prepare_from_tsv(tsv, captions, out, max_regions=6, checkpoint_every=10, progress=False, on_record=stop_at)
    state = json.loads((out / STATE_FILE).read_text())
    assert state["records"] == 20 and state["line"] == 20  # the last checkpoint
    assert not (out / "train_ims.npy").exists()  # nothing under a final name before it is complete
    seen = []
    again = prepare_from_tsv(tsv, captions, out, max_regions=6, progress=False, on_record=seen.append)
    assert seen[0] == 21 and seen[-1] == N  # lines 1-20 were not read again
    assert again == {**reference, "out": str(out)}
    for name in ("train", "dev", "test"):
        for suffix in ("ims.npy", "boxes.npy", "mask.npy", "sizes.npy", "caps.txt", "ids.txt"):
            assert (out / f"{name}_{suffix}").read_bytes() == (tmp_path / "whole" / f"{name}_{suffix}").read_bytes()
    assert not (out / STATE_FILE).exists()

    # an unfinished conversion of other settings is not silently mixed with a new one
    with pytest.raises(Stop):
        prepare_from_tsv(tsv, captions, out, max_regions=6, checkpoint_every=10, progress=False, on_record=stop_at)
    with pytest.raises(DataError, match=r"holds an unfinished conversion of other inputs or settings "
                                        r"\(max_regions differ from what it began with\); give those to continue "
                                        r"it, or pass --restart"):
        prepare_from_tsv(tsv, captions, out, max_regions=8, progress=False)
    restarted = prepare_from_tsv(tsv, captions, out, max_regions=8, restart=True, progress=False)
    assert restarted["splits"]["train"]["images"] == 40 and read_split(out, "train").max_regions == 8


def _tsv_line(record: TsvRecord) -> list[str]:
    return [record.image_id, str(record.width), str(record.height), str(len(record.boxes)),
            base64.b64encode(record.boxes.tobytes()).decode(), base64.b64encode(record.features.tobytes()).decode()]


@pytest.mark.parametrize("breaking, message", [
    (lambda fields: fields.__setitem__(5, fields[5][:-4] + "@@@@"), "line 3, field features: not valid base64"),
    (lambda fields: fields.__setitem__(3, "two"), "line 3: image_w, image_h and num_boxes must be integers"),
    (lambda fields: fields.__setitem__(4, base64.b64encode(b"\0" * 12).decode()),
     "line 3, field boxes: 3 values, expected num_boxes x 4 = 16"),
    (lambda fields: fields.__delitem__(5), "line 3 has 5 tab-separated fields, expected 6"),
    (lambda fields: fields.__setitem__(0, "1001"), "line 3: image 1001 appears a second time in the TSV"),
])
def test_a_malformed_tsv_line_is_one_line_naming_file_line_and_field(tsv_and_captions, tmp_path, capsys,
                                                                     breaking, message):
    tsv, captions, records = tsv_and_captions
    lines = [_tsv_line(r) for r in records]
    breaking(lines[2])
    tsv.write_text("".join("\t".join(fields) + "\n" for fields in lines))
    code, line, _ = answer(capsys, ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions),
                                    "--out", str(tmp_path / "out"), "--max-regions", "6"])
    assert code == 2 and line.startswith(f"mlasm prepare: error: {tsv}: {message}")


def test_what_the_tsv_and_the_caption_file_do_not_agree_on(tsv_and_captions, tmp_path, capsys):
    tsv, captions, records = tsv_and_captions

    def refused(*options, features=tsv, caption_file=captions):
        code, line, _ = answer(capsys, ["prepare", "tsv", "--features", str(features), "--captions",
                                        str(caption_file), "--out", str(tmp_path / "out"), "--restart", *options])
        assert code == 2
        return line.removeprefix("mlasm prepare: error: ")

    assert refused("--max-regions", "4") == (f"{tsv}: line 1 (image 1059): 5 boxes, more than --max-regions 4; give "
                                             f"a larger --max-regions (images with fewer boxes are padded, with a mask)")
    write_tsv(tmp_path / "part.tsv", records[:50])
    assert refused(features=tmp_path / "part.tsv") == (
        f"{tmp_path / 'part.tsv'}: 10 of the 10 images of split 'test' are not in the TSV (ids 50, 51, 52, 53, 54, "
        f"...); the TSV must hold every image of the chosen splits of dataset_flickr30k.json")
    assert refused("--match", "id") == (  # Flickr30K's image ids are not the TSV's: nothing matches
        f"{tsv}: 40 of the 40 images of split 'train' are not in the TSV (ids 0, 1, 2, 3, 4, ...); the TSV must "
        f"hold every image of the chosen splits of dataset_flickr30k.json")
    assert refused("--split", "train=restval") == f"{captions}: no split ['restval']; it has ['test', 'train', 'val']"
    assert refused("--split", "train=train", "--split", "all=train") == \
        "--split: 'train' of dataset_flickr30k.json is given to both 'train' and 'all'"
    short = _karpathy(N, SPLITS, extra_captions=0)
    short["images"][7]["sentences"].pop()
    (tmp_path / "short.json").write_text(json.dumps(short))
    assert refused(caption_file=tmp_path / "short.json") == (
        f"{tmp_path / 'short.json'}: image 7 (1007.jpg) has 4 captions, fewer than --captions-per-image 5")
    other = [TsvRecord("zebra", 10, 10, r.boxes, r.features) for r in records[:2]]
    write_tsv(tmp_path / "other.tsv", other)
    assert refused(features=tmp_path / "other.tsv") == (
        f"{tmp_path / 'other.tsv'}: line 1: image_id 'zebra' is neither an image id nor a file name (without "
        f"extension) of an image of dataset_flickr30k.json in the chosen splits; check the pairing of TSV and "
        f"caption file, or give --match")


def test_a_coco_caption_file_matched_by_image_id(tmp_path):
    records = [TsvRecord(str(9000 + i), r.width, r.height, r.boxes, r.features) for i, r in enumerate(_records(6))]
    records.append(TsvRecord("123", 10, 10, records[0].boxes, records[0].features))  # an image not captioned
    write_tsv(tmp_path / "trainval_36.tsv", records)
    images = [{"id": 9000 + i, "file_name": f"COCO_val2014_{9000 + i:012d}.jpg", "width": 1, "height": 1}
              for i in range(6)]
    annotations = [{"id": 10 * i + j, "image_id": 9000 + i, "caption": f"a {WORDS[i]} thing {j}"}
                   for i in range(6) for j in range(5)]
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    summary = prepare_from_tsv(tmp_path / "trainval_36.tsv", tmp_path / "captions_val2014.json", tmp_path / "coco",
                               splits={"test": ["all"]}, progress=False)
    assert summary["match"] == "id" and summary["skipped_tsv_images"] == 1
    test = read_split(tmp_path / "coco", "test")
    assert test.image_ids == [str(9000 + i) for i in range(6)] and test.max_regions == 36
    assert test.captions[5] == "a blue thing 0"
    np.testing.assert_array_equal(test.regions[4, :len(records[4].boxes)], records[4].features)


# ----------------------------------------------------------------------------- SCAN's precomp folder

def _scan_release(folder, n_images=12, repeated=False):
    """A SCAN precomp folder in miniature (features, captions, ids), as data.zip unpacks it."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n_images, 4, DIM)).astype(np.float32)
    captions = [f"A {WORDS[i % 8]}'s T-shirt, number {j}." for i in range(n_images) for j in range(5)]
    for name in ("train", "dev"):
        np.save(folder / f"{name}_ims.npy", np.repeat(features, 5, axis=0) if repeated else features)
        (folder / f"{name}_caps.txt").write_text("".join(c + "\n" for c in captions))
        (folder / f"{name}_ids.txt").write_text("".join(f"{i}\n" for i in range(n_images)))
    return features, captions


def test_a_scan_release_and_its_vocabulary(tmp_path, capsys):
    from test_scan_files import _scan_vocab_from

    features, captions = _scan_release(tmp_path / "f30k_precomp")
    words = _scan_vocab_from(captions[:30], tmp_path / "f30k_precomp_vocab.json")
    out = tmp_path / "f30k"
    code, line, printed = answer(capsys, ["prepare", "scan", str(tmp_path / "f30k_precomp"), "--vocab",
                                          str(tmp_path / "f30k_precomp_vocab.json"), "--out", str(out)])
    assert code == 0, line
    assert f"vocabulary: {len(words)} words, SCAN's ids, written to {out / 'vocab.json'}" in printed
    # the vocabulary was built from the first 6 images' captions: "car" and "tree" (images 6, 7) are unknown
    from nltk.tokenize import NLTKWordTokenizer

    tokens = [t for c in captions for t in NLTKWordTokenizer().tokenize(c.lower())]
    known = sum(t in words for t in tokens) / len(tokens)
    assert 0.9 < known < 1
    assert f"train: 12 images, 60 captions (features linked); the vocabulary knows {known:.1%} of its caption " \
           f"tokens" in printed
    assert os.path.samefile(out / "train_ims.npy", tmp_path / "f30k_precomp" / "train_ims.npy")
    assert Vocabulary.load(out / "vocab.json").words == words
    train_split = read_split(out, "train")
    np.testing.assert_array_equal(train_split.regions, features)
    assert train_split.captions == captions and train_split.image_ids == [str(i) for i in range(12)]

    in_place = prepare_from_scan(tmp_path / "f30k_precomp", tmp_path / "f30k_precomp_vocab.json",
                                 tmp_path / "f30k_precomp", splits=["dev"], progress=False)
    assert in_place["splits"]["dev"]["features"] == "in place"
    assert (tmp_path / "f30k_precomp" / "vocab.json").is_file()


def test_an_old_release_with_one_row_per_caption_is_reduced(tmp_path):
    features, captions = _scan_release(tmp_path / "vsepp", repeated=True)
    (tmp_path / "vocab.json").write_text(json.dumps({"format": "mlasm-vocab", "version": 1,
                                                     "words": ["<pad>", "<start>", "<end>", "<unk>", "a"]}))
    summary = prepare_from_scan(tmp_path / "vsepp", tmp_path / "vocab.json", tmp_path / "out", progress=False)
    assert summary["splits"]["train"]["features"] == "every 5th row kept"
    split = read_split(tmp_path / "out", "train")
    np.testing.assert_array_equal(split.regions, features)
    with pytest.raises(DataError, match="cannot be reduced in place; give another --out"):
        prepare_from_scan(tmp_path / "vsepp", tmp_path / "vocab.json", tmp_path / "vsepp", progress=False)
