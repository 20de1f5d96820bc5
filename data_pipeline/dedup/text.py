"""Text normalisation and word n-gram hashing, vectorised with numpy.

Dedup and decontamination compare documents by their word n-grams after
normalisation (lower case, punctuation and whitespace folded, digits optionally
folded to 0). Hashing one n-gram at a time in Python is what makes other tools
slow, so a whole batch of documents is turned into one array of code points and
every word and n-gram hash is computed with array arithmetic: a polynomial hash
over code points (wrapping uint64 arithmetic) gives each word a hash, word hashes
are combined into n-gram hashes, and a splitmix64 finaliser spreads the bits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import xxhash

_MAX_CODE_POINT = 0x110000
_SEED = np.uint64(0x9E3779B97F4A7C15)
_POLY_INT = 0x100000001B3  # odd, so it has an inverse mod 2**64
_POLY = np.uint64(_POLY_INT)
_POLY_INV = np.uint64(pow(_POLY_INT, -1, 1 << 64))
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


@functools.cache
def _hash_codes(fold_digits: bool) -> np.ndarray:
    """Per code point, the value the word hash sums: folded code point + 1, as uint64."""
    return _tables(fold_digits)[1].astype(np.uint64) + np.uint64(1)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: turns structured uint64 values into well-spread hashes."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_POWERS: dict[int, np.ndarray] = {}


def _poly_powers(n: int, base: np.uint64) -> np.ndarray:
    """base**1 .. base**n (mod 2**64); one cached array per base, grown by doubling."""
    cached = _POWERS.get(int(base))
    if cached is None or len(cached) < n:
        size = 1 << max(16, int(n - 1).bit_length())
        cached = _POWERS[int(base)] = np.cumprod(np.full(size, base, dtype=np.uint64))
    return cached[:n]


@dataclass
class Words:
    """The words of a batch of texts: character spans, owning text and hash."""

    starts: np.ndarray  # char offset of each word inside its own text
    ends: np.ndarray
    doc: np.ndarray  # index of the text each word belongs to
    hashes: np.ndarray  # uint64, equal for equal normalised words


def words(texts: list[str], fold_digits: bool = False) -> Words:
    """Split a batch of texts into normalised words, all at once."""
    # Texts joined by, and wrapped in, newlines: every word starts and ends inside.
    joined = "\n" + "\n".join(texts) + "\n"
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    text_starts = np.ones(len(texts), dtype=np.int64)
    if len(texts) > 1:
        text_starts[1:] += np.cumsum(np.fromiter((len(t) + 1 for t in texts[:-1]), np.int64))
    is_word = _tables(fold_digits)[0][cps]
    change = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    starts, ends = change[0::2], change[1::2]
    # Prefix sums of c_j * P**(j+1); a word's slice times P**-(start+1) is its
    # polynomial hash, independent of where the word sits in the batch.
    prefix = np.zeros(len(cps) + 1, dtype=np.uint64)
    terms = _hash_codes(fold_digits)[cps]
    terms *= _poly_powers(len(cps), _POLY)
    np.cumsum(terms, out=prefix[1:])
    span = (prefix[ends] - prefix[starts]) * _poly_powers(len(cps), _POLY_INV)[starts]
    hashes = mix64(span + (ends - starts).astype(np.uint64))
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
