"""Threads come from the cores this process may use, not from the machine's count."""
from __future__ import annotations

import os

import pytest
import torch

from mlasm import threads
from mlasm.cli import build_parser


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_threads_follow_the_affinity_the_load_and_torchruns_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5, 7}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.0, 0.0), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.usable_cores() == 4 and threads.default_threads() == 4  # an idle machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, two processes on this machine
    assert threads.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # more processes than cores: still one each
    assert threads.default_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0), raising=False)
    assert threads.default_threads() == 1  # 4 cores, about 3 of them busy
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0), raising=False)
    assert threads.default_threads() == 1  # busier than the cores: one thread, never zero


def test_set_threads_sets_torch_and_refuses_zero(restore_threads, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.set_threads(None) == 1 and torch.get_num_threads() == 1
    assert threads.set_threads(2) == 2 and torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="at least 1"):
        threads.set_threads(0)


@pytest.mark.parametrize("argv", [["demo"], ["train"], ["evaluate", "--checkpoint", "x.pt"], ["check", "data"],
                                  ["prepare", "scan", "f", "--vocab", "v.json", "--out", "o"],
                                  ["prepare", "tsv", "--features", "f.tsv", "--captions", "c.json", "--out", "o"],
                                  ["extract", "--images", "i", "--captions", "c.csv", "--out", "o"]])
def test_every_command_takes_threads(argv):
    assert build_parser().parse_args(argv + ["--threads", "3"]).threads == 3
    assert build_parser().parse_args(argv).threads is None
