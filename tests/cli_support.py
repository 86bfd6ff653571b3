"""Helpers shared by the reliability tests: tiny data, the command line run in-process, state comparison."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from mlasm.cli import main
from mlasm.data.precomp import write_split
from mlasm.data.shapescenes import load_shapescenes

# 48 training images x 5 captions / batch 16 = 15 steps per epoch
TINY_SIZES = {"train": 48, "dev": 16, "test": 16}
TINY_MODEL = dict(embed_size=32, word_dim=16)  # the tiny model's sizes, for tests that build one untrained
TINY = dict(TINY_MODEL, batch_size=16, epochs=2, lr_decay_epoch=1, learning_rate=1e-3)
# one thread, as the in-process reference runs (tests/conftest.py one_thread): float sums in another
# order would make a resumed CLI run differ from its reference when the machine has idle cores
TINY_OPTIONS = ["--embed-size", "32", "--word-dim", "16", "--batch-size", "16", "--lr-decay-epoch", "1",
                "--learning-rate", "1e-3", "--threads", "1"]


def tiny_splits(cache: Path, names: tuple[str, ...] = ("train", "dev")) -> dict:
    return {split: load_shapescenes(split, sizes=TINY_SIZES, cache=cache, progress=False) for split in names}


def tiny_folder(splits: dict, folder: Path) -> Path:
    """The tiny splits as a precomp folder, for the command line's --data."""
    for name, split in splits.items():
        write_split(folder, name, split)
    return folder


def answer(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run ``mlasm ARGV``; return (exit status, the one line it printed about itself, stdout).

    Fails unless exactly one line of stderr comes from mlasm (progress bars aside) and no
    traceback was printed.
    """
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    own = [line for line in captured.err.splitlines() if line.startswith("mlasm")]
    assert len(own) <= 1, own
    return code, (own[0] if own else ""), captured.out


def assert_same(expected, actual, where: str = "") -> None:
    """Nested checkpoint contents equal: tensors exactly (values and dtype), floats exactly (NaN = NaN)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, where
        assert torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), f"{where}: keys {sorted(set(expected) ^ set(actual))}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for i, (a, b) in enumerate(zip(expected, actual)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), where
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def count_tensors(state) -> int:
    if isinstance(state, torch.Tensor):
        return 1
    if isinstance(state, dict):
        return sum(count_tensors(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(count_tensors(v) for v in state)
    return 0


def without_times(log: list[dict]) -> list[dict]:
    """Training log rows without their wall times (``seconds``, ``validation_seconds``), which no rerun repeats."""
    return [{key: value for key, value in row.items() if not key.endswith("seconds")} for row in log]
