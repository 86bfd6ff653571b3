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
# # 02 · Training
#
# Training follows the paper: a hinge triplet loss on the batch's score matrix with the
# **hardest negative** in both directions (VSE++), margin 0.2, Adam, the learning rate divided
# by 10 part-way, gradient clipping at 2, and the checkpoint with the best validation rSum kept.
# `mlasm train` runs the same function from a terminal; `--resume` continues a run exactly.
#
# With `MLASM_FAST=1` this notebook trains a tiny model on a tiny split; otherwise it trains the
# CPU preset for two epochs (a few minutes).

# %% tags=["nbval-ignore-output"]
import dataclasses
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from mlasm.demo import demo_config
from mlasm.evaluate import chance_metrics
from mlasm.plots import draw_training_log
from mlasm.sources import fast_mode, open_split
from mlasm.train import train

fast = fast_mode()
train_split = open_split("shapescenes", "train", progress=False)
dev_split = open_split("shapescenes", "dev", progress=False)
config = demo_config(fast=fast, epochs=None if fast else 2)
print({k: v for k, v in config.to_dict().items() if k in ("embed_size", "batch_size", "epochs", "learning_rate", "rho")})
assert config.epochs == (3 if fast else 2) and config.rho == 0.8, "the tiny preset, or 2 epochs of the CPU preset"

# %% [markdown]
# ## Every setting lives in one configuration
# The paper's values are the defaults (`MLASMConfig.paper()`); `MLASMConfig.cpu()` is a smaller
# preset for laptops. The sizes that belong to the data are filled in when training starts.

# %% tags=["nbval-ignore-output"]
run_dir = Path(tempfile.mkdtemp(prefix="mlasm-notebook-run-"))
summary = train(config, train_split, dev_split, run_dir, progress=False)
chance = chance_metrics(dev_split.n_images, dev_split.caption_to_image)["rsum"]
print(f"best validation rSum {summary['best_rsum']:.1f} at epoch {summary['best_epoch'] + 1} "
      f"(a random ranking: {chance:.1f})")
print(sorted(p.name for p in run_dir.iterdir()))
assert summary["best_rsum"] > 2 * chance, "the model should rank far better than chance after training"

# %% [markdown]
# ## The log
# `train_log.jsonl` has one line per epoch: loss, learning rate, validation recalls.

# %%
fig = draw_training_log(summary["log"])
plt.show()

# %% [markdown]
# ## Resuming
# `last.pt` holds the model, optimiser, scheduler, the position inside the epoch and torch's
# random state, written every few hundred steps and at each epoch's end. A run killed
# mid-epoch continues with `mlasm train --resume --out RUN` and ends with the same weights
# as a run never interrupted (the test suite proves it on a tiny run).

# %% tags=["nbval-ignore-output"]
from mlasm.checkpoint import load_checkpoint

progress = load_checkpoint(run_dir / "last.pt")["progress"]
print({key: progress[key] for key in ("epoch", "step_in_epoch", "global_step")})
assert progress["epoch"] == config.epochs and progress["step_in_epoch"] == 0, "saved after the last epoch's end"
