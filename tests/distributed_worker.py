"""One rank of the tiny distributed trainings of tests/test_distributed.py, started by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py JOB

JOB is JSON: {"data": a precomp folder with train and dev, "runs": [run, ...]}, the runs trained
one after another in the same process group. A run: {"out": run folder, "gather": bool,
"resume": bool, "epochs": int, "config": {overrides}, "stop": [global step, "interrupt",
"kill" or "terminate-torchrun", rank or "all"], "dump": folder}. "interrupt" raises KeyboardInterrupt after that step
(as Ctrl-C, which reaches every process of the terminal), caught here so the next run can
resume; "kill" sends SIGKILL to that rank; "terminate-torchrun" sends SIGTERM to torchrun itself
(as a scheduler stopping the job), which passes it on to every rank. "dump" saves each rank's
final weights as rank{R}.pt, to compare the ranks.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch

import mlasm.train as train_module
from cli_support import TINY
from mlasm import distributed
from mlasm.config import MLASMConfig
from mlasm.sources import open_split

PER_RANK_BATCH = TINY["batch_size"] // 2  # 2 ranks x 8 = the 16 of one process


class RecordedMLASM(train_module.MLASM):
    """The model class the trainer builds, keeping each instance so that its weights can be saved."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordedMLASM.instances.append(self)


def stopper(stop, rank: int):
    if not stop:
        return None
    at_step, how, who = stop

    def on_step(step: int) -> None:
        if step == at_step and who in ("all", rank):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "terminate-torchrun":  # the launcher, this process's parent, which passes it on
                os.kill(os.getppid(), signal.SIGTERM)
                time.sleep(60)  # at this step boundary, until the SIGTERM from torchrun ends the sleep
                return
            raise KeyboardInterrupt

    return on_step


def main() -> None:
    job = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    train_module.MLASM = RecordedMLASM
    train_split, dev_split = (open_split(job["data"], name) for name in ("train", "dev"))
    with distributed.processes_from_environment("cpu") as processes:
        for run in job["runs"]:
            config = MLASMConfig.cpu(**{**TINY, "batch_size": PER_RANK_BATCH, "epochs": run.get("epochs", 2),
                                        **run.get("config", {})})
            try:
                train_module.train(config, train_split, dev_split, run["out"], progress=False, checkpoint_every=4,
                                   resume=run.get("resume", False), gather_negatives=run.get("gather"),
                                   on_step=stopper(run.get("stop"), processes.rank))
            except KeyboardInterrupt:
                if not run.get("stop"):
                    raise
            if run.get("dump"):
                torch.save(RecordedMLASM.instances[-1].state_dict(),
                           os.path.join(run["dump"], f"rank{processes.rank}.pt"))


if __name__ == "__main__":
    main()
