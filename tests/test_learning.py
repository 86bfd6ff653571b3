"""Tests that fail when learning fails.

The tiny model that every notebook uses (``demo_checkpoint(fast=True)``: fast-mode ShapeScenes,
trained in about a minute) must rank, ground and score far better than chance. The thresholds
are set from measured values with a margin (docs/architecture.md, "Tests that fail when learning
fails"); the last test shows that they separate a model that learned from a pairing bug.
"""
import numpy as np
import pytest

from mlasm.checkpoint import load_model
from mlasm.demo import demo_checkpoint
from mlasm.evaluate import evaluate_checkpoints, score_split
from mlasm.metrics import retrieval_metrics
from mlasm.sources import EMBEDDED, open_split

# Lower bounds as multiples of chance; measured values of the fast-mode model are in the docstring above.
RSUM_OVER_CHANCE = 3.0
COMPLETE_RSUM_OVER_CHANCE = 2.0
POINTING_OVER_CHANCE = 1.5
MIN_SCORE_GAP = 0.05


@pytest.fixture(scope="module")
def tiny():
    checkpoint = demo_checkpoint(fast=True)
    test = open_split(EMBEDDED, "test", fast=True, progress=False)
    return checkpoint, test, evaluate_checkpoints([checkpoint], test, progress=False)


def test_the_tiny_model_ranks_far_above_chance(tiny):
    _, _, result = tiny
    assert result["rsum"] >= RSUM_OVER_CHANCE * result["chance"]["rsum"], (result["rsum"], result["chance"]["rsum"])
    complete, chance = result["complete"]["rsum"], result["chance"]["complete"]["rsum"]
    assert complete >= COMPLETE_RSUM_OVER_CHANCE * chance, (complete, chance)


def test_its_words_point_at_their_objects(tiny):
    grounding = tiny[2]["grounding"]
    assert grounding["words"] > 100
    assert grounding["accuracy"] >= POINTING_OVER_CHANCE * grounding["chance"], grounding


def test_its_true_pairs_score_clearly_above_false_ones(tiny):
    separation = tiny[2]["score_separation"]
    assert separation["gap"] >= MIN_SCORE_GAP, separation


def test_the_thresholds_catch_captions_paired_with_the_wrong_images(tiny):
    """The same scores, judged as if a bug had paired each caption with a random image."""
    checkpoint, test, result = tiny
    model, vocab, _ = load_model(checkpoint, "cpu")
    scores = score_split(model, test, vocab, progress=False)["final"]
    wrong = np.random.default_rng(0).permutation(test.n_images)[test.caption_to_image]
    mispaired = retrieval_metrics(scores, wrong)
    assert mispaired["rsum"] < RSUM_OVER_CHANCE * result["chance"]["rsum"] <= result["rsum"]
