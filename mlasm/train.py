"""Training: hardest-negative triplet loss, validation rSum every epoch, exact resume.

A run folder holds ``last.pt`` (everything needed to continue, written every
``checkpoint_every`` steps and at each epoch's end), ``best.pt`` (the best validation
rSum), ``vocab.json``, ``config.json`` and ``train_log.jsonl`` (one line per epoch).

Resuming is exact: the order of the captions in an epoch is a function of (seed, epoch),
and the checkpoint carries the model, the optimiser, the scheduler, the position inside the
epoch and torch's random state (dropout). A run killed mid-epoch and resumed ends with the
same weights and metrics as one never interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit, caption_tensors, image_tensors
from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import Vocabulary
from mlasm.checkpoint import CheckpointError, check_model_fits, load_checkpoint, resolve_device, save_checkpoint
from mlasm.evaluate import evaluate_model
from mlasm.io import atomic_path, write_json
from mlasm.loss import batch_statistics, triplet_loss
from mlasm.metrics import NonFiniteScores
from mlasm.model import MLASM

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
          device: str | torch.device | None = None, seed: int = 0, resume: bool = False,
          amp: bool = False, checkpoint_every: int = 200, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train MLASM; return a summary with the best validation rSum and the paths written.

    ``vocab`` defaults to one built from the training captions (SCAN's threshold of 4).
    ``word_vectors`` (V, word_dim) initialises the word embedding. ``on_step`` is called
    after every optimisation step with the global step (tests use it to simulate a kill).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    last_path, best_path, log_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "train_log.jsonl"
    use_amp = amp and device.type == "cuda"

    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location=device)
        # a run begun before false-negative masking existed goes on as it began
        config = MLASMConfig.from_dict({"mask_false_negatives": False, **state["config"]})
        vocab = Vocabulary(state["vocab"])
        run = Progress(**state["progress"])
    else:
        if resume:
            raise CheckpointError(f"{last_path}: nothing to resume (no checkpoint in {out_dir})")
        state = None
        vocab = vocab or Vocabulary.build(train_split.captions)
        config = config_for_data(config, train_split, vocab)
        run = Progress()
        torch.manual_seed(seed)

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
        vocab.save(out_dir / "vocab.json")
        write_json(out_dir / "config.json", config.to_dict())
        log = []

    batch_size = config.batch_size
    n_batches = len(train_split.captions) // batch_size  # the last partial batch is dropped, as SCAN
    if n_batches == 0:
        raise DataError(f"split {train_split.name!r}: {train_split.n_captions} captions are fewer than "
                        f"one batch of {batch_size}; lower batch_size")

    # Pairs that are in truth positive (another image the caption is true of) are never negatives.
    known_positives = train_split.positive_sets() if config.mask_false_negatives else \
        PositiveSets.strict(train_split.caption_to_image, train_split.n_images)

    supervised_levels = [] if config.level_weight == 0 else \
        ["t2i", "i2t"] + (["global"] if config.uses_global_level else [])

    def save_last() -> None:
        save_checkpoint(last_path, model, vocab, dataclasses.asdict(run), optimizer, scheduler)

    epochs = tqdm(range(run.epoch, config.epochs), desc="epochs", disable=not progress,
                  initial=run.epoch, total=config.epochs)
    for epoch in epochs:
        model.train()
        order = epoch_order(train_split.n_captions, seed, epoch)
        hardest = epoch >= config.warmup_epochs
        started = time.time()
        batches = tqdm(range(run.step_in_epoch, n_batches), desc=f"epoch {epoch + 1}", leave=False,
                       disable=not progress, initial=run.step_in_epoch, total=n_batches)
        try:
            for step in batches:
                caption_ids = order[step * batch_size:(step + 1) * batch_size]
                image_ids = train_split.caption_to_image[caption_ids]
                regions, mask, global_features = (t.to(device) for t in image_tensors(train_split, image_ids))
                tokens, lengths = caption_tensors(vocab, [train_split.captions[c] for c in caption_ids])
                positives = torch.from_numpy(known_positives.mask(image_ids, caption_ids)).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    levels = model(regions, mask, global_features, tokens.to(device), lengths.to(device),
                                   all_levels=True)
                scores = levels["final"]
                loss = triplet_loss(scores.float(), margin=config.margin, hardest=hardest, positive_mask=positives)
                for level in supervised_levels:  # level-wise supervision: each level must rank on its own too
                    loss = loss + config.level_weight * triplet_loss(
                        levels[level].float(), margin=config.margin, hardest=hardest, positive_mask=positives)
                if not torch.isfinite(loss):  # stop before a step can spread NaN into the weights
                    raise NonFiniteScores(f"training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                          f"the model has diverged (lower the learning rate, or train without "
                                          f"--amp); {last_path.name} holds the last good state")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                statistics = batch_statistics(scores, config.margin, positives)
                run.epoch_loss_sum += loss.item()
                run.epoch_positive_sum += statistics["positive"]
                run.epoch_hardest_sum += statistics["hardest_negative"]
                run.epoch_inside_sum += statistics["inside_margin"]
                run.step_in_epoch, run.global_step = step + 1, run.global_step + 1
                batches.set_postfix(loss=f"{loss.item():.3f}")
                if run.step_in_epoch < n_batches and run.step_in_epoch % checkpoint_every == 0:
                    save_last()
                if on_step is not None:
                    on_step(run.global_step)
        except KeyboardInterrupt:
            save_last()
            raise
        finally:
            batches.close()

        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()
        validation = evaluate_model(model, dev_split, vocab, levels_only=("final",), progress=False)
        row = {
            "epoch": epoch,
            "steps": run.global_step,
            "loss": run.epoch_loss_sum / n_batches,
            # the loss as a share of its value when every hinge sits at the margin: 2 x batch x margin
            # with hardest negatives, 2 x batch x (batch - 1) x margin when summing over all of them
            "loss_share_of_collapse": run.epoch_loss_sum / n_batches
            / (2 * batch_size * (1 if hardest else batch_size - 1) * config.margin) if config.margin > 0 else math.nan,
            "mean_positive": run.epoch_positive_sum / n_batches,
            "mean_hardest_negative": run.epoch_hardest_sum / n_batches,
            "inside_margin": run.epoch_inside_sum / n_batches,
            "lr": learning_rate,
            "hardest_negatives": hardest,
            "seconds": round(time.time() - started, 2),
            "val_rsum": validation["rsum"],
            "val_i2t": validation["i2t"],
            "val_t2i": validation["t2i"],
        }
        if "complete" in validation:
            row["val_complete_rsum"] = validation["complete"]["rsum"]
        log.append(row)
        _write_log(log_path, log)
        run.epoch, run.step_in_epoch = epoch + 1, 0
        run.epoch_loss_sum = run.epoch_positive_sum = run.epoch_hardest_sum = run.epoch_inside_sum = 0.0
        if validation["rsum"] > run.best_rsum:
            run.best_rsum, run.best_epoch = validation["rsum"], epoch
            save_checkpoint(best_path, model, vocab, dataclasses.asdict(run))
        save_last()
        epochs.set_postfix(val_rsum=f"{validation['rsum']:.1f}")
    epochs.close()
    return {"best_rsum": run.best_rsum, "best_epoch": run.best_epoch, "epochs": run.epoch,
            "best": str(best_path), "last": str(last_path), "log": log}

