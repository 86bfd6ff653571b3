"""Several processes on torch.distributed: torchrun's environment, training helpers, sharded scoring.

``torchrun --nproc_per_node=N -m mlasm train|evaluate ...`` starts N copies of the command;
each finds its rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins one process group: NCCL when the processes run on CUDA (one GPU each, the
one of their LOCAL_RANK), gloo on the CPU. Without torchrun nothing here is used and every
function answers as for one process (rank 0 of 1).

What the processes share:

* training: each takes its slice of every batch; DistributedDataParallel averages the
  gradients, so every rank holds the same weights after every step. With negatives gathered
  across ranks, every rank scores its images against the captions of all ranks and all images
  against its captions (:class:`AllRanksScorer`), the encodings travelling with their gradients;
  the losses of the ranks then sum to the loss of one process holding the whole batch.
* scoring: the blocks of pairs that ``MLASM.score_all`` plans for the whole gallery are dealt
  out to the ranks, each scores its own, and rank 0 receives the sum, in which each pair has
  exactly one non-zero term: the very numbers one process computes (:func:`score_all`).
"""
from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mlasm.model import MLASM, CaptionEncoding, ImageEncoding

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(ValueError):
    """A launch that cannot work: a device torchrun's processes cannot share, a missing variable."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str                       # "nccl" or "gloo"
    cpu_group: Any                     # gloo group for CPU tensors and Python objects (scores, errors)
    gather_group: Any                  # group of the encodings' gathers, apart from DDP's own traffic


_processes: Optional[Processes] = None


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or ``python -m torch.distributed.run``) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def current() -> Optional[Processes]:
    """The process group this process belongs to, None when it runs alone."""
    return _processes


def rank() -> int:
    return _processes.rank if _processes is not None else 0


def world_size() -> int:
    return _processes.world_size if _processes is not None else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files, logs and shows progress bars."""
    return rank() == 0


def device_for_process(requested: str | torch.device | None, local_rank: int, local_world_size: int) -> torch.device:
    """The device of one of torchrun's processes: ``cuda`` means the GPU of its LOCAL_RANK."""
    from mlasm.checkpoint import resolve_device

    device = resolve_device(requested)
    if device.type == "mps":
        raise DistributedError("--device mps: processes started by torchrun run on cpu or cuda")
    if device.type != "cuda":
        return device
    if device.index is not None and local_world_size > 1:
        raise DistributedError(f"--device {requested}: under torchrun each of the {local_world_size} processes of "
                               f"a machine takes the GPU of its LOCAL_RANK; give --device cuda (or none)")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DistributedError(f"process of LOCAL_RANK {local_rank} has no GPU: this machine has "
                               f"{torch.cuda.device_count()}; start at most that many processes per machine "
                               f"(--nproc_per_node), or give --device cpu")
    return torch.device("cuda", index)


@contextmanager
def processes_from_environment(device: str | torch.device | None = None) -> Iterator[Optional[Processes]]:
    """Join the process group torchrun's environment describes for the duration; yield None without torchrun.

    The backend follows the device: NCCL for CUDA, gloo for the CPU. A gloo group is always made
    beside an NCCL one, for the score matrices (CPU tensors) and Python objects.
    """
    global _processes
    if not launched_by_torchrun():
        yield None
        return
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedError(f"RANK and WORLD_SIZE are set but not {', '.join(missing)}: start the command "
                               f"with torchrun (or python -m torch.distributed.run)")
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    chosen = device_for_process(device, local_rank, local_world_size)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    dist.init_process_group(backend)
    try:
        cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        gather_group = dist.new_group(backend=backend)
        _processes = Processes(dist.get_rank(), dist.get_world_size(), local_rank, chosen, backend,
                               cpu_group, gather_group)
        yield _processes
    finally:
        _processes = None
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- agreeing on outcomes

def share_from_rank_zero(value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (a Python object, pickled)."""
    if world_size() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_processes.cpu_group)
    return box[0]


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def on_rank_zero(work: Callable[[], Any]) -> Any:
    """Run ``work`` on rank 0 alone; every rank returns its result or raises its error.

    For what one process must do for all (hold the run folder, check an output folder, compute
    the metrics): the other ranks wait here, so an error on rank 0 ends every rank with the same
    message instead of leaving them waiting in the next collective.
    """
    if world_size() == 1:
        return work()
    outcome = None
    if is_main():
        try:
            outcome = ("result", work())
        except Exception as error:  # every rank raises it, below
            outcome = ("error", _picklable(error))
    kind, value = share_from_rank_zero(outcome)
    if kind == "error":
        raise value
    return value


def sum_over_ranks(values: Tensor) -> Tensor:
    """The element-wise sum of ``values`` over every rank (a new tensor, on the same device)."""
    total = values.detach().clone()
    if world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def step_seed(seed: int, global_step: int, process_rank: int) -> int:
    """The seed of one rank's random draws (dropout) in one step of a distributed run.

    The ranks draw different amounts (their captions differ in length), so their random
    states part ways; a state fixed by (seed, step, rank) lets a resumed run draw the same
    masks without a checkpoint carrying every rank's state.
    """
    return int(np.random.SeedSequence([seed, global_step, process_rank]).generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------- training

class _GatherWithGradients(torch.autograd.Function):
    """Concatenate every rank's tensor (rank order); the gradient of each slice goes back to its owner.

    Every rank computes a loss from the gathered tensor, so a slice's gradient is the sum of
    what every rank's loss sends it: summed over the ranks, then each keeps its own rows.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group, ctx.rows = group, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, gradient: Tensor):
        total = gradient.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = dist.get_rank(ctx.group) * ctx.rows
        return total[start:start + ctx.rows], None


def gather_with_gradients(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (equal shapes), concatenated in rank order, differentiable."""
    if world_size() == 1:
        return tensor
    return _GatherWithGradients.apply(tensor, _processes.gather_group)


def gather(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (equal shapes), concatenated in rank order; no gradient (masks, lengths)."""
    if world_size() == 1:
        return tensor
    sendable = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
    parts = [torch.empty_like(sendable) for _ in range(world_size())]
    dist.all_gather(parts, sendable, group=_processes.gather_group)
    return torch.cat(parts).to(tensor.dtype)


class AllRanksScorer(nn.Module):
    """The scores a rank needs when the captions and images of every rank are its negatives.

    Returns (rows, columns), each a dict of levels: rows (b, n) are this rank's b images against
    the n captions of all ranks, columns (n, b) all images against this rank's captions. The
    training pairs are (offset + k, offset + k), offset = rank x b. 2 b n pairs a rank instead of
    the n x n of the whole matrix: a rank only needs its own images' rows and captions' columns.
    """

    def __init__(self, model: MLASM):
        super().__init__()
        self.model = model

    def forward(self, regions: Tensor, region_mask: Tensor, global_features: Tensor, tokens: Tensor,
                lengths: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        img = self.model.encode_images(regions, region_mask, global_features)
        cap = self.model.encode_captions(tokens, lengths)
        every_image = ImageEncoding(gather_with_gradients(img.regions), gather(img.mask),
                                    None if img.glob is None else gather_with_gradients(img.glob))
        every_caption = CaptionEncoding(gather_with_gradients(cap.words), gather(cap.lengths))
        return self.model.pair_levels(img, every_caption), self.model.pair_levels(every_image, cap)


def wrap_for_training(model: MLASM, gather_negatives: bool) -> nn.Module:
    """The module a distributed training step calls: the model, or an :class:`AllRanksScorer`, under DDP."""
    from torch.nn.parallel import DistributedDataParallel

    module = AllRanksScorer(model) if gather_negatives else model
    device = _processes.device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------- scoring

def score_all(model: MLASM, img: ImageEncoding, cap: CaptionEncoding, memory_budget_mb: Optional[float] = None,
              progress: Optional[bool] = None) -> Optional[dict[str, Tensor]]:
    """``model.score_all`` with its blocks of pairs dealt out to the ranks (block k to rank k mod N).

    Every rank plans the same blocks (the gallery's, not a shard's), so each pair is computed
    exactly as one process computes it; rank 0 returns the matrices, the other ranks None. Each
    rank holds full-size matrices while scoring (zeros outside its blocks).
    """
    if world_size() == 1:
        return model.score_all(img, cap, memory_budget_mb=memory_budget_mb, progress=progress)
    scores = model.score_all(img, cap, memory_budget_mb=memory_budget_mb, progress=progress if is_main() else False,
                             blocks=(rank(), world_size()))  # zeros outside its own blocks
    for level in scores:  # the model's levels (a SCAN model has two), in the same order on every rank
        dist.reduce(scores[level], dst=0, op=dist.ReduceOp.SUM, group=_processes.cpu_group)
    return scores if is_main() else None


def score_all_as_rank(model: MLASM, img: ImageEncoding, cap: CaptionEncoding, process_rank: int, processes: int,
                      memory_budget_mb: Optional[float] = None) -> dict[str, Tensor]:
    """What rank ``process_rank`` of ``processes`` contributes to :func:`score_all`, in this process
    (no process group): tests add them up to check that the ranks' blocks tile the gallery."""
    return model.score_all(img, cap, memory_budget_mb=memory_budget_mb, progress=False,
                           blocks=(process_rank, processes))
