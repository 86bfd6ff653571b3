"""Checkpoints: save, load (``weights_only=True``), rebuild a model, choose a device.

Evaluation, the widgets and the notebooks read checkpoints through this module alone, so none
of them imports the trainer. A checkpoint is a dict of tensors and plain values: the config,
the vocabulary, the weights, and for a resumable one the optimiser, scheduler, progress and
random states. It is written atomically and read on any device (``map_location``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from mlasm.config import MLASMConfig
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.vocab import Vocabulary
from mlasm.io import atomic_path
from mlasm.model import MLASM

CHECKPOINT_FORMAT = "mlasm-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or made for other data."""


def resolve_device(name: str | None = None) -> torch.device:
    """The device asked for, else CUDA where present, else the CPU."""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_checkpoint(path: str | Path, model: MLASM, vocab: Vocabulary, progress: Mapping[str, Any],
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Write atomically: a crash while saving leaves the previous checkpoint intact."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "vocab": list(vocab.words),
        "vocab_fingerprint": vocab.fingerprint,
        "model": model.state_dict(),
        "progress": dict(progress),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no unpickling of arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an mlasm checkpoint (no \"format\": \"{CHECKPOINT_FORMAT}\")")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return state


def load_model(path: str | Path, device: str | torch.device | None = None) -> tuple[MLASM, Vocabulary, dict]:
    """The model (in eval mode, on ``device``), its vocabulary and the raw checkpoint."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    state = load_checkpoint(path, map_location=device)
    try:
        config = MLASMConfig.from_dict(state["config"])
        vocab = Vocabulary(state["vocab"])
        model = MLASM(config)
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, state


def check_model_fits(model: MLASM, split: RetrievalSplit, source: str) -> None:
    """A checkpoint trained on other features fails here with a sentence, not deep inside a matmul."""
    config = model.config
    if config.region_dim != split.region_dim:
        raise DataError(f"{source}: model expects {config.region_dim}-d region features, "
                        f"split {split.name!r} has {split.region_dim}-d")
    if config.uses_global_level and config.global_dim != split.global_dim:
        raise DataError(f"{source}: model expects {config.global_dim}-d global features, "
                        f"split {split.name!r} has {split.global_dim}-d")
