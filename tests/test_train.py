"""Training, checkpoints, exact resume, evaluation output and the command line, on a tiny run."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cli_support import TINY, without_times
from mlasm.cli import main
from mlasm.config import MLASMConfig
from mlasm.data.errors import DataError
from mlasm.evaluate import evaluate_checkpoints, level_metrics, score_split
from mlasm.checkpoint import CheckpointError, check_model_fits, load_checkpoint, load_model
from mlasm.train import train

@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(MLASMConfig.cpu(**TINY), tiny_data["train"], tiny_data["dev"], out, progress=False,
                    checkpoint_every=4)
    return out, summary


class SimulatedKill(Exception):
    pass


def _kill_at(step):
    def on_step(global_step):
        if global_step == step:
            raise SimulatedKill

    return on_step


def test_run_folder_holds_what_was_promised(trained):
    out, summary = trained
    for name in ("best.pt", "last.pt", "vocab.json", "config.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1]
    assert log[0]["lr"] == pytest.approx(1e-3) and log[1]["lr"] == pytest.approx(1e-4)  # divided by 10
    assert summary["best_rsum"] == max(row["val_rsum"] for row in log)


def test_resume_after_a_kill_mid_epoch_is_exact(tiny_data, trained, tmp_path):
    reference_dir, reference = trained
    # 48 images x 5 captions / batch 16 = 15 steps per epoch; checkpoints at steps 4, 8, 12 of an epoch.
    with pytest.raises(SimulatedKill):
        train(MLASMConfig.cpu(**TINY), tiny_data["train"], tiny_data["dev"], tmp_path, progress=False,
              checkpoint_every=4, on_step=_kill_at(15 + 10))  # killed in epoch 2, after its step 10
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["step_in_epoch"] == 8
    resumed = train(MLASMConfig.cpu(**TINY), tiny_data["train"], tiny_data["dev"], tmp_path, progress=False,
                    checkpoint_every=4, resume=True)
    assert without_times(resumed["log"]) == without_times(reference["log"])
    expected = load_checkpoint(reference_dir / "last.pt")["model"]
    actual = load_checkpoint(tmp_path / "last.pt")["model"]
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name


def test_ctrl_c_saves_where_it_stopped(tiny_data, tmp_path):
    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(MLASMConfig.cpu(**TINY), tiny_data["train"], tiny_data["dev"], tmp_path, progress=False,
              on_step=interrupt)
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["step_in_epoch"] == 3


def test_resume_without_a_run_is_an_error(tiny_data, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(MLASMConfig.cpu(**TINY), tiny_data["train"], tiny_data["dev"], tmp_path, resume=True)


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an mlasm checkpoint"):
        load_checkpoint(foreign)


def test_checkpoint_for_other_features_is_refused(trained, tiny_data):
    out, _ = trained
    model, _, _ = load_model(out / "best.pt", "cpu")
    split = tiny_data["test"]
    other = type(split)(name="other", regions=np.zeros((2, 3, split.region_dim + 1), np.float32),
                        region_mask=None, global_features=None, captions=["a"] * 10,
                        caption_to_image=np.repeat([0, 1], 5))
    with pytest.raises(DataError, match=f"expects {split.region_dim}-d region features"):
        check_model_fits(model, other, "ckpt")


def test_evaluation_writes_metrics_ranks_and_grounding(trained, tiny_data, tmp_path):
    out, _ = trained
    result = evaluate_checkpoints([out / "best.pt"], tiny_data["test"], out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for level in ("final", "local", "global", "t2i", "i2t"):
        assert set(saved["levels"][level]) == {"rsum", "i2t", "t2i", "complete"}
        assert set(saved["levels"][level]["i2t"]) == {"r1", "r5", "r10", "medr", "meanr"}
        assert set(saved["levels"][level]["complete"]["t2i"]) == {"r1", "r5", "r10", "r_precision", "map_at_r"}
    assert saved["rsum"] == saved["levels"]["final"]["rsum"]
    assert saved["complete"] == saved["levels"]["final"]["complete"]
    # the pointing game, counted here from the split: every object-naming word, its boxes, its image's regions
    split, grounding = tiny_data["test"], saved["grounding"]
    words = [(c, len(set(regions))) for c, caption in enumerate(split.grounding) for _, regions in caption or ()]
    regions_of = split.region_mask.sum(axis=1)[split.caption_to_image]
    assert grounding["words"] == len(words) > 0
    assert grounding["chance"] == pytest.approx(100 * np.mean([n / regions_of[c] for c, n in words]))
    ranks = np.load(tmp_path / "ranks.npz")
    assert ranks["final_t2i_rank"].shape == (tiny_data["test"].n_captions,)
    assert ranks["final_i2t_top"].shape == (tiny_data["test"].n_images, 5)
    assert (ranks["final_t2i_first_valid_rank"] <= ranks["final_t2i_rank"]).all()
    assert (ranks["final_t2i_first_valid_rank"] < ranks["final_t2i_rank"]).any()
    assert ranks["t2i_n_positives"].tolist() == tiny_data["test"].positives.sizes().tolist()
    # an ensemble of one model with itself is that model
    ensemble = evaluate_checkpoints([out / "best.pt"] * 2, tiny_data["test"], progress=False)
    assert ensemble["rsum"] == pytest.approx(result["rsum"])


def test_validation_recall_matches_scores(trained, tiny_data):
    out, summary = trained
    model, vocab, _ = load_model(out / "best.pt", "cpu")
    dev = tiny_data["dev"]
    result = level_metrics(score_split(model, dev, vocab), dev.caption_to_image)
    assert result["rsum"] == pytest.approx(summary["best_rsum"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert main(["train", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nowhere: no such folder" in err[1] and "Traceback" not in "".join(err)


def test_cli_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    from mlasm.cli import RUNNERS

    assert set(RUNNERS) >= {"demo", "train", "evaluate", "first-stage", "extract", "serve"}
    for command in RUNNERS:
        assert f"\n    {command}" in text, command


def test_pairs_the_data_knows_to_be_true_are_never_negatives(tiny_data, tmp_path):
    """Where every caption is known to be true of every image, a batch has no negative: the hinge is 0."""
    from dataclasses import replace

    from mlasm.data.positives import PositiveSets

    split = tiny_data["train"]
    everything = PositiveSets.from_dense(np.ones((split.n_images, split.n_captions), bool))
    config = MLASMConfig.cpu(**{**TINY, "epochs": 1})
    summary = train(config, replace(split, positives=everything), tiny_data["dev"], tmp_path / "all",
                    progress=False)
    assert summary["log"][0]["loss"] == 0.0 and summary["log"][0]["inside_margin"] == 0.0
    # the same data, told to ignore what it knows: every other image is a negative again
    summary = train(replace(config, mask_false_negatives=False), replace(split, positives=everything),
                    tiny_data["dev"], tmp_path / "strict", progress=False)
    assert summary["log"][0]["loss"] > 0.0 and summary["log"][0]["inside_margin"] > 0.0


def test_a_diverging_run_stops_with_one_line_and_writes_no_best(tiny_data, tmp_path, capsys, monkeypatch):
    from mlasm.metrics import NonFiniteScores

    config = MLASMConfig.cpu(**{**TINY, "learning_rate": 1e30})
    with pytest.raises(NonFiniteScores, match="diverged"):
        train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "best.pt").exists()
    monkeypatch.setenv("MLASM_FAST", "1")
    code = main(["train", "--data", "shapescenes", "--out", str(tmp_path / "cli"), "--learning-rate", "1e30",
                 "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "has diverged" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "cli" / "best.pt").exists()


def test_five_fold_chance_is_per_fold(trained, tiny_data):
    out, _ = trained
    split = tiny_data["test"].subset(list(range(15)))  # five folds of 3 images
    result = evaluate_checkpoints([out / "best.pt"], split, protocol="5fold", progress=False)
    assert result["chance"]["t2i"]["r1"] == pytest.approx(100 / 3)  # 1 of 3 images, not 1 of 15
    whole = evaluate_checkpoints([out / "best.pt"], split, progress=False)
    assert whole["chance"]["t2i"]["r1"] == pytest.approx(100 / 15)
    assert result["chance"]["complete"]["t2i"]["r1"] > result["chance"]["t2i"]["r1"]  # generic captions


def test_five_folds_score_only_their_blocks_and_give_the_folded_metrics(trained, tiny_data, tmp_path, monkeypatch):
    from mlasm.model import MLASM

    out, _ = trained
    split = tiny_data["test"].subset(list(range(15)))  # five folds of 3 images and their 15 captions
    model, vocab, _ = load_model(out / "best.pt", "cpu")
    whole = score_split(model, split, vocab)  # every pair, then cut into folds as level_metrics does
    expected = level_metrics(whole, split.caption_to_image, "5fold", positives=split.positives)
    scored_pairs = []
    score_all = MLASM.score_all

    def counting(self, img, cap, *args, **kwargs):
        scored_pairs.append(img.regions.shape[0] * cap.words.shape[0])
        return score_all(self, img, cap, *args, **kwargs)

    monkeypatch.setattr(MLASM, "score_all", counting)
    result = evaluate_checkpoints([out / "best.pt"], split, protocol="5fold", out_dir=tmp_path, progress=False)
    assert sum(scored_pairs) == 5 * 3 * 15  # the five 3 x 15 blocks, not 15 x 75
    assert result["protocol"] == "5fold" and len(result["folds"]) == 5
    for level, metrics in expected["levels"].items():
        for direction in ("i2t", "t2i"):
            for key, value in metrics[direction].items():
                assert result["levels"][level][direction][key] == pytest.approx(value), (level, direction, key)
        assert result["levels"][level]["complete"]["rsum"] == pytest.approx(metrics["complete"]["rsum"])
    assert json.loads((tmp_path / "metrics.json").read_text())["rsum"] == pytest.approx(expected["rsum"])
    assert all((tmp_path / f"fold{k}" / "ranks.npz").is_file() for k in range(1, 6))


def test_evaluation_and_the_widgets_do_not_import_the_trainer():
    import subprocess
    import sys

    code = "import sys, mlasm.evaluate, widgets; print('mlasm.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_amp_trains_in_bfloat16_only_where_the_device_multiplies_in_it(tiny_data, trained, tmp_path, monkeypatch,
                                                                      capsys):
    """--amp: bfloat16 products under float32 weights where bfloat16 is native; elsewhere (emulated, slower
    than float32) exactly the float32 run, with a line saying so."""
    import mlasm.train as training

    reference_dir, reference = trained
    assert reference["mixed_precision"] is False
    expected = load_checkpoint(reference_dir / "last.pt")["model"]
    config = MLASMConfig.cpu(**TINY)

    monkeypatch.setattr(training, "native_bfloat16", lambda device: False)
    ignored = train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "ignored", checkpoint_every=4, amp=True)
    assert "no native bfloat16 arithmetic: training in float32 (--amp ignored)" in capsys.readouterr().out
    assert ignored["mixed_precision"] is False
    weights = load_checkpoint(tmp_path / "ignored" / "last.pt")["model"]
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())

    monkeypatch.setattr(training, "native_bfloat16", lambda device: True)
    mixed = train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "mixed", progress=False,
                  checkpoint_every=4, amp=True)
    assert mixed["mixed_precision"] is True
    assert all(np.isfinite(row["loss"]) for row in mixed["log"])
    weights = load_checkpoint(tmp_path / "mixed" / "last.pt")["model"]
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float32}
    assert not all(torch.equal(weights[name], tensor) for name, tensor in expected.items())  # bfloat16 was used


def test_level_wise_supervision_adds_each_level_s_hinge(tiny_data, tmp_path):
    config = MLASMConfig.cpu(**{**TINY, "epochs": 1})
    paper = train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "paper", progress=False)
    levels = train(replace(config, level_weight=1.0), tiny_data["train"], tiny_data["dev"], tmp_path / "levels",
                   progress=False)
    # the first step is the same model on the same batch: the extra hinges make the loss larger
    assert levels["log"][0]["loss"] > paper["log"][0]["loss"]
    with pytest.raises(ValueError, match="level_weight must be >= 0"):
        replace(config, level_weight=-1.0)


def test_hardest_negatives_backpropagated_through_their_pairs_train_as_the_whole_batch(tiny_data, tmp_path,
                                                                                      monkeypatch):
    """One process with hardest negatives scores the batch without gradients, then backpropagates
    through the positives and their hardest negatives alone (mlasm.loss.hardest_negative_loss): the
    run follows the one that backpropagates through every pair of the batch."""
    import mlasm.train as training

    config = MLASMConfig.cpu(**{**TINY, "warmup_epochs": 0})  # hardest negatives from the first step
    original, calls = training._Training._hardest_negative_losses, []
    monkeypatch.setattr(training._Training, "_hardest_negative_losses",
                        lambda self, *args: calls.append(args) or original(self, *args))
    pairs = train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "pairs", progress=False)
    steps = len(calls)
    assert steps == 2 * (tiny_data["train"].n_captions // TINY["batch_size"])
    monkeypatch.setattr(training._Training, "gradients_from_pairs", property(lambda self: False))
    whole = train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "whole", progress=False)
    assert len(calls) == steps  # the reference backpropagated through the whole batch
    for with_pairs, with_every_pair in zip(pairs["log"], whole["log"], strict=True):
        for key in ("loss", "mean_positive", "mean_hardest_negative", "inside_margin"):
            assert with_pairs[key] == pytest.approx(with_every_pair[key], rel=1e-5), key
        assert with_pairs["val_rsum"] == pytest.approx(with_every_pair["val_rsum"], abs=0.5)


def test_a_large_dev_split_is_validated_on_its_first_images_and_says_so(tiny_data, tmp_path, capsys):
    from mlasm.evaluate import evaluate_model

    dev = tiny_data["dev"]  # 16 images; validate on the first 6 (as SCAN on 1,000 of COCO's 5,000)
    summary = train(MLASMConfig.cpu(**{**TINY, "epochs": 1}), tiny_data["train"], dev, tmp_path / "run",
                    validation_images=6)
    assert "first 6 of the 16 dev images" in summary["validation"]
    assert summary["validation"] in capsys.readouterr().out
    model, vocab, _ = load_model(summary["best"], "cpu")
    on_six = evaluate_model(model, dev.subset(np.arange(6)), vocab, progress=False)
    assert summary["best_rsum"] == pytest.approx(on_six["rsum"])
    assert on_six["rsum"] != pytest.approx(evaluate_model(model, dev, vocab, progress=False)["rsum"])
    whole = train(MLASMConfig.cpu(**{**TINY, "epochs": 1}), tiny_data["train"], dev, tmp_path / "whole",
                  progress=False, validation_images=None)
    assert whole["validation"] == "the whole dev split"
    with pytest.raises(ValueError, match="validation_images"):
        train(MLASMConfig.cpu(**TINY), tiny_data["train"], dev, tmp_path / "bad", validation_images=0)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_a_model_that_scores_every_pair_alike_logs_a_collapse_share_of_one(preset, tiny_data, tmp_path, monkeypatch):
    """1.0 means collapse whatever the loss holds: warm-up sums, hardest negatives, level-wise hinges."""
    from mlasm.model import MLASM

    def flat(model, shape):  # every pair scored alike, in the graph with zero gradients
        anchor = sum(p.sum() for p in model.parameters()) * 0
        return {level: anchor + torch.full(shape, 0.3) for level in ("final", "t2i", "i2t", "global")}

    # the whole batch (with gradients, or without them to find the hardest negatives), then listed pairs
    monkeypatch.setattr(MLASM, "pair_levels", lambda self, img, cap, **_: flat(self, (len(img.regions), len(cap.words))))
    monkeypatch.setattr(MLASM, "pair_levels_at", lambda self, img, cap, images, captions: flat(self, (len(images),)))
    config = getattr(MLASMConfig, preset)(**{**TINY, "epochs": 2, "warmup_epochs": 1 if preset == "cpu" else 0})
    train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["hardest_negatives"] for row in log] == ([False, True] if preset == "cpu" else [True, True])
    assert [row["loss_share_of_collapse"] for row in log] == pytest.approx([1.0, 1.0], rel=1e-6)
