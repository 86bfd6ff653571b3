"""How many threads torch uses: the cores this process may run on and that are free, not the
machine's count.

``os.cpu_count()`` counts every core of the machine; a container, ``taskset``, a SLURM job or a
CPU quota can give a process fewer. Too many threads on too few cores make torch much slower than
one thread: its threads wait for each other at every operation while other programs hold the
cores (measured: ``mlasm demo --fast`` on 2 cores under a load of 5.5 took 344 s with 2 threads,
65 s with 1). So the count comes from ``os.sched_getaffinity``, less the cores the 1-minute
load average says other programs keep busy, and under torchrun is shared among the processes
of this machine. ``--threads`` overrides it.
"""
from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """Cores this process may run on (affinity where the OS has it, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores other programs keep busy: the 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads() -> int:
    """The usable cores that are not busy, shared among the processes torchrun started on this
    machine; at least one."""
    processes_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = usable_cores()
    free = min(cores, int(cores - busy_cores() + 0.5))
    return max(1, free // processes_here)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (``None``: ``default_threads()``) and return the count."""
    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    return count
