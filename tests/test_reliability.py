"""Bad inputs and faults, each answered clearly: exit status 2 and one line naming what was wrong.

The cases come from tests/bad_inputs.py, the table docs/bad-inputs.md is generated from; the
last two tests keep the table, the tests and the document in step.
"""
from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlasm.io as io_module
from bad_inputs import CASES, DOC, Case, cases, render
from cli_support import TINY, TINY_OPTIONS, answer
from mlasm.checkpoint import load_checkpoint, save_checkpoint
from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.precomp import read_split, write_split
from mlasm.data.vocab import Vocabulary
from mlasm.extract import Proposals, extract_dataset
from mlasm.interrupts import Terminated, sigterm_as_exception
from mlasm.io import atomic_path, write_json, write_text
from mlasm.metrics import NonFiniteScores
from mlasm.model import MLASM
from mlasm.run_folder import LOCK_FILE
from mlasm.train import config_for_data, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _train_command(data_folder, out, *more):
    return ["train", "--data", str(data_folder), "--out", str(out), "--epochs", "1", *TINY_OPTIONS, *more]


@pytest.fixture(scope="module")
def finished_run(data_folder, tmp_path_factory):
    """A 1-epoch run trained by the command line; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    from mlasm.cli import main

    assert main(_train_command(data_folder, out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _refused(capsys, argv, case: Case, command: str | None = None, **paths) -> str:
    """Run ARGV; assert exit status 2 and one line ``mlasm COMMAND: error: ...`` holding what the case shows."""
    code, line, _ = answer(capsys, argv)
    command = command or argv[0]
    assert code == 2, line
    assert line.startswith(f"mlasm {command}: error: "), line
    assert case.expected(**paths) in line, line
    return line


# ------------------------------------------------------------------------------ option values

def _argv_for(case: Case, tmp_path: Path) -> list[str]:
    option, value = case.input.strip("`").split(" ", 1)
    command = case.command.split()[1]
    needed = {"train": [],
              "evaluate": ["--checkpoint", str(tmp_path / "none.pt")],
              "extract": ["--images", str(tmp_path), "--captions", str(tmp_path / "c.csv"), "--out", str(tmp_path)],
              "demo": []}[command]
    return [command, *needed, f"{option}={value}"]


@pytest.mark.parametrize("case", cases("values"), ids=str)
def test_a_bad_option_value_is_refused_where_it_is_parsed(case, tmp_path, capsys):
    argv = _argv_for(case, tmp_path)
    line = _refused(capsys, argv, case)
    assert line.endswith(f"(see mlasm {argv[0]} --help)")


# ------------------------------------------------------------------------------ output folders

def _command_with_out(command: str, out: Path, tmp_path: Path) -> list[str]:
    """A command whose data do not exist: refusing --out first proves it is checked before any work."""
    missing = tmp_path / "missing"
    return {"train": ["train", "--data", str(missing), "--out", str(out)],
            "evaluate": ["evaluate", "--checkpoint", str(missing / "a.pt"), "--data", str(missing), "--out", str(out)],
            "extract": ["extract", "--images", str(missing), "--captions", str(missing / "c.csv"), "--out", str(out)],
            }[command]


@pytest.mark.parametrize("case", [CASES[k] for k in ("train_out_is_a_file", "evaluate_out_is_a_file",
                                                      "extract_out_is_a_file")], ids=str)
def test_an_output_folder_that_is_a_file_is_refused_first(case, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    command = case.command.split()[1]
    _refused(capsys, _command_with_out(command, out, tmp_path), case, OUT=out)
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("case", [CASES["train_out_under_a_file"]], ids=str)
def test_an_output_folder_below_a_file_is_refused(case, tmp_path, capsys):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    _refused(capsys, _command_with_out("train", in_the_way / "run", tmp_path), case, OUT=in_the_way / "run",
             FILE=in_the_way)


@pytest.mark.parametrize("case", [CASES[k] for k in ("train_out_read_only", "evaluate_out_read_only",
                                                      "extract_out_read_only")], ids=str)
def test_an_output_folder_on_a_read_only_file_system_is_refused_first(case, tmp_path, capsys, monkeypatch):
    def read_only(path):  # what creating a file on a read-only mount raises (root ignores chmod, so simulated)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    out = tmp_path / "mounted"
    out.mkdir()
    monkeypatch.setattr(io_module, "_new_temporary", read_only)
    _refused(capsys, _command_with_out(case.command.split()[1], out, tmp_path), case, OUT=out)


# ------------------------------------------------------------------------------ run folders

@pytest.mark.parametrize("case", [CASES["train_into_a_finished_run"]], ids=str)
def test_a_folder_holding_a_run_is_not_overwritten(case, run_copy, data_folder, capsys):
    before = {name: (run_copy / name).read_bytes() for name in ("last.pt", "best.pt", "train_log.jsonl")}
    _refused(capsys, _train_command(data_folder, run_copy), case, RUN=run_copy)
    assert before == {name: (run_copy / name).read_bytes() for name in before}


@pytest.mark.parametrize("case", [CASES["train_overwrite"]], ids=str)
def test_overwrite_replaces_the_run(case, run_copy, data_folder, capsys):
    code, _, _ = answer(capsys, [*_train_command(data_folder, run_copy, "--overwrite"), "--epochs", "2"])
    assert code == 0
    assert len((run_copy / "train_log.jsonl").read_text().splitlines()) == 2
    assert load_checkpoint(run_copy / "last.pt")["config"]["epochs"] == 2


@pytest.mark.parametrize("case, options", [
    (CASES["train_resume_and_overwrite"], ["--resume", "--overwrite"]),
    (CASES["train_resume_with_other_options"], ["--resume", "--margin", "0.3", "--embed-size", "48"]),
    (CASES["train_resume_with_other_seed"], ["--resume", "--seed", "5"]),
    (CASES["train_resume_with_other_data"], ["--resume", "--train-split", "dev"]),
    (CASES["train_resume_with_other_min_word_count"], ["--resume", "--min-word-count", "1"]),
], ids=str)
def test_resume_refuses_what_would_not_continue_the_run(case, options, run_copy, data_folder, capsys):
    before = (run_copy / "last.pt").read_bytes()
    _refused(capsys, _train_command(data_folder, run_copy, *options), case, RUN=run_copy)
    assert (run_copy / "last.pt").read_bytes() == before


@pytest.mark.parametrize("case", [CASES["train_resume_without_a_run"]], ids=str)
def test_resume_without_a_run(case, tmp_path, data_folder, capsys):
    _refused(capsys, _train_command(data_folder, tmp_path / "empty", "--resume"), case, RUN=tmp_path / "empty")


@pytest.mark.parametrize("case", [CASES["train_two_at_once"]], ids=str)
def test_a_second_training_cannot_enter_a_folder_in_use(case, splits, data_folder, tmp_path, capsys):
    out = tmp_path / "run"
    answers = []

    def second_training(step):
        if step == 2:  # the first one is training: start another in its folder, even with --overwrite
            answers.append(answer(capsys, _train_command(data_folder, out, "--overwrite")))

    summary = train(MLASMConfig.cpu(**{**TINY, "epochs": 1}), splits["train"], splits["dev"], out, progress=False,
                    on_step=second_training)
    code, line, _ = answers[0]
    assert code == 2 and case.expected(PID=os.getpid()) in line, line
    assert summary["epochs"] == 1 and load_checkpoint(out / "best.pt")["progress"]["global_step"] == 15
    assert not (out / LOCK_FILE).exists()  # released and removed when the training ended


LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()} elsewhere\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("case", [CASES["train_lock_of_a_killed_training"]], ids=str)
def test_the_lock_of_a_killed_training_does_not_block(case, data_folder, tmp_path, capsys):
    pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, line, _ = answer(capsys, _train_command(data_folder, out))
        assert code == 2 and f"(process {holder.pid} elsewhere)" in line, line
    finally:
        holder.kill()  # kill -9: no chance to clean anything up
        holder.wait()
    assert (out / LOCK_FILE).read_text().startswith(str(holder.pid))  # the stale lock file is still there
    assert answer(capsys, _train_command(data_folder, out))[0] == 0


@pytest.mark.parametrize("case", [CASES["train_min_word_count_huge"]], ids=str)
def test_a_vocabulary_of_nothing_but_unk_is_refused(case, data_folder, tmp_path, capsys):
    _refused(capsys, _train_command(data_folder, tmp_path / "run", "--min-word-count", "100000"), case)


@pytest.mark.parametrize("case", [CASES["train_diverges"]], ids=str)
def test_a_diverging_training_stops_at_once(case, data_folder, tmp_path, capsys):
    _refused(capsys, _train_command(data_folder, tmp_path / "run", "--learning-rate", "1e30"), case)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("case", [CASES["train_nan_gradient"]], ids=str)
def test_nan_gradients_stop_training_before_the_update(case, splits, tmp_path, monkeypatch):
    clip = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip_with_nan_at_step_6(parameters, max_norm):
        calls.append(1)
        norm = clip(parameters, max_norm)
        return torch.tensor(float("nan")) if len(calls) == 6 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_with_nan_at_step_6)
    message = case.shows.split(": ", 1)[1]
    with pytest.raises(NonFiniteScores, match=re.escape(message)):
        train(MLASMConfig.cpu(**TINY), splits["train"], splits["dev"], tmp_path, progress=False, checkpoint_every=4)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["progress"]["global_step"] == 4
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def _full_disk_for(name: str, monkeypatch):
    """Writes of ``name`` go to /dev/full: the kernel answers ENOSPC, as on a full disk."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    create = io_module._new_temporary

    def temporary(path):
        tmp = create(path)
        if path.name == name:
            tmp.unlink()
            tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(io_module, "_new_temporary", temporary)


@pytest.mark.parametrize("case", [CASES["train_disk_full"]], ids=str)
def test_a_full_disk_during_training_is_one_line(case, data_folder, tmp_path, capsys, monkeypatch):
    _full_disk_for("last.pt", monkeypatch)
    out = tmp_path / "run"
    _refused(capsys, _train_command(data_folder, out), case, RUN=out)
    assert not list(out.glob(".*.tmp")) and not (out / "last.pt").exists()


def _evaluate_command(run: Path, data_folder: Path, out: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data_folder), "--split", "dev",
            "--out", str(out)]


@pytest.mark.parametrize("case, failing", [(CASES["evaluate_disk_full"], "ranks.npz"),
                                           (CASES["evaluate_pair_both_or_neither"], "metrics.json")], ids=str)
def test_evaluate_writes_metrics_and_ranks_as_one_unit(case, failing, finished_run, data_folder, tmp_path, capsys,
                                                       monkeypatch):
    out, fresh = tmp_path / "eval", tmp_path / "fresh"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"rsum": -1}))  # an earlier pair, told apart from a new one
    (out / "ranks.npz").write_bytes(b"earlier ranks")
    before = {name: (out / name).read_bytes() for name in ("metrics.json", "ranks.npz")}
    _full_disk_for(failing, monkeypatch)
    code, line, _ = answer(capsys, _evaluate_command(finished_run, data_folder, out))
    assert code == 2 and f"{out / failing}: No space left on device (nothing was changed)" in line, line
    if case.key == "evaluate_disk_full":
        assert case.expected(OUT=out) in line
    assert {name: (out / name).read_bytes() for name in before} == before  # neither changed
    assert not list(out.glob(".*.tmp"))
    assert answer(capsys, _evaluate_command(finished_run, data_folder, fresh))[0] == 2
    assert not fresh.exists() or not any(fresh.iterdir())  # neither written


# ------------------------------------------------------------------------------ data, checkpoints, word vectors

@pytest.mark.parametrize("case, content", [(CASES["evaluate_zero_byte_checkpoint"], b""),
                                           (CASES["evaluate_text_checkpoint"], b"hello\nworld\n"),
                                           (CASES["evaluate_checkpoint_is_a_folder"], None)], ids=str)
def test_a_file_that_is_no_checkpoint_is_named(case, content, data_folder, tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.mkdir() if content is None else path.write_bytes(content)
    argv = ["evaluate", "--checkpoint", str(path), "--data", str(data_folder), "--split", "dev",
            "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, FILE=path)


@pytest.mark.parametrize("case", [CASES["evaluate_pickle_that_runs_code"], CASES["evaluate_scan_without_vocab"],
                                  CASES["evaluate_scan_option_not_reproduced"],
                                  CASES["evaluate_scan_vocab_of_another_size"]], ids=str)
def test_scan_checkpoints_that_cannot_be_used_are_named(case, data_folder, tmp_path, capsys):
    import argparse
    import pickle

    from mlasm.scan_model import SCANConfig, random_scan_model, write_scan_checkpoint

    words = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(8)]
    vocab = tmp_path / "vocab.json"
    Vocabulary(words[:-1] if case.key == "evaluate_scan_vocab_of_another_size" else words).save(vocab, "scan")
    options = dict(cross_attn="t2i", agg_func="Mean", raw_feature_norm="clipped_l2norm", precomp_enc_type="basic",
                   bi_gru=False, no_imgnorm=False, no_txtnorm=False, img_dim=read_split(data_folder, "dev").region_dim,
                   embed_size=4, word_dim=3, num_layers=1, vocab_size=len(words), lambda_softmax=9.0, lambda_lse=6.0)
    path = tmp_path / "model_best.pth.tar"
    write_scan_checkpoint(path, random_scan_model(SCANConfig(**options)))
    created = tmp_path / "created"
    if case.key == "evaluate_pickle_that_runs_code":
        class CreatesAFile:
            def __reduce__(self):
                return (open, (str(created), "w"))

        with open(path, "wb") as f:  # torch's legacy layout by hand: magic number, version, system info, object
            for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}, {"epoch": CreatesAFile()}):
                pickle.dump(part, f, protocol=2)
    elif case.key == "evaluate_scan_option_not_reproduced":
        state = torch.load(path, weights_only=False)
        state["opt"] = argparse.Namespace(**{**vars(state["opt"]), "raw_feature_norm": "batchnorm"})
        torch.save(state, path)
    argv = ["evaluate", "--checkpoint", str(path), "--data", str(data_folder), "--split", "dev",
            "--out", str(tmp_path / "out")] + ([] if case.key == "evaluate_scan_without_vocab" else
                                                ["--vocab", str(vocab)])
    paths = {"VOCAB": vocab} if case.key == "evaluate_scan_vocab_of_another_size" else {}  # else VOCAB.json is text
    _refused(capsys, argv, case, FILE=path, **paths)
    assert not created.exists()


def _small_split() -> RetrievalSplit:
    """4 images of 3 regions (the last image's third region is padding), 5 captions each, with grounding and boxes."""
    rng = np.random.default_rng(0)
    mask = np.ones((4, 3), bool)
    mask[3, 2] = False
    captions = [f"image {i} caption {k} ." for i in range(4) for k in range(5)]
    return RetrievalSplit(
        name="test", regions=rng.normal(size=(4, 3, 5)).astype(np.float32), region_mask=mask,
        global_features=None, captions=captions, caption_to_image=np.arange(20) // 5,
        boxes=rng.uniform(0, 50, (4, 3, 4)).astype(np.float32),
        grounding=[[[1, [0]], [3, [0, 1]]] if c % 2 else [] for c in range(20)])


def _break(folder: Path, key: str) -> Path:
    """Make the one bad file of case ``key``; return it."""
    grounding = folder / "test_grounding.json"
    if key == "data_grounding_is_a_folder":
        grounding.unlink()
        grounding.mkdir()
        return grounding
    if key in ("data_grounding_masked_region", "data_grounding_true_index"):
        entries = json.loads(grounding.read_text())
        if key == "data_grounding_masked_region":
            entries[15] = [[1, [2]]]    # caption 15 is of image 3, whose region 2 is padding
        else:
            entries[1] = [[1, [True]]]  # JSON true
        grounding.write_text(json.dumps(entries))
        return grounding
    if key == "data_boxes_nan":
        boxes = np.load(folder / "test_boxes.npy")
        boxes[1, 2, 0] = np.nan
        np.save(folder / "test_boxes.npy", boxes)
        return folder / "test_boxes.npy"
    if key == "data_empty_captions_with_cap2img":
        assert (folder / "test_cap2img.npy").exists()
        (folder / "test_caps.txt").write_text("")
        return folder / "test_caps.txt"
    if key == "data_captions_per_image_string":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "captions_per_image": "5"}))
        return folder / "meta.json"
    raise KeyError(key)


@pytest.mark.parametrize("case", [c for c in cases("data") if c.key.startswith("data_")], ids=str)
def test_bad_data_files_are_named_with_what_was_expected(case, tmp_path, capsys):
    folder = tmp_path / "data"
    write_split(folder, "test", _small_split())
    read_split(folder, "test")  # valid before it is broken
    bad_file = _break(folder, case.key)
    argv = ["evaluate", "--checkpoint", str(tmp_path / "any.pt"), "--data", str(folder), "--split", "test",
            "--out", str(tmp_path / "out")]
    _refused(capsys, argv, case, FILE=bad_file)


@pytest.mark.parametrize("case, content", [
    (CASES["train_glove_nan"], b"the " + b" 0.1" * 16 + b"\nsquare" + b" nan" + b" 0.2" * 15 + b"\n"),
    (CASES["train_glove_latin1"], b"the " + b" 0.1" * 16 + b"\ncaf\xe9" + b" 0.2" * 16 + b"\n"),
], ids=str)
def test_a_bad_glove_file_is_named_with_its_line(case, content, data_folder, tmp_path, capsys):
    glove = tmp_path / "glove.txt"
    glove.write_bytes(content)
    _refused(capsys, _train_command(data_folder, tmp_path / "run", "--glove", str(glove)), case, FILE=glove)


# ------------------------------------------------------------------------------ extraction

class RecordingProposer:
    """No detections; keeps the pictures it is shown, as the models see them."""

    label_names = ["thing"]

    def __init__(self):
        self.pictures = []

    def propose(self, image):
        self.pictures.append(np.asarray(image).copy())
        return Proposals(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def describe(self):
        return {"name": type(self).__name__}


class NanProposer(RecordingProposer):
    def propose(self, image):
        return Proposals(np.array([[0, 0, np.nan, 4]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int32))


class MeanColourExtractor:
    dim = 3

    def features(self, image, boxes):
        colour = np.asarray(image, np.float32).reshape(-1, 3).mean(axis=0)
        return np.tile(colour, (len(boxes), 1)), colour

    def describe(self):
        return {"name": type(self).__name__}


def _picture(kind: str, path: Path) -> np.ndarray:
    """Write a generated 4 x 2 picture of ``kind`` to ``path``; return the RGB a viewer shows (left, right)."""
    if kind == "extract_16_bit_png":
        Image.fromarray(np.full((2, 4), 32768, np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I")
        return np.array([[128, 128, 128], [128, 128, 128]])
    if kind == "extract_palette_with_transparency":
        picture = Image.new("P", (4, 2))
        picture.putdata([0, 0, 1, 1] * 2)
        picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        picture.save(path, transparency=0)
        return np.array([[255, 255, 255], [255, 0, 0]])
    if kind == "extract_cmyk_jpeg":
        Image.new("CMYK", (4, 2), (0, 255, 255, 0)).save(path, quality=100)
        return np.array([[255, 0, 0], [255, 0, 0]])
    if kind == "extract_rgba_transparent":
        pixels = np.zeros((2, 4, 4), np.uint8)
        pixels[:, 2:] = (0, 0, 255, 255)  # left half fully transparent (stored black), right half blue
        Image.fromarray(pixels).save(path)
        return np.array([[255, 255, 255], [0, 0, 255]])
    raise KeyError(kind)


@pytest.mark.parametrize("case", [c for c in cases("extract") if c.key in (
    "extract_16_bit_png", "extract_palette_with_transparency", "extract_cmyk_jpeg", "extract_rgba_transparent")],
    ids=str)
def test_unusual_pictures_are_converted_as_a_viewer_shows_them(case, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    name = "picture.jpg" if "jpeg" in case.key else "picture.png"
    expected = _picture(case.key, images / name)
    (tmp_path / "captions.csv").write_text(f"file_name,caption\n{name},a picture\n")
    proposer = RecordingProposer()
    extract_dataset(images, tmp_path / "captions.csv", tmp_path / "out", proposer=proposer,
                    extractor=MeanColourExtractor(), progress=False)
    seen = proposer.pictures[0]
    assert seen.shape == (2, 4, 3) and seen.dtype == np.uint8
    assert np.abs(seen[:, 0].astype(int) - expected[0]).max() <= 2, seen[:, 0]   # left half
    assert np.abs(seen[:, -1].astype(int) - expected[1]).max() <= 2, seen[:, -1]  # right half
    shown = np.asarray(read_split(tmp_path / "out", "all").get_image(0))  # what the workbench displays
    assert np.array_equal(shown, seen)


@pytest.mark.parametrize("case", [CASES["extract_nan_boxes_from_a_detector"]], ids=str)
def test_nan_detections_are_refused_with_the_picture_named(case, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(images / "a.png")
    (tmp_path / "captions.csv").write_text("file_name,caption\na.png,a picture\n")
    with pytest.raises(DataError, match=re.escape(case.expected(FILE="a.png"))):
        extract_dataset(images, tmp_path / "captions.csv", tmp_path / "out", proposer=NanProposer(),
                        extractor=MeanColourExtractor(), progress=False)


@pytest.mark.parametrize("case", [CASES["extract_images_not_a_folder"]], ids=str)
def test_extract_refuses_a_missing_picture_folder_before_loading_models(case, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = ["extract", "--images", str(missing), "--captions", str(tmp_path / "c.csv"), "--out", str(tmp_path / "o")]
    _refused(capsys, argv, case, DIR=missing)


# ------------------------------------------------------------------------------ files written

@pytest.mark.parametrize("case", [CASES["stale_temporaries_of_a_killed_run"]], ids=str)
def test_temporaries_of_a_killed_run_are_removed_at_the_next_start(case, run_copy, data_folder, tmp_path, capsys):
    dead = run_copy / ".last.pt.999999999.deadbeef.tmp"       # no such process
    legacy = run_copy / ".best.pt.k3j4h5g6.tmp"                # mkstemp's name, before process ids
    live = run_copy / f".vocab.json.{os.getppid()}.cafe1234.tmp"  # a process still running
    for path in (dead, legacy, live):
        path.write_bytes(b"x" * 1000)
    assert answer(capsys, _train_command(data_folder, run_copy, "--resume"))[0] == 0
    assert not dead.exists() and not legacy.exists() and live.exists()

    out = tmp_path / "eval"
    out.mkdir()
    (out / ".ranks.npz.999999999.0badcafe.tmp").write_bytes(b"x")
    assert answer(capsys, _evaluate_command(run_copy, data_folder, out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention_records.npz", "metrics.json", "ranks.npz", "scores.npz"]


@pytest.mark.parametrize("case", [CASES["files_follow_the_umask"]], ids=str)
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_are_written_with_the_users_permissions(case, umask, splits, tmp_path):
    vocab = Vocabulary.build(splits["train"].captions)
    model = MLASM(config_for_data(MLASMConfig.cpu(**TINY), splits["train"], vocab))
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        write_text(tmp_path / "a.txt", "a")
        save_checkpoint(tmp_path / "model.pt", model, vocab, {})
        write_split(tmp_path / "data", "dev", splits["dev"])
    finally:
        os.umask(previous)
    written = [tmp_path / "a.json", tmp_path / "a.txt", tmp_path / "model.pt", tmp_path / "data" / "dev_ims.npy",
               tmp_path / "data" / "meta.json"]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == \
        {path.name: oct(0o666 & ~umask) for path in written}


@pytest.mark.parametrize("case", [CASES["sigterm_during_a_write"]], ids=str)
def test_sigterm_during_a_write_removes_the_temporary(case, tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("the earlier file")
    with pytest.raises(Terminated), sigterm_as_exception(), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        signal.raise_signal(signal.SIGTERM)
    assert target.read_text() == "the earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# ------------------------------------------------------------------------------ the table and the tests

def test_every_case_in_the_table_has_a_test():
    import test_resume
    import test_untrusted_files

    used = set()
    for module in (sys.modules[__name__], test_resume, test_untrusted_files):
        for name, function in vars(module).items():
            if not (name.startswith("test_") and inspect.isfunction(function)):
                continue
            for mark in getattr(function, "pytestmark", []):
                if mark.name == "parametrize":
                    for values in mark.args[1]:
                        values = getattr(values, "values", values)
                        values = values if isinstance(values, (tuple, list)) else (values,)
                        used.update(value.key for value in values if isinstance(value, Case))
            used.update(re.findall(r'CASES\["(\w+)"\]', inspect.getsource(function)))
    assert sorted(set(CASES) - used) == [], "cases without a test"
    assert sorted(used - set(CASES)) == [], "tests of cases not in the table"


def test_the_documented_table_is_this_one():
    assert DOC.read_text(encoding="utf-8") == render(), "run: python tests/bad_inputs.py"
