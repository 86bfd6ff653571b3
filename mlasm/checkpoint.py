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


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA where present, else the CPU.

    A name torch does not know (``gpu0``, ``cpu1``) or a device this machine lacks (``cuda``
    without a GPU, ``cuda:3`` with two) is a ValueError naming it, raised before any work.
    """
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "expected cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(name)!r}: not a device name torch knows; {expected}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device {str(name)!r}: mlasm runs on cpu, cuda or mps, not {device.type}")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            has = f"{count}, numbered from 0" if count else "none"
            raise ValueError(f"device {str(name)!r}: no such CUDA device here (this machine has {has})")
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} was asked for but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} was asked for but MPS is not available here")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"device {str(name)!r}: there is one cpu device; {expected}")
    return device


def random_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torch's random state now, CPU and every CUDA device: what a checkpoint needs to continue exactly."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def save_checkpoint(path: str | Path, model: MLASM, vocab: Vocabulary, progress: Mapping[str, Any],
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> None:
    """Write atomically: a crash while saving leaves the previous checkpoint intact.

    ``rng`` is the random state to store (default: the present one); the trainer passes the
    state of the last step boundary when an interrupt lands in the middle of a step.
    """
    torch_rng, cuda_rng = rng if rng is not None else random_state()
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "objective": model.config.objective,  # also in the config (level_weight); here for a reader of the file
        "vocab": list(vocab.words),
        "vocab_fingerprint": vocab.fingerprint,
        "model": model.state_dict(),
        "progress": dict(progress),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch_rng,
        "cuda_rng": cuda_rng,
    }
    # through a Python file: a full disk is then an OSError naming the file (ENOSPC), where
    # torch's own writer would raise an obscure RuntimeError from its zip container
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def _describe_start(head: bytes) -> str:
    """What a file that is not a zip archive looks like, in a few words: text, or its first bytes."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:8]!r}"
    if all(c.isprintable() or c.isspace() for c in text):
        line = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"it is a text file ({line!r}...)"
    return f"it starts with the bytes {head[:8]!r}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no unpickling of arbitrary objects)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if not head:
        raise CheckpointError(f"{path}: not a readable checkpoint: the file is empty (0 bytes), "
                              f"perhaps from a copy or a write that never finished")
    if not head.startswith(ZIP_MAGIC):
        raise CheckpointError(f"{path}: not a readable checkpoint: {_describe_start(head)}, where a "
                              f"checkpoint written by torch.save is a zip archive")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an mlasm checkpoint (no \"format\": \"{CHECKPOINT_FORMAT}\")")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return state


def load_model(path: str | Path, device: str | torch.device | None = None) -> tuple[MLASM, Vocabulary, dict]:
    """The model (in eval mode, on ``device``), its vocabulary and the raw checkpoint.

    The vocabulary encodes captions as training did: with <start> and <end> when the model's
    config says ``start_end_tokens``."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    state = load_checkpoint(path, map_location=device)
    try:
        config = MLASMConfig.from_dict(state["config"])
        vocab = Vocabulary(state["vocab"], boundaries=config.start_end_tokens)
        model = MLASM(config)
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({_first_line(e)})") from None
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
