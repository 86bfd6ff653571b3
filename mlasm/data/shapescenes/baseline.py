"""The bag-of-words oracle: how far matching gets that knows every picture's words but not their order."""
from __future__ import annotations

import numpy as np

from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.shapescenes.build import load_shapescenes
from mlasm.data.shapescenes.scenes import COLOURS, NUMBER_WORDS, PLURALS, SHAPES, SIZES, TEXTURES
from mlasm.data.vocab import tokenize

_SINGULAR = {PLURALS[shape]: shape for shape in SHAPES}
_DESCRIPTION_WORDS = sorted(set(SHAPES) | set(COLOURS) | set(SIZES) | set(NUMBER_WORDS) | set(TEXTURES))


def bag_of_words_scores(split: RetrievalSplit | str, seed: int = 0) -> np.ndarray:
    """(N, M) scores of an oracle bag-of-words matcher: how far order- and binding-free matching gets.

    It compares the words of a caption that a scene description can hold (colours, shapes,
    sizes, counts, textures; plurals made singular) with each image's true description words
    (attribute ``description_words``), knowing the truth but not which word goes with which
    object, nor where things are. Pairs are ordered by, in turn:
    1. consistency: the fraction of those caption words that the image has (a true caption has all);
    2. specificity: the number of matched words (a caption that says more is likelier the image's own);
    3. simplicity: fewer description words (a caption is likelier to name what it names when the
       image holds less);
    4. chance, with a fixed seed (the members of a family have the same words).
    The weights below keep each criterion below the smallest step of the one before.
    A string loads that split of ShapeScenes with the default settings.
    """
    if isinstance(split, str):
        split = load_shapescenes(split, progress=False)
    if split.image_attributes is None or "description_words" not in split.image_attributes[0]:
        raise DataError(f"split {split.name!r}: bag_of_words_scores needs ShapeScenes image attributes")
    column = {w: i for i, w in enumerate(_DESCRIPTION_WORDS)}
    images = np.zeros((split.n_images, len(column)))
    for i, attributes in enumerate(split.image_attributes):
        images[i, [column[w] for w in attributes["description_words"]]] = 1
    captions = np.zeros((split.n_captions, len(column)))
    for c, caption in enumerate(split.captions):
        words = {_SINGULAR.get(t, t) for t in tokenize(caption)} & column.keys()
        captions[c, [column[w] for w in words]] = 1
    matched = images @ captions.T  # (N, M), at most len(column) = 25
    consistency = matched / np.maximum(captions.sum(axis=1), 1)[None, :]  # steps of at least 1/25
    return (consistency + 1e-3 * matched - 1e-5 * images.sum(axis=1)[:, None]
            + 1e-7 * np.random.default_rng(seed).random(matched.shape))  # float64 keeps the 1e-7
