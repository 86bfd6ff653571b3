"""``mlasm first-stage``: a trained first stage from a checkpoint, used by ``mlasm evaluate --shortlist``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_support import answer
from mlasm.checkpoint import load_model
from mlasm.data.precomp import read_split
from mlasm.encoding import encode_split
from mlasm.first_stage_training import UnpaddedWords
from mlasm.model import lengths_to_mask
from mlasm.shortlist import FirstStage, train_first_stage
from test_shortlist import trained  # noqa: F401  (a 1-epoch tiny run: 48 train, 16 dev images)


def _first_stage(capsys, checkpoint, data, out, *more):
    return answer(capsys, ["first-stage", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                           "--threads", "1", *more])


def _top_k_recall(queries: torch.Tensor, items: torch.Tensor, true: np.ndarray, k: int) -> float:
    """Percent of queries with a true item among their k best dot products (true: (Q, I) bool)."""
    best = np.argsort(-(queries @ items.T).numpy(), axis=1, kind="stable")[:, :k]
    return 100.0 * np.take_along_axis(true, best, axis=1).any(axis=1).mean()


def test_the_command_writes_a_first_stage_that_evaluate_then_uses(trained, data_folder, tmp_path, capsys):
    out = tmp_path / "stages" / "first_stage.pt"
    code, line, printed = _first_stage(capsys, trained, data_folder, out, "--epochs", "3")
    assert code == 0 and line == "", line
    assert "training on the first" not in printed                     # 48 images, all of them
    assert f"wrote {out} (" in printed and "trained on 48 train images and 240 captions" in printed
    assert (f"use it with: mlasm evaluate --checkpoint {trained} --data {data_folder} --split SPLIT "
            f"--shortlist 100 --first-stage {out}") in printed          # the tiny folder has no test split
    model, vocab, _ = load_model(trained, "cpu")
    stage = FirstStage.load(out, model)
    about = torch.load(out, weights_only=True)["about"]
    assert {key: about[key] for key in ("checkpoint", "data", "split", "epochs", "seed", "images", "captions")} == {
        "checkpoint": str(trained), "data": str(data_folder), "split": "train", "epochs": 3, "seed": 0,
        "images": 48, "captions": 240}
    # the held-out recall, counted here from the saved first stage on the dev split's 16 images (k = 1)
    dev = read_split(data_folder, "dev")
    img, cap = encode_split(model, dev, vocab)
    true = dev.caption_to_image[:, None] == np.arange(dev.n_images)[None, :]           # (captions, images)
    with torch.no_grad():
        images = stage.image(img.regions, img.mask.bool())
        captions = stage.caption(cap.words, lengths_to_mask(cap.lengths, cap.words.shape[1]))
    held = about["held_out"]
    assert (held["split"], held["images"], held["k"]) == ("dev", 16, 1)
    assert held["trained"]["t2i"] == pytest.approx(_top_k_recall(captions, images, true, 1), abs=0.01)
    assert held["trained"]["i2t"] == pytest.approx(_top_k_recall(images, captions, true.T, 1), abs=0.01)
    assert (f"recall@1 on the first 16 dev images: i2t {held['trained']['i2t']:.1f} %, "
            f"t2i {held['trained']['t2i']:.1f} %") in printed

    code, _, printed = answer(capsys, ["evaluate", "--checkpoint", str(trained), "--data", str(data_folder),
                                       "--split", "dev", "--out", str(tmp_path / "eval"), "--threads", "1",
                                       "--shortlist", "3", "--first-stage", str(out)])
    assert code == 0 and "two-stage" in printed
    two_stage = json.loads((tmp_path / "eval" / "metrics.json").read_text())["two_stage"]
    assert two_stage["first_stage"] == "trained" and two_stage["first_stage_file"] == str(out)
    assert two_stage["shortlist"] == 3
    assert two_stage["first_stage_recall"]["t2i"] == pytest.approx(_top_k_recall(captions, images, true, 3))


def test_the_weights_equal_a_direct_training_on_the_same_encodings_and_a_cut_says_so(trained, data_folder, tmp_path,
                                                                                      capsys):
    out = tmp_path / "first_stage.pt"
    out.write_text("an older file")
    code, _, printed = _first_stage(capsys, trained, data_folder, out, "--images", "40", "--epochs", "2", "--seed",
                                    "7", "--held-out", "train", "--overwrite")
    assert code == 0
    assert printed.splitlines()[0] == ("training on the first 40 of the 48 train images and their captions "
                                       "(--images 40; their encodings are held in memory)")
    assert "trained on 40 train images and 200 captions" in printed
    assert "recall@4 on the first 48 train images" in printed      # --held-out train: 48 images, K a tenth
    model, vocab, _ = load_model(trained, "cpu")
    part = read_split(data_folder, "train").subset(np.arange(40))
    img, cap = encode_split(model, part, vocab)                    # padded words, as evaluate encodes them
    direct = train_first_stage(img, cap, part.caption_to_image, epochs=2, seed=7)
    saved = torch.load(out, weights_only=True)
    assert saved["about"]["images"] == 40 and saved["about"]["seed"] == 7 and saved["about"]["of_images"] == 48
    assert saved["state"].keys() == direct.state_dict().keys()
    for name, weights in direct.state_dict().items():
        assert torch.equal(saved["state"][name], weights), name

    seen = []                                                       # a progress callback changes no weight
    watched = train_first_stage(img, cap, part.caption_to_image, epochs=2, seed=7,
                                on_epoch=lambda epoch, loss: seen.append((epoch, loss)))
    assert [epoch for epoch, _ in seen] == [0, 1] and all(np.isfinite(loss) and loss > 0 for _, loss in seen)
    for name, weights in direct.state_dict().items():
        assert torch.equal(watched.state_dict()[name], weights), name


def test_unpadded_words_read_back_as_the_padded_words_at_every_real_word():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 1, 2, 5, 2])
    padded = torch.randn(5, 5, 4, generator=g)                    # garbage beyond each caption's length
    mask = lengths_to_mask(lengths, 5)
    words = UnpaddedWords(torch.cat([padded[c, :n] for c, n in enumerate(lengths.tolist())]), lengths)
    assert words.shape == (5, 5, 4)
    index = torch.tensor([4, 0, 3, 3, 1])
    batch = words[index]
    assert torch.equal(batch[mask[index]], padded[index][mask[index]]) and not batch[~mask[index]].any()


@pytest.mark.parametrize("case", ["out_exists", "out_is_a_folder", "no_checkpoint", "not_a_split_folder",
                                  "no_such_split", "one_image"])
def test_each_refusal_is_one_line_naming_the_thing(case, trained, data_folder, tmp_path, capsys):
    out, checkpoint, data, more = tmp_path / "first_stage.pt", trained, data_folder, []
    if case == "out_exists":
        out.write_text("keep me")
        expected = f"--out {out}: already exists; give --overwrite to replace it, or another --out"
    elif case == "out_is_a_folder":
        out.mkdir()
        expected = f"--out {out}: is a folder, expected a file"
    elif case == "no_checkpoint":
        checkpoint = tmp_path / "absent.pt"
        expected = f"{checkpoint}: checkpoint not found"
    elif case == "not_a_split_folder":
        data = tmp_path / "empty"
        data.mkdir()
        expected = f"{data}: no split 'train' (no train_ims.npy); available: none"
    elif case == "no_such_split":
        more = ["--split", "val"]
        expected = f"{data_folder}: no split 'val' (no val_ims.npy); available: ['train', 'dev']"
    else:
        more = ["--images", "1"]
        expected = "argument --images: expected a whole number >= 2, got '1'"
    code, line, printed = _first_stage(capsys, checkpoint, data, out, *more)
    assert code == 2 and line.startswith("mlasm first-stage: error: ") and expected in line, line
    assert "wrote" not in printed
    assert (out.read_text() == "keep me") if case == "out_exists" else (out.is_dir() or not out.exists())
