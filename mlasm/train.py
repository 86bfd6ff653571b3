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

One training at a time holds a run folder; a folder that already holds a run is continued only
with ``resume`` and replaced only with ``overwrite`` (the folder's rules: ``mlasm.run_folder``).

Under torchrun (``mlasm.distributed``) each of N processes takes its slice of every batch of
N x ``batch_size`` captions, in the one order of (seed, epoch); DistributedDataParallel keeps the
weights equal on every rank. Rank 0 alone holds the folder and writes checkpoints and the log;
each rank's dropout is seeded by (seed, step, rank), so a resumed run (with as many processes,
which is checked) continues exactly. ``gather_negatives`` makes every rank's images and captions
negatives for all: N processes of batch B then train as one process of batch N x B.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mlasm import distributed
from mlasm.compiled import compile_training_scorer
from mlasm.checkpoint import check_model_fits, load_checkpoint, random_state, resolve_device, save_checkpoint
from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit, encode_captions, image_tensors
from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary
from mlasm.evaluate import check_rankable, evaluate_model
from mlasm.interrupts import InterruptGuard
from mlasm.io import write_json
from mlasm.levels import supervised_levels
from mlasm.loss import hardest_negative_loss, hinge_sums, rows_and_columns_loss, statistics_from_sums
from mlasm.metrics import NonFiniteScores
from mlasm.model import MLASM
from mlasm.run_folder import RunState, config_for_data, continue_run, hold_run_folder, read_log, write_log

VALIDATION_IMAGES = 1000  # as SCAN validates COCO: the dev split's first 1,000 images and their captions


def _check_finite_settings(config: MLASMConfig) -> None:
    """A NaN or infinite setting trains for nothing (a NaN margin) or diverges at once: refuse it."""
    bad = [f"{f.name} = {getattr(config, f.name)}" for f in dataclasses.fields(config)
           if isinstance(getattr(config, f.name), float) and not math.isfinite(getattr(config, f.name))]
    if bad:
        raise ValueError(f"invalid MLASMConfig: {', '.join(bad)}; every setting must be a finite number")


def level_weights(config: MLASMConfig) -> dict[str, float]:
    """The hinges the loss holds, by level, and their weights: the final score's and, with level-wise
    supervision, each supervised level's (each level must rank on its own)."""
    supervised = supervised_levels(config.uses_global_level) if config.level_weight > 0 else []
    return {"final": 1.0, **{level: config.level_weight for level in supervised}}


def epoch_order(n_captions: int, seed: int, epoch: int) -> np.ndarray:
    """The caption order of one epoch: a function of (seed, epoch) alone, so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n_captions)


def native_bfloat16(device: torch.device) -> bool:
    """Does this device multiply in bfloat16 natively? Then mixed precision (``amp``) pays: a CUDA GPU
    with bfloat16, a CPU with AVX-512 BF16 or AMX (the demo's step 20 % faster on a 2-core AVX-512
    BF16 CPU). Elsewhere bfloat16 is emulated and slower than float32, and ``amp`` is ignored."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def train(config: MLASMConfig, train_split: RetrievalSplit, dev_split: RetrievalSplit, out_dir: str | Path, *,
          vocab: Vocabulary | None = None, word_vectors: torch.Tensor | None = None,
          device: str | torch.device | None = None, seed: int | None = None, resume: bool = False,
          overwrite: bool = True, amp: bool = False, compile_scorer: bool = False, checkpoint_every: int = 200,
          progress: bool = True, on_step: Callable[[int], None] | None = None, gather_negatives: bool | None = None,
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

    Steps with hardest negatives backpropagate through the positives and their hardest negatives
    alone (``_Training.gradients_from_pairs``), except under ``amp``, ``compile_scorer`` or torchrun,
    which keep gradients through every pair of the batch.
    ``amp``: bfloat16 mixed precision where the device has it natively (``native_bfloat16``).
    ``compile_scorer``: the pair scorer of training steps compiled (``mlasm.compiled``; eager
    where compiling fails). The summary's ``mixed_precision`` and ``compiled`` say what ran.
    """
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be a whole number of steps >= 1, got {checkpoint_every!r}")
    _check_finite_settings(config)
    dev_split, validation_note = validation_subset(dev_split, validation_images)
    check_rankable(dev_split)  # a validation rSum over one described image would be a number of nothing
    if validation_note and progress and distributed.is_main():
        print(f"mlasm train: {validation_note}", flush=True)
    processes = distributed.current()
    device = processes.device if processes is not None else resolve_device(device)

    with ExitStack() as held:  # rank 0 alone holds the folder; every rank gets its refusal
        folder = distributed.on_rank_zero(lambda: hold_run_folder(out_dir, resume, overwrite, held))
        summary = _train_in_folder(config, train_split, dev_split, folder, vocab=vocab, word_vectors=word_vectors,
                                   device=device, seed=seed, resume=resume, amp=amp, compile_scorer=compile_scorer,
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


@dataclass
class _Start:
    """What a training begins with: the settings, vocabulary and run state, new or restored."""

    config: MLASMConfig
    vocab: Vocabulary
    run: RunState
    state: dict | None = None       # the checkpoint resumed from
    changed: dict = field(default_factory=dict)  # settings changed on resume: {name: (old, new)}


def _restore_or_start(config: MLASMConfig, train_split: RetrievalSplit, out_dir: Path, vocab: Vocabulary | None,
                      device: torch.device, seed: int | None, resume: bool, gather_negatives: bool | None) -> _Start:
    world = distributed.world_size()
    if resume:
        last_path = out_dir / "last.pt"
        state = load_checkpoint(last_path, map_location=device)
        config, vocab, run, changed = continue_run(last_path, state, config, train_split, vocab, seed, world,
                                                   gather_negatives)
        read_log(out_dir / "train_log.jsonl")  # a damaged log is refused before config.json is rewritten
        if changed and distributed.is_main():
            write_json(out_dir / "config.json", config.to_dict())
        return _Start(config, vocab, run, state, changed)
    vocab = vocab or Vocabulary.build(train_split.captions)
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise DataError(f"the vocabulary holds no word, only {', '.join(SPECIAL_TOKENS)}: every word of the "
                        f"{train_split.n_captions} training captions would read as <unk>; build it with a "
                        f"lower minimum count")
    seed = 0 if seed is None else seed
    run = RunState(seed=seed, data=train_split.identity(), world_size=world, gather_negatives=bool(gather_negatives))
    torch.manual_seed(seed)
    return _Start(config_for_data(config, train_split, vocab), vocab, run)


class _Training:
    """One training's parts (model, optimiser, data, run state) and its two units of work: a step and an epoch's end.

    Each splits into computing (forward and backward passes: weights untouched, random state drawn
    from) and committing (weights, counters and files updated, under the interrupt guard); see the
    module docstring for what an interrupt in either does.
    """

    def __init__(self, start: _Start, train_split: RetrievalSplit, dev_split: RetrievalSplit, out_dir: Path,
                 word_vectors: torch.Tensor | None, device: torch.device, amp: bool, compile_scorer: bool,
                 checkpoint_every: int, progress: bool):
        config, vocab, run = start.config, start.vocab, start.run
        self.world, self.rank, self.main = distributed.world_size(), distributed.rank(), distributed.is_main()
        self.config, self.run, self.device, self.progress = config, run, device, progress
        self.train_split, self.dev_split, self.checkpoint_every = train_split, dev_split, checkpoint_every
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.log_path = out_dir / "train_log.jsonl"
        self.use_amp = amp and native_bfloat16(device)
        if amp and not self.use_amp and progress and self.main:
            print(f"mlasm train: {device} has no native bfloat16 arithmetic: training in float32 (--amp ignored)",
                  flush=True)
        self.vocab = vocab.with_boundaries(config.start_end_tokens)  # validation encodes the dev captions alike
        self.captions = encode_captions(self.vocab, train_split.captions, progress=progress,  # once: NLTK is slow
                                        where=f"of split {train_split.name!r} ")
        self.unknown_share = float(np.mean(self.captions.ids == self.vocab.unk_id))
        self.model = MLASM(config).to(device)
        self.compiled = compile_training_scorer(self.model) if compile_scorer else None
        check_model_fits(self.model, train_split, str(out_dir))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_decay_epoch, gamma=0.1)
        if start.state is not None:
            self._restore(start.state)
        else:
            if word_vectors is not None:
                self.model.init_word_embeddings(word_vectors)
            if self.main:
                self.vocab.save(out_dir / "vocab.json")
                write_json(out_dir / "config.json", config.to_dict())
            self.log = []
        # in a process group: DDP over the model, or over the scorer of every rank's batch slice
        self.trainer = distributed.wrap_for_training(self.model, run.gather_negatives) if self.world > 1 else None

        self.batch_size = config.batch_size  # each process's share of a batch of batch_size x world captions
        # the last partial batch is dropped, as SCAN
        self.n_batches = len(train_split.captions) // (self.batch_size * self.world)
        if self.n_batches == 0:
            processes = f" ({self.world} processes x {self.batch_size})" if self.world > 1 else ""
            raise DataError(f"split {train_split.name!r}: {train_split.n_captions} captions are fewer than "
                            f"one batch of {self.batch_size * self.world}{processes}; lower batch_size")
        self.caption_lengths = np.diff(self.captions.offsets)
        # Pairs that are in truth positive (another image the caption is true of) are never negatives.
        self.known_positives = train_split.positive_sets() if config.mask_false_negatives else \
            PositiveSets.strict(train_split.caption_to_image, train_split.n_images)
        self.level_weights = level_weights(config)
        self.hinge_weights = sum(self.level_weights.values())  # at collapse every hinge sits at the margin

    @property
    def gradients_from_pairs(self) -> bool:
        """Hardest negatives with gradients through their pairs alone (mlasm.loss.hardest_negative_loss): one
        process in float32 with the eager scorer (DDP's hooks need its forward; bfloat16 and the compiled
        scorer keep their whole-batch pass, as measured)."""
        return self.trainer is None and not self.use_amp and self.compiled is None

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if torch.cuda.is_available() and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.log = [row for row in read_log(self.log_path) if row["epoch"] < self.run.epoch]

    # ------------------------------------------------------------------ a step
    def _batch_tensors(self, batch_ids: np.ndarray, caption_ids: np.ndarray):
        """This process's images (on the device), captions (tokens and lengths, on the CPU) and the
        positive mask of the whole batch."""
        image_ids = self.train_split.caption_to_image[caption_ids]
        regions, mask, global_features = (t.to(self.device) for t in image_tensors(self.train_split, image_ids))
        tokens, lengths = self.captions.batch(caption_ids)
        positives = torch.from_numpy(
            self.known_positives.mask(self.train_split.caption_to_image[batch_ids], batch_ids)).to(self.device)
        return regions, mask, global_features, tokens, lengths, positives

    def _rows_and_columns(self, batch_ids: np.ndarray, caption_ids: np.ndarray):
        """This process's scores of the batch, every level: (rows, columns, offset, row and column
        positives) in the form of ``mlasm.loss.rows_and_columns_loss``."""
        device, b = self.device, self.batch_size
        regions, mask, global_features, tokens, lengths, positives = self._batch_tensors(batch_ids, caption_ids)
        offset = self.rank * b
        if self.trainer is not None and self.run.gather_negatives:  # every rank's slice against every other's
            longest = int(self.caption_lengths[batch_ids].max())  # equal shapes to gather: the batch's longest
            tokens = torch.nn.functional.pad(tokens, (0, longest - tokens.shape[1]))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                rows, columns = self.trainer(regions, mask, global_features, tokens.to(device), lengths.to(device))
            return rows, columns, offset, positives[offset:offset + b], positives[:, offset:offset + b]
        scorer = self.model if self.trainer is None else self.trainer
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            levels = scorer(regions, mask, global_features, tokens.to(device), lengths.to(device), all_levels=True)
        own = positives[offset:offset + b, offset:offset + b]  # each rank's own slice is its (b, b) batch
        return levels, levels, 0, own, own

    def _losses(self, batch_ids: np.ndarray, caption_ids: np.ndarray, hardest: bool):
        """(what this process backpropagates, the loss of the whole batch, its statistics).

        The loss is a sum over the batch (VSE++) and DDP averages the ranks' gradients, so each rank
        backpropagates world x its share: the weights then move as those of one process given the
        whole batch (with every rank's negatives when gathered).
        """
        config = self.config
        if hardest and self.gradients_from_pairs:
            return self._hardest_negative_losses(batch_ids, caption_ids)
        rows, columns, offset, row_positives, column_positives = self._rows_and_columns(batch_ids, caption_ids)

        def hinge(level: str) -> torch.Tensor:
            return rows_and_columns_loss(rows[level].float(), columns[level].float(), offset, config.margin,
                                         hardest, row_positives, column_positives)

        loss = sum(weight * hinge(level) for level, weight in self.level_weights.items())
        sums = hinge_sums(rows["final"], columns["final"], offset, config.margin, row_positives, column_positives)
        batch_loss = loss
        if self.world > 1:
            total = distributed.sum_over_ranks(torch.cat([loss.detach().float()[None], sums]))
            batch_loss, sums, loss = total[0], total[1:], loss * self.world
        statistics = statistics_from_sums(sums, self.batch_size * self.world, config.margin, hardest)
        return loss, batch_loss, statistics

    def _hardest_negative_losses(self, batch_ids: np.ndarray, caption_ids: np.ndarray):
        """_losses of one process with hardest negatives: every pair scored without gradients, then the
        positives and the hardest negatives again with them (the same loss and gradients, a fraction of
        the backward pass)."""
        config, model, device = self.config, self.model, self.device
        regions, mask, global_features, tokens, lengths, positives = self._batch_tensors(batch_ids, caption_ids)
        img = model.encode_images(regions, mask, global_features)
        cap = model.encode_captions(tokens.to(device), lengths.to(device))
        with torch.no_grad():
            scores = model.pair_levels(img, cap)
        loss = hardest_negative_loss(scores, self.level_weights, config.margin, positives,
                                     lambda images, captions: model.pair_levels_at(img, cap, images, captions))
        sums = hinge_sums(scores["final"], scores["final"], 0, config.margin, positives, positives)
        return loss, loss, statistics_from_sums(sums, self.batch_size, config.margin, True)

    def compute_step(self, order: np.ndarray, epoch: int, step: int, hardest: bool):
        """Forward and backward passes of batch ``step`` of ``epoch``; the weights are not yet changed."""
        if self.world > 1:  # each rank's draws (dropout) follow from (seed, step, rank)
            torch.manual_seed(distributed.step_seed(self.run.seed, self.run.global_step, self.rank))
        width = self.batch_size * self.world
        batch_ids = order[step * width:(step + 1) * width]
        caption_ids = batch_ids[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]  # this process's slice
        loss, batch_loss, statistics = self._losses(batch_ids, caption_ids, hardest)
        if not torch.isfinite(batch_loss):  # stop before a step can spread NaN into the weights
            raise self.diverged(f"loss is {batch_loss.item()}", epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gradient_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if not torch.isfinite(gradient_norm):  # a finite loss can still have NaN gradients
            raise self.diverged(f"gradient norm is {gradient_norm.item()}", epoch, step)
        return batch_loss.item(), statistics

    def commit_step(self, step: int, batch_loss: float, statistics: dict) -> None:
        run = self.run
        self.optimizer.step()
        run.epoch_loss_sum += batch_loss
        run.epoch_positive_sum += statistics["positive"]
        run.epoch_hardest_sum += statistics["hardest_negative"]
        run.epoch_inside_sum += statistics["inside_margin"]
        run.epoch_collapse_sum += statistics["collapse_loss"] * self.hinge_weights
        run.step_in_epoch, run.global_step = step + 1, run.global_step + 1
        if run.step_in_epoch < self.n_batches and run.step_in_epoch % self.checkpoint_every == 0:
            self.save_last()

    # ------------------------------------------------------------------ an epoch's end
    def compute_epoch_end(self, epoch: int, hardest: bool, started: float) -> tuple[dict, dict]:
        """Validation and the epoch's row of the training log."""
        run, n_batches = self.run, self.n_batches
        validation_started = time.time()
        try:
            validation = evaluate_model(self.model, self.dev_split, self.vocab, levels_only=("final",), progress=False)
        except NonFiniteScores as e:
            raise NonFiniteScores(f"validation after epoch {epoch + 1}: {e}; {self.kept()}") from None
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
            "lr": self.optimizer.param_groups[0]["lr"],
            "hardest_negatives": hardest,
            "seconds": round(time.time() - started, 2),  # the whole epoch, its validation included
            "validation_seconds": round(time.time() - validation_started, 2),
            "val_rsum": validation["rsum"],
            "val_i2t": validation["i2t"],
            "val_t2i": validation["t2i"],
        }
        if "complete" in validation:
            row["val_complete_rsum"] = validation["complete"]["rsum"]
        return validation, row

    def commit_epoch_end(self, epoch: int, validation: dict, row: dict) -> None:
        run = self.run
        with warnings.catch_warnings():  # a run resumed after its epoch's last step has made none
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.log.append(row)
        if self.main:
            write_log(self.log_path, self.log)
        run.epoch, run.step_in_epoch = epoch + 1, 0
        run.epoch_loss_sum = run.epoch_positive_sum = run.epoch_hardest_sum = run.epoch_inside_sum = 0.0
        run.epoch_collapse_sum = 0.0
        if validation["rsum"] > run.best_rsum:
            run.best_rsum, run.best_epoch = validation["rsum"], epoch
            if self.main:
                save_checkpoint(self.best_path, self.model, self.vocab, dataclasses.asdict(run))
        self.save_last()

    # ------------------------------------------------------------------ files and messages
    def save_last(self, rng=None) -> None:
        if self.main:  # every rank holds the same state; one writes it
            save_checkpoint(self.last_path, self.model, self.vocab, dataclasses.asdict(self.run), self.optimizer,
                            self.scheduler, rng=rng)

    def kept(self) -> str:
        return f"{self.last_path.name} holds the last good state" if self.last_path.is_file() else \
            "no checkpoint was written"

    def diverged(self, what: str, epoch: int, step: int) -> NonFiniteScores:
        return NonFiniteScores(f"training {what} at epoch {epoch + 1}, step {step + 1}; the model has diverged "
                               f"(lower the learning rate, or train without --amp); {self.kept()}")


def _train_in_folder(config: MLASMConfig, train_split: RetrievalSplit, dev_split: RetrievalSplit, out_dir: Path, *,
                     vocab: Vocabulary | None, word_vectors: torch.Tensor | None, device: torch.device,
                     seed: int | None, resume: bool, amp: bool, compile_scorer: bool, checkpoint_every: int,
                     progress: bool, on_step: Callable[[int], None] | None, gather_negatives: bool | None) -> dict:
    """The training itself, in a folder this process (or rank 0 of its group) holds: the epochs'
    loop, and what an interrupt saves."""
    progress = progress and distributed.is_main()  # one set of progress bars, rank 0's
    start = _restore_or_start(config, train_split, out_dir, vocab, device, seed, resume, gather_negatives)
    training = _Training(start, train_split, dev_split, out_dir, word_vectors, device, amp, compile_scorer,
                         checkpoint_every, progress)
    run, n_batches = training.run, training.n_batches
    # phase: "boundary" (between steps: the state is whole), "compute" (a step's forward and backward
    # passes: weights untouched, random state drawn from), "commit" (weights, counters, files being
    # updated: an interrupt raised there anyway leaves the last written checkpoint as it is)
    phase, boundary_rng = "boundary", None
    guard = InterruptGuard()
    epochs = tqdm(range(run.epoch, training.config.epochs), desc="epochs", disable=not progress,
                  initial=run.epoch, total=training.config.epochs)
    with guard:
        for epoch in epochs:
            training.model.train()
            order = epoch_order(train_split.n_captions, run.seed, epoch)
            hardest = epoch >= training.config.warmup_epochs
            started = time.time()
            batches = tqdm(range(run.step_in_epoch, n_batches), desc=f"epoch {epoch + 1}", leave=False,
                           disable=not progress, initial=run.step_in_epoch, total=n_batches)
            try:
                for step in batches:
                    phase, boundary_rng = "compute", random_state()
                    batch_loss, statistics = training.compute_step(order, epoch, step, hardest)
                    phase = "commit"
                    with guard.critical():
                        training.commit_step(step, batch_loss, statistics)
                        phase, boundary_rng = "boundary", None
                    batches.set_postfix(loss=f"{batch_loss:.3f}")
                    if on_step is not None:
                        on_step(run.global_step)

                boundary_rng = random_state()  # validation draws nothing, but the boundary is here
                validation, row = training.compute_epoch_end(epoch, hardest, started)
                phase = "commit"
                with guard.critical():
                    training.commit_epoch_end(epoch, validation, row)
                    phase, boundary_rng = "boundary", None
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
                if phase != "commit":  # the state of the last step boundary, whole: save it to resume from
                    with guard.critical():
                        training.save_last(rng=boundary_rng)
                raise
            finally:
                batches.close()
            epochs.set_postfix(val_rsum=f"{validation['rsum']:.1f}")
    epochs.close()
    return {"best_rsum": run.best_rsum, "best_epoch": run.best_epoch, "epochs": run.epoch,
            "best": str(training.best_path), "last": str(training.last_path), "log": training.log,
            "unknown_token_share": training.unknown_share,
            "changed_on_resume": {name: list(values) for name, values in start.changed.items()},
            "world_size": training.world, "gather_negatives": run.gather_negatives,
            "mixed_precision": training.use_amp,
            "compiled": training.compiled is not None and training.compiled.compiled_in_use}
