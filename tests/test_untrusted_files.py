"""Files nobody checked (issue 26): no read outside the folders the user named, memory bounded by
what the user set, caches that heal. Cases from tests/bad_inputs.py, one line each."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlasm.blocks as blocks_module
from bad_inputs import CASES
from cli_support import answer
from mlasm.cli import describe_error, main
from mlasm.config import MLASMConfig
from mlasm.data.dataset import MAX_CAPTION_WORDS, CaptionsCutWarning, cut_caption, encode_captions
from mlasm.data.vocab import Vocabulary
from mlasm.extract import UnreadableImageWarning
from mlasm.extract.pipeline import DamagedWorkFileWarning
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding
from mlasm.saved_scores import (SCORES_FILE, SavedScoresIgnored, arrays_checksum, read_saved_scores,
                                scores_fingerprint)
from mlasm.data import write_tsv
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.pictures import OutsideFolder
from mlasm.data.precomp import read_meta, read_split, write_split
from mlasm.extract import extract_dataset
from test_prepare import _karpathy, _records
from mlasm.run_folder import RunFolderError
from test_reliability import (MeanColourExtractor, RecordingProposer, _full_disk_for, _train_command,  # noqa: F401
                              finished_run)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _refused(capsys, argv, case, command, **paths) -> str:
    code, line, _ = answer(capsys, argv)
    assert code == 2, line
    assert line.startswith(f"mlasm {command}: error: "), line
    assert case.expected(**paths) in line, line
    return line


# ------------------------------------------------------------------------------ picture paths

@pytest.fixture
def pictures(tmp_path):
    """--images with one picture, a secret picture beside it, and a symlink inside that leads to the secret."""
    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(images / "a.png")
    Image.new("RGB", (8, 6), (10, 10, 200)).save(outside / "secret.png")
    (images / "link.png").symlink_to(outside / "secret.png")
    return images, outside / "secret.png"


def _escape(key: str, images: Path, secret: Path) -> tuple[str, str]:
    """The file name a hostile data file gives for ``key``, and where it leads."""
    if key.endswith("up_to_etc"):
        up = "../../../../etc/passwd" if "karpathy" in key else "../../../etc/hostname"
        return up, str((images / up).resolve())
    if key.endswith("sibling_folder") or key.endswith("json_up"):
        return "../outside/secret.png", str(secret)
    if key.endswith("absolute"):
        return str(secret), str(secret)
    return "link.png", str(secret)  # a symlink that leads out


@pytest.mark.parametrize("case", [CASES[k] for k in (
    "extract_csv_row_up_to_etc", "extract_csv_row_in_a_sibling_folder", "extract_csv_row_absolute",
    "extract_csv_row_symlink_out")], ids=str)
def test_extract_reads_no_picture_outside_images(case, pictures, tmp_path, capsys):
    images, secret = pictures
    name, target = _escape(case.key, images, secret)
    line = 3 if "sibling" in case.key else 2
    rows = ["a.png,a red picture", f"{name},a secret"] if line == 3 else [f"{name},a secret", "a.png,a red picture"]
    csv = tmp_path / "captions.csv"
    csv.write_text("file_name,caption\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    argv = ["extract", "--images", str(images), "--captions", str(csv), "--out", str(out)]
    _refused(capsys, argv, case, "extract", CSV=csv, TARGET=target, DIR=images.resolve())
    assert not out.exists() or not any(out.iterdir())  # refused before anything was read or written
    # the library call refuses the same, before a model sees a picture
    proposer = RecordingProposer()
    with pytest.raises(OutsideFolder, match=re.escape(case.expected(CSV=csv, TARGET=target, DIR=images.resolve()))):
        extract_dataset(images, csv, out, proposer=proposer, extractor=MeanColourExtractor(), progress=False)
    assert proposer.pictures == []


@pytest.mark.parametrize("case", [CASES["extract_coco_json_up"]], ids=str)
def test_extract_names_the_json_entry_that_leads_out(case, pictures, tmp_path, capsys):
    images, secret = pictures
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "../outside/secret.png"}],
        "annotations": [{"image_id": 1, "id": 1, "caption": "red"}, {"image_id": 2, "id": 2, "caption": "blue"}]}))
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, "extract", JSON=captions, TARGET=secret, DIR=images.resolve())


@pytest.mark.parametrize("case", [CASES["extract_allow_images_outside"]], ids=str)
def test_extract_reads_pictures_elsewhere_when_asked(case, pictures, tmp_path):
    from mlasm.extract import add_extract_arguments
    import argparse

    images, secret = pictures
    csv = tmp_path / "captions.csv"
    csv.write_text(f"file_name,caption\na.png,a red picture\n../outside/secret.png,a blue one\n{secret},again\n")
    parser = argparse.ArgumentParser()
    add_extract_arguments(parser)
    args = parser.parse_args(["--images", str(images), "--captions", str(csv), "--out", "o", "--allow-images-outside"])
    assert args.allow_images_outside is True
    proposer = RecordingProposer()
    extract_dataset(images, csv, tmp_path / "out", proposer=proposer, extractor=MeanColourExtractor(),
                    progress=False, allow_images_outside=True)
    assert [tuple(p[0, 0]) for p in proposer.pictures] == [(200, 10, 10), (10, 10, 200), (10, 10, 200)]
    assert read_meta(tmp_path / "out")["pictures_outside_allowed"] is True
    split = read_split(tmp_path / "out", "all")
    assert split.picture_folders is None and np.asarray(split.get_image(1))[0, 0].tolist() == [10, 10, 200]


def _tsv_and_karpathy(tmp_path: Path, names: dict[int, str], folders: dict[int, str] | None = None):
    records = [replace(record, image_id=str(i)) for i, record in enumerate(_records(3))]  # Karpathy's imgid
    write_tsv(tmp_path / "features.tsv", records)
    content = _karpathy(3, {0: "train", 1: "train", 2: "train"})
    for i, name in names.items():
        content["images"][i]["filename"] = name
    for i, folder in (folders or {}).items():
        content["images"][i]["filepath"] = folder
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps(content))
    return tmp_path / "features.tsv", captions


@pytest.mark.parametrize("case", [CASES[k] for k in (
    "prepare_karpathy_up_to_etc", "prepare_karpathy_in_a_sibling_folder", "prepare_karpathy_absolute",
    "prepare_karpathy_symlink_out")], ids=str)
def test_prepare_records_no_picture_outside_images(case, pictures, tmp_path, capsys):
    images, secret = pictures
    name, target = _escape(case.key, images, secret)
    if "sibling" in case.key:
        tsv, captions = _tsv_and_karpathy(tmp_path, {1: "secret.png"}, {1: "../outside"})
    else:
        tsv, captions = _tsv_and_karpathy(tmp_path, {0: name})
    out = tmp_path / "prepared"
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(out),
            "--max-regions", "6", "--match", "id", "--images", str(images)]
    _refused(capsys, argv, case, "prepare", JSON=captions, TARGET=target, DIR=images.resolve())
    assert not out.exists()


@pytest.mark.parametrize("case", [CASES["prepare_allow_images_outside"]], ids=str)
def test_prepare_records_pictures_elsewhere_when_asked(case, pictures, tmp_path, capsys):
    images, secret = pictures
    tsv, captions = _tsv_and_karpathy(tmp_path, {1: "secret.png"}, {1: "../outside"})
    out = tmp_path / "prepared"
    code, line, _ = answer(capsys, ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions),
                                    "--out", str(out), "--max-regions", "6", "--match", "id", "--images",
                                    str(images), "--allow-images-outside"])
    assert code == 0, line
    meta = read_meta(out)
    assert meta["pictures_outside_allowed"] is True and meta["picture_folder"] == str(images.resolve())
    split = read_split(out, "train")
    assert split.image_paths[1] == str(secret)
    assert np.asarray(split.get_image(1))[0, 0].tolist() == [10, 10, 200]


def _dataset_with_paths(folder: Path, lines: list[str], meta: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    split = RetrievalSplit("test", rng.normal(size=(2, 3, 4)).astype(np.float32), None, None,
                           [f"caption {i}" for i in range(10)], np.arange(10) // 5,
                           boxes=np.tile(np.array([0, 0, 4, 4], np.float32), (2, 3, 1)))
    write_split(folder, "test", split, meta=meta)
    (folder / "test_image_paths.txt").write_text("".join(line + "\n" for line in lines))
    return folder / "test_image_paths.txt"


@pytest.mark.parametrize("case", [CASES[k] for k in (
    "workbench_image_path_up_to_etc", "workbench_image_path_in_a_sibling_folder", "workbench_image_path_absolute",
    "workbench_image_path_symlink_out")], ids=str)
def test_the_workbench_reads_no_picture_outside_the_dataset(case, pictures, tmp_path):
    _, secret = pictures
    data = tmp_path / "data"
    data.mkdir()
    (data / "link.png").symlink_to(secret)
    name, target = _escape(case.key, data, secret)
    if case.key.endswith("up_to_etc"):
        name, target = "../../../etc/hostname", str((data / "../../../etc/hostname").resolve())
    row = 2 if "sibling" in case.key else 1
    lines = [name, ""] if row == 1 else ["", name]
    paths = _dataset_with_paths(data, lines)
    split = read_split(data, "test")
    with pytest.raises(OutsideFolder) as refused:
        split.get_image(row - 1)
    message = str(refused.value)
    assert case.expected(PATHS=paths, TARGET=target, DATA=data) in message
    assert "\n" not in message


@pytest.mark.parametrize("case", [CASES["workbench_picture_in_the_recorded_folder"]], ids=str)
def test_the_workbench_reads_pictures_of_the_recorded_folder(case, pictures, tmp_path):
    images, secret = pictures
    data = tmp_path / "data"
    _dataset_with_paths(data, [str(images / "a.png"), str(secret)], meta={"picture_folder": str(images)})
    split = read_split(data, "test")
    assert np.asarray(split.get_image(0))[0, 0].tolist() == [200, 10, 10]
    with pytest.raises(DataError, match="outside"):
        split.get_image(1)
    # a split written by one's own code records the folder of its pictures itself
    own = RetrievalSplit("own", np.ones((1, 2, 3), np.float32), None, None, ["a"], [0],
                         image_paths=[str(secret)])
    write_split(tmp_path / "own", "own", own)
    assert np.asarray(read_split(tmp_path / "own", "own").get_image(0))[0, 0].tolist() == [10, 10, 200]


@pytest.mark.parametrize("case", [CASES["workbench_drawing_of_a_refused_picture"]], ids=str)
def test_the_attention_view_of_a_refused_picture_is_a_blank_canvas(case, pictures, tmp_path):
    from types import SimpleNamespace

    from widgets.drawing import picture_with_boxes

    data = tmp_path / "data"
    _dataset_with_paths(data, ["../../../etc/hostname", ""])
    split = read_split(data, "test")
    session = SimpleNamespace(split=split, picture=split.get_image)
    with pytest.warns(UserWarning, match="line 1: picture .* outside"):
        canvas, boxes, note = picture_with_boxes(session, 0)
    assert canvas.size == (4, 4) and "blank canvas" in note and boxes.shape == (3, 4)


# ------------------------------------------------------------------------------ memory bounded

LONG_CAPTION = " ".join(["a red square left of a blue circle"] * 1250)  # 10,000 words


def _with_long_caption(data_folder: Path, target: Path, split: str, caption: int) -> Path:
    shutil.copytree(data_folder, target)
    lines = (target / f"{split}_caps.txt").read_text().splitlines()
    lines[caption] = LONG_CAPTION
    (target / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return target


@pytest.mark.parametrize("case", [CASES["evaluate_caption_of_10000_words"]], ids=str)
def test_evaluate_cuts_a_caption_of_10000_words_with_one_warning(case, finished_run, data_folder, tmp_path, capsys):
    data = _with_long_caption(data_folder, tmp_path / "data", "dev", 3)
    code = main(["evaluate", "--checkpoint", str(finished_run / "best.pt"), "--data", str(data), "--split", "dev",
                 "--out", str(tmp_path / "eval"), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("mlasm evaluate: warning:")]
    assert len(warned) == 1 and case.shows.split("one line: ")[1] in warned[0], warned
    assert "Traceback" not in err and json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_captions"] == 80


@pytest.mark.parametrize("case", [CASES["train_caption_of_10000_words"]], ids=str)
def test_training_cuts_a_caption_of_10000_words_with_one_warning(case, data_folder, tmp_path, capsys):
    data = _with_long_caption(data_folder, tmp_path / "data", "train", 5)
    code = main(_train_command(data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("mlasm train: warning:")]
    assert len(warned) == 1 and case.shows.split("one line: ")[1] in warned[0], warned


def test_a_cut_caption_keeps_its_first_words_and_its_boundaries():
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "b"], boundaries=True)
    with pytest.warns(CaptionsCutWarning, match="1 of 2 captions of split 's' have more than 3 words"):
        encoded = encode_captions(vocab, ["a b a b a", "b a"], where="of split 's' ", max_words=3)
    assert encoded.ids[encoded.offsets[0]:encoded.offsets[1]].tolist() == [1, 4, 5, 4, 2]  # <start> a b a <end>
    assert encoded.ids[encoded.offsets[1]:].tolist() == [1, 5, 4, 2]
    assert cut_caption(list("SabcdE"), True, 2) == list("SabE") and cut_caption(list("abc"), False, 2) == list("ab")


@pytest.mark.parametrize("case", [CASES["workbench_typed_text_of_10000_words"]], ids=str)
def test_a_typed_query_of_10000_words_is_cut_with_one_warning(case, finished_run, data_folder):
    from mlasm.session import WorkbenchSession

    session = WorkbenchSession.from_checkpoint(finished_run / "best.pt", str(data_folder), "dev",
                                               device="cpu", saved_scores=False)
    with pytest.warns(CaptionsCutWarning) as warned:
        query = session.encode_text(LONG_CAPTION)
    assert len(warned) == 1 and case.shows.split("one warning: ")[1].split(";")[0] in str(warned[0].message)
    words = [t for t in query.tokens if t not in ("<start>", "<end>")]
    assert len(words) == MAX_CAPTION_WORDS and query.encoding.words.shape[1] == len(query.tokens)
    assert np.isfinite(session.text_scores(LONG_CAPTION)["final"]).all()


@pytest.mark.parametrize("case", [CASES["extract_strip_of_4_by_2000_pixels"]], ids=str)
def test_a_long_strip_becomes_a_bounded_backbone_input(case):
    from mlasm.extract.backbone import EfficientNetLite0Extractor

    extractor = EfficientNetLite0Extractor.__new__(EfficientNetLite0Extractor)  # no network needed for the input
    extractor.short_side, extractor.device = 224, torch.device("cpu")
    strip, factors = extractor.network_input(Image.new("RGB", (4, 2000), (1, 2, 3)))
    assert tuple(strip.shape) == (1, 3, 896, 32)  # not (1, 3, 112000, 224)
    np.testing.assert_allclose(factors, [32 / 4, 896 / 2000] * 2)
    photo, _ = extractor.network_input(Image.new("RGB", (640, 480)))
    assert tuple(photo.shape) == (1, 3, 224, 288)  # an ordinary photo as before


def png_header(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (colour type 2 RGB, 6 RGBA) and whose
    data are a few bytes: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


_LARGE = {"extract_picture_over_the_pixel_limit": (9000, 8000, 2),
          "extract_picture_over_the_byte_limit": (8000, 7000, 6),
          "extract_decompression_bomb": (100_000, 100_000, 2)}


@pytest.mark.parametrize("case", [CASES[k] for k in _LARGE], ids=str)
def test_pictures_too_large_are_skipped_before_decoding(case, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "large.png").write_bytes(png_header(*_LARGE[case.key]))
    Image.new("RGB", (8, 6), (200, 10, 10)).save(images / "a.png")
    (tmp_path / "captions.csv").write_text("file_name,caption\nlarge.png,a large one\na.png,a red one\n")
    proposer = RecordingProposer()
    with pytest.warns(UnreadableImageWarning) as warned:
        result = extract_dataset(images, tmp_path / "captions.csv", tmp_path / "out", proposer=proposer,
                                 extractor=MeanColourExtractor(), progress=False)
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    expected = case.expected(FILE=images / "large.png").split(": ", 1)[1]  # after "skipped with one line..."
    assert expected in str(warned[0].message), str(warned[0].message)
    assert result.split_sizes == {"all": 1} and len(proposer.pictures) == 1
    assert read_meta(tmp_path / "out")["skipped_images"][0]["file_name"] == "large.png"


@pytest.mark.parametrize("case", [CASES["workbench_picture_over_the_limit"]], ids=str)
def test_the_workbench_refuses_a_picture_too_large_in_one_line(case, tmp_path):
    data = tmp_path / "data"
    _dataset_with_paths(data, ["large.png", ""])
    (data / "large.png").write_bytes(png_header(9000, 8000))
    with pytest.raises(DataError) as refused:
        read_split(data, "test").get_image(0)
    assert case.expected(FILE=data / "large.png") in str(refused.value) and "\n" not in str(refused.value)


def _many_regions(n_images=10, n_regions=10_000, d=32, n_captions=20, n_words=12):
    rng = np.random.default_rng(0)
    regions = torch.from_numpy(rng.normal(size=(n_images, n_regions, d)).astype(np.float32))
    mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    mask[:, -7:] = False
    words = torch.from_numpy(rng.normal(size=(n_captions, n_words, d)).astype(np.float32))
    lengths = torch.from_numpy(rng.integers(3, n_words + 1, n_captions))
    glob = torch.from_numpy(rng.normal(size=(n_images, d)).astype(np.float32))
    return ImageEncoding(regions, mask, glob), CaptionEncoding(words, lengths)


@pytest.mark.parametrize("case", [CASES["score_10000_regions_in_the_budget"]], ids=str)
def test_many_regions_are_scored_within_the_block_budget(case, monkeypatch):
    model = MLASM(MLASMConfig.cpu(embed_size=32, vocab_size=10, word_dim=8, region_dim=32, global_dim=32)).eval()
    img, cap = _many_regions()
    budget = 64 * 2**20
    seen = []
    score_block = MLASM._score_block

    def recording(self, regions, words, *args):
        n, r, d = regions.vectors.shape
        m, length, _ = words.vectors.shape
        own = sum(t.numel() for t in regions if t is not None) * 4
        seen.append((n * m * blocks_module._bytes_per_pair(r, length, d, 4), own, regions.gram is None))
        return score_block(self, regions, words, *args)

    monkeypatch.setattr(MLASM, "_score_block", recording)
    scores = model.score_all(img, cap, memory_budget_mb=64)
    assert seen and all(pairs + own <= budget and own <= budget / 2 and no_gram for pairs, own, no_gram in seen), seen
    monkeypatch.setattr(blocks_module, "_gram_fits", lambda *args: True)  # the Gram path, as for few regions
    with_gram = model.score_all(img, cap, memory_budget_mb=1024)
    for level in ("t2i", "i2t", "local", "global", "final"):
        torch.testing.assert_close(scores[level], with_gram[level], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", [CASES["encode_10000_regions_in_the_budget"]], ids=str)
def test_many_regions_are_encoded_in_batches_the_budget_holds(case, monkeypatch):
    from mlasm.evaluate import encode_split

    rng = np.random.default_rng(0)
    split = RetrievalSplit("many", rng.normal(size=(20, 10_000, 64)).astype(np.float32), None, None,
                           ["a red square ."] * 20, np.arange(20))
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "square", "."])
    model = MLASM(MLASMConfig.cpu(embed_size=32, vocab_size=len(vocab), word_dim=8, region_dim=64,
                                  global_dim=64)).eval()
    batches = []
    encode_images = MLASM.encode_images

    def recording(self, regions, *rest):
        batches.append(regions.shape[0])
        return encode_images(self, regions, *rest)

    monkeypatch.setattr(MLASM, "encode_images", recording)
    img, _ = encode_split(model, split, vocab)
    per_image = 4 * 10_000 * (2 * 64 + 3 * 32)  # the features twice and about three embeddings a region
    assert batches == [7, 7, 6] and max(batches) * per_image <= 64 * 2**20
    assert img.regions.shape == (20, 10_000, 32)


def _resident_bytes_of(path: Path) -> int:
    """How much of the memory-mapped file ``path`` is in this process's resident memory (/proc/self/smaps)."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(" " + str(path))
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1]) * 1024
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
@pytest.mark.parametrize("case", [CASES["score_10000_regions_in_the_budget"]], ids=str)
def test_the_features_an_evaluation_encoded_are_not_kept_in_its_memory(case, tmp_path):
    """The features of a memory-mapped split are copied batch by batch into the encoder; the pages read are
    given back, so that they do not stay resident beside the scoring (the file is 8 MB here)."""
    from mlasm.encoding import encode_split

    rng = np.random.default_rng(0)
    split = RetrievalSplit("many", rng.normal(size=(20, 1_000, 100)).astype(np.float32), None, None,
                           ["a red square ."] * 20, np.arange(20))
    write_split(tmp_path, "test", split)
    mapped = read_split(tmp_path, "test")
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "square", "."])
    model = MLASM(MLASMConfig.cpu(embed_size=32, vocab_size=len(vocab), word_dim=8, region_dim=100,
                                  global_dim=100)).eval()
    np.asarray(mapped.regions).sum()  # every page read once (as a check of the file would), so resident
    assert _resident_bytes_of(tmp_path / "test_ims.npy") >= split.regions.nbytes
    img, _ = encode_split(model, mapped, vocab)
    assert _resident_bytes_of(tmp_path / "test_ims.npy") == 0
    encoded = model.encode_images(*(torch.from_numpy(a) for a in (split.regions, split.region_mask,
                                                                  split.regions.mean(axis=1))))
    torch.testing.assert_close(img.regions, encoded.regions)  # the encodings are those of the features


@pytest.mark.parametrize("case", [CASES["threads_above_the_usable_cores"]], ids=str)
def test_threads_above_the_usable_cores_are_capped_with_one_line(case, tmp_path, capsys):
    from mlasm.threads import usable_cores

    before = torch.get_num_threads()
    code = main(["check", str(tmp_path / "none"), "--threads", "1000"])
    err = capsys.readouterr().err
    cores = usable_cores()
    assert code == 2 and torch.get_num_threads() == before
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned == ["mlasm check: warning: " + case.shows.split("warning: ")[1].replace("N cores", f"{cores} cores")
                      .replace("using N", f"using {cores}").replace(" 1 cores", " 1 core")]


# ------------------------------------------------------------------------------ caches that heal

def _rewrite(path: Path, change) -> None:
    """Load every member of an .npz, let ``change`` edit the dict, write it again whole (new CRCs)."""
    with np.load(path, allow_pickle=False) as saved:
        members = {name: saved[name] for name in saved.files}
    change(members)
    with open(path, "wb") as f:
        np.savez(f, **members)


def _damage(key: str, path: Path) -> None:
    data = path.read_bytes()
    if key == "scores_truncated":
        path.write_bytes(data[:len(data) // 2])
    elif key == "scores_empty":
        path.write_bytes(b"")
    elif key == "scores_bit_flipped":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("final.npy")
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200  # inside the stored matrix
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    elif key == "scores_changed_numbers":
        _rewrite(path, lambda m: m.update(final=m["final"] * 0.5))
    elif key == "scores_missing_level":
        _rewrite(path, lambda m: m.pop("global"))
    elif key == "scores_without_checksum":
        _rewrite(path, lambda m: m.pop("checksum"))
    elif key == "scores_nan":
        def nan(m):
            m["final"] = m["final"].copy()
            m["final"][2, 5] = np.nan
            m["checksum"] = np.array(arrays_checksum({k: v for k, v in m.items() if k not in ("fingerprint", "checksum")}))
        _rewrite(path, nan)
    elif key == "scores_wrong_shape":
        _rewrite(path, lambda m: m.update(t2i=np.zeros((3, 4), np.float32)))
    elif key == "scores_declaring_gigabytes":
        _rewrite(path, lambda m: m.update(final=np.zeros(50 * 2**20 // 4, np.float32)))
    else:
        raise KeyError(key)


_DAMAGED = ["scores_truncated", "scores_empty", "scores_bit_flipped", "scores_changed_numbers", "scores_missing_level",
            "scores_without_checksum", "scores_nan", "scores_wrong_shape", "scores_declaring_gigabytes"]


@pytest.fixture(scope="module")
def evaluated_run(finished_run, data_folder, tmp_path_factory):
    """The tiny run evaluated on dev: scores.npz beside the run's checkpoints."""
    from mlasm.evaluate import evaluate_checkpoints

    run = Path(shutil.copytree(finished_run, tmp_path_factory.mktemp("evaluated") / "run"))
    evaluate_checkpoints([run / "best.pt"], read_split(data_folder, "dev"), out_dir=run, progress=False)
    return run


@pytest.mark.parametrize("case", [CASES[k] for k in _DAMAGED], ids=str)
def test_a_damaged_scores_file_is_ignored_with_one_line(case, evaluated_run, data_folder, tmp_path):
    run = Path(shutil.copytree(evaluated_run, tmp_path / "run"))
    scores = run / SCORES_FILE
    fingerprint = scores_fingerprint([run / "best.pt"], read_split(data_folder, "dev"))
    assert read_saved_scores(scores, fingerprint) is not None  # whole, it is used
    _damage(case.key, scores)
    with pytest.warns(SavedScoresIgnored) as warned:
        assert read_saved_scores(scores, fingerprint) is None
    assert len(warned) == 1
    message = str(warned[0].message)
    assert case.expected(FILE=scores) in message and "\n" not in message, message


@pytest.mark.parametrize("case", [CASES["scores_heal_in_the_workbench"]], ids=str)
@pytest.mark.parametrize("damage", ["scores_truncated", "scores_missing_level", "scores_nan",
                                    "scores_changed_numbers"])
def test_the_workbench_scores_again_instead_of_failing(case, damage, evaluated_run, data_folder, tmp_path):
    from mlasm.session import WorkbenchSession

    run = Path(shutil.copytree(evaluated_run, tmp_path / "run"))
    _damage(damage, run / SCORES_FILE)
    with pytest.warns(SavedScoresIgnored):
        session = WorkbenchSession.from_checkpoint(run / "best.pt", str(data_folder), "dev", device="cpu")
    assert session.scores_source is None
    fresh = WorkbenchSession.from_checkpoint(run / "best.pt", str(data_folder), "dev", device="cpu",
                                             saved_scores=False)
    for level in session.levels:
        np.testing.assert_array_equal(session.scores[level], fresh.scores[level])
    assert session.scores_source == "computed"
    for key, ranks in session.ranks.items():  # no NonFiniteScores: the NaN was the file's, not the model's
        np.testing.assert_array_equal(ranks, np.load(run / "ranks.npz")[key], err_msg=key)


@pytest.fixture
def one_picture(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(images / "a.png")
    (tmp_path / "captions.csv").write_text("file_name,caption\na.png,a red one\n")
    out = tmp_path / "out"
    extract_dataset(images, tmp_path / "captions.csv", out, proposer=RecordingProposer(),
                    extractor=MeanColourExtractor(), progress=False)
    work = next((out / ".work").glob("*/*.npz"))
    return images, tmp_path / "captions.csv", out, work


@pytest.mark.parametrize("case", [CASES[k] for k in ("extract_work_file_truncated",
                                                     "extract_work_file_declaring_megabytes",
                                                     "extract_work_file_nan")], ids=str)
def test_a_damaged_work_file_is_extracted_again(case, one_picture):
    images, captions, out, work = one_picture
    before = np.load(out / "all_ims.npy")
    if case.key.endswith("truncated"):
        work.write_bytes(work.read_bytes()[:100])
    elif case.key.endswith("megabytes"):
        _rewrite(work, lambda m: m.update(regions=np.zeros(2**20, np.float32)))
    else:
        _rewrite(work, lambda m: m["regions"].__setitem__((0, 0), np.nan))
    proposer = RecordingProposer()
    with pytest.warns(DamagedWorkFileWarning) as warned:
        result = extract_dataset(images, captions, out, proposer=proposer, extractor=MeanColourExtractor(),
                                 progress=False)
    assert len(warned) == 1 and case.expected(WORK=work).split("warning: ")[1] in str(warned[0].message)
    assert result.n_computed == 1 and len(proposer.pictures) == 1
    np.testing.assert_array_equal(np.load(out / "all_ims.npy"), before)
    assert extract_dataset(images, captions, out, proposer=proposer, extractor=MeanColourExtractor(),
                           progress=False).n_cached == 1  # healed: the new work file is used next time


# ------------------------------------------------------------------------------ more paths

@pytest.mark.parametrize("case", [CASES["extract_json_file_name_with_a_nul_byte"]], ids=str)
def test_a_file_name_with_a_nul_byte_is_refused_in_one_line(case, pictures, tmp_path, capsys):
    images, _ = pictures
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "a\u0000b.png"}],
                                    "annotations": [{"image_id": 1, "id": 1, "caption": "red"}]}))
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, "extract", JSON=captions)


@pytest.mark.parametrize("case", [CASES["extract_csv_row_with_a_nul_byte"]], ids=str)
def test_a_csv_row_with_a_nul_byte_is_one_line(case, pictures, tmp_path, capsys):
    images, _ = pictures
    csv = tmp_path / "captions.csv"
    csv.write_bytes(b"file_name,caption\na\x00b.png,red\n")
    argv = ["extract", "--images", str(images), "--captions", str(csv), "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, "extract", CSV=csv)


@pytest.mark.parametrize("case", [CASES["workbench_image_path_symlink_loop"]], ids=str)
def test_a_symlink_loop_in_image_paths_is_one_line(case, tmp_path):
    data = tmp_path / "data"
    paths = _dataset_with_paths(data, ["loop.png", ""])
    (data / "loop.png").symlink_to(data / "loop.png")
    with pytest.raises(DataError) as refused:
        read_split(data, "test").get_image(0)
    assert case.expected(PATHS=paths, DATA=data) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("case", [CASES["prepare_coco_captions_absolute"]], ids=str)
def test_prepare_refuses_an_absolute_coco_file_name(case, pictures, tmp_path, capsys):
    images, secret = pictures
    records = [replace(record, image_id=str(i + 1)) for i, record in enumerate(_records(2))]
    write_tsv(tmp_path / "features.tsv", records)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({
        "images": [{"id": 1, "file_name": str(secret)}, {"id": 2, "file_name": "a.png"}],
        "annotations": [{"image_id": i, "id": i * 10 + k, "caption": f"caption {k}"} for i in (1, 2)
                        for k in range(5)]}))
    argv = ["prepare", "tsv", "--features", str(tmp_path / "features.tsv"), "--captions", str(captions),
            "--out", str(tmp_path / "prepared"), "--max-regions", "6", "--images", str(images)]
    _refused(capsys, argv, case, "prepare", JSON=captions, TARGET=secret, DIR=images.resolve())


# ------------------------------------------------------------------------------ nothing replaced unasked

@pytest.mark.parametrize("case, compare", [(CASES["demo_into_an_earlier_demo"], False),
                                           (CASES["demo_compare_into_an_earlier_comparison"], True)], ids=str)
def test_a_second_demo_does_not_replace_the_first(case, compare, tmp_path, capsys):
    out = tmp_path / "demo"
    run = out / ("local_only" if compare else "mlasm")
    run.mkdir(parents=True)
    for name in ("last.pt", "best.pt", "train_log.jsonl"):
        (run / name).write_text("the first demo's")
    argv = ["demo", "--fast", "--out", str(out)] + (["--compare"] if compare else [])
    _refused(capsys, argv, case, "demo", DIR=out)
    assert (run / "best.pt").read_text() == "the first demo's"


@pytest.mark.parametrize("case", [CASES["demo_overwrite"]], ids=str)
def test_overwrite_lets_a_demo_replace_the_first(case, tmp_path, monkeypatch):
    import mlasm.demo as demo

    out = tmp_path / "demo"
    (out / "mlasm").mkdir(parents=True)
    (out / "mlasm" / "best.pt").write_text("the first demo's")

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(demo, "open_split", started)  # the first step after the check
    with pytest.raises(RunFolderError):
        demo.run_demo(out, fast=True)
    with pytest.raises(Started):
        demo.run_demo(out, fast=True, overwrite=True)


@pytest.mark.parametrize("case, command", [(CASES["train_out_empty"], "train"), (CASES["evaluate_out_empty"], "evaluate"),
                                           (CASES["extract_out_empty"], "extract"), (CASES["demo_out_empty"], "demo")],
                         ids=str)
def test_an_empty_output_folder_name_is_refused(case, command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were it taken as ".", the run would land here
    missing = tmp_path / "missing"
    argv = {"train": ["train", "--data", str(missing)],
            "evaluate": ["evaluate", "--checkpoint", str(missing / "a.pt"), "--data", str(missing)],
            "extract": ["extract", "--images", str(missing), "--captions", str(missing / "c.csv")],
            "demo": ["demo", "--fast"]}[command] + ["--out", ""]
    _refused(capsys, argv, case, command)
    assert list(tmp_path.iterdir()) == []


def _fake_export(monkeypatch, tmp_path):
    """export_notebooks without a kernel: a notebook 'executed' into a page of known text."""
    import mlasm.export as export

    notebook = tmp_path / "01_page.py"
    notebook.write_text("# a notebook\n")
    monkeypatch.setattr(export, "execute", lambda nb, folder, **kwargs: nb)
    monkeypatch.setattr(export, "read_notebook", lambda path: "new page")
    monkeypatch.setattr(export, "to_html", lambda nb, assets=None: "<html>the new page</html>")
    monkeypatch.setattr(export, "widget_state", lambda nb: {})
    monkeypatch.setattr(export, "missing_assets", lambda folder=None: [])
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in export.ASSETS:
        (assets / name).write_text(f"// {name}")
    monkeypatch.setattr(export, "assets_dir", lambda: assets)
    return export, notebook


@pytest.mark.parametrize("case, failing", [(CASES["export_page_disk_full"], "01_page.html"),
                                           (CASES["export_script_disk_full"], "anywidget.js")], ids=str)
def test_an_export_onto_a_full_disk_keeps_the_earlier_files(case, failing, tmp_path, monkeypatch):
    export, notebook = _fake_export(monkeypatch, tmp_path)
    out = tmp_path / "site"
    linked = failing.endswith(".js")  # the scripts are files of their own only beside linked pages
    export.export_notebooks(out, [notebook], progress=False, linked_assets=linked)
    earlier = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _full_disk_for(failing, monkeypatch)
    monkeypatch.setattr(export, "to_html", lambda nb, assets=None: "<html>a newer page</html>")
    with pytest.raises(OSError) as full:
        export.export_notebooks(out, [notebook], progress=False, linked_assets=linked)
    assert case.expected(OUT=out, PAGE="01_page").split("; the earlier")[0] == describe_error(full.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier  # nothing half-written


@pytest.fixture
def interrupted_evaluation(finished_run, data_folder, tmp_path, monkeypatch):
    """An evaluation into a folder holding an earlier one, stopped right after its first rename
    (ranks.npz); returns the folder, the earlier files and the new files as a whole run writes them."""
    import mlasm.io as io_module
    from mlasm.evaluate import evaluate_checkpoints

    out, whole = tmp_path / "eval", tmp_path / "whole"
    dev = read_split(data_folder, "dev")
    evaluate_checkpoints([finished_run / "best.pt"], dev, out_dir=whole, progress=False)
    names = ("ranks.npz", SCORES_FILE, "metrics.json")
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"earlier " + name.encode())
    renames = []
    replace_file = os.replace

    class Stopped(BaseException):
        pass

    def stopping(source, target):
        replace_file(source, target)
        if str(source).endswith(".tmp") and Path(target).name in names:
            renames.append(target)
            if len(renames) == 1:
                raise Stopped
    monkeypatch.setattr(io_module.os, "replace", stopping)
    return out, whole, names, lambda: evaluate_checkpoints([finished_run / "best.pt"], dev, out_dir=out,
                                                          progress=False), Stopped


def _same_evaluation(out: Path, whole: Path, names) -> None:
    assert np.load(out / "ranks.npz")["final_t2i_rank"].tolist() == np.load(whole / "ranks.npz")["final_t2i_rank"].tolist()
    for level in ("final", "t2i"):
        np.testing.assert_array_equal(np.load(out / SCORES_FILE)[level], np.load(whole / SCORES_FILE)[level])
    assert json.loads((out / "metrics.json").read_text())["rsum"] == json.loads((whole / "metrics.json").read_text())["rsum"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", [CASES["evaluate_interrupted_between_renames"]], ids=str)
def test_an_interrupt_between_evaluates_renames_finishes_them(case, interrupted_evaluation):
    out, whole, names, evaluate, stopped = interrupted_evaluation
    with pytest.raises(stopped):
        evaluate()
    _same_evaluation(out, whole, names)


@pytest.mark.parametrize("case", [CASES["evaluate_killed_between_renames"]], ids=str)
def test_a_kill_between_evaluates_renames_is_finished_later(case, interrupted_evaluation, monkeypatch,
                                                            finished_run, data_folder):
    import mlasm.io as io_module

    out, whole, names, evaluate, stopped = interrupted_evaluation
    finish = io_module._finish_renames

    def killed(journal):  # metrics.json removed, the first rename, then the process is gone
        renames = json.loads(journal.read_text())
        Path(renames[-1][1]).unlink(missing_ok=True)
        if Path(renames[0][0]).exists():
            os.replace(*renames[0])
        raise stopped

    monkeypatch.setattr(io_module, "_finish_renames", killed)
    with pytest.raises(stopped):
        evaluate()
    monkeypatch.undo()
    assert (out / "ranks.npz").read_bytes() != b"earlier ranks.npz" and not (out / "metrics.json").exists()
    journal = next(out.glob(".metrics.json.*.together"))
    dead = journal.with_name(f".metrics.json.999999999.together")  # as left by a process no longer running
    journal.rename(dead)
    assert io_module._finish_renames is finish
    from mlasm.saved_scores import find_saved_scores
    scores, where = find_saved_scores(finished_run / "best.pt", read_split(data_folder, "dev"), [out])
    assert where == out / SCORES_FILE  # the workbench opening the folder finished the renames first
    _same_evaluation(out, whole, names)


def _stopped_conversion(tmp_path, monkeypatch, stop_at_rename: bool):
    """A TSV conversion stopped after its TSV was read (at its second final rename, or before any)."""
    import mlasm.data.prepare as prepare

    tsv, captions = _tsv_and_karpathy(tmp_path, {})
    out = tmp_path / "prepared"
    whole = prepare.prepare_from_tsv(tsv, captions, tmp_path / "whole", max_regions=6, match="id", progress=False)

    class Stopped(Exception):
        pass

    renames = []
    replace_file = os.replace

    def stopping(source, target):
        if str(source).endswith(".partial"):
            renames.append(target)
            if len(renames) == 2:
                raise Stopped
        replace_file(source, target)

    if stop_at_rename:
        monkeypatch.setattr(prepare.os, "replace", stopping)
    else:
        def stop(records):
            if records == 2:
                raise Stopped
        with pytest.raises(Stopped):
            prepare.prepare_from_tsv(tsv, captions, out, max_regions=6, match="id", progress=False,
                                     checkpoint_every=1, on_record=stop)
        return tsv, captions, out, whole
    with pytest.raises(Stopped):
        prepare.prepare_from_tsv(tsv, captions, out, max_regions=6, match="id", progress=False)
    monkeypatch.undo()
    return tsv, captions, out, whole


def _same_folder(out: Path, whole: Path) -> None:
    for path in sorted((whole).glob("*")):
        if path.name != "meta.json":
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", [CASES["prepare_stopped_among_final_renames"]], ids=str)
def test_prepare_resumes_after_a_stop_among_its_final_renames(case, tmp_path, monkeypatch):
    from mlasm.data.prepare import prepare_from_tsv

    tsv, captions, out, whole = _stopped_conversion(tmp_path, monkeypatch, stop_at_rename=True)
    assert list(out.glob(".*.partial")) and list(out.glob("*_ims.npy"))  # some renamed, some not
    prepare_from_tsv(tsv, captions, out, max_regions=6, match="id", progress=False)
    _same_folder(out, tmp_path / "whole")


@pytest.mark.parametrize("case", [CASES["prepare_input_touched"]], ids=str)
def test_prepare_resumes_after_its_input_was_touched(case, tmp_path, monkeypatch):
    from mlasm.data.prepare import prepare_from_tsv

    tsv, captions, out, whole = _stopped_conversion(tmp_path, monkeypatch, stop_at_rename=False)
    os.utime(tsv, ns=(1, 1))
    seen = []
    prepare_from_tsv(tsv, captions, out, max_regions=6, match="id", progress=False, on_record=seen.append)
    assert seen == [3]  # only the line not yet read
    _same_folder(out, tmp_path / "whole")


@pytest.mark.parametrize("case", [CASES["prepare_input_changed"]], ids=str)
def test_prepare_refuses_to_resume_on_changed_input(case, tmp_path, monkeypatch, capsys):
    tsv, captions, out, whole = _stopped_conversion(tmp_path, monkeypatch, stop_at_rename=False)
    records = [replace(record, image_id=str(i), width=999) for i, record in enumerate(_records(3))]
    write_tsv(tsv, records)
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(out),
            "--max-regions", "6", "--match", "id"]
    _refused(capsys, argv, case, "prepare", OUT=out)


@pytest.mark.parametrize("case", [CASES["scores_a_text_file"]], ids=str)
def test_a_text_file_named_scores_is_ignored_with_one_line(case, evaluated_run, data_folder, tmp_path):
    run = Path(shutil.copytree(evaluated_run, tmp_path / "run"))
    (run / SCORES_FILE).write_text("not scores at all\n")
    fingerprint = scores_fingerprint([run / "best.pt"], read_split(data_folder, "dev"))
    with pytest.warns(SavedScoresIgnored, match=re.escape(case.expected(FILE=run / SCORES_FILE))):
        assert read_saved_scores(run / SCORES_FILE, fingerprint) is None


@pytest.mark.parametrize("case", [CASES["prepare_record_of_rows_damaged"]], ids=str)
def test_a_damaged_record_of_written_rows_is_one_line(case, tmp_path, monkeypatch, capsys):
    from mlasm.data.prepare import FILLED_FILE

    tsv, captions, out, _ = _stopped_conversion(tmp_path, monkeypatch, stop_at_rename=False)
    filled = out / FILLED_FILE
    filled.write_bytes(filled.read_bytes()[:40])
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(out),
            "--max-regions", "6", "--match", "id"]
    _refused(capsys, argv, case, "prepare", FILE=filled)


@pytest.mark.parametrize("case", [CASES["extract_max_picture_megapixels"]], ids=str)
def test_the_picture_limit_is_the_users(case, tmp_path):
    from mlasm.extract import add_extract_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_extract_arguments(parser)
    args = parser.parse_args(["--images", "i", "--captions", "c.csv", "--out", "o", "--max-picture-megapixels", "0.01"])
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (200, 100)).save(images / "photo.png")
    Image.new("RGB", (50, 100)).save(images / "small.png")
    (tmp_path / "captions.csv").write_text("file_name,caption\nphoto.png,a photo\nsmall.png,a small one\n")
    with pytest.warns(UnreadableImageWarning) as warned:
        result = extract_dataset(images, tmp_path / "captions.csv", tmp_path / "out", proposer=RecordingProposer(),
                                 extractor=MeanColourExtractor(), progress=False,
                                 max_picture_pixels=int(args.max_picture_megapixels * 1e6))
    assert len(warned) == 1 and case.expected(FILE=images / "photo.png").split("one line: ")[1] in str(warned[0].message)
    assert result.split_sizes == {"all": 1}


@pytest.mark.parametrize("case", [CASES["workbench_save_figure_disk_full"]], ids=str)
def test_a_picture_saved_onto_a_full_disk_keeps_the_earlier_one(case, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from widgets.saving import save_figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "attention.svg")
    earlier = path.read_bytes()
    _full_disk_for("attention.svg", monkeypatch)
    fig.axes[0].plot([0, 1], [0, 1])
    with pytest.raises(OSError) as full:
        save_figure(fig, path)
    assert describe_error(full.value) == case.expected(FILE=path).split("; the earlier")[0]
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == ["attention.svg"]


# ------------------------------------------------------------------------------ issue 26, second part

def _edited_checkpoint(finished_run, tmp_path, edit) -> Path:
    """best.pt of the finished run, with EDIT applied to its state, saved as tmp_path/edited.pt."""
    from mlasm.checkpoint import load_checkpoint

    state = load_checkpoint(finished_run / "best.pt")
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


def _swap_two_words(state):
    state["vocab"][4], state["vocab"][5] = state["vocab"][5], state["vocab"][4]


@pytest.mark.parametrize("case, edit", [
    (CASES["checkpoint_vocab_not_its_fingerprint"], _swap_two_words),
    (CASES["checkpoint_config_wrong_type"], lambda state: state["config"].update(embed_size="32")),
    (CASES["checkpoint_config_not_a_mapping"], lambda state: state.update(config=list(state["config"].items()))),
], ids=str)
def test_an_inconsistent_checkpoint_is_refused_in_one_line(case, edit, finished_run, data_folder, tmp_path, capsys):
    path = _edited_checkpoint(finished_run, tmp_path, edit)
    n_words = len(torch.load(path, weights_only=True)["vocab"])
    argv = ["evaluate", "--checkpoint", str(path), "--data", str(data_folder), "--split", "dev",
            "--out", str(tmp_path / "eval"), "--threads", "1"]
    _refused(capsys, argv, case, "evaluate", CKPT=path, N=f"{n_words:,}")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("case", [CASES["checkpoint_tensor_of_another_shape"]], ids=str)
def test_a_tensor_of_another_shape_is_named_with_both_shapes(case, finished_run, data_folder, tmp_path, capsys):
    from mlasm.checkpoint import load_model

    own = load_model(finished_run / "best.pt")[0].state_dict()
    name = next(n for n, t in own.items() if t.dim() == 2)
    shape = (own[name].shape[0] + 1, own[name].shape[1])
    path = _edited_checkpoint(finished_run, tmp_path, lambda state: state["model"].update({name: torch.zeros(shape)}))
    argv = ["evaluate", "--checkpoint", str(path), "--data", str(data_folder), "--split", "dev",
            "--out", str(tmp_path / "eval"), "--threads", "1"]
    _refused(capsys, argv, case, "evaluate", CKPT=path, NAME=name, SHAPE=str(shape), OWN=str(tuple(own[name].shape)))


@pytest.mark.parametrize("case", [CASES["resume_without_optimizer_state"]], ids=str)
def test_resume_without_optimizer_state_is_refused_before_any_file_changes(case, finished_run, data_folder,
                                                                          tmp_path, capsys):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    shutil.copy(run / "best.pt", run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    argv = _train_command(data_folder, run, "--resume", "--epochs", "2")
    line = _refused(capsys, argv, case, "train", LAST=run / "last.pt")
    assert "--resume cannot continue it" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # config.json as it was


# ---- silent wrong results: read right, or refused in one line

@pytest.fixture
def data_copy(data_folder, tmp_path):
    """The tiny precomp folder, copied so that a test may damage it."""
    return Path(shutil.copytree(data_folder, tmp_path / "data"))


@pytest.mark.parametrize("case", [CASES["caps_txt_with_a_bom"]], ids=str)
def test_a_byte_order_mark_in_captions_is_not_a_word(case, data_copy):
    caps = data_copy / "dev_caps.txt"
    caps.write_bytes(b"\xef\xbb\xbf" + caps.read_bytes())
    split = read_split(data_copy, "dev")
    first = caps.read_bytes()[3:].decode("utf-8").split("\n")[0].strip()
    assert split.captions[0] == first and not split.captions[0].startswith("\ufeff")
    vocab = Vocabulary.build(split.captions, min_count=1)
    assert vocab.encode(split.captions[0]).unknown == []


@pytest.mark.parametrize("case", [CASES["caption_csv_with_a_bom"], CASES["coco_json_with_a_bom"]], ids=str)
def test_captions_with_a_byte_order_mark_read_as_written(case, tmp_path):
    from mlasm.extract.captions import read_captions

    if "csv" in case.key:
        path = tmp_path / "captions.csv"
        path.write_bytes(b"\xef\xbb\xbf" + b"file_name,caption\na.png,red square\n")
    else:
        path = tmp_path / "captions.json"
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [
            {"image_id": 1, "id": 1, "caption": "red square"}]}).encode())
    [image] = read_captions(path)
    assert (image.file_name, image.captions) == ("a.png", ["red square"])


def _tsv_line(image_id="0", boxes=(10, 10, 20, 30), features=(0.5, 1.5)) -> str:
    import base64

    def b64(values):
        return base64.b64encode(np.asarray(values, np.float32).tobytes()).decode() if values else ""
    return "\t".join([image_id, "120", "90", "1", b64(boxes), b64(features)]) + "\n"


@pytest.mark.parametrize("case", [CASES["tsv_box_inverted"], CASES["tsv_features_empty"]], ids=str)
def test_prepare_refuses_a_tsv_box_inverted_or_features_empty(case, tmp_path, capsys):
    tsv, captions = _tsv_and_karpathy(tmp_path, {})
    line = _tsv_line(boxes=(50, 10, 20, 30)) if "inverted" in case.key else _tsv_line(features=())
    tsv.write_text(line + "".join(tsv.read_text().splitlines(keepends=True)[1:]))
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(tmp_path / "out"),
            "--max-regions", "6", "--match", "id"]
    _refused(capsys, argv, case, "prepare", TSV=tsv)


@pytest.mark.parametrize("case", [CASES["tsv_image_twice"]], ids=str)
def test_read_tsv_refuses_an_image_twice(case, tmp_path):
    from mlasm.data.tsv import read_tsv

    records = _records(2)
    write_tsv(tmp_path / "f.tsv", [records[0], records[0], records[1]])
    with pytest.raises(DataError, match=re.escape(case.expected(TSV=tmp_path / "f.tsv"))):
        read_tsv(tmp_path / "f.tsv")


@pytest.mark.parametrize("case", [CASES["caption_csv_row_twice"]], ids=str)
def test_a_repeated_csv_row_is_refused(case, pictures, tmp_path, capsys):
    images, _ = pictures
    csv = tmp_path / "captions.csv"
    csv.write_text("file_name,caption\na.png,a red picture\na.png,a red picture\n")
    argv = ["extract", "--images", str(images), "--captions", str(csv), "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, "extract", CSV=csv)
    csv.write_text("file_name,caption\na.png,a red picture\na.png,another caption\n")  # two captions: fine
    from mlasm.extract.captions import read_captions
    assert read_captions(csv)[0].captions == ["a red picture", "another caption"]


@pytest.mark.parametrize("case", [CASES["check_zero_d_features"]], ids=str)
def test_check_refuses_0_d_features(case, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    np.save(folder / "dev_ims.npy", np.zeros((2, 3, 0), np.float32))
    (folder / "dev_caps.txt").write_text("a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n")
    line = _refused(capsys, ["check", str(folder)], case, "check")
    assert str(folder / "dev_ims.npy") in line and "finite" not in line


@pytest.mark.parametrize("case", [CASES["prepare_split_given_twice"]], ids=str)
def test_prepare_refuses_a_split_given_twice(case, tmp_path, capsys):
    tsv, captions = _tsv_and_karpathy(tmp_path, {})
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(tmp_path / "out"),
            "--split", "test=train", "--split", "test=test"]
    _refused(capsys, argv, case, "prepare")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", [CASES["evaluate_split_of_one_image"], CASES["evaluate_captions_on_one_image"]],
                         ids=str)
def test_evaluate_refuses_a_split_whose_captions_describe_one_image(case, splits, finished_run, tmp_path, capsys):
    dev = splits["dev"]
    n = 1 if "split_of_one" in case.key else 3
    captions = list(dev.captions[:5])
    one = RetrievalSplit(name="one", regions=np.asarray(dev.regions[:n]), region_mask=np.asarray(dev.region_mask[:n]),
                         global_features=np.asarray(dev.global_features[:n]), captions=captions,
                         caption_to_image=np.zeros(5, np.int64))
    data = tmp_path / "data"
    write_split(data, "one", one)
    argv = ["evaluate", "--checkpoint", str(finished_run / "best.pt"), "--data", str(data), "--split", "one",
            "--out", str(tmp_path / "eval"), "--threads", "1"]
    _refused(capsys, argv, case, "evaluate", DATA=data)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("case", [CASES["shapescenes_cache_umask"]], ids=str)
def test_the_shapescenes_cache_is_made_with_the_users_umask(case, tmp_path):
    from cli_support import TINY_SIZES
    from mlasm.data.shapescenes.build import build_shapescenes

    before = os.umask(0o022)
    try:
        folder = build_shapescenes(sizes=TINY_SIZES, cache=tmp_path / "cache", progress=False)
    finally:
        os.umask(before)
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)


# ---- tracebacks and lines naming no file

def _deep_json() -> str:
    return "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("case", [CASES[f"json_nested_deep_{w}"] for w in (
    "grounding", "meta", "attributes", "karpathy", "scan_vocab")], ids=str)
def test_json_nested_100000_deep_is_one_line(case, data_copy, tmp_path, capsys):
    what = case.key.removeprefix("json_nested_deep_")
    if what in ("grounding", "meta", "attributes"):
        path = data_copy / ("meta.json" if what == "meta" else f"dev_{what}.json")
        assert path.is_file()
        path.write_text(_deep_json())
        _refused(capsys, ["check", str(data_copy), "--split", "dev"], case, "check", FILE=path)
    elif what == "karpathy":
        tsv, path = _tsv_and_karpathy(tmp_path, {})
        path.write_text(_deep_json())
        argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(path), "--out", str(tmp_path / "out")]
        _refused(capsys, argv, case, "prepare", FILE=path)
    else:
        path = tmp_path / "vocab.json"
        path.write_text(_deep_json())
        with pytest.raises(DataError, match=re.escape(case.expected(FILE=path))):
            Vocabulary.load(path)


@pytest.mark.parametrize("case", [CASES["npy_is_a_zip"], CASES["npy_symlink_to_text"],
                                  CASES["npy_of_python_objects"]], ids=str)
def test_an_npy_that_is_not_one_is_named_without_a_pickle_hint(case, data_copy, tmp_path, capsys):
    path = data_copy / "dev_ims.npy"
    target = tmp_path / "notes.txt"
    if case.key == "npy_is_a_zip":
        features = np.load(path)
        path.unlink()
        with open(path, "wb") as f:
            np.savez(f, ims=features)
    elif case.key == "npy_symlink_to_text":
        target.write_text("hello, world\n")
        path.unlink()
        path.symlink_to(target)
    else:
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    line = _refused(capsys, ["check", str(data_copy), "--split", "dev"], case, "check", FILE=path, TARGET=target)
    assert "allow_pickle" not in line


@pytest.mark.parametrize("case", [CASES["prepare_state_not_json"], CASES["prepare_state_of_another_shape"],
                                  CASES["prepare_state_damaged_restart"]], ids=str)
def test_a_damaged_conversion_state_is_one_line(case, tmp_path, monkeypatch, capsys):
    from mlasm.data.prepare import STATE_FILE

    tsv, captions, out, _ = _stopped_conversion(tmp_path, monkeypatch, stop_at_rename=False)
    state = out / STATE_FILE
    assert state.is_file()
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(out),
            "--max-regions", "6", "--match", "id"]
    if case.key == "prepare_state_damaged_restart":
        for text in ('{"kind', "[]"):
            state.write_text(text)
            code, line, _ = answer(capsys, argv + ["--restart"])
            assert code == 0, line
            assert read_split(out, "train").n_images == 3
        return
    state.write_text('{"kind' if case.key == "prepare_state_not_json" else "[]")
    _refused(capsys, argv, case, "prepare", FILE=state)


@pytest.mark.parametrize("case", [CASES["check_file_cut_short"]], ids=str)
def test_a_file_cut_short_while_checked_is_one_line_not_sigbus(case, data_copy):
    from mlasm.data.dataset import check_features

    split = read_split(data_copy, "dev")  # memory-mapped
    path = data_copy / "dev_ims.npy"
    opened = path.stat().st_size
    os.truncate(path, 4096)  # a page inside the header's: reading the features would be SIGBUS
    with pytest.raises(DataError, match=re.escape(case.expected(FILE=path, N="4,096", M=f"{opened:,}"))):
        check_features(split)


@pytest.mark.parametrize("case", [CASES["prepare_disk_full"]], ids=str)
def test_a_full_disk_during_prepare_names_the_users_file(case, tmp_path, monkeypatch, capsys):
    import errno
    import mlasm.data.prepare as prepare_module

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    tsv, captions = _tsv_and_karpathy(tmp_path, {})
    out = tmp_path / "out"
    monkeypatch.setattr(prepare_module.os, "pwrite", full)
    argv = ["prepare", "tsv", "--features", str(tsv), "--captions", str(captions), "--out", str(out),
            "--max-regions", "6", "--match", "id"]
    _refused(capsys, argv, case, "prepare", OUT=out)


@pytest.mark.parametrize("case", [CASES["shapescenes_disk_full"]], ids=str)
def test_a_full_disk_during_the_shapescenes_build_names_the_cache(case, tmp_path, monkeypatch):
    import errno
    import mlasm.data.shapescenes.build as build_module
    from cli_support import TINY_SIZES

    def full(folder, name, split, meta=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / f".{name}_ims.npy.tmp"))

    monkeypatch.setattr(build_module, "write_split", full)
    cache = tmp_path / "cache"
    folder = build_module.shapescenes_folder(0, TINY_SIZES, cache)
    with pytest.raises(OSError) as raised:
        build_module.build_shapescenes(sizes=TINY_SIZES, cache=cache, progress=False)
    from mlasm.cli import describe_error
    assert describe_error(raised.value) == case.expected(CACHE=folder)
    assert list(cache.iterdir()) == []  # nothing hidden left behind


@pytest.mark.parametrize("case", [CASES["caption_csv_latin1"], CASES["coco_json_duplicate_id"]], ids=str)
def test_caption_files_of_another_encoding_or_a_repeated_id_are_named(case, pictures, tmp_path, capsys):
    images, _ = pictures
    if "csv" in case.key:
        path = tmp_path / "captions.csv"
        path.write_bytes("file_name,caption\na.png,un café rouge\n".encode("latin-1"))
    else:
        path = tmp_path / "captions.json"
        path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
                                    "annotations": [{"image_id": 1, "id": 1, "caption": "red"}]}))
    argv = ["extract", "--images", str(images), "--captions", str(path), "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, "extract", CSV=path, JSON=path)


@pytest.mark.parametrize("case", [CASES["export_invalid_notebook"]], ids=str)
def test_an_invalid_notebook_is_named_before_anything_runs(case, tmp_path, capsys):
    for text in ("{not json", '{"cells": 3}'):
        notebook = tmp_path / "bad.ipynb"
        notebook.write_text(text)
        _refused(capsys, ["export-notebooks", "--out", str(tmp_path / "pages"), str(notebook)], case,
                 "export-notebooks", NB=notebook)
        assert not (tmp_path / "pages").exists()


@pytest.mark.parametrize("case", [CASES["check_missing_folder"]], ids=str)
def test_check_of_a_missing_folder_names_it(case, tmp_path, capsys):
    _refused(capsys, ["check", str(tmp_path / "nowhere")], case, "check", DIR=tmp_path / "nowhere")


@pytest.mark.parametrize("case", [CASES["glove_with_a_bom"]], ids=str)
def test_a_byte_order_mark_in_glove_is_not_a_part_of_the_first_word(case, tmp_path):
    from mlasm.wordvecs import load_word_vectors

    path = tmp_path / "glove.txt"
    path.write_bytes(b"\xef\xbb\xbfthe 0.5 1.5\nred 2.0 -1.0\n")
    vectors = load_word_vectors(path)
    assert vectors.words == ["the", "red"]
    np.testing.assert_array_equal(vectors.vectors[0], [0.5, 1.5])


@pytest.mark.parametrize("case", [CASES["train_log_damaged"], CASES["checkpoint_progress_of_another_run"]], ids=str)
def test_resume_from_a_damaged_log_or_progress_is_one_line(case, finished_run, data_folder, tmp_path, capsys):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    if case.key == "train_log_damaged":
        config = (run / "config.json").read_bytes()
        for text in ('{"epoch": 0, "lo\n', "[1, 2]\n", "[" * 100_000 + "\n"):
            (run / "train_log.jsonl").write_text(text)
            _refused(capsys, _train_command(data_folder, run, "--resume", "--epochs", "2"), case, "train",
                     LOG=run / "train_log.jsonl")
            assert (run / "config.json").read_bytes() == config  # refused before --epochs 2 was recorded
        return
    original = torch.load(run / "last.pt", weights_only=True)
    for change in ({"a_later_field": 1}, {"epoch": "1"}):
        state = {**original, "progress": {**original["progress"], **change}}
        torch.save(state, run / "last.pt")
        _refused(capsys, _train_command(data_folder, run, "--resume", "--epochs", "2"), case, "train",
                 LAST=run / "last.pt")


@pytest.mark.parametrize("case", [CASES["line_files_with_a_bom"]], ids=str)
def test_line_files_with_a_byte_order_mark_read_as_written(case, data_copy):
    plain = read_split(data_copy, "dev")
    for name in ("dev_positives.txt", "dev_ids.txt"):
        path = data_copy / name
        if not path.is_file():  # the tiny split's ids: written here
            path.write_text("".join(f"img{i}\n" for i in range(plain.n_images)))
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    split = read_split(data_copy, "dev")
    assert split.image_ids[0] == (data_copy / "dev_ids.txt").read_bytes()[3:].decode().split("\n")[0]
    assert not split.image_ids[0].startswith("\ufeff")
    assert split.positives.images_of(0).tolist() == plain.positives.images_of(0).tolist()


@pytest.mark.parametrize("case", [CASES["check_a_file_not_a_folder"]], ids=str)
def test_check_of_a_file_says_a_folder_was_expected(case, tmp_path, capsys):
    path = tmp_path / "dev_ims.npy"
    path.write_bytes(b"")
    _refused(capsys, ["check", str(path)], case, "check", FILE=path)


@pytest.mark.parametrize("case", [CASES["train_dev_split_of_one_image"]], ids=str)
def test_training_refuses_a_dev_split_of_one_described_image(case, splits, tmp_path, capsys):
    from cli_support import tiny_folder

    dev = splits["dev"]
    data = tmp_path / "data"
    write_split(data, "train", splits["train"])
    write_split(data, "dev", RetrievalSplit(
        name="dev", regions=np.asarray(dev.regions[:1]), region_mask=np.asarray(dev.region_mask[:1]),
        global_features=np.asarray(dev.global_features[:1]), captions=list(dev.captions[:5]),
        caption_to_image=np.zeros(5, np.int64)))
    _refused(capsys, _train_command(data, tmp_path / "run"), case, "train", DATA=data)
    assert not (tmp_path / "run" / "last.pt").exists()
    whole = tiny_folder(splits, tmp_path / "whole")  # the whole dev split, but validation on its first image
    code, line, _ = answer(capsys, _train_command(whole, tmp_path / "run2", "--validation-images", "1"))
    assert code == 2 and "split 'dev': its 5 captions describe 1 of its 1 images" in line, line


@pytest.mark.parametrize("case", [CASES["export_kernel_dies"]], ids=str)
def test_a_kernel_that_dies_during_export_is_one_line(case, tmp_path):
    pytest.importorskip("ipykernel")
    from mlasm import export

    notebook = tmp_path / "dies.py"
    notebook.write_text("# %%\nimport os\nos._exit(1)\n")
    with pytest.raises(export.ExportError) as raised:
        export.execute(export.read_notebook(notebook), tmp_path, timeout=60, name=str(notebook))
    assert describe_error(raised.value).startswith(case.expected(NB=notebook))
