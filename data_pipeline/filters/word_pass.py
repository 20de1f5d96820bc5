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
SPACE_CHAR = re.compile(r"\s")  # what str.split splits at
BMP = 0x10000  # the table covers the Basic Multilingual Plane; other code points are looked up one by one
BASE = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64


@lru_cache(maxsize=1)
def bmp_classes() -> np.ndarray:
    """Class bits of every BMP code point, from one regex scan per class (~10 ms, once)."""
    plane = "".join(map(chr, range(BMP)))
    table = np.zeros(BMP, dtype=np.uint8)
    for flag, chars in ((SPACE, SPACE_CHAR.findall(plane)), (PUNCT, PUNCTUATION), (LETTER, HAS_LETTER.findall(plane))):
        table[code_points("".join(chars))] |= flag
    return table


def char_class(char: str) -> int:
    return ((SPACE if SPACE_CHAR.match(char) else 0) | (PUNCT if char in PUNCTUATION else 0)
            | (LETTER if HAS_LETTER.match(char) else 0))


def classes(codes: np.ndarray) -> np.ndarray:
    """Class bits per code point (emoji and other non-BMP ones are rare: one by one)."""
    if not len(codes) or codes.max() < BMP:
        return bmp_classes().take(codes)
    cls = bmp_classes()[np.minimum(codes, BMP - 1)]
    beyond = np.flatnonzero(codes >= BMP)
    distinct, which = np.unique(codes[beyond], return_inverse=True)
    cls[beyond] = np.array([char_class(chr(code)) for code in distinct.tolist()], dtype=np.uint8)[which]
    return cls


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


_powers: list[np.ndarray] = []  # [BASE**k, BASE**-k] for k < their length, grown on demand
KEPT_POWERS = 1 << 20  # a longer text gets powers of its own, not kept (16 bytes a character)


def powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    if _powers and len(_powers[0]) >= n:
        return _powers[0][:n], _powers[1][:n]
    size = min(max(n, 2 * len(_powers[0]) if _powers else 4096), KEPT_POWERS)
    inverse = np.uint64(pow(int(BASE), -1, 1 << 64))
    up, down = (np.cumprod(np.concatenate([[np.uint64(1)], np.full(max(n, size) - 1, b, dtype=np.uint64)]))
                for b in (BASE, inverse))
    if n <= KEPT_POWERS:
        _powers[:] = [up[:size], down[:size]]
    return up[:n], down[:n]


def vector_words(text: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(key per word, characters per word, words holding a letter) for the words of
    `words(text)`.

    Equal words get equal keys; unequal ones collide with negligible probability."""
    codes = code_points(text)
    cls = classes(codes)
    # a word runs from its token's first to its last character that is neither space nor
    # punctuation; two such characters are in different tokens iff a space lies between them
    inner = np.flatnonzero((cls & (SPACE | PUNCT)) == 0)
    spaces_before = np.cumsum(cls & SPACE, dtype=np.int32)[inner]
    change = spaces_before[1:] != spaces_before[:-1]
    starts = inner[np.concatenate([[True], change])] if len(inner) else inner
    ends = inner[np.concatenate([change, [True]])] + 1 if len(inner) else inner
    up, down = powers(len(codes) + 1)
    terms = codes.astype(np.uint64)
    terms += np.uint64(1)  # a NUL still counts
    terms *= up[:-1]
    prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
    np.cumsum(terms, out=prefix[1:])
    keys = (prefix[ends] - prefix[starts]) * down[starts]
    letters = np.zeros(len(codes) + 1, dtype=np.int32)
    np.cumsum((cls & LETTER).astype(bool), out=letters[1:])
    return keys, ends - starts, int(np.count_nonzero(letters[ends] - letters[starts]))
