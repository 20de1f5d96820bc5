"""The Gopher filters' words in one vectorized pass: no Python object per word.

Splitting ~1,200 words into Python strings, hashing and measuring them cost ~0.2 ms a
page, more than the rules themselves. Here the text becomes an array of code points; a
table of character classes (whitespace as `str.split` sees it, `PUNCTUATION`, letters as
`HAS_LETTER` sees them) marks the words' spans, and a polynomial hash over prefix sums
gives each word a 64-bit key. The classes are taken from the definitions themselves, so
the words are `words(text)`'s exactly (tests/data_pipeline/test_filters.py checks).
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from data_pipeline.filters.text import HAS_LETTER, PUNCTUATION

SPACE, PUNCT, LETTER = 1, 2, 4
BMP = 0x10000  # tables cover the Basic Multilingual Plane; other texts return None
BASE = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64


@lru_cache(maxsize=1)
def classes() -> np.ndarray:
    """Class bits of every BMP code point, from one regex scan per class (~10 ms, once)."""
    plane = "".join(map(chr, range(BMP)))
    table = np.zeros(BMP, dtype=np.uint8)
    for flag, chars in ((SPACE, re.findall(r"\s", plane)), (PUNCT, PUNCTUATION), (LETTER, HAS_LETTER.findall(plane))):
        table[code_points("".join(chars))] |= flag
    return table


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


_powers: list[np.ndarray] = []  # [BASE**k, BASE**-k] for k < their length, grown on demand


def powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    if not _powers or len(_powers[0]) < n:
        size = max(n, 2 * len(_powers[0]) if _powers else 4096)
        inverse = np.uint64(pow(int(BASE), -1, 1 << 64))
        _powers[:] = [np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, b, dtype=np.uint64)]))
                      for b in (BASE, inverse)]
    return _powers[0][:n], _powers[1][:n]


def vector_words(text: str) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(key per word, characters per word, words holding a letter) for the words of
    `words(text)`, or None when `text` has a code point beyond the BMP.

    Equal words get equal keys; unequal ones collide with negligible probability."""
    codes = code_points(text)
    if len(codes) and codes.max() >= BMP:
        return None
    cls = classes()[codes]
    space = (cls & SPACE).astype(bool)
    token = np.cumsum(np.diff(space, prepend=True) & ~space)  # +1 where a whitespace token starts
    # a word runs from its token's first to its last character that is neither space nor punctuation
    inner = np.flatnonzero((cls & (SPACE | PUNCT)) == 0)
    change = token[inner[1:]] != token[inner[:-1]]
    starts = inner[np.concatenate([[True], change])] if len(inner) else inner
    ends = inner[np.concatenate([change, [True]])] + 1 if len(inner) else inner
    up, down = powers(len(codes) + 1)
    prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
    np.cumsum((codes + np.uint64(1)) * up[:-1], out=prefix[1:])  # +1: a NUL still counts
    keys = (prefix[ends] - prefix[starts]) * down[starts]
    letters = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum((cls & LETTER).astype(bool), out=letters[1:])
    return keys, ends - starts, int(np.count_nonzero(letters[ends] - letters[starts]))
