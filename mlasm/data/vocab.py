"""Tokeniser and word vocabulary, compatible with SCAN's (lower case, <pad>=0 <start>=1 <end>=2 <unk>=3).

SCAN tokenises with NLTK's ``word_tokenize``; a regular expression that splits words, numbers
and punctuation marks gives the same tokens on ordinary captions without the dependency.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from mlasm.data.errors import DataError, load_json
from mlasm.io import write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
VOCAB_FORMAT = "mlasm-vocab"
VOCAB_VERSION = 1

_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_")


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into runs of letters/digits and single punctuation marks."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class EncodedCaption:
    """A caption as word ids (no <start>/<end>), its tokens, and the tokens that mapped to <unk>."""

    ids: list[int]
    tokens: list[str]
    unknown: list[str]


class Vocabulary:
    """Word <-> id mapping; ids 0..3 are the special tokens, the rest in order of decreasing frequency."""

    def __init__(self, words: Iterable[str]):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise DataError(f"a vocabulary must start with {list(SPECIAL_TOKENS)}, got {words[:4]}")
        duplicates = [w for w, n in Counter(words).items() if n > 1]
        if duplicates:
            raise DataError(f"vocabulary has duplicate words: {duplicates[:10]}")
        self.words = words
        self.word_to_id = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> "Vocabulary":
        """Keep the words seen at least ``min_count`` times (SCAN's threshold is 4)."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.word_to_id

    @property
    def unk_id(self) -> int:
        return self.word_to_id[UNK]

    def encode(self, text: str) -> EncodedCaption:
        """Map a caption to ids; unknown words become <unk> and are reported, not dropped."""
        tokens = tokenize(text)
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

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "words": self.words})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        content = load_json(path, "vocabulary file")
        if not isinstance(content, dict) or content.get("format") != VOCAB_FORMAT:
            raise DataError(f"{path}: expected a JSON object with \"format\": \"{VOCAB_FORMAT}\"")
        if content.get("version") != VOCAB_VERSION:
            raise DataError(f"{path}: vocabulary version {content.get('version')!r}, expected {VOCAB_VERSION}")
        words = content.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise DataError(f"{path}: field \"words\" must be a list of non-empty strings")
        try:
            return cls(words)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
