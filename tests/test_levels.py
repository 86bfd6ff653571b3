"""The level registry (mlasm/levels.py) against what the model scores and what each reader expects."""
from __future__ import annotations

import dataclasses

import torch

from mlasm.config import MLASMConfig
from mlasm.levels import LEVEL_COLOURS, LEVEL_LABELS, LEVELS, level_meanings, levels_of, report_order, supervised_levels
from mlasm.model import MLASM
from mlasm.report import level_rows


def test_the_model_scores_exactly_the_registered_levels_in_their_order():
    config = MLASMConfig(region_dim=6, global_dim=5, vocab_size=20, embed_size=8, word_dim=4)
    for rho in (0.2, 1.0):
        model = MLASM(dataclasses.replace(config, rho=rho)).eval()
        levels = model(torch.randn(3, 4, 6), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 5),
                       torch.randint(4, 20, (3, 5)), torch.tensor([5, 3, 2]), all_levels=True)
        assert tuple(levels) == LEVELS  # a local-only model's global level is NaN, but present
        assert model.levels == (LEVELS if rho < 1 else ("t2i", "i2t", "local", "final"))


def test_what_each_reader_gets():
    assert supervised_levels(True) == ["t2i", "i2t", "global"] and supervised_levels(False) == ["t2i", "i2t"]
    assert levels_of(False) == ("t2i", "i2t", "local", "final")
    assert report_order() == ("final", "local", "global", "t2i", "i2t")  # final, then what it is built from
    assert set(LEVEL_COLOURS) == set(LEVEL_LABELS) == set(LEVELS)
    assert level_meanings(0.2)["final"] == "0.2 × local + 0.8 × global"


def test_the_report_lists_final_first_then_its_parts():
    result = {"levels": {level: {"i2t": {}, "t2i": {}, "rsum": 0} for level in LEVELS}}
    assert list(level_rows(result)) == ["final (MLASM)", "local level", "global level", "text-to-image",
                                        "image-to-text"]
