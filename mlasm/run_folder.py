"""A run folder's rules: which files make a run, one training at a time (a lock), and when a run may be continued.

A folder holds ``last.pt``, ``best.pt``, ``train_log.jsonl``, ``vocab.json`` and ``config.json``.
A folder that already holds a run is continued only when resuming and replaced only when asked;
a resumed run keeps its settings, except those in CHANGEABLE_ON_RESUME, which are recorded.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from mlasm.checkpoint import CheckpointError, load_checkpoint
from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.vocab import Vocabulary
from mlasm.io import atomic_path, check_output_folder, remove_stale_temporaries

RUN_FILES = ("last.pt", "best.pt", "train_log.jsonl", "vocab.json", "config.json")
LOCK_FILE = ".mlasm-train.lock"
# settings that may change when a run is resumed, and are then recorded; every other one must match
CHANGEABLE_ON_RESUME = ("epochs",)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: it holds a run, it is in use, or the run differs."""


def config_for_data(config: MLASMConfig, split: RetrievalSplit, vocab: Vocabulary) -> MLASMConfig:
    """Fill in the sizes that only the data knows."""
    return dataclasses.replace(config, region_dim=split.region_dim, global_dim=split.global_dim,
                               vocab_size=len(vocab))


@dataclass
class RunState:
    """Where a run stands (its checkpoints' "progress"): the next step is batch ``step_in_epoch`` of ``epoch``."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_rsum: float = -math.inf
    best_epoch: int = -1
    epoch_loss_sum: float = 0.0  # so that a resumed epoch reports the same means
    epoch_positive_sum: float = 0.0
    epoch_hardest_sum: float = 0.0
    epoch_inside_sum: float = 0.0
    epoch_collapse_sum: float = 0.0  # what the epoch's loss would have been had every pair scored the same
    seed: int | None = None      # the caption order depends on it: a resumed run must keep it
    data: dict = field(default_factory=dict)      # which training data the run began on (RetrievalSplit.identity)
    changes: list = field(default_factory=list)   # settings changed on resume: {"global_step", name: [old, new]}
    world_size: int = 1           # processes that trained the run; a resumed run needs as many
    gather_negatives: bool = False  # every rank's batch slice was a negative for all (a setting of the run)


def holds_run(out_dir: str | os.PathLike) -> list[str]:
    """The files of a run already in ``out_dir`` (its checkpoints or log); empty when there is none."""
    out_dir = Path(out_dir)
    return [name for name in ("last.pt", "best.pt", "train_log.jsonl") if (out_dir / name).exists()]


def check_run_folder(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse to start where a run would be lost or cannot be continued; cheap, so checked before any work."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: continue the run, or replace it")
    existing = holds_run(out_dir)
    if resume and not (out_dir / "last.pt").is_file():
        raise CheckpointError(f"{out_dir / 'last.pt'}: nothing to resume (no checkpoint in {out_dir})")
    if not resume and not overwrite and existing:
        raise RunFolderError(f"{out_dir}: already holds a run ({', '.join(existing)}); continue it with --resume, "
                             f"replace it with --overwrite, or choose another --out")


def read_run_config(out_dir: str | os.PathLike) -> MLASMConfig:
    """The settings of the run in ``out_dir`` (from its last.pt), which a resumed run continues with."""
    state = load_checkpoint(Path(out_dir) / "last.pt")
    return MLASMConfig.from_dict({"mask_false_negatives": False, **state["config"]})


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for this training alone, through a lock file naming this process.

    The lock is the kernel's (flock), released when the process ends however it ends, so a
    lock file left by a killed process never blocks; its content (process id, host) only serves
    the message. The file is removed when the training ends. Where flock does not exist, a
    recorded process that is no longer alive is taken to have left the lock.
    """
    path = out_dir / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # not POSIX: trust the recorded process id
        fcntl = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                holder = _lock_holder(path).split()
                if holder and holder[0].isdigit() and int(holder[0]) != os.getpid() and _alive(int(holder[0])):
                    raise BlockingIOError
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(f"{out_dir}: another training is running in this folder (process "
                                 f"{_lock_holder(path)}); wait for it to end or train into another --out") from None
        try:  # the file locked must still be the one at the path: a training ending removes it
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no one can take a file about to vanish
        os.close(fd)  # releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def resume_differences(run_config: MLASMConfig, wanted: MLASMConfig) -> tuple[list[str], dict]:
    """The settings that differ between a run and what its resumption asks for, as
    (refused: readable lines, allowed: {name: (old, new)})."""
    refused, allowed = [], {}
    data_sizes = ("region_dim", "global_dim", "vocab_size")
    for f in dataclasses.fields(MLASMConfig):
        old, new = getattr(run_config, f.name), getattr(wanted, f.name)
        if old == new or (f.name == "global_dim" and not run_config.uses_global_level):
            continue
        if f.name in CHANGEABLE_ON_RESUME:
            allowed[f.name] = (old, new)
        else:
            option = f"{f.name} (from the data)" if f.name in data_sizes else f"--{f.name.replace('_', '-')}"
            refused.append(f"{option}: {old} in the run, {new} given")
    return refused, allowed


def read_log(path: Path) -> list[dict]:
    """The rows of ``train_log.jsonl``; a damaged line is a RunFolderError naming the file and the line."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested beyond the stack
            row = f"{type(error).__name__}"
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool):
            raise RunFolderError(f"{path}: line {number} is not an epoch's row (a JSON object with a whole-number "
                                 f"\"epoch\"); the log was changed or damaged: restore it, or remove the line")
        rows.append(row)
    return rows


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def hold_run_folder(out_dir: str | os.PathLike, resume: bool, overwrite: bool, held: ExitStack) -> Path:
    """Check, create and lock ``out_dir`` for a training (the lock lives as long as ``held``);
    a new run removes every file of an earlier one first."""
    check_run_folder(out_dir, resume, overwrite and not resume)  # before anything is created
    folder = check_output_folder(out_dir, "out_dir")
    held.enter_context(run_lock(folder))  # and again once the folder is ours
    check_run_folder(folder, resume, overwrite and not resume)
    remove_stale_temporaries(folder)
    if not resume:
        for name in RUN_FILES:  # a new run: nothing of an earlier one may stay beside it
            (folder / name).unlink(missing_ok=True)
    return folder


def continue_run(last_path: Path, state: dict, config: MLASMConfig, train_split: RetrievalSplit,
                 vocab: Vocabulary | None, seed: int | None, world: int,
                 gather_negatives: bool | None) -> tuple[MLASMConfig, Vocabulary, RunState, dict]:
    """The settings, vocabulary and state a resumed run goes on with, from its checkpoint ``state``;
    :class:`RunFolderError` naming every setting asked for that differs from the run's, except
    CHANGEABLE_ON_RESUME, returned as ``{name: (old, new)}`` and recorded in the run's changes."""
    # a checkpoint saved without the optimiser's state (save_checkpoint(optimizer=None): a model kept for
    # evaluation) cannot continue a run; refused here, before anything of the run folder is rewritten
    missing = [name for name in ("optimizer", "scheduler", "progress", "torch_rng")
               if not isinstance(state.get(name), (dict, torch.Tensor))]
    if missing:
        raise RunFolderError(f"{last_path}: holds no {' and no '.join(missing)} state (a model saved for use, not "
                             f"a training checkpoint), so --resume cannot continue it; start a new run with "
                             f"another --out, or replace this one with --overwrite")
    # a run begun before false-negative masking existed goes on as it began
    run_config = MLASMConfig.from_dict({"mask_false_negatives": False, **state["config"]})
    run_vocab = Vocabulary(state["vocab"])
    try:
        run = RunState(**state["progress"])
    except TypeError as error:  # a key this mlasm does not know, or one missing
        raise RunFolderError(f"{last_path}: its \"progress\" is not a run's ({error}); not a checkpoint mlasm "
                             f"train wrote") from None
    counters = ("epoch", "step_in_epoch", "global_step", "best_epoch", "world_size")
    wrong = next((name for name in counters if type(getattr(run, name)) is not int), None)  # noqa: E721 (bool too)
    if wrong is not None:
        raise RunFolderError(f"{last_path}: its \"progress\" field {wrong} is {getattr(run, wrong)!r:.40}, expected a "
                             f"whole number; not a checkpoint mlasm train wrote")
    refused, changed = resume_differences(run_config, config_for_data(config, train_split, run_vocab))
    if vocab is not None and vocab.fingerprint != run_vocab.fingerprint:
        refused.append(f"vocabulary: {len(run_vocab)} words in the run, {len(vocab)} given "
                       f"(--min-word-count builds another)")
    if seed is not None and run.seed is not None and seed != run.seed:
        refused.append(f"--seed: {run.seed} in the run, {seed} given")
    if run.world_size != world:
        refused.append(f"number of processes: {run.world_size} in the run, {world} now (the batches and each "
                       f"process's share of them depend on it; start {run.world_size} in all, e.g. torchrun "
                       f"--nproc_per_node {run.world_size})")
    if gather_negatives is not None and gather_negatives != run.gather_negatives:
        refused.append(f"--gather-negatives: {'on' if run.gather_negatives else 'off'} in the run, "
                       f"{'on' if gather_negatives else 'off'} given")
    given_data = train_split.identity()
    if run.data and run.data != given_data:
        refused.append(f"training data: {run.data['n_images']} images and {run.data['n_captions']} captions "
                       f"in the run, {given_data['n_images']} and {given_data['n_captions']} given"
                       + (" (other captions)" if run.data["n_captions"] == given_data["n_captions"] else ""))
    if refused:
        raise RunFolderError(f"{last_path}: a resumed run keeps its settings, and these differ: "
                             f"{'; '.join(refused)}. Only {', '.join(CHANGEABLE_ON_RESUME)} may change; "
                             f"start a new run with another --out, or replace this one with --overwrite")
    config = dataclasses.replace(run_config, **{k: new for k, (_, new) in changed.items()})
    run.seed = run.seed if run.seed is not None else (seed or 0)
    if changed:
        run.changes.append({"global_step": run.global_step, **{k: list(v) for k, v in changed.items()}})
    return config, run_vocab, run, changed
