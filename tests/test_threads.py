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


def _machine(monkeypatch, cores, sampled, load, quota=None):
    """A machine with ``cores`` in this process's affinity, ``sampled`` cores busy in the short
    sample, a 1-minute load average of ``load`` and a cgroup quota of ``quota`` cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(threads, "sampled_busy_cores", lambda seconds=0: sampled)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0), raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota_cores", lambda path="": quota)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_idle_cores_right_after_other_work_are_used(monkeypatch):
    # an install just ended: the load average still says about 1, the cores are idle now
    _machine(monkeypatch, cores=2, sampled=0.02, load=1.1)
    assert threads.default_threads() == 2


def test_cores_busy_now_and_for_a_while_are_left_alone(monkeypatch):
    _machine(monkeypatch, cores=2, sampled=1.0, load=1.4)  # another training on one core
    assert threads.default_threads() == 1
    _machine(monkeypatch, cores=4, sampled=2.9, load=2.6)  # about 3 of 4 busy
    assert threads.default_threads() == 1
    _machine(monkeypatch, cores=2, sampled=2.0, load=9.0)  # busier than the cores: one thread, never zero
    assert threads.default_threads() == 1


def test_a_burst_alone_is_not_load(monkeypatch):
    # torchrun's siblings importing torch as this process starts: busy now, idle before
    _machine(monkeypatch, cores=4, sampled=1.8, load=0.1)
    assert threads.default_threads() == 4


def test_threads_follow_affinity_quota_and_torchruns_processes(monkeypatch):
    _machine(monkeypatch, cores=4, sampled=None, load=0.3)  # no /proc/stat: the load average alone
    assert threads.usable_cores() == 4 and threads.default_threads() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5, 7}, raising=False)
    assert threads.usable_cores() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, two processes on this machine
    assert threads.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # more processes than cores: still one each
    assert threads.default_threads() == 1
    _machine(monkeypatch, cores=8, sampled=0.0, load=0.0, quota=2.5)  # a container's CPU quota
    assert threads.usable_cores() == 3 and threads.default_threads() == 3
    _machine(monkeypatch, cores=2, sampled=None, load=None)  # no measure at all: every usable core
    monkeypatch.setattr(os, "getloadavg", lambda: (_ for _ in ()).throw(OSError()), raising=False)
    assert threads.default_threads() == 2


def test_proc_stat_and_cgroup_files_are_read(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 80 0 0 0 0 0 0\n"
                    "cpu0 1 0 1 8 0 0 0 0 0 0\n"       # idle 8 of 10
                    "cpu1 5 0 3 1 1 0 0 0 0 0\n"       # idle 1 + iowait 1 of 10
                    "intr 123\n")
    assert threads._idle_and_total_ticks(None, str(stat)) == (10, 20)
    assert threads._idle_and_total_ticks({1}, str(stat)) == (2, 10)
    assert threads._idle_and_total_ticks({0}, str(tmp_path / "missing")) is None
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert threads._cgroup_quota_cores(str(quota)) == 1.5
    quota.write_text("max 100000\n")
    assert threads._cgroup_quota_cores(str(quota)) is None


def test_the_sample_turns_ticks_into_busy_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    ticks = iter([(100, 200), (130, 260)])  # over the sample: 30 idle ticks of 60 on 2 cores
    monkeypatch.setattr(threads, "_idle_and_total_ticks", lambda cpus: next(ticks))
    assert threads.sampled_busy_cores(0) == pytest.approx(1.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"),
                    reason="needs Linux's /proc/stat and affinity")
def test_a_real_busy_core_is_seen(tmp_path):
    import subprocess
    import sys
    import time

    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {cpu})
        time.sleep(0.3)
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})  # sample only the spinner's core
        try:
            busy = threads.sampled_busy_cores(0.5)
        finally:
            os.sched_setaffinity(0, before)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy > 0.8


def test_set_threads_sets_torch_and_refuses_zero(restore_threads, monkeypatch):
    _machine(monkeypatch, cores=1, sampled=0.0, load=0.0)
    assert threads.set_threads(None) == 1 and torch.get_num_threads() == 1
    with pytest.warns(threads.ThreadsCappedWarning, match="--threads 2: this process can use 1 core"):
        assert threads.set_threads(2) == 1 and torch.get_num_threads() == 1  # capped at the usable cores
    _machine(monkeypatch, cores=2, sampled=0.0, load=0.0)
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


def test_main_in_process_leaves_the_callers_threads(restore_threads, tmp_path, capsys):
    """A notebook or a test that calls main() keeps its own thread count, even when the command fails."""
    from mlasm.cli import main

    torch.set_num_threads(2)
    assert main(["check", str(tmp_path / "absent"), "--threads", "1"]) == 2
    assert "absent" in capsys.readouterr().err
    assert torch.get_num_threads() == 2
