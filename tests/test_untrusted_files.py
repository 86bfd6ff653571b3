"""Files nobody checked (issue 26): no read outside the folders the user named, memory bounded by
what the user set, caches that heal. Cases from tests/bad_inputs.py, one line each."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_inputs import CASES
from cli_support import answer
from mlasm.data import write_tsv
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.pictures import OutsideFolder
from mlasm.data.precomp import read_meta, read_split, write_split
from mlasm.extract import extract_dataset
from test_prepare import _karpathy, _records
from test_reliability import MeanColourExtractor, RecordingProposer

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
