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
# # 01 · Quick start
#
# MLASM scores an image against a caption by letting every **word attend to image regions**
# (text-to-image), every **region attend to words** (image-to-text), and by comparing a
# **gated global image vector** with the caption (semantic matching). This notebook loads the
# embedded ShapeScenes dataset, a trained model, and runs a few retrievals.
#
# The model is the one `mlasm demo` trained (in `runs/demo`); where the demo has not run, or
# with `MLASM_FAST=1`, a tiny model is trained in seconds instead, so every number below is
# the tiny model's.

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt
import numpy as np

from mlasm.demo import demo_checkpoint
from mlasm.evaluate import score_separation
from mlasm.explain import showcase_failure, showcase_pairs
from mlasm.plots import draw_gallery
from mlasm.sources import fast_mode, open_split
from widgets import WorkbenchSession
from widgets.contributions import pair_difference

test = open_split("shapescenes", "test")  # generated once on first use (it says how long), then read from the cache
print(f"fast mode: {fast_mode()}; test split: {test.n_images} images, {test.n_captions} captions")
assert test.n_captions == 5 * test.n_images

# %% [markdown]
# ## The data
# Each picture holds 2 to 5 shapes; each has five captions. Pictures come in *families* that share
# the same words with attributes or places swapped, so word overlap alone cannot retrieve them.

# %%
family = [0, 1, 2, 3]
fig = draw_gallery([test.get_image(i) for i in family],
                   [test.captions[test.image_to_captions(i)[0]] for i in family])
plt.show()

# %% [markdown]
# ## A trained model
# A `WorkbenchSession` loads a checkpoint safely (`weights_only=True`, on the CPU or a GPU) and
# encodes the test split. Where `mlasm demo` (or `mlasm evaluate`) already scored this very
# checkpoint on this split, the session reads the saved score matrices (`scores.npz`) instead of
# scoring 5 million pairs again; otherwise it scores them when first asked.

# %% tags=["nbval-ignore-output"]
session = WorkbenchSession.from_checkpoint(demo_checkpoint())
model, vocab = session.model, session.vocab
print(f"{sum(p.numel() for p in model.parameters()):,} parameters; vocabulary of {len(vocab)} words")
assert len(vocab) == 69, "ShapeScenes' vocabulary: the same words in fast mode and with the demo's model"

# %% [markdown]
# ## Retrieval: a caption finds its picture
# `session.scores` holds every level's score of every picture against every caption (computed by
# `model.score_all`, or read from the run). The query below is one the model gets right by the
# clearest margin among captions true of one picture only (`mlasm.explain.showcase_pairs`): first
# the model at work, then, further down, one of its failures taken apart.

# %% tags=["nbval-ignore-output"]
scores = session.scores
caption = showcase_pairs(scores["final"], test.caption_to_image, test.positive_sets(), count=1)[0]
top = np.argsort(-scores["final"][:, caption], kind="stable")[:4].tolist()
truth = int(test.caption_to_image[caption])
valid = set(test.positive_sets().images_of(caption).tolist())  # every picture the caption is true of
print("query:", test.captions[caption], f"(true of {len(valid)} test pictures)")
fig = draw_gallery([test.get_image(i) for i in top],
                   [f"#{rank + 1}  score {scores['final'][i, caption]:.3f}"
                    + (" · its own" if i == truth else " · also true" if i in valid else "")
                    for rank, i in enumerate(top)],
                   highlight=[i == truth for i in top])
plt.show()
assert top[0] == truth, "the showcase query finds its own picture first"

# %% [markdown]
# Green frames the picture the caption was written for; "also true" marks another picture the
# caption is true of (ShapeScenes checks every caption against every scene), which is a right
# answer even though the standard protocol counts only the caption's own picture.

# %% [markdown]
# ## A failure, taken apart
# `showcase_failure` picks a near miss: a caption whose own picture comes closest behind a picture
# it is not true of. Every level's score of a pair splits exactly into contributions of its words
# (and regions; `session.contributions`, from `mlasm.explain`), so the difference between the two
# pictures splits word by word: the words that gave most of it say why the model preferred the other.

# %% tags=["nbval-ignore-output"]
caption, preferred = showcase_failure(scores["final"], test.caption_to_image, test.positive_sets())
truth = int(test.caption_to_image[caption])
print("query:", test.captions[caption])
fig = draw_gallery([test.get_image(truth), test.get_image(preferred)],
                   [f"its own picture: final {scores['final'][truth, caption]:.3f}",
                    f"preferred instead: final {scores['final'][preferred, caption]:.3f}"],
                   columns=2, highlight=[True, False])
plt.show()
for level in session.levels:
    difference = pair_difference(session, (truth, caption), (preferred, caption), level)
    print(f"{level:>6}: {difference.sentence()}")
    assert abs(difference.deltas.sum() - difference.difference) < 1e-5, "the words' parts add up to the difference"

# %% [markdown]
# The workbench's failure explorer (notebook 05) shows the same, word by word, for every failure.

# %% [markdown]
# ## Do true pairs score above false ones?
# Ranking needs only the order of the scores; a score shown to a person should also say
# something on its own. Over the whole test split, the pairs a caption is true of should score
# clearly above the others, not by a hair.

# %% tags=["nbval-ignore-output"]
separation = score_separation(scores["final"], test.positive_sets())
print(f"final score of true pairs {separation['positive']:.3f} on average, of false pairs {separation['negative']:.3f}")
assert separation["gap"] > 0.05, "a trained model scores its true pairs clearly above the false ones"

# %% [markdown]
# Next: `02_training` trains a model, `03_evaluation` measures it, `04_attention_maps` shows
# where each word looks.
