"""Tokeniser and word vocabulary, compatible with SCAN's (lower case, <pad>=0 <start>=1 <end>=2 <unk>=3).

Tokens are NLTK's, as SCAN's: ``NLTKWordTokenizer`` (the word tokenizer inside ``word_tokenize``,
which needs no downloaded data) on the lower-cased text, so that "it's" is "it 's" and "t-shirt"
one word, and a vocabulary built by SCAN finds the words it was built from. (``word_tokenize``
first splits sentences with Punkt, which needs downloaded data; a caption is one sentence, and
only a full stop inside a caption, "tea.. cup", can come out differently.)

A vocabulary file is either ours (``{"format": "mlasm-vocab", "version": 1, "words": [...]}``)
or SCAN's (``{"word2idx": {...}, "idx2word": {...}, "idx": N}``, as in its ``vocab.zip``); both
load with the same ids, and either can be written.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from nltk.tokenize import NLTKWordTokenizer

from mlasm.data.errors import DataError, load_json
from mlasm.io import write_json, write_text

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
BOUNDARY_TOKENS = (START, END)
VOCAB_FORMAT = "mlasm-vocab"
VOCAB_VERSION = 1
FILE_FORMATS = ("mlasm", "scan")
SCAN_FIELDS = ("word2idx", "idx2word", "idx")

# NLTK takes 0.2-0.5 ms a caption, and a process often tokenises a split's captions several times
# (its grounding checked, the vocabulary built, the captions encoded): the latest texts are kept
TOKEN_CACHE_SIZE = 2**15
_WORD_TOKENIZER = NLTKWordTokenizer()


@lru_cache(maxsize=TOKEN_CACHE_SIZE)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_WORD_TOKENIZER.tokenize(text.lower()))


def rows_before_words(reads_start: bool) -> int:
    """Attention rows before a caption's first word: 1 when the model reads <start> first. Grounding
    and word positions count the caption's own words, so word k is attention row k + this."""
    return int(reads_start)


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into NLTK's word tokens (SCAN's tokenisation)."""
    return list(_tokens(text))


@dataclass(frozen=True)
class EncodedCaption:
    """A caption as word ids, its tokens (one per id), and the tokens that mapped to <unk>.

    With a vocabulary that adds boundaries, ``ids`` and ``tokens`` begin with <start> and end with <end>.
    """

    ids: list[int]
    tokens: list[str]
    unknown: list[str]

    @property
    def words(self) -> list[str]:
        """The caption's own tokens, without <start> and <end>."""
        return [t for t in self.tokens if t not in BOUNDARY_TOKENS]


class Vocabulary:
    """Word <-> id mapping; ids 0..3 are the special tokens, then the words (ours: by decreasing frequency).

    ``boundaries`` (the config's ``start_end_tokens``): encode every caption as <start> words <end>,
    as SCAN and the MLASM reference do. It changes no id, only what ``encode`` returns.
    """

    def __init__(self, words: Iterable[str], boundaries: bool = False):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise DataError(f"a vocabulary must start with {list(SPECIAL_TOKENS)}, got {words[:4]}")
        duplicates = [w for w, n in Counter(words).items() if n > 1]
        if duplicates:
            raise DataError(f"vocabulary has duplicate words: {duplicates[:10]}")
        self.words = words
        self.word_to_id = {w: i for i, w in enumerate(words)}
        self.boundaries = bool(boundaries)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> "Vocabulary":
        """Keep the words seen at least ``min_count`` times (SCAN's threshold is 4)."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + kept)

    def with_boundaries(self, boundaries: bool) -> "Vocabulary":
        """The same words, encoding captions with (or without) <start> and <end>."""
        if bool(boundaries) == self.boundaries:
            return self
        other = Vocabulary.__new__(Vocabulary)
        other.words, other.word_to_id, other.boundaries = self.words, self.word_to_id, bool(boundaries)
        return other

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.word_to_id

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words{', <start>/<end> added' if self.boundaries else ''})"

    @property
    def unk_id(self) -> int:
        return self.word_to_id[UNK]

    def encode(self, text: str) -> EncodedCaption:
        """Map a caption to ids; unknown words become <unk> and are reported, not dropped."""
        tokens = tokenize(text)
        if self.boundaries:
            tokens = [START, *tokens, END]
        ids = [self.word_to_id.get(t, self.unk_id) for t in tokens]
        unknown = [t for t, i in zip(tokens, ids) if i == self.unk_id]
        return EncodedCaption(ids=ids, tokens=tokens, unknown=unknown)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids if i != 0]

    @property
    def fingerprint(self) -> str:
        """A short hash of the word list: a checkpoint stores it to detect a vocabulary that differs."""
        return hashlib.sha256("\n".join(self.words).encode("utf-8")).hexdigest()[:16]

    def check_fits(self, vocab_size: int, source: str, fingerprint: str | None = None) -> None:
        """Fail clearly when a model (``source``: e.g. a checkpoint path) was trained with another vocabulary."""
        if vocab_size != len(self):
            raise DataError(f"{source}: expects a vocabulary of {vocab_size} words, "
                            f"this vocabulary has {len(self)}; use the vocabulary saved with it")
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise DataError(f"{source}: vocabulary fingerprint {fingerprint} does not match "
                            f"{self.fingerprint} (same size, different words); use the vocabulary saved with it")

    def save(self, path: str | os.PathLike, file_format: str = "mlasm") -> None:
        """Write atomically, as ours (``"mlasm"``) or as SCAN's ``*_vocab.json`` (``"scan"``)."""
        if file_format == "mlasm":
            write_json(path, {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "words": self.words})
        elif file_format == "scan":  # SCAN's serialize_vocab: json.dump of the three fields, ids as string keys
            scan = {"word2idx": self.word_to_id, "idx2word": {str(i): w for i, w in enumerate(self.words)},
                    "idx": len(self.words)}
            write_text(path, json.dumps(scan, ensure_ascii=False))
        else:
            raise ValueError(f"vocabulary file format must be one of {FILE_FORMATS}, got {file_format!r}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read our vocabulary file or SCAN's (same ids either way); errors name the file and field."""
        content = load_json(path, "vocabulary file")
        if isinstance(content, dict) and "format" not in content and "word2idx" in content:
            words = _scan_words(path, content)
        elif isinstance(content, dict) and content.get("format") == VOCAB_FORMAT:
            if content.get("version") != VOCAB_VERSION:
                raise DataError(f"{path}: vocabulary version {content.get('version')!r}, expected {VOCAB_VERSION}")
            words = content.get("words")
            if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
                raise DataError(f"{path}: field \"words\" must be a list of non-empty strings")
        else:
            found = f"an object with fields {sorted(content)[:6]}" if isinstance(content, dict) else \
                f"a JSON {type(content).__name__}"
            raise DataError(f"{path}: not a vocabulary file ({found}); expected a JSON object with "
                            f"\"format\": \"{VOCAB_FORMAT}\" (mlasm's) or with the fields "
                            f"{', '.join(SCAN_FIELDS)} (SCAN's *_vocab.json)")
        try:
            return cls(words)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None


def _scan_words(path: str | os.PathLike, content: dict) -> list[str]:
    """The words of a SCAN vocabulary in id order, after checking that its three fields agree."""
    word2idx = content["word2idx"]
    if not isinstance(word2idx, dict) or not all(
            isinstance(w, str) and w and isinstance(i, int) and not isinstance(i, bool) for w, i in word2idx.items()):
        raise DataError(f"{path}: SCAN vocabulary field \"word2idx\" must map non-empty words to whole numbers")
    size = len(word2idx)
    if sorted(word2idx.values()) != list(range(size)):
        raise DataError(f"{path}: SCAN vocabulary field \"word2idx\": ids must be 0..{size - 1}, each once")
    words = sorted(word2idx, key=word2idx.get)  # in id order (the ids are 0..size-1)
    idx = content.get("idx", size)
    if idx != size:
        raise DataError(f"{path}: SCAN vocabulary field \"idx\" is {idx!r}, but \"word2idx\" holds {size} words")
    idx2word = content.get("idx2word")
    if idx2word is not None:
        if not isinstance(idx2word, dict) or len(idx2word) != size:
            raise DataError(f"{path}: SCAN vocabulary field \"idx2word\" must map each of the {size} ids to its word")
        for key, word in idx2word.items():
            if not (str(key).isdigit() and int(key) < size and words[int(key)] == word):
                expected = words[int(key)] if str(key).isdigit() and int(key) < size else "no word"
                raise DataError(f"{path}: SCAN vocabulary field \"idx2word\": id {key} is {word!r}, "
                                f"\"word2idx\" gives {expected!r}")
    return words
