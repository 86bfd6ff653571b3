"""Checkpoints: save, load (``weights_only=True``), rebuild a model, choose a device.

Evaluation, the widgets and the notebooks read checkpoints through this module alone, so none
of them imports the trainer. A checkpoint is a dict of tensors and plain values: the config,
the vocabulary, the weights, and for a resumable one the optimiser, scheduler, progress and
random states. It is written atomically and read on any device (``map_location``).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import pickle
from pathlib import Path
from typing import Any, Iterator, Mapping

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
# torch's legacy format (before torch 1.6, SCAN's time; _use_new_zipfile_serialization=False since): pickles
# one after another, the first being protocol 2's header and torch's magic number 0x1950a86a20f9469cfc6c
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
# What a checkpoint may hold once unpickled: tensors, numbers, strings, lists (tuples), dicts, and the
# argparse.Namespace SCAN stores its options in. torch's weights_only unpickler allows a few more
# types of its own (torch.Size, dtypes...); a checkpoint holding one of those is refused after loading.
# Exact types, not subclasses: torch.Size is a tuple. SCAN's state dicts are OrderedDicts.
PLAIN_TYPES = (bool, int, float, str, bytes, type(None), list, tuple, dict, collections.OrderedDict,
               argparse.Namespace)


@contextlib.contextmanager
def namespace_allowed() -> Iterator[None]:
    """``torch.load(weights_only=True)`` may rebuild an ``argparse.Namespace`` (SCAN's ``opt``) inside
    this block, and nothing else beyond torch's own allowlist; outside it torch's allowlist is as it was."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        yield


def _check_plain(value: Any, path: Path, where: str = "the checkpoint", depth: int = 0) -> None:
    """Raise CheckpointError naming where a value of another type than PLAIN_TYPES sits."""
    if depth > 64:
        raise CheckpointError(f"{path}: {where} is nested more than 64 levels deep; not a checkpoint")
    if isinstance(value, torch.Tensor):
        return
    if type(value) not in PLAIN_TYPES:
        raise CheckpointError(f"{path}: {where} is a {type(value).__module__}.{type(value).__qualname__}; a "
                              f"checkpoint holds only tensors, numbers, strings, lists, dicts and argparse.Namespace")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, path, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, path, f"a key of {where}", depth + 1)
            _check_plain(item, path, f"{where}[{key!r}]", depth + 1)
    elif isinstance(value, argparse.Namespace):
        _check_plain(vars(value), path, where, depth + 1)


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


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What ``torch.save`` wrote, read with ``weights_only=True`` (``argparse.Namespace`` allowed, nothing
    else beyond tensors, numbers, strings, lists and dicts): a zip archive or torch's legacy format."""
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
    if not head.startswith(ZIP_MAGIC) and not head.startswith(LEGACY_MAGIC):
        raise CheckpointError(f"{path}: not a readable checkpoint: {_describe_start(head)}, where a "
                              f"checkpoint written by torch.save is a zip archive (or, before torch 1.6, "
                              f"starts with torch's magic number)")
    try:
        with namespace_allowed():
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files, and for refused pickles
        raise CheckpointError(f"{path}: not a readable checkpoint ({_refusal(e)})") from None
    _check_plain(state, path)
    return state


def _refusal(error: BaseException) -> str:
    """torch's refusal of a pickle that would build other objects (run code) is a long text: its gist."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
        reason = next((line.split("WeightsUnpickler error:", 1)[1] for line in text.splitlines()
                       if "WeightsUnpickler error:" in line), "")
        reason = reason.split(" Please use", 1)[0].strip().rstrip(".")
        return ("its pickle asks for more than tensors, numbers, strings, lists, dicts and argparse.Namespace, "
                "and was not unpickled" + (f": {reason}" if reason else ""))
    return _first_line(error)


def is_scan_checkpoint(state: Any) -> bool:
    """SCAN's train.py layout: ``model`` = [image encoder state, text encoder state], ``opt`` = its options."""
    return (isinstance(state, dict) and isinstance(state.get("opt"), argparse.Namespace)
            and isinstance(state.get("model"), list) and len(state["model"]) == 2
            and all(isinstance(part, dict) for part in state["model"]))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read an mlasm checkpoint with ``weights_only=True`` (no unpickling of arbitrary objects)."""
    path = Path(path)
    return _mlasm_state(path, read_checkpoint_file(path, map_location))


def _mlasm_state(path: Path, state: Any) -> dict:
    """``state`` if it is an mlasm checkpoint of this version, else a CheckpointError saying what it is."""
    if is_scan_checkpoint(state):
        raise CheckpointError(f"{path}: a SCAN checkpoint, not an mlasm one: open it with load_model(path, "
                              f"vocab=VOCAB.json) or --vocab VOCAB.json (SCAN keeps its vocabulary apart)")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an mlasm checkpoint (no \"format\": \"{CHECKPOINT_FORMAT}\")")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    _check_vocab_fingerprint(path, state)
    return state


def _check_vocab_fingerprint(path: Path, state: dict) -> None:
    """The word list a checkpoint carries must be the one it was trained with: its stored fingerprint.
    Other words in the same number (an edited file) would read every caption into other ids silently."""
    words, stored = state.get("vocab"), state.get("vocab_fingerprint")
    if stored is None or not isinstance(words, list):
        return  # no fingerprint to compare with; Vocabulary() refuses a list that is not one
    try:
        own = Vocabulary(words).fingerprint
    except (DataError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: \"vocab\" is not a word list (expected strings, the first four "
                              f"<pad> <start> <end> <unk>)") from None
    if own != stored:
        raise CheckpointError(f"{path}: its vocabulary ({len(words):,} words) does not match its own "
                              f"vocab_fingerprint {stored!s:.16} (the words hash to {own}): the word list was "
                              f"changed after training; use the checkpoint as it was saved")


def describe_state_mismatch(model: torch.nn.Module, weights: Any) -> str | None:
    """Which tensor of ``weights`` does not fit ``model`` and how (names and shapes), or None if all fit."""
    if not isinstance(weights, dict):
        return f"\"model\" is a {type(weights).__name__}, expected a state dict (tensor names and tensors)"
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in weights:
            return f"tensor {name} is missing (the model of its config has it, {tuple(tensor.shape)})"
        given = weights[name]
        if not isinstance(given, torch.Tensor):
            return f"{name} is a {type(given).__name__}, expected a tensor {tuple(tensor.shape)}"
        if tuple(given.shape) != tuple(tensor.shape):
            return (f"tensor {name} is {tuple(given.shape)} in the checkpoint, {tuple(tensor.shape)} in the model "
                    f"its config describes")
    extra = sorted(set(weights) - set(own))
    if extra:
        return f"tensor {extra[0]} is not a part of the model its config describes" + (
            f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


def load_model(path: str | Path, device: str | torch.device | None = None,
               vocab: str | Path | Vocabulary | None = None) -> tuple[MLASM, Vocabulary, dict]:
    """The model (in eval mode, on ``device``), its vocabulary and the raw checkpoint.

    The vocabulary encodes captions as training did: with <start> and <end> when the model's
    config says ``start_end_tokens``. A SCAN checkpoint (``model_best.pth.tar``) needs ``vocab``,
    SCAN's ``*_vocab.json`` (its vocabulary is kept apart from the checkpoint); its model is a
    ``mlasm.scan_model.SCANModel``. An mlasm checkpoint carries its own vocabulary and reads its
    captions with it, ``vocab`` or not (one ``vocab`` serves every SCAN checkpoint of an ensemble or
    a comparison that also holds mlasm checkpoints)."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    path = Path(path)
    state = read_checkpoint_file(path, map_location=device)
    if is_scan_checkpoint(state):
        return _load_scan_model(path, state, device, vocab)
    state = _mlasm_state(path, state)
    try:
        config = MLASMConfig.from_dict(state["config"])
        own = Vocabulary(state["vocab"], boundaries=config.start_end_tokens)
        model = MLASM(config)
        mismatch = describe_state_mismatch(model, state["model"])
        if mismatch:
            raise CheckpointError(f"{path}: inconsistent checkpoint: {mismatch}")
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({_first_line(e)})") from None
    return model.to(device).eval(), own, state


def _load_scan_model(path: Path, state: dict, device: torch.device,
                     vocab: str | Path | Vocabulary | None) -> tuple[MLASM, Vocabulary, dict]:
    from mlasm.scan_model import SCANOptionError, scan_model_from_state

    if vocab is None:
        raise CheckpointError(f"{path}: a SCAN checkpoint; SCAN keeps its vocabulary apart: give it with --vocab "
                              f"VOCAB.json (e.g. vocab/f30k_precomp_vocab.json)")
    try:
        model = scan_model_from_state(state, str(path))
    except SCANOptionError as e:
        raise CheckpointError(str(e)) from None
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: inconsistent SCAN checkpoint ({_first_line(e)})") from None
    words = vocab if isinstance(vocab, Vocabulary) else Vocabulary.load(vocab)
    if len(words) != model.config.vocab_size:
        where = "the vocabulary" if isinstance(vocab, Vocabulary) else str(vocab)
        raise CheckpointError(f"{where}: holds {len(words):,} words, but {path} was trained with "
                              f"vocab_size={model.config.vocab_size:,}; give the vocabulary it was trained with")
    return model.to(device).eval(), words.with_boundaries(True), state


def check_model_fits(model: MLASM, split: RetrievalSplit, source: str) -> None:
    """A checkpoint trained on other features fails here with a sentence, not deep inside a matmul."""
    config = model.config
    if config.region_dim != split.region_dim:
        raise DataError(f"{source}: model expects {config.region_dim}-d region features, "
                        f"split {split.name!r} has {split.region_dim}-d")
    if config.uses_global_level and config.global_dim != split.global_dim:
        raise DataError(f"{source}: model expects {config.global_dim}-d global features, "
                        f"split {split.name!r} has {split.global_dim}-d")
