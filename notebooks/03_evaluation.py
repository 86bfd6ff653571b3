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
# # 03 · Evaluation, level by level
#
# The protocol of the field: **image-to-text** ranks an image's five captions among all captions
# and counts the best one; **text-to-image** ranks a caption's image among all images.
# R@K is the percentage of queries whose answer is in the top K; rSum adds the six recalls.
#
# MLASM's score has levels, and each can be measured on its own: text-to-image attention (t2i),
# image-to-text attention (i2t), their mean (local), the semantic matching level (global), and
# the final mix `0.8 local + 0.2 global`.
#
# The next cell scores every image against every caption of the test split (1,000 x 5,000 pairs
# unless `MLASM_FAST=1`), the slowest step of this notebook: its progress bars show how far it is.

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from mlasm.data.shapescenes import bag_of_words_scores
from mlasm.demo import demo_checkpoint
from mlasm.evaluate import evaluate_checkpoints
from mlasm.metrics import retrieval_metrics
from mlasm.plots import draw_level_recalls
from mlasm.report import level_rows, result_frame
from mlasm.sources import open_split

test = open_split("shapescenes", "test", progress=True)
out_dir = tempfile.mkdtemp(prefix="mlasm-notebook-eval-")
result = evaluate_checkpoints([demo_checkpoint()], test, out_dir=out_dir, progress=True)

# %% [markdown]
# ## Every level, and chance
# Chance is what a scorer that ranks at random would get on a gallery of this size: read every
# number against it, above all on small galleries.

# %%
assert result["rsum"] >= 3 * result["chance"]["rsum"], "a trained model ranks far above chance"
result_frame(level_rows(result))

# %%
fig = draw_level_recalls(result)
plt.show()

# %% [markdown]
# ## Against a bag of words
# The *oracle* bag-of-words matcher knows each picture's true colours, shapes, sizes and counts,
# but not which attribute belongs to which object, nor where things are. On ShapeScenes families
# share their words, so it stalls: this is the bar a model that binds and reads relations clears.

# %%
bag_of_words = retrieval_metrics(bag_of_words_scores(test), test.caption_to_image)
result_frame({"MLASM (final)": result, "bag-of-words oracle": bag_of_words, "chance": result["chance"]})

# %% [markdown]
# ## Do the heatmaps mean anything? The pointing game
# ShapeScenes knows which words name which object, and so which region box. The pointing game
# counts the object-naming words whose most-attended region is a box of their object.

# %% tags=["nbval-ignore-output"]
grounding = result["grounding"]
print(f"pointing game: {grounding['accuracy']:.1f} % of {grounding['words']} words "
      f"(random region: {grounding['chance']:.1f} %)")
assert grounding["accuracy"] >= 1.5 * grounding["chance"], "words should point at their objects"

# %% [markdown]
# ## Ranks are kept for error analysis
# `ranks.npz` stores, for every level and direction, each query's rank and its top results;
# `05_error_analysis` opens the failed queries from it.

# %%
ranks = np.load(f"{out_dir}/ranks.npz")
print(sorted(ranks.files)[:6], "...")

# %% tags=["nbval-ignore-output"]
missed = int((ranks["final_t2i_rank"] >= 5).sum())
print(f"text queries whose image is not in the top 5: {missed} of {test.n_captions}")
assert missed == round(test.n_captions * (1 - result["t2i"]["r5"] / 100)), "ranks.npz agrees with R@5"
