"""How many threads torch uses: the cores this process may run on and that are free, not the
machine's count.

``os.cpu_count()`` counts every core of the machine; a container, ``taskset``, a SLURM job or a
CPU quota can give a process fewer. Too many threads on too few cores make torch much slower than
one thread: its threads wait for each other at every operation while other programs hold the
cores (measured: ``mlasm demo --fast`` on 2 cores under a load of 5.5 took 344 s with 2 threads,
65 s with 1). So the count comes from ``os.sched_getaffinity`` (and a cgroup CPU quota), less the
cores that other programs keep busy, and under torchrun is shared among the processes of this
machine. ``--threads`` overrides it.

"Busy" must mean busy now and for a while. The 1-minute load average alone lags: right after an
install or a test run it still says about one core is taken while both are idle, and a command
started then ran on 1 of 2 idle cores. A short sample of the usable cores' idle time alone jumps
with every burst, such as torchrun's sibling processes importing torch as this one starts. So a
core counts as busy only where both agree: the smaller of the two.
"""
from __future__ import annotations

import math
import os
import time
import warnings

import torch

SAMPLE_SECONDS = 0.25  # long enough to see a busy core (the kernel counts in 10 ms ticks), short to wait


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return None


def _cgroup_quota_cores(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """A container's CPU quota in cores (cgroup v2 ``cpu.max``: "quota period" or "max period")."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity (else every core), within a cgroup CPU quota."""
    affinity = _affinity()
    cores = len(affinity) if affinity is not None else (os.cpu_count() or 1)
    quota = _cgroup_quota_cores()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _idle_and_total_ticks(cpus: set[int] | None, stat_path: str = "/proc/stat") -> tuple[int, int] | None:
    """Idle and total CPU ticks so far, added over ``cpus`` (None: the whole machine)."""
    try:
        with open(stat_path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    idle = total = 0
    for line in lines:
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit()):  # per-core lines only
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle += ticks[3] + ticks[4]
        total += sum(ticks)
    return (idle, total) if total else None


def sampled_busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores of this process's set that other programs kept busy over the next ``seconds`` (this
    process sleeps meanwhile); None where the OS has no /proc/stat."""
    cpus = _affinity()
    before = _idle_and_total_ticks(cpus)
    if before is None:
        return None
    time.sleep(seconds)
    after = _idle_and_total_ticks(cpus)
    if after is None or after[1] <= before[1]:
        return None
    idle, total = after[0] - before[0], after[1] - before[1]
    cores = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    return cores * (1 - idle / total)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_cores() -> float:
    """Cores other programs keep busy, now and over the last minute: the smaller of a short sample
    and the 1-minute load average (whichever exists; 0 where neither does)."""
    measures = [m for m in (sampled_busy_cores(), load_average()) if m is not None]
    return min(measures) if measures else 0.0


def default_threads() -> int:
    """The usable cores that are not busy, shared among the processes torchrun started on this
    machine; at least one."""
    processes_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = usable_cores()
    free = min(cores, int(cores - busy_cores() + 0.5))
    return max(1, free // processes_here)


class ThreadsCappedWarning(UserWarning):
    """More threads were asked for than this process has cores; the usable cores are used."""


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (``None``: ``default_threads()``) and return the count.

    A count above the usable cores is capped at them with a ThreadsCappedWarning: more threads
    than cores only make them wait for each other (``--threads 1000`` on 2 cores sent the load
    average to 254)."""
    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    cores = usable_cores()
    if count > cores:
        warnings.warn(f"--threads {count}: this process can use {cores} core{'s' * (cores != 1)} "
                      f"(its CPU affinity and quota); using {cores}", ThreadsCappedWarning, stacklevel=2)
        count = cores
    torch.set_num_threads(count)
    return count
