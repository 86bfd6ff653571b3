# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Bringing your own model: a SCAN checkpoint beside MLASM
#
# SCAN (Lee et al., ECCV 2018) is the model MLASM's local level is built on, and its released
# code (kuanghuei/SCAN) is where most region-word attention work starts. A SCAN checkpoint,
# `model_best.pth.tar`, opens here as it is: read safely (only tensors, numbers, strings, lists,
# dicts and SCAN's `argparse.Namespace` of options are unpickled), scored exactly as SCAN's
# similarity function scores every pair, and explored with the same widgets as an MLASM model.
#
# This notebook makes its own tiny SCAN checkpoint in SCAN's layout (a t2i model of SCAN's README
# setting, trained for seconds on ShapeScenes by the project's code) and compares its attention with
# a tiny MLASM model's on the same test split.
#
# **A real one:** `MLASM_SCAN_CHECKPOINT=runs/f30k_scan/model_best.pth.tar MLASM_SCAN_VOCAB=vocab/f30k_precomp_vocab.json MLASM_SCAN_DATA=data/f30k_precomp MLASM_CHECKPOINT=runs/f30k_mlasm/best.pt jupyter lab notebooks/09_scan_models.ipynb`
# (`MLASM_CHECKPOINT`: an MLASM model trained on the same features, `mlasm train --data data/f30k_precomp --vocab vocab/f30k_precomp_vocab.json`).

# %% tags=["nbval-ignore-output"]
import os

from mlasm.demo import demo_checkpoint
from mlasm.scan_training import tiny_scan_checkpoint
from mlasm.sources import EMBEDDED

if os.environ.get("MLASM_SCAN_CHECKPOINT"):
    scan_checkpoint, scan_vocab = os.environ["MLASM_SCAN_CHECKPOINT"], os.environ["MLASM_SCAN_VOCAB"]
    data, mlasm_checkpoint = os.environ["MLASM_SCAN_DATA"], os.environ["MLASM_CHECKPOINT"]
else:
    scan_checkpoint, scan_vocab = tiny_scan_checkpoint("t2i")  # SCAN's layout, torch's legacy format
    data, mlasm_checkpoint = EMBEDDED, demo_checkpoint()
print(f"SCAN: {scan_checkpoint}\nvocabulary: {scan_vocab}\nMLASM: {mlasm_checkpoint}\ndata: {data}")

# %% [markdown]
# ## What is in a SCAN checkpoint
# `torch.save` of a dict: `model` = [image encoder weights, text encoder weights], `opt` = the
# training options, `epoch`, `Eiters`, `best_rsum`. Every option that changes a score is read
# from `opt`; a value the workbench does not reproduce is refused by name, never approximated.

# %%
from mlasm.checkpoint import read_checkpoint_file
from mlasm.scan_model import SCORE_OPTIONS, SCANConfig

state = read_checkpoint_file(scan_checkpoint)
print(sorted(state))
print("image encoder:", sorted(state["model"][0]))
print("text encoder: ", sorted(state["model"][1])[:3], "...")
print(SCANConfig.from_options(state["opt"]).describe())
assert all(hasattr(state["opt"], name) for name in SCORE_OPTIONS)

# %% [markdown]
# ## The two models on one split
# Each model is a session of the workbench; the comparison holds both. A SCAN t2i model has one
# level of its own, words attending to regions, which is its final score: no image-to-text
# direction, no local mix of two directions, no semantic level. MLASM has all of them.

# %% tags=["nbval-ignore-output"]
from widgets import ModelComparison

comparison = ModelComparison.from_checkpoints({"SCAN": scan_checkpoint, "MLASM": mlasm_checkpoint},
                                              source=data, split="test", vocab=scan_vocab)
scan, mlasm = comparison.sessions["SCAN"], comparison.sessions["MLASM"]
for name, session in comparison.sessions.items():
    print(f"{name:>5}: levels {', '.join(session.levels)}; attention {', '.join(session.directions)}")
assert scan.levels == ("t2i", "final") and scan.directions == ("t2i",)
assert "global" in mlasm.levels and mlasm.directions == ("t2i", "i2t")

# %% [markdown]
# Recall at 1, 5 and 10 of each model on the test split (the `mlasm evaluate` protocol), against
# chance. The check that can fail: both models rank far better than chance.

# %% tags=["nbval-ignore-output"]
import pandas as pd
import torch

from mlasm.evaluate import chance_metrics, level_metrics

split = comparison.split
chance = chance_metrics(split.n_images, split.caption_to_image)["rsum"]
rows = {}
for name, session in comparison.sessions.items():
    metrics = level_metrics({level: torch.from_numpy(s) for level, s in session.scores.items()},
                            split.caption_to_image)
    rows[name] = {"i2t R@1": metrics["i2t"]["r1"], "t2i R@1": metrics["t2i"]["r1"], "rSum": metrics["rsum"]}
    assert metrics["rsum"] > 3 * chance, f"{name} should rank far better than chance ({chance:.1f})"
print(f"chance rSum {chance:.1f}")
pd.DataFrame(rows).T.round(1)

# %% [markdown]
# ## Where the words look: SCAN against MLASM
# Both models let every word attend to the regions (text-to-image). Over every word of every
# caption with its own image: how often a word that names an object attends most to a box of
# that object (pointing), and how spread its attention is (H / log R: 0 on one region, 1 even).

# %% tags=["nbval-ignore-output"]
from mlasm.attention_stats import summarize
from widgets.attention_stats import session_records

records = {name: session_records(session) for name, session in comparison.sessions.items()}
pointing = pd.concat({name: summarize(r)[["pointing %", "chance %", "normalised entropy"]]
                      for name, r in records.items()}, axis=1)
for name in records:
    accuracy, by_chance = pointing.loc["shape", (name, "pointing %")], pointing.loc["shape", (name, "chance %")]
    print(f"{name:>5}: shape words point at their object {accuracy:.1f} % of the time (chance {by_chance:.1f} %)")
    assert accuracy > by_chance, f"{name}'s shape words should find their object more often than chance"
pointing.round(2)

# %% [markdown]
# One pair, one word, both models: the regions each model's word attends to.

# %% tags=["nbval-ignore-output"]
import numpy as np

caption = 0
image = int(split.caption_to_image[caption])
chosen = next(t for t in scan.tokens(caption) if t.isalpha() and t not in ("a", "an", "the"))
for name, session in comparison.sessions.items():
    explanation = session.explain(image, caption)
    weights = explanation.t2i_attention[session.tokens(caption).index(chosen)]  # its row: <start> or not
    assert abs(weights.sum() - 1) < 1e-4
    top = explanation.region_indices[np.argsort(-weights)[:3]]
    print(f"{name:>5}: “{chosen}” in “{split.captions[caption]}” looks most at regions {top.tolist()} "
          f"(weight {weights.max():.2f}); final score {explanation.scores['final']:.3f}")

# %% [markdown]
# ## The views
# The comparison view: each point a query, rank under SCAN against rank under MLASM; click one
# to see both models' attention on the same picture and their level scores (SCAN's missing levels
# are shown as "-"). Below it, the whole workbench on the SCAN model: its level panel says which
# levels the model has, its attention explorer offers the one direction it has.

# %% tags=["nbval-ignore-output"]
from widgets import ComparisonView, Selection, Workbench

selection = Selection.start(scan)
view = ComparisonView(comparison, selection)
view

# %% tags=["nbval-ignore-output"]
bench = Workbench(scan, selection)
assert bench.explorer.matrix_choice.options == ("t2i",)
bench

# %% [markdown]
# The same from the command line: `mlasm evaluate --checkpoint model_best.pth.tar --vocab
# f30k_precomp_vocab.json --data f30k_precomp --split test` (add `--checkpoint` of an i2t model
# for SCAN's t-i + i-t ensemble, the mean of the two score matrices).
