"""The levels a model scores (spec sections 3-4), each written once: what it is built from, how
tables and plots show it, what it means, and whether training supervises it on its own.

Everything that lists levels reads this: the model (``LEVELS``, ``MLASM.levels``), training (the
levels supervised one by one), evaluation and saved scores (every level's matrix), the report
(labels, and the order "final, then what it is built from"), plots and the workbench (colours,
meanings). Adding a level is one entry here plus its scoring in ``MLASM._score_block``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    name: str                      # its key in every score dict, file and table
    label: str                     # in result tables
    colour: str                    # in plots and the workbench
    meaning: str                   # one line in the level panel ({rho} and {one_minus_rho} filled in)
    parts: tuple[str, ...] = ()    # the levels it is built from
    supervised: bool = False       # trained to rank on its own under level-wise supervision
    semantic: bool = False         # only a model with the semantic level (rho < 1) has it


REGISTRY = (  # in the order the levels build up
    Level("t2i", "text-to-image", "#9467bd",
          "words attend to regions; mean over words of cos(word, its attended regions)", supervised=True),
    Level("i2t", "image-to-text", "#8c564b",
          "regions attend to words; mean over regions of cos(region, its attended words)", supervised=True),
    Level("local", "local level", "#2ca02c", "½ t2i + ½ i2t", parts=("t2i", "i2t")),
    Level("global", "global level", "#d62728",
          "semantic level: gated image vector (h and attended regions) · text vector", supervised=True, semantic=True),
    Level("final", "final (MLASM)", "#1f77b4", "{rho:g} × local + {one_minus_rho:g} × global",
          parts=("local", "global")),
)
LEVELS = tuple(level.name for level in REGISTRY)
BY_NAME = {level.name: level for level in REGISTRY}
LEVEL_COLOURS = {level.name: level.colour for level in REGISTRY}
LEVEL_LABELS = {level.name: level.label for level in REGISTRY}


def levels_of(uses_semantic_level: bool) -> tuple[str, ...]:
    """The levels an MLASM model has: all, or without the semantic ones when rho = 1."""
    return tuple(level.name for level in REGISTRY if uses_semantic_level or not level.semantic)


def supervised_levels(uses_semantic_level: bool) -> list[str]:
    """The levels level-wise supervision trains to rank on their own, besides the final score."""
    return [name for name in levels_of(uses_semantic_level) if BY_NAME[name].supervised]


def report_order() -> tuple[str, ...]:
    """final first, then what it is built from, level by level (final, local, global, t2i, i2t)."""
    order, frontier = [], ["final"]
    while frontier:
        order += frontier
        frontier = [part for name in frontier for part in BY_NAME[name].parts]
    return tuple(order)


def level_meanings(rho: float) -> dict[str, str]:
    """What each level of an MLASM model with this rho is, one line each."""
    return {level.name: level.meaning.format(rho=rho, one_minus_rho=1 - rho) for level in REGISTRY}
