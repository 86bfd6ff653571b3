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
# # 04 · Attention maps
#
# Where does each word look? The **attention explorer** shows a picture with its region boxes.
# Choose a word: its text-to-image attention is drawn without changing any colour: the strongest
# boxes outlined (wider, more opaque for more weight), the rest of the picture paler. Choose a region: the caption's words light up by its
# image-to-text attention. The word-by-region matrix sits beside them; click a cell to choose
# both. The λ sliders change the softmax temperatures and recompute the attention live.
#
# The model is the demo's (`runs/demo`), or a tiny one in fast mode (`MLASM_FAST=1`).

# %%
from mlasm.demo import demo_checkpoint
from mlasm.explain import showcase_failure, showcase_pairs
from widgets import AttentionExplorer, LevelPanel, Selection, WorkbenchSession
from widgets.contributions import pair_difference

session = WorkbenchSession.from_checkpoint(demo_checkpoint())
split, final = session.split, session.scores["final"]
# a caption the model gets right, by the clearest margin, true of its own picture alone
caption = showcase_pairs(final, split.caption_to_image, session.positives, count=1)[0]
selection = Selection(image=int(split.caption_to_image[caption]), caption=caption)
explorer = AttentionExplorer(session, selection)
explorer

# %% [markdown]
# ## Reading it
# - **Text-to-image** (λ = 9): each row of the matrix is one word's attention over the regions
#   and sums to 1. A good model puts "red" on the red object's box, and "star" on the star.
# - **Image-to-text** (λ = 4): each region's attention over the words.
# - Distractor boxes (object parts, pairs of objects, background) are in the region set on
#   purpose, as a detector would propose them.
#
# The explorer's state is plain Python, so what it shows can be read off directly:

# %% tags=["nbval-ignore-output"]
words = session.tokens(selection.caption)
strongest = explorer.region_weights.argmax()
print(f"caption: {' '.join(words)}")
print(f"word {words[explorer.word]!r} attends most to region {explorer.explanation.region_indices[strongest]}")

# %% [markdown]
# ## Every level of this pair
# The final score mixes the local level (both attention directions) with the semantic level;
# the gate says how much of the global image vector the semantic level keeps. The ranks say
# where this pair lands when its caption searches all images, and its image searches all captions.

# %%
LevelPanel(session, selection)

# %% [markdown]
# Under the table, each level's score is split into the contributions of the words and the
# regions (green raises the score, red lowers it; each row sums to the score, as
# `mlasm.explain` states per level).
#
# ## A failure, explained
# A near miss (`showcase_failure`): the caption's own picture against the one the model put
# above it. The same selection drives the explorer and the panel above; the sentences say which
# few words made each level prefer the wrong picture.

# %% tags=["nbval-ignore-output"]
caption, preferred = showcase_failure(final, split.caption_to_image, session.positives)
truth = int(split.caption_to_image[caption])
print(f"caption {caption}: {split.captions[caption]}")
print(f"its own image {truth} final {final[truth, caption]:.3f}; image {preferred} final {final[preferred, caption]:.3f}")
for level in session.levels:
    print(f"{level:>6}: {pair_difference(session, (truth, caption), (preferred, caption), level).sentence()}")
selection.select(image=preferred, caption=caption)  # the explorer and the panel above now show the preferred picture

# %% [markdown]
# ## A lower temperature spreads attention
# With λ small, every word spreads its attention over all regions; with λ large it picks one.

# %% tags=["nbval-ignore-output"]
explorer.set_lambdas(1.0, 1.0)
spread = explorer.region_weights.max()
explorer.set_lambdas(30.0, 30.0)
peaked = explorer.region_weights.max()
print(f"largest weight of the chosen word: λ=1 -> {spread:.2f}, λ=30 -> {peaked:.2f}")
assert peaked > spread, "a sharper softmax puts more weight on the strongest region"
explorer.set_lambdas(session.model.config.lambda_t2i, session.model.config.lambda_i2t)  # back to the trained values
