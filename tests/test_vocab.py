"""Tokeniser and vocabulary: SCAN-compatible ids, unknown words reported, files validated."""
from __future__ import annotations

import json

import pytest

from mlasm.data import DataError, Vocabulary, tokenize
from mlasm.data.vocab import SPECIAL_TOKENS

CAPTIONS = ["A dog runs.", "a dog sleeps", "The dog, a cat.", "A cat runs", "a dog"]


def test_tokenize_lowercases_and_splits_punctuation_and_numbers():
    assert tokenize("Two dogs, 3 cats; a MAN's hat.") == \
        ["two", "dogs", ",", "3", "cats", ";", "a", "man", "'", "s", "hat", "."]
    assert tokenize("  Café  au-lait ") == ["café", "au", "-", "lait"]
    assert tokenize("   ") == []


def test_build_keeps_frequent_words_after_the_special_tokens():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    assert vocab.words[:4] == list(SPECIAL_TOKENS) == ["<pad>", "<start>", "<end>", "<unk>"]
    # by decreasing count, then alphabetically: a(5) dog(4) .(2) cat(2) runs(2)
    assert vocab.words[4:] == ["a", "dog", ".", "cat", "runs"]
    assert len(vocab) == 9
    assert "sleeps" not in vocab


def test_encode_maps_unknown_words_to_unk_and_reports_them():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    encoded = vocab.encode("A dog sleeps on a mat.")
    assert encoded.tokens == ["a", "dog", "sleeps", "on", "a", "mat", "."]
    assert encoded.ids == [4, 5, 3, 3, 4, 3, 6]  # no <start>/<end>
    assert encoded.unknown == ["sleeps", "on", "mat"]
    assert vocab.decode(encoded.ids) == ["a", "dog", "<unk>", "<unk>", "a", "<unk>", "."]


def test_save_and_load_round_trip(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary file left
    loaded = Vocabulary.load(path)
    assert loaded.words == vocab.words
    assert loaded.fingerprint == vocab.fingerprint


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON at line 1"),
    (json.dumps(["<pad>"]), "\"format\": \"mlasm-vocab\""),
    (json.dumps({"format": "mlasm-vocab", "version": 99, "words": []}), "version 99"),
    (json.dumps({"format": "mlasm-vocab", "version": 1, "words": ["a", "b"]}), "must start with"),
    (json.dumps({"format": "mlasm-vocab", "version": 1, "words": list(SPECIAL_TOKENS) + ["a", "a"]}), "duplicate"),
    (json.dumps({"format": "mlasm-vocab", "version": 1, "words": list(SPECIAL_TOKENS) + [3]}), "non-empty strings"),
])
def test_load_rejects_bad_files_naming_them(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        Vocabulary.load(path)
    assert str(path) in str(error.value)


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path / "missing.json")


def test_check_fits_detects_a_vocabulary_of_another_model():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    vocab.check_fits(len(vocab), "run/best.pt", vocab.fingerprint)
    with pytest.raises(DataError, match=r"run/best.pt: expects a vocabulary of 50 words, this vocabulary has \d+"):
        vocab.check_fits(50, "run/best.pt")
    other = Vocabulary(vocab.words[:-1] + ["zebra"])
    assert other.fingerprint != vocab.fingerprint
    with pytest.raises(DataError, match="same size, different words"):
        other.check_fits(len(vocab), "run/best.pt", vocab.fingerprint)
