"""Tokeniser and vocabulary: SCAN-compatible ids, unknown words reported, files validated."""
from __future__ import annotations

import json

import pytest

from mlasm.data import DataError, Vocabulary, tokenize
from mlasm.data.vocab import SPECIAL_TOKENS

CAPTIONS = ["A dog runs.", "a dog sleeps", "The dog, a cat.", "A cat runs", "a dog"]


def test_tokenize_lowercases_and_splits_punctuation_and_numbers():
    assert tokenize("Two dogs, 3 cats; a MAN's hat.") == \
        ["two", "dogs", ",", "3", "cats", ";", "a", "man", "'s", "hat", "."]
    assert tokenize("  Café  au-lait ") == ["café", "au-lait"]
    assert tokenize("   ") == []


# What NLTK's word tokenizer (SCAN's) makes of captions our old regular expression split differently:
# possessives and contractions keep their apostrophe on the second part, hyphenated words and decimal
# numbers stay whole, double quotes become `` and ''.
TRICKY_CAPTIONS = [
    ("A boy in a white T-shirt.", ["a", "boy", "in", "a", "white", "t-shirt", "."]),
    ("It's a dog's life", ["it", "'s", "a", "dog", "'s", "life"]),
    ("The dogs' toys", ["the", "dogs", "'", "toys"]),
    ("Two 10-year-old kids, 3.5 ft tall!", ["two", "10-year-old", "kids", ",", "3.5", "ft", "tall", "!"]),
    ('A sign reads "STOP" (red).', ["a", "sign", "reads", "``", "stop", "''", "(", "red", ")", "."]),
    ("They don't, cannot", ["they", "do", "n't", ",", "can", "not"]),
    ("Costs $5 & 20% off...", ["costs", "$", "5", "&", "20", "%", "off", "..."]),
    ("A man's 2nd bike; 1,000 people?", ["a", "man", "'s", "2nd", "bike", ";", "1,000", "people", "?"]),
]


@pytest.mark.parametrize("caption, tokens", TRICKY_CAPTIONS)
def test_tokenize_gives_nltk_tokens_on_tricky_captions(caption, tokens):
    assert tokenize(caption) == tokens


def test_tokenize_is_nltks_word_tokenizer_on_lower_case_text():
    from nltk.tokenize import NLTKWordTokenizer

    nltk_tokenizer = NLTKWordTokenizer()
    for caption, _ in TRICKY_CAPTIONS:
        assert tokenize(caption) == nltk_tokenizer.tokenize(caption.lower())


# ------------------------------------------------------------------ SCAN's vocabulary files

def write_scan_vocab(path, caption_tokens, threshold=1):
    """SCAN's build_vocab and serialize_vocab, re-done in a few lines without mlasm: the four special
    tokens, then the words in order of first appearance (not of frequency), ids as JSON string keys."""
    counts = {}
    for tokens in caption_tokens:
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    word2idx, idx2word = {}, {}
    for word in ["<pad>", "<start>", "<end>", "<unk>"] + [w for w, n in counts.items() if n >= threshold]:
        if word not in word2idx:
            idx2word[len(word2idx)] = word
            word2idx[word] = len(word2idx)
    with open(path, "w") as f:
        json.dump({"word2idx": word2idx, "idx2word": idx2word, "idx": len(word2idx)}, f)
    return word2idx


def test_a_scan_vocabulary_file_loads_with_its_own_ids(tmp_path):
    path = tmp_path / "f30k_precomp_vocab.json"
    scan_ids = write_scan_vocab(path, [tokens for _, tokens in TRICKY_CAPTIONS])
    vocab = Vocabulary.load(path)
    assert len(vocab) == len(scan_ids) == 4 + 50  # the special tokens, 50 distinct tokens
    assert vocab.word_to_id == scan_ids
    assert vocab.words[4:8] == ["a", "boy", "in", "white"]  # SCAN's order, not ours (by frequency)
    encoded = vocab.encode("A boy's T-shirt, 10-year-old zebra")
    assert encoded.ids == [scan_ids[w] for w in ["a", "boy", "'s", "t-shirt", ","]] + [scan_ids["10-year-old"], 3]
    assert encoded.unknown == ["zebra"]


def test_a_vocabulary_written_in_scans_format_is_what_scan_writes(tmp_path):
    written_by_scan = tmp_path / "scan.json"
    write_scan_vocab(written_by_scan, [tokens for _, tokens in TRICKY_CAPTIONS])
    vocab = Vocabulary.load(written_by_scan)
    ours = tmp_path / "ours.json"
    vocab.save(ours, file_format="scan")
    assert json.loads(ours.read_text()) == json.loads(written_by_scan.read_text())
    assert Vocabulary.load(ours).words == vocab.words
    vocab.save(tmp_path / "mlasm.json")  # and back to our format, same ids
    assert Vocabulary.load(tmp_path / "mlasm.json").word_to_id == vocab.word_to_id
    with pytest.raises(ValueError, match="must be one of"):
        vocab.save(tmp_path / "x.json", file_format="glove")


@pytest.mark.parametrize("content, message", [
    ({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 5}, "idx": 5},
     r"field \"word2idx\": ids must be 0..4, each once"),
    ({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4}, "idx": 9},
     r"field \"idx\" is 9, but \"word2idx\" holds 5 words"),
    ({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4},
      "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", "4": "cat"}, "idx": 5},
     r"field \"idx2word\": id 4 is 'cat', \"word2idx\" gives 'dog'"),
    ({"word2idx": {"dog": 0, "<pad>": 1, "<start>": 2, "<end>": 3, "<unk>": 4}}, "must start with"),
    ({"word2idx": ["dog"]}, r"field \"word2idx\" must map non-empty words to whole numbers"),
])
def test_a_broken_scan_vocabulary_is_refused_naming_the_field(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        Vocabulary.load(path)
    assert str(path) in str(error.value)


def test_a_file_that_is_neither_format_names_both(tmp_path):
    path = tmp_path / "glove.json"
    path.write_text(json.dumps({"dog": [0.1, 0.2]}), encoding="utf-8")
    with pytest.raises(DataError) as error:
        Vocabulary.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a vocabulary file (an object with fields ['dog'])")
    assert '"format": "mlasm-vocab"' in message and "word2idx, idx2word, idx" in message


# ------------------------------------------------------------------------ <start> and <end>

def test_boundaries_wrap_every_caption_without_changing_ids():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    plain = vocab.encode("A dog sleeps.")
    wrapped = vocab.with_boundaries(True).encode("A dog sleeps.")
    assert wrapped.tokens == ["<start>", "a", "dog", "sleeps", ".", "<end>"]
    assert wrapped.ids == [1] + plain.ids + [2]
    assert wrapped.words == plain.words == plain.tokens
    assert wrapped.unknown == plain.unknown == ["sleeps"]
    assert vocab.with_boundaries(True).fingerprint == vocab.fingerprint
    assert not vocab.boundaries and vocab.with_boundaries(False) is vocab


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
