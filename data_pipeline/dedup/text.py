"""Text normalisation and word n-gram hashing, vectorised with numpy.

Dedup and decontamination compare documents by their word n-grams after
normalisation (lower case, punctuation and whitespace folded, digits optionally
folded to 0). Hashing one n-gram at a time in Python is what makes other tools
slow, so a whole batch of documents is turned into one array of code points and
every word and n-gram hash is computed with array arithmetic: a polynomial hash
over code points (wrapping uint64 arithmetic, one step per character position for
all words at once) gives each word a hash, word hashes are combined into n-gram
hashes, and a splitmix64 finaliser spreads the bits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import xxhash

_MAX_CODE_POINT = 0x110000
_POLY = np.uint64(0x100000001B3)
_NGRAM_MULT = np.uint64(0xD6E8FEB86659FD93)


@functools.cache
def _tables(fold_digits: bool) -> tuple[np.ndarray, np.ndarray]:
    """(is_word[cp], folded[cp]) for every Unicode code point, built once per process."""
    is_word = np.fromiter((chr(cp).isalnum() for cp in range(_MAX_CODE_POINT)), dtype=bool, count=_MAX_CODE_POINT)
    folded = np.arange(_MAX_CODE_POINT, dtype=np.uint32)
    for cp in np.flatnonzero(is_word).tolist():
        c = chr(cp)
        low = c.lower()
        if len(low) == 1:
            folded[cp] = ord(low)
        if fold_digits and c.isdigit():
            folded[cp] = ord("0")
    return is_word, folded


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: turns structured uint64 values into well-spread hashes."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class Words:
    """The words of a batch of texts: character spans, owning text and hash."""

    starts: np.ndarray  # char offset of each word inside its own text
    ends: np.ndarray
    doc: np.ndarray  # index of the text each word belongs to
    hashes: np.ndarray  # uint64, equal for equal normalised words


def words(texts: list[str], fold_digits: bool = False) -> Words:
    """Split a batch of texts into normalised words, all at once."""
    is_word_table, folded_table = _tables(fold_digits)
    # Texts joined by, and wrapped in, newlines: every word starts and ends inside.
    joined = "\n" + "\n".join(texts) + "\n"
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    text_starts = np.ones(len(texts), dtype=np.int64)
    if len(texts) > 1:
        text_starts[1:] += np.cumsum(np.fromiter((len(t) + 1 for t in texts[:-1]), np.int64))
    is_word = is_word_table[cps]
    change = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    starts, ends = change[0::2], change[1::2]
    # Polynomial hash of each word, one character position at a time for all words
    # still going (a shrinking set: a few long tokens cost little).
    lengths = ends - starts
    h = np.zeros(len(starts), dtype=np.uint64)
    going = np.arange(len(starts))
    k = 0
    while len(going):
        h[going] = h[going] * _POLY + folded_table[cps[starts[going] + k]] + np.uint64(1)
        k += 1
        going = going[lengths[going] > k]
    hashes = mix64(h + lengths.astype(np.uint64))
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    return Words(starts - text_starts[doc], ends - text_starts[doc], doc, hashes)


@dataclass
class NGrams:
    """Word n-grams of a batch of texts: hash, owning text, first and last word index."""

    hashes: np.ndarray
    doc: np.ndarray
    first_word: np.ndarray  # index into the batch's Words arrays
    offsets: np.ndarray  # n-grams of text i are hashes[offsets[i]:offsets[i+1]]


def ngrams(w: Words, n: int, n_texts: int, short_texts: bool = True) -> NGrams:
    """Hash every run of n consecutive words that lies inside one text.

    With `short_texts`, a text shorter than n words yields one n-gram made of all
    its words, so short documents still take part in dedup (as datatrove and
    FineWeb do); without it, such a text has no n-grams.
    """
    total = len(w.hashes)
    counts = np.bincount(w.doc, minlength=n_texts) if total else np.zeros(n_texts, np.int64)
    word_offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(counts, out=word_offsets[1:])
    per_doc = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1) if short_texts else 0)
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    doc = np.repeat(np.arange(n_texts), per_doc)
    first = word_offsets[doc] + (np.arange(len(doc)) - offsets[doc])
    length = np.minimum(counts[doc], n)
    h = np.zeros(len(doc), dtype=np.uint64)
    for k in range(n):
        inside = k < length
        h[inside] = h[inside] * _NGRAM_MULT + w.hashes[first[inside] + k]
    return NGrams(mix64(h ^ length.astype(np.uint64)), doc, first, offsets)


def shingle_sets(texts: list[str], n: int = 5, fold_digits: bool = False) -> list[np.ndarray]:
    """Sorted unique 64-bit hashes of each text's word n-grams."""
    grams = ngrams(words(texts, fold_digits), n, len(texts))
    return [np.unique(grams.hashes[a:b]) for a, b in zip(grams.offsets[:-1], grams.offsets[1:])]


def normalized(text: str, fold_digits: bool = False) -> str:
    """The text as its normalised words joined by single spaces."""
    is_word_table, folded_table = _tables(fold_digits)
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    out = np.where(is_word_table[cps], folded_table[cps], np.uint32(32))
    return " ".join(out.tobytes().decode("utf-32-le", "surrogatepass").split())


def exact_hash(text: str, fold_digits: bool = False) -> tuple[int, int]:
    """128-bit xxh3 hash of the normalised text, as (high, low) 64-bit halves."""
    digest = xxhash.xxh3_128_intdigest(normalized(text, fold_digits).encode("utf-8", "surrogatepass"))
    return digest >> 64, digest & 0xFFFFFFFFFFFFFFFF
