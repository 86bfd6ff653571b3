"""Several processes (mlasm.distributed): 2 CPU processes on gloo, started as torchrun starts them.

What must hold: sharded scoring gives the very numbers of one process; after distributed steps
every rank holds the same weights; with gathered negatives, 2 processes of batch 8 take the
step of one process of batch 16; a distributed run interrupted (Ctrl-C, or a rank killed) and
resumed ends as one never interrupted. The trainings are the tiny ones of tests/cli_support.py
(15 steps an epoch); each torchrun launch takes about 10 s on a busy 2-core machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_support import TINY, assert_same, count_tensors, without_times
from mlasm import distributed
from mlasm.checkpoint import load_checkpoint
from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.vocab import Vocabulary
from mlasm.encoding import encode_split
from mlasm.evaluate import evaluate_checkpoints
from mlasm.model import MLASM
from mlasm.sources import open_split
from mlasm.run_folder import RunFolderError
from mlasm.train import config_for_data, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
STEPS_PER_EPOCH = 15


def torchrun(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 ARGUMENTS`` (torchrun itself need
    not be on PATH), one thread a process; returns the finished process."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *arguments]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


def train_on_two_ranks(data_folder: Path, *runs: dict) -> subprocess.CompletedProcess:
    return torchrun(str(WORKER), json.dumps({"data": str(data_folder), "runs": list(runs)}))


def succeeded(finished: subprocess.CompletedProcess) -> None:
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]


def one_process(splits, out: Path, **options) -> dict:
    """The single-process run the distributed ones are compared with: batch 16, as 2 ranks x 8."""
    config = MLASMConfig.cpu(**{**TINY, **options.pop("config", {})})
    return train(config, splits["train"], splits["dev"], out, progress=False, checkpoint_every=4, **options)


# ----------------------------------------------------------------------------- in one process

def tiny_model(split: RetrievalSplit, seed: int = 0) -> tuple[MLASM, Vocabulary]:
    vocab = Vocabulary.build(split.captions, min_count=1)
    torch.manual_seed(seed)
    return MLASM(config_for_data(MLASMConfig.cpu(**TINY), split, vocab)).eval(), vocab


@pytest.mark.parametrize("processes", [2, 3])
def test_the_ranks_blocks_tile_the_gallery_and_sum_to_one_process_exactly(splits, processes):
    model, vocab = tiny_model(splits["dev"])
    img, cap = encode_split(model, splits["dev"], vocab)
    budget = 0.2  # MB: blocks of some dozens of pairs, so that every rank gets several
    alone = model.score_all(img, cap, memory_budget_mb=budget, progress=False)
    shares = [distributed.score_all_as_rank(model, img, cap, r, processes, memory_budget_mb=budget)
              for r in range(processes)]
    for level, expected in alone.items():
        assert torch.equal(sum(share[level] for share in shares), expected), level
    scored = [(share["final"] != 0) for share in shares]
    assert all(s.sum() > 0.1 * s.numel() / processes for s in scored)  # each rank does its part ...
    assert torch.equal(sum(s.int() for s in scored), torch.ones_like(scored[0], dtype=torch.int))  # ... alone
    assert not hasattr(model, "_score_block") or "_score_block" not in vars(model)  # the model is left as it was


def test_without_torchrun_everything_is_one_process():
    assert not distributed.launched_by_torchrun()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.on_rank_zero(lambda: 42) == 42
    with distributed.processes_from_environment() as processes:
        assert processes is None


# ----------------------------------------------------------------------------- two processes

@pytest.fixture(scope="module")
def two_rank_run(data_folder, tmp_path_factory):
    """An uninterrupted 2-epoch run on 2 processes with gathered negatives, each rank's final weights dumped."""
    folder = tmp_path_factory.mktemp("two-ranks")
    succeeded(train_on_two_ranks(data_folder, {"out": str(folder / "run"), "gather": True, "dump": str(folder)}))
    return folder


def test_after_distributed_steps_every_rank_holds_the_same_weights(two_rank_run):
    ranks = [torch.load(two_rank_run / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1)]
    written = load_checkpoint(two_rank_run / "run" / "last.pt")
    assert written["progress"]["global_step"] == 2 * STEPS_PER_EPOCH  # 240 captions / (2 x 8) a step
    assert (written["progress"]["world_size"], written["progress"]["gather_negatives"]) == (2, True)
    initial = MLASM(MLASMConfig.from_dict(written["config"])).state_dict()
    for name, weights in ranks[0].items():
        assert torch.equal(weights, ranks[1][name]), name
        assert torch.equal(weights, written["model"][name]), name  # rank 0 wrote what every rank holds
    assert any(not torch.equal(ranks[0][name], initial[name]) for name in initial)  # and it trained
    log = [json.loads(line) for line in (two_rank_run / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1]  # one log, written once (by rank 0)


def test_gathered_negatives_make_two_processes_of_8_take_the_step_of_one_process_of_16(splits, data_folder,
                                                                                        tmp_path):
    no_dropout = {"word_dropout": 0.0}  # dropout draws differ between one process and two
    stop_after_first_step = [1, "interrupt", "all"]
    succeeded(train_on_two_ranks(
        data_folder,
        {"out": str(tmp_path / "gathered"), "gather": True, "config": no_dropout, "stop": stop_after_first_step},
        {"out": str(tmp_path / "own-slice"), "gather": False, "config": no_dropout, "stop": stop_after_first_step}))

    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        one_process(splits, tmp_path / "alone", config=no_dropout, on_step=stop)
    alone, gathered, own_slice = (load_checkpoint(tmp_path / name / "last.pt")
                                  for name in ("alone", "gathered", "own-slice"))
    assert gathered["progress"]["global_step"] == alone["progress"]["global_step"] == 1
    # the loss of the batch and its statistics, and the gradient the optimiser took (Adam's first moment)
    for key in ("epoch_loss_sum", "epoch_positive_sum", "epoch_hardest_sum", "epoch_inside_sum"):
        assert gathered["progress"][key] == pytest.approx(alone["progress"][key], rel=1e-5), key
    first_moments = [(gathered["optimizer"]["state"][k]["exp_avg"], alone["optimizer"]["state"][k]["exp_avg"],
                      own_slice["optimizer"]["state"][k]["exp_avg"]) for k in alone["optimizer"]["state"]]
    for two, one, _ in first_moments:
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-7)
    # Adam's first step moves each weight by about lr * g / |g|: where a gradient is near Adam's eps
    # (1e-8), float32 sums taken in another order (one process scores its 16 captions in length groups,
    # each rank its 8) move it by a part of lr = 1e-3; 1 % of a step is allowed
    for name in alone["model"]:
        torch.testing.assert_close(gathered["model"][name], alone["model"][name], rtol=1e-5, atol=1e-5)
    # without the gather, each process's negatives are its own 8: another loss, another step
    assert own_slice["progress"]["epoch_loss_sum"] < 0.9 * alone["progress"]["epoch_loss_sum"]
    assert any(not torch.allclose(own, one, rtol=1e-2, atol=1e-5) for _, one, own in first_moments)


def test_a_distributed_run_interrupted_and_resumed_equals_one_never_interrupted(two_rank_run, data_folder,
                                                                              tmp_path):
    """Ctrl-C reaches every process: each stops after step 7, rank 0 saves that boundary; resumed at once."""
    out = str(tmp_path / "run")
    succeeded(train_on_two_ranks(data_folder, {"out": out, "gather": True, "stop": [7, "interrupt", "all"]},
                                 {"out": out, "gather": True, "resume": True}))
    _assert_same_run(two_rank_run / "run", tmp_path / "run")


def test_a_distributed_run_with_a_rank_killed_resumes_from_its_last_checkpoint_exactly(two_rank_run, data_folder,
                                                                                       tmp_path):
    """kill -9 of rank 1 after step 10: the run fails; last.pt is where a new launch resumes: the
    step-8 checkpoint (every 4), or step 10's boundary when the SIGTERM that torchrun then sends
    reaches rank 0 between steps (both seen, by timing: rank 1 finished step 10 before it died)."""
    out = str(tmp_path / "run")
    failed = train_on_two_ranks(data_folder, {"out": out, "gather": True, "stop": [10, "kill", 1]})
    assert failed.returncode != 0
    progress = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) in {(0, 8), (0, 10)}
    assert not list((tmp_path / "run").glob(".*.tmp"))
    succeeded(train_on_two_ranks(data_folder, {"out": out, "resume": True}))  # the run's own gather setting
    _assert_same_run(two_rank_run / "run", tmp_path / "run")


def test_a_distributed_run_terminated_through_torchrun_resumes_exactly(two_rank_run, data_folder, tmp_path):
    """SIGTERM to torchrun (a scheduler ending the job) while rank 0 waits after step 7: torchrun passes
    it on, rank 0 saves that step boundary, and a new launch with --resume ends as the run never interrupted."""
    out = str(tmp_path / "run")
    stopped = train_on_two_ranks(data_folder, {"out": out, "gather": True, "stop": [7, "terminate-torchrun", 0]})
    assert stopped.returncode != 0
    progress = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert progress["global_step"] == 7  # not a checkpoint of every 4 steps: the boundary it stopped at
    succeeded(train_on_two_ranks(data_folder, {"out": out, "resume": True}))
    _assert_same_run(two_rank_run / "run", tmp_path / "run")


def _assert_same_run(expected: Path, actual: Path) -> None:
    for name in ("last.pt", "best.pt"):
        reference, resumed = load_checkpoint(expected / name), load_checkpoint(actual / name)
        assert count_tensors(reference) > 10
        assert_same(reference, resumed, name)

    def log(folder: Path) -> list[dict]:
        return without_times([json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()])

    assert log(actual) == log(expected)


def test_resuming_with_another_number_of_processes_is_refused_naming_both(two_rank_run, splits, tmp_path):
    shutil.copytree(two_rank_run / "run", tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"number of processes: 2 in the run, 1 now .*--nproc_per_node 2"):
        one_process(splits, tmp_path / "run", config={"batch_size": 8}, resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_distributed_evaluation_equals_one_process_exactly(two_rank_run, data_folder, tmp_path):
    checkpoint = two_rank_run / "run" / "best.pt"
    budget = "0.2"  # MB: many blocks of pairs, dealt out to the two ranks
    dev = open_split(data_folder, "dev")  # as the command reads it
    alone = evaluate_checkpoints([checkpoint], dev, out_dir=tmp_path / "alone",
                                 memory_budget_mb=float(budget), progress=False)
    finished = torchrun("-m", "mlasm", "evaluate", "--checkpoint", str(checkpoint), "--data", str(data_folder),
                        "--split", "dev", "--out", str(tmp_path / "two"), "--device", "cpu",
                        "--memory-budget-mb", budget, "--threads", "1")  # one thread, as the reference
    succeeded(finished)
    assert finished.stdout.count("wrote ") == 1  # rank 0 alone reports
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (alone["world_size"], two["world_size"]) == (1, 2)
    assert {**two, "world_size": 1} == json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert alone["rsum"] > alone["chance"]["rsum"]  # a model that ranks: equal numbers are not all chance
    with np.load(tmp_path / "alone" / "ranks.npz") as expected, np.load(tmp_path / "two" / "ranks.npz") as actual:
        assert sorted(expected.files) == sorted(actual.files)
        for name in expected.files:
            assert np.array_equal(expected[name], actual[name]), name


def test_commands_that_run_alone_refuse_torchrun(tmp_path):
    finished = torchrun("-m", "mlasm", "check", str(tmp_path))
    assert finished.returncode != 0
    assert "mlasm check runs in one process; under torchrun only train and evaluate share their work" \
        in finished.stderr
