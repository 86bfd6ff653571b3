"""Training: hardest-negative triplet loss, validation rSum every epoch, exact resume.

A run folder holds ``last.pt`` (everything needed to continue, written every
``checkpoint_every`` steps and at each epoch's end), ``best.pt`` (the best validation
rSum), ``vocab.json``, ``config.json`` and ``train_log.jsonl`` (one line per epoch).

Resuming is exact: the order of the captions in an epoch is a function of (seed, epoch),
and the checkpoint carries the model, the optimiser, the scheduler, the position inside the
epoch and torch's random state (dropout), all taken at one step boundary. A run killed
mid-epoch (kill -9: from the last checkpoint; Ctrl-C or SIGTERM: from the step it was in)
and resumed ends with the same weights and metrics as one never interrupted.

How an interrupt keeps that promise: a step first computes (forward pass, dropout masks,
loss, gradients) and then commits (the optimiser's update, the counters, a checkpoint). An
interrupt while computing saves the state of the step boundary before it, weights and
random state alike, so the resumed run redoes that step from the same draws. A signal
during a commit is held until the commit ends (:class:`mlasm.interrupts.InterruptGuard`);
an exception raised inside a commit anyway leaves the last written checkpoint as it is.

One training at a time holds a run folder (a lock file recording its process id); a folder
that already holds a run is continued only with ``resume`` and replaced only with ``overwrite``.

Under torchrun (``mlasm.distributed``) each of N processes takes its slice of every batch of
N x ``batch_size`` captions, in the one order of (seed, epoch); DistributedDataParallel keeps the
weights equal on every rank. Rank 0 alone holds the folder and writes checkpoints and the log;
each rank's dropout is seeded by (seed, step, rank), so a resumed run (with as many processes,
which is checked) continues exactly. ``gather_negatives`` makes every rank's images and captions
negatives for all: N processes of batch B then train as one process of batch N x B.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from mlasm import distributed
from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit, encode_captions, image_tensors
from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary
from mlasm.checkpoint import (CheckpointError, check_model_fits, load_checkpoint, random_state, resolve_device,
                              save_checkpoint)
from mlasm.evaluate import evaluate_model
from mlasm.interrupts import InterruptGuard
from mlasm.io import atomic_path, check_output_folder, remove_stale_temporaries, write_json
from mlasm.loss import batch_statistics, loss_at_collapse, triplet_loss
from mlasm.metrics import NonFiniteScores
from mlasm.model import MLASM

RUN_FILES = ("last.pt", "best.pt", "train_log.jsonl", "vocab.json", "config.json")
LOCK_FILE = ".mlasm-train.lock"
# settings that may change when a run is resumed, and are then recorded; every other one must match
CHANGEABLE_ON_RESUME = ("epochs",)
VALIDATION_IMAGES = 1000  # as SCAN validates COCO: the dev split's first 1,000 images and their captions


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: it holds a run, it is in use, or the run differs."""


def config_for_data(config: MLASMConfig, split: RetrievalSplit, vocab: Vocabulary) -> MLASMConfig:
    """Fill in the sizes that only the data knows."""
    return dataclasses.replace(config, region_dim=split.region_dim, global_dim=split.global_dim,
                               vocab_size=len(vocab))


@dataclass
class Progress:
    """Where a run stands: the next step to take is batch ``step_in_epoch`` of ``epoch``."""

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


# ----------------------------------------------------------------------------- the run folder


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


def _check_finite_settings(config: MLASMConfig) -> None:
    """A NaN or infinite setting trains for nothing (a NaN margin) or diverges at once: refuse it."""
    bad = [f"{f.name} = {getattr(config, f.name)}" for f in dataclasses.fields(config)
           if isinstance(getattr(config, f.name), float) and not math.isfinite(getattr(config, f.name))]
    if bad:
        raise ValueError(f"invalid MLASMConfig: {', '.join(bad)}; every setting must be a finite number")


def _resume_differences(run_config: MLASMConfig, wanted: MLASMConfig) -> tuple[list[str], dict]:
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


# ----------------------------------------------------------------------------- training

def epoch_order(n_captions: int, seed: int, epoch: int) -> np.ndarray:
    """The caption order of one epoch: a function of (seed, epoch) alone, so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n_captions)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def train(config: MLASMConfig, train_split: RetrievalSplit, dev_split: RetrievalSplit, out_dir: str | Path, *,
          vocab: Vocabulary | None = None, word_vectors: torch.Tensor | None = None,
          device: str | torch.device | None = None, seed: int | None = None, resume: bool = False,
          overwrite: bool = True, amp: bool = False, checkpoint_every: int = 200, progress: bool = True,
          on_step: Callable[[int], None] | None = None, gather_negatives: bool | None = None,
          validation_images: int | None = VALIDATION_IMAGES) -> dict:
    """Train MLASM; return a summary with the best validation rSum and the paths written.

    ``vocab`` defaults to one built from the training captions (SCAN's threshold of 4); a
    vocabulary file of SCAN's loads with ``Vocabulary.load``. Captions get <start> and <end>
    where ``config.start_end_tokens`` says, whatever ``vocab.boundaries`` is.
    ``word_vectors`` (V, word_dim) initialises the word embedding. ``seed`` (default 0) fixes
    the initial weights and the caption order. ``on_step`` is called after every optimisation
    step with the global step (tests use it to simulate a kill). ``validation_images``: a dev
    split larger than this is validated on its first that many images and their captions (SCAN's
    1,000 for COCO; None: the whole split); the summary's ``validation`` says which.

    ``resume`` continues the run in ``out_dir`` from its last.pt: ``config`` (with the data's
    sizes), ``vocab`` and ``seed`` must then match the run's, except the settings in
    CHANGEABLE_ON_RESUME (``epochs``), which are applied and recorded in the summary's
    ``changed_on_resume``, config.json and the checkpoint. Without ``resume``, a run already
    in ``out_dir`` is replaced when ``overwrite`` (its files removed first, the default for
    notebooks and scripts), and is an error otherwise (the command line's default).

    In a process group (``mlasm.distributed``, under torchrun) ``config.batch_size`` is each
    process's share of a batch; ``gather_negatives`` (default: off, or the resumed run's) scores
    every rank's slice against every other's. Training runs on the process's device.
    """
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be a whole number of steps >= 1, got {checkpoint_every!r}")
    _check_finite_settings(config)
    dev_split, validation_note = validation_subset(dev_split, validation_images)
    if validation_note and progress and distributed.is_main():
        print(f"mlasm train: {validation_note}", flush=True)
    processes = distributed.current()
    device = processes.device if processes is not None else resolve_device(device)

    with ExitStack() as held:
        def hold_folder() -> Path:  # rank 0 alone holds the folder; every rank gets its refusal
            check_run_folder(out_dir, resume, overwrite and not resume)  # before anything is created
            folder = check_output_folder(out_dir, "out_dir")
            held.enter_context(run_lock(folder))  # and again once the folder is ours
            check_run_folder(folder, resume, overwrite and not resume)
            remove_stale_temporaries(folder)
            if not resume:
                for name in RUN_FILES:  # a new run: nothing of an earlier one may stay beside it
                    (folder / name).unlink(missing_ok=True)
            return folder

        out_dir = distributed.on_rank_zero(hold_folder)
        summary = _train_in_folder(config, train_split, dev_split, out_dir, vocab=vocab, word_vectors=word_vectors,
                                   device=device, seed=seed, resume=resume, amp=amp,
                                   checkpoint_every=checkpoint_every, progress=progress, on_step=on_step,
                                   gather_negatives=gather_negatives)
        summary["validation"] = validation_note or f"the whole {dev_split.name} split"
        return summary


def validation_subset(dev_split: RetrievalSplit, validation_images: int | None) -> tuple[RetrievalSplit, str | None]:
    """The part of the dev split that validation scores every epoch, and a line saying so when
    it is not the whole split (scoring all 5,000 COCO dev images each epoch costs 25x 1,000's)."""
    if validation_images is None or dev_split.n_images <= validation_images:
        return dev_split, None
    if not (isinstance(validation_images, int) and validation_images >= 1):
        raise ValueError(f"validation_images must be a whole number >= 1 or None, got {validation_images!r}")
    note = (f"validation on the first {validation_images:,} of the {dev_split.n_images:,} {dev_split.name} images "
            f"and their captions, as SCAN validates COCO (--validation-images 0: all)")
    return dev_split.subset(np.arange(validation_images)), note


def _train_in_folder(config: MLASMConfig, train_split: RetrievalSplit, dev_split: RetrievalSplit, out_dir: Path, *,
                     vocab: Vocabulary | None, word_vectors: torch.Tensor | None, device: torch.device,
                     seed: int | None, resume: bool, amp: bool, checkpoint_every: int, progress: bool,
                     on_step: Callable[[int], None] | None, gather_negatives: bool | None) -> dict:
    """The training itself, in a folder this process (or rank 0 of its group) holds."""
    last_path, best_path, log_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "train_log.jsonl"
    use_amp = amp and device.type == "cuda"
    changed: dict[str, tuple] = {}
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    progress = progress and main  # one set of progress bars, rank 0's

    if resume:
        state = load_checkpoint(last_path, map_location=device)
        # a run begun before false-negative masking existed goes on as it began
        run_config = MLASMConfig.from_dict({"mask_false_negatives": False, **state["config"]})
        run_vocab = Vocabulary(state["vocab"])
        run = Progress(**state["progress"])
        refused, changed = _resume_differences(run_config, config_for_data(config, train_split, run_vocab))
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
        gather_negatives = run.gather_negatives
        given_data = train_split.identity()
        if run.data and run.data != given_data:
            refused.append(f"training data: {run.data['n_images']} images and {run.data['n_captions']} captions "
                           f"in the run, {given_data['n_images']} and {given_data['n_captions']} given"
                           + (" (other captions)" if run.data["n_captions"] == given_data["n_captions"] else ""))
        if refused:
            raise RunFolderError(f"{last_path}: a resumed run keeps its settings, and these differ: "
                                 f"{'; '.join(refused)}. Only {', '.join(CHANGEABLE_ON_RESUME)} may change; "
                                 f"start a new run with another --out, or replace this one with --overwrite")
        config, vocab = dataclasses.replace(run_config, **{k: new for k, (_, new) in changed.items()}), run_vocab
        seed = run.seed if run.seed is not None else (seed or 0)
        run.seed = seed
        if changed:
            run.changes.append({"global_step": run.global_step, **{k: list(v) for k, v in changed.items()}})
            if main:
                write_json(out_dir / "config.json", config.to_dict())
    else:
        state = None
        vocab = vocab or Vocabulary.build(train_split.captions)
        if len(vocab) <= len(SPECIAL_TOKENS):
            raise DataError(f"the vocabulary holds no word, only {', '.join(SPECIAL_TOKENS)}: every word of the "
                            f"{train_split.n_captions} training captions would read as <unk>; build it with a "
                            f"lower minimum count")
        config = config_for_data(config, train_split, vocab)
        seed = 0 if seed is None else seed
        gather_negatives = bool(gather_negatives)
        run = Progress(seed=seed, data=train_split.identity(), world_size=world, gather_negatives=gather_negatives)
        torch.manual_seed(seed)

    vocab = vocab.with_boundaries(config.start_end_tokens)  # validation encodes the dev captions alike
    captions = encode_captions(vocab, train_split.captions, progress=progress,  # once: NLTK is slow
                               where=f"of split {train_split.name!r} ")
    unknown_share = float(np.mean(captions.ids == vocab.unk_id))
    model = MLASM(config).to(device)
    check_model_fits(model, train_split, str(out_dir))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_decay_epoch, gamma=0.1)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if torch.cuda.is_available() and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        log = [row for row in _read_log(log_path) if row["epoch"] < run.epoch]
    else:
        if word_vectors is not None:
            model.init_word_embeddings(word_vectors)
        if main:
            vocab.save(out_dir / "vocab.json")
            write_json(out_dir / "config.json", config.to_dict())
        log = []
    # in a process group: DDP over the model, or over the scorer of every rank's batch slice
    trainer = distributed.wrap_for_training(model, gather_negatives) if world > 1 else None

    batch_size = config.batch_size  # each process's share of a batch of batch_size x world captions
    n_batches = len(train_split.captions) // (batch_size * world)  # the last partial batch is dropped, as SCAN
    if n_batches == 0:
        processes = f" ({world} processes x {batch_size})" if world > 1 else ""
        raise DataError(f"split {train_split.name!r}: {train_split.n_captions} captions are fewer than "
                        f"one batch of {batch_size * world}{processes}; lower batch_size")
    caption_lengths = np.diff(captions.offsets)

    # Pairs that are in truth positive (another image the caption is true of) are never negatives.
    known_positives = train_split.positive_sets() if config.mask_false_negatives else \
        PositiveSets.strict(train_split.caption_to_image, train_split.n_images)

    supervised_levels = [] if config.level_weight == 0 else \
        ["t2i", "i2t"] + (["global"] if config.uses_global_level else [])
    hinge_weights = 1 + config.level_weight * len(supervised_levels)  # the final score's hinge, then the levels'

    def losses_across_ranks(batch_ids, regions, mask, global_features, tokens, lengths, hardest):
        """A step's loss in a process group: (what this rank backpropagates, the loss of the whole
        batch, its statistics). The loss is a sum over the batch (VSE++) and DDP averages the ranks'
        gradients, so each rank backpropagates world x its share: the weights then move as those of
        one process given the whole batch (with every rank's negatives when gathered)."""
        offset = rank * batch_size
        batch_positives = torch.from_numpy(
            known_positives.mask(train_split.caption_to_image[batch_ids], batch_ids)).to(device)
        if gather_negatives:
            longest = int(caption_lengths[batch_ids].max())  # equal shapes to gather: the batch's longest
            tokens = torch.nn.functional.pad(tokens, (0, longest - tokens.shape[1]))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                rows, columns = trainer(regions, mask, global_features, tokens.to(device), lengths.to(device))
            row_positives = batch_positives[offset:offset + batch_size]
            column_positives = batch_positives[:, offset:offset + batch_size]
        else:  # each rank's own slice is its batch: rows and columns are the same (b, b) matrix
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                rows = columns = trainer(regions, mask, global_features, tokens.to(device), lengths.to(device),
                                         all_levels=True)
            row_positives = column_positives = batch_positives[offset:offset + batch_size, offset:offset + batch_size]
            offset = 0

        def share(level: str) -> torch.Tensor:
            return distributed.rows_and_columns_loss(rows[level].float(), columns[level].float(), offset,
                                                     config.margin, hardest, row_positives, column_positives)

        loss = share("final")
        for level in supervised_levels:  # level-wise supervision, as in one process
            loss = loss + config.level_weight * share(level)
        sums = distributed.rows_and_columns_statistics(rows["final"], columns["final"], offset, config.margin,
                                                       row_positives, column_positives)
        total = distributed.sum_over_ranks(torch.cat([loss.detach().float()[None], sums]))
        positive, hardest_sum, hardest_count, inside, comparisons = total[1:].tolist()
        statistics = {"positive": positive / (batch_size * world),
                      "hardest_negative": hardest_sum / hardest_count if hardest_count else math.nan,
                      "inside_margin": inside / max(comparisons, 1),
                      "collapse_loss": loss_at_collapse(config.margin, hardest, hardest_count, comparisons)}
        return loss * world, total[0], statistics

    def save_last(rng=None) -> None:
        if main:  # every rank holds the same state; one writes it
            save_checkpoint(last_path, model, vocab, dataclasses.asdict(run), optimizer, scheduler, rng=rng)

    def kept() -> str:
        return f"{last_path.name} holds the last good state" if last_path.is_file() else "no checkpoint was written"

    def diverged(what: str, epoch: int, step: int) -> NonFiniteScores:
        return NonFiniteScores(f"training {what} at epoch {epoch + 1}, step {step + 1}; the model has diverged "
                               f"(lower the learning rate, or train without --amp); {kept()}")

    # phase: "boundary" (between steps: the state is whole), "compute" (a step's forward and backward
    # passes: weights untouched, random state drawn from), "commit" (weights, counters, files being
    # updated: an interrupt raised there anyway leaves the last written checkpoint as it is)
    phase, boundary_rng = "boundary", None
    guard = InterruptGuard()
    epochs = tqdm(range(run.epoch, config.epochs), desc="epochs", disable=not progress,
                  initial=run.epoch, total=config.epochs)
    with guard:
        for epoch in epochs:
            model.train()
            order = epoch_order(train_split.n_captions, seed, epoch)
            hardest = epoch >= config.warmup_epochs
            started = time.time()
            batches = tqdm(range(run.step_in_epoch, n_batches), desc=f"epoch {epoch + 1}", leave=False,
                           disable=not progress, initial=run.step_in_epoch, total=n_batches)
            try:
                for step in batches:
                    phase, boundary_rng = "compute", random_state()
                    if world > 1:  # each rank's draws (dropout) follow from (seed, step, rank)
                        torch.manual_seed(distributed.step_seed(seed, run.global_step, rank))
                    batch_ids = order[step * batch_size * world:(step + 1) * batch_size * world]
                    caption_ids = batch_ids[rank * batch_size:(rank + 1) * batch_size]  # this process's slice
                    image_ids = train_split.caption_to_image[caption_ids]
                    regions, mask, global_features = (t.to(device) for t in image_tensors(train_split, image_ids))
                    tokens, lengths = captions.batch(caption_ids)
                    if trainer is None:
                        positives = torch.from_numpy(known_positives.mask(image_ids, caption_ids)).to(device)
                        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                            levels = model(regions, mask, global_features, tokens.to(device), lengths.to(device),
                                           all_levels=True)
                        scores = levels["final"]
                        loss = triplet_loss(scores.float(), margin=config.margin, hardest=hardest,
                                            positive_mask=positives)
                        for level in supervised_levels:  # level-wise supervision: each level must rank on its own
                            loss = loss + config.level_weight * triplet_loss(
                                levels[level].float(), margin=config.margin, hardest=hardest, positive_mask=positives)
                        batch_loss = loss
                    else:
                        loss, batch_loss, statistics = losses_across_ranks(batch_ids, regions, mask, global_features,
                                                                           tokens, lengths, hardest)
                    if not torch.isfinite(batch_loss):  # stop before a step can spread NaN into the weights
                        raise diverged(f"loss is {batch_loss.item()}", epoch, step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    gradient_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    if not torch.isfinite(gradient_norm):  # a finite loss can still have NaN gradients
                        raise diverged(f"gradient norm is {gradient_norm.item()}", epoch, step)
                    if trainer is None:
                        statistics = batch_statistics(scores, config.margin, positives, hardest=hardest)
                    phase = "commit"
                    with guard.critical():
                        optimizer.step()
                        run.epoch_loss_sum += batch_loss.item()
                        run.epoch_positive_sum += statistics["positive"]
                        run.epoch_hardest_sum += statistics["hardest_negative"]
                        run.epoch_inside_sum += statistics["inside_margin"]
                        # every hinge the loss holds collapses alike: the final score's and each supervised level's
                        run.epoch_collapse_sum += statistics["collapse_loss"] * hinge_weights
                        run.step_in_epoch, run.global_step = step + 1, run.global_step + 1
                        if run.step_in_epoch < n_batches and run.step_in_epoch % checkpoint_every == 0:
                            save_last()
                        phase, boundary_rng = "boundary", None
                    batches.set_postfix(loss=f"{batch_loss.item():.3f}")
                    if on_step is not None:
                        on_step(run.global_step)

                boundary_rng = random_state()  # validation draws nothing, but the boundary is here
                validation_started = time.time()
                try:
                    validation = evaluate_model(model, dev_split, vocab, levels_only=("final",), progress=False)
                except NonFiniteScores as e:
                    raise NonFiniteScores(f"validation after epoch {epoch + 1}: {e}; {kept()}") from None
                learning_rate = optimizer.param_groups[0]["lr"]
                row = {
                    "epoch": epoch,
                    "steps": run.global_step,
                    "loss": run.epoch_loss_sum / n_batches,
                    # the loss as a share of its value had every pair scored the same (1.0: collapsed), over
                    # every hinge it holds: hardest or summed negatives, levels, gathered negatives
                    "loss_share_of_collapse": run.epoch_loss_sum / run.epoch_collapse_sum
                    if run.epoch_collapse_sum > 0 else math.nan,
                    "mean_positive": run.epoch_positive_sum / n_batches,
                    "mean_hardest_negative": run.epoch_hardest_sum / n_batches,
                    "inside_margin": run.epoch_inside_sum / n_batches,
                    "lr": learning_rate,
                    "hardest_negatives": hardest,
                    "seconds": round(time.time() - started, 2),  # the whole epoch, its validation included
                    "validation_seconds": round(time.time() - validation_started, 2),
                    "val_rsum": validation["rsum"],
                    "val_i2t": validation["i2t"],
                    "val_t2i": validation["t2i"],
                }
                if "complete" in validation:
                    row["val_complete_rsum"] = validation["complete"]["rsum"]
                phase = "commit"
                with guard.critical():
                    with warnings.catch_warnings():  # a run resumed after its epoch's last step has made none
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        scheduler.step()
                    log.append(row)
                    if main:
                        _write_log(log_path, log)
                    run.epoch, run.step_in_epoch = epoch + 1, 0
                    run.epoch_loss_sum = run.epoch_positive_sum = run.epoch_hardest_sum = run.epoch_inside_sum = 0.0
                    run.epoch_collapse_sum = 0.0
                    if validation["rsum"] > run.best_rsum:
                        run.best_rsum, run.best_epoch = validation["rsum"], epoch
                        if main:
                            save_checkpoint(best_path, model, vocab, dataclasses.asdict(run))
                    save_last()
                    phase, boundary_rng = "boundary", None
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
                if phase != "commit":  # the state of the last step boundary, whole: save it to resume from
                    with guard.critical():
                        save_last(rng=boundary_rng)
                raise
            finally:
                batches.close()
            epochs.set_postfix(val_rsum=f"{validation['rsum']:.1f}")
    epochs.close()
    return {"best_rsum": run.best_rsum, "best_epoch": run.best_epoch, "epochs": run.epoch,
            "best": str(best_path), "last": str(last_path), "log": log, "unknown_token_share": unknown_share,
            "changed_on_resume": {name: list(values) for name, values in changed.items()},
            "world_size": world, "gather_negatives": gather_negatives}
