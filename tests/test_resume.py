"""Ctrl-C, SIGTERM and then --resume: the resumed run equals one never interrupted, tensor for tensor.

Each case injects the interrupt from a hook at a chosen point (no timing): between steps, in
the middle of a step after dropout drew its masks, inside the weight update, during
validation, while a checkpoint is written, as a raised KeyboardInterrupt or as a real
signal. The run is then resumed and every tensor of last.pt and best.pt (weights, optimiser
moments, scheduler, random state) and the training log are compared with an uninterrupted run.
"""
from __future__ import annotations

import json
import signal

import pytest
import torch

import mlasm.train as train_module
from bad_inputs import CASES, cases
from cli_support import TINY, TINY_OPTIONS, answer, assert_same, count_tensors, tiny_folder, without_times
from mlasm.checkpoint import load_checkpoint
from mlasm.config import MLASMConfig
from mlasm.interrupts import Terminated
from mlasm.model import MLASM
from mlasm.train import train

STEPS_PER_EPOCH = 15
CHECKPOINT_EVERY = 4

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(splits):
    return splits


def run(data, out, **options):
    return train(MLASMConfig.cpu(**TINY), data["train"], data["dev"], out, progress=False,
                 checkpoint_every=CHECKPOINT_EVERY, **options)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = run(data, out)
    return out, summary


def _on_call(target, name, call, action, only_training=False):
    """Replace ``target.name`` by a wrapper that does ``action(original, args, kwargs)`` at its
    ``call``-th call (1-based) and is the original otherwise."""
    original = getattr(target, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        if not only_training or args[0].training:
            calls += 1
            if calls == call:
                return action(original, args, kwargs)
        return original(*args, **kwargs)

    return original, wrapper


def _raise(exception):
    def action(original, args, kwargs):
        raise exception
    return action


def _signal_then_continue(signum):
    def action(original, args, kwargs):
        signal.raise_signal(signum)  # the handler runs here, as for a key pressed at this moment
        return original(*args, **kwargs)
    return action


def _write_half_then_raise(original, args, kwargs):
    """torch.save that writes part of the file and is then interrupted."""
    args[1].write(b"PK\x03\x04 half a checkpoint")
    raise KeyboardInterrupt


# with level-wise supervision a step computes the final level's hinge and one per level
LOSSES_PER_STEP = 1 + 3 * (MLASMConfig.cpu(**TINY).level_weight > 0)


def _first_loss_of(step: int) -> int:
    """The call of the hinge (rows_and_columns_loss, the warm-up epoch's) that begins the given step (1-based, counted from the run's start)."""
    return (step - 1) * LOSSES_PER_STEP + 1


# case -> (what to patch, name, at which call, action, options); calls count from the run's start
INTERRUPTS = {
    "interrupt_between_steps": None,  # through on_step, below
    # epoch 2 has hardest negatives: one call of hardest_negative_loss a step
    "interrupt_in_the_loss": (train_module, "hardest_negative_loss", 6, _raise(KeyboardInterrupt), {}),
    "interrupt_in_the_forward_pass": (MLASM, "pair_levels", STEPS_PER_EPOCH + 1, _raise(KeyboardInterrupt),
                                      {"only_training": True}),
    "sigint_in_the_loss": (train_module, "rows_and_columns_loss", _first_loss_of(10), _signal_then_continue(signal.SIGINT), {}),
    "sigint_in_the_optimiser_step": (torch.optim.Adam, "step", 7, _signal_then_continue(signal.SIGINT), {}),
    "interrupt_inside_the_optimiser_step": (torch.optim.Adam, "step", 10, _raise(KeyboardInterrupt), {}),
    "interrupt_in_validation": (train_module, "evaluate_model", 1, _raise(KeyboardInterrupt), {}),
    "interrupt_while_writing_a_checkpoint": (torch, "save", 2, _write_half_then_raise, {}),
    "sigterm_in_the_loss": (train_module, "rows_and_columns_loss", _first_loss_of(12), _signal_then_continue(signal.SIGTERM), {}),
}
# where last.pt stands after the interrupt: (epoch, step_in_epoch), the boundary the resumed run starts from
SAVED_AT = {
    "interrupt_between_steps": (0, 7),
    "interrupt_in_the_loss": (1, 5),            # the 6th step of epoch 2 is redone
    "interrupt_in_the_forward_pass": (1, 0),    # the first step of epoch 2 is redone
    "sigint_in_the_loss": (0, 9),
    "sigint_in_the_optimiser_step": (0, 7),     # the update was finished, then the interrupt taken
    "interrupt_inside_the_optimiser_step": (0, 8),  # the update may be half done: the checkpoint of step 8 stays
    "interrupt_in_validation": (0, STEPS_PER_EPOCH),
    "interrupt_while_writing_a_checkpoint": (0, 4),  # the write of step 8 was cut: the one of step 4 stays
    "sigterm_in_the_loss": (0, 11),
}


@pytest.mark.parametrize("case", cases("interrupts"), ids=str)
def test_a_run_interrupted_and_resumed_equals_one_never_interrupted(case, data, reference, tmp_path, monkeypatch):
    reference_dir, reference_summary = reference
    expected_exception = Terminated if case.key.startswith("sigterm") else KeyboardInterrupt
    on_step = None
    if INTERRUPTS[case.key] is None:
        def on_step(global_step):
            if global_step == 7:
                raise KeyboardInterrupt
    else:
        target, name, call, action, options = INTERRUPTS[case.key]
        _, wrapper = _on_call(target, name, call, action, **options)
        monkeypatch.setattr(target, name, wrapper)

    with pytest.raises(expected_exception):
        run(data, tmp_path, on_step=on_step)
    monkeypatch.undo()
    progress = load_checkpoint(tmp_path / "last.pt")["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == SAVED_AT[case.key]
    assert not list(tmp_path.glob(".*.tmp")), "a temporary was left behind"

    resumed = run(data, tmp_path, resume=True)

    assert without_times(resumed["log"]) == without_times(reference_summary["log"])
    for name in ("last.pt", "best.pt"):
        expected, actual = load_checkpoint(reference_dir / name), load_checkpoint(tmp_path / name)
        assert count_tensors(expected) > 10
        assert_same(expected, actual, name)


def test_the_command_line_says_interrupted_and_resumes_exactly(data, tmp_path, capsys, monkeypatch):
    folder = tiny_folder(data, tmp_path / "data")
    command = ["train", "--data", str(folder), "--epochs", "2", "--checkpoint-every", "4", *TINY_OPTIONS]
    assert answer(capsys, [*command, "--out", str(tmp_path / "whole")])[0] == 0

    _, wrapper = _on_call(train_module, "rows_and_columns_loss", 20, _raise(KeyboardInterrupt))
    monkeypatch.setattr(train_module, "rows_and_columns_loss", wrapper)
    code, line, _ = answer(capsys, [*command, "--out", str(tmp_path / "cut")])
    assert (code, line) == (130, "mlasm train: interrupted (resume with --resume)")
    monkeypatch.undo()
    assert answer(capsys, [*command, "--out", str(tmp_path / "cut"), "--resume"])[0] == 0
    assert_same(load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt"))

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _, wrapper = _on_call(train_module, "rows_and_columns_loss", 3, _signal_then_continue(signal.SIGTERM))
    monkeypatch.setattr(train_module, "rows_and_columns_loss", wrapper)
    code, line, _ = answer(capsys, [*command, "--out", str(tmp_path / "terminated")])
    assert (code, line) == (143, "mlasm train: terminated (resume with --resume)")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back


def test_more_epochs_on_resume_are_honoured_and_recorded(data, reference, tmp_path, capsys):
    """A 1-epoch run resumed with --epochs 2 ends as a 2-epoch run would, and says so."""
    case = CASES["train_resume_more_epochs"]
    folder = tiny_folder(data, tmp_path / "data")
    command = ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--checkpoint-every", "4",
               *TINY_OPTIONS]
    assert answer(capsys, [*command, "--epochs", "1"])[0] == 0
    code, _, out = answer(capsys, [*command, "--epochs", "2", "--resume"])
    assert code == 0 and "resumed with --epochs 2 (the run had 1); recorded in config.json" in out, case
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["progress"]["epoch"] == 2 and state["config"]["epochs"] == 2
    assert state["progress"]["changes"] == [{"global_step": STEPS_PER_EPOCH, "epochs": [1, 2]}]
    # the schedule does not depend on the number of epochs, so this is the 2-epoch reference run
    assert_same(load_checkpoint(reference[0] / "last.pt")["model"], state["model"])
