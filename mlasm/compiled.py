"""A compiled training scorer (``--compile``): torch.compile of ``MLASM._score_block``, eager where it fails.

Compiling fuses the scorer's element-wise passes (the two attentions, their norms, the gated
semantic level) and their gradients. Measured on the demo's model and batches (2-core AMD EPYC,
2 threads, 20 batches each): 202-220 ms a training step against 233 ms eager; in the whole demo
an epoch's steps took 36.1-39.4 s against 38.0-40.0 s, after 42 s of compiling in the first epoch
on a machine's first run (4-9 s once inductor's cache on disk holds the kernels). So it pays in
long runs only, and is opt-in. Only steps with gradients use it: validation and evaluation score
in eager mode, which needs no compile.

Those figures were taken before the pair gradients (mlasm.loss.hardest_negative_loss), which a compiled
scorer does not take: its steps go through every pair of the batch. Against them on a trained demo
model (benchmarks/train_step.py, 2 threads, three rounds) it was the slower: 340-451 ms a step against
292-328 ms.
"""
from __future__ import annotations

from typing import Callable

import torch


class CompiledOrEager:
    """Calls the compiled function while gradients are on; on its first failure (no C compiler, a torch
    without inductor, an operator it cannot trace) says so in one line and calls the eager one from then on."""

    def __init__(self, eager: Callable, what: str = "the training scorer"):
        self.eager, self.what = eager, what
        self.compiled = torch.compile(eager, dynamic=True)
        self.failure: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failure is None and torch.is_grad_enabled():
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # compiling fails in many ways, all of them worth a fallback
                lines = str(error).strip().splitlines()
                self.failure = f"{type(error).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")
                print(f"mlasm: --compile: compiling {self.what} failed ({self.failure}); running it eagerly",
                      flush=True)
        return self.eager(*args, **kwargs)

    @property
    def compiled_in_use(self) -> bool:
        return self.failure is None


def compile_training_scorer(model) -> CompiledOrEager:
    """Make ``model``'s pair scorer compiled for training steps (the instance's attribute shadows the method)."""
    scorer = CompiledOrEager(model._score_block)
    model._score_block = scorer
    return scorer
