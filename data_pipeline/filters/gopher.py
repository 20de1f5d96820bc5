"""Gopher's quality and repetition rules (Rae et al. 2021, Appendix A; defaults as in the paper).

Character fractions are taken over ``len(text)``, as in the paper and datatrove.
"""
from __future__ import annotations

import re
from functools import lru_cache
from itertools import islice, repeat
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from data_pipeline.document import Document
from data_pipeline.filters.base import BATCH_DOCS, Filter
from data_pipeline.filters.text import PUNCTUATION, lines, paragraphs
from data_pipeline.filters.word_pass import vector_words

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "-", "*", "‣", "◦", "⁃")
ELLIPSES = ("...", "…")
NON_SPACE = re.compile(r"\S+")  # str.split's tokens, one at a time


@dataclass(frozen=True)
class GopherQualityOptions:
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # '#' and ellipses per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # words containing at least one letter
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = STOP_WORDS


class GopherQuality(Filter):
    """Documents that do not look like prose: too short/long, odd word lengths, symbol soup, lists."""

    name = "gopher_quality"

    def __init__(self, options: GopherQualityOptions = GopherQualityOptions()):
        self.o = options
        self.stop_words = frozenset(options.stop_words)

    def check(self, doc: Document) -> str | None:
        o, text = self.o, doc.text
        ws = word_pass(text)
        n = len(ws.lengths)
        if n < o.min_words:
            return "min_words"
        if n > o.max_words:
            return "max_words"
        mean_length = int(ws.lengths.sum()) / n
        if mean_length < o.min_mean_word_length:
            return "min_mean_word_length"
        if mean_length > o.max_mean_word_length:
            return "max_mean_word_length"
        if (text.count("#") + text.count("...") + text.count("…")) / n > o.max_symbol_word_ratio:
            return "symbol_word_ratio"
        text_lines = list(map(str.strip, lines(text.strip())))
        if sum(map(str.startswith, text_lines, repeat(BULLETS))) / len(text_lines) > o.max_bullet_lines_ratio:
            return "bullet_lines_ratio"
        if sum(map(str.endswith, text_lines, repeat(ELLIPSES))) / len(text_lines) > o.max_ellipsis_lines_ratio:
            return "ellipsis_lines_ratio"
        if ws.with_letter / n < o.min_alpha_words_ratio:
            return "alpha_words_ratio"
        # only whether min_stop_words are present matters: the words are made one at a
        # time from the start of the text, and the search stops once they are found
        stripped = map(str.strip, map(re.Match.group, NON_SPACE.finditer(text)), repeat(PUNCTUATION))
        found = islice(filter(self.stop_words.__contains__, map(str.lower, filter(None, stripped))),
                       o.min_stop_words)
        if sum(1 for _ in found) < o.min_stop_words:
            return "stop_words"
        return None


@dataclass(frozen=True)
class GopherRepetitionOptions:
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_char_fraction: float = 0.20
    # (n >= 2, max fraction of characters in the most frequent n-gram)
    top_ngram_char_fractions: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    # (n >= 2, max fraction of characters covered by repeated n-grams)
    duplicate_ngram_char_fractions: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


class GopherRepetition(Filter):
    """Documents that repeat themselves: duplicate lines/paragraphs, dominant or repeated n-grams."""

    name = "gopher_repetition"

    def __init__(self, options: GopherRepetitionOptions = GopherRepetitionOptions()):
        self.o = options

    def check(self, doc: Document) -> str | None:
        o, text = self.o, doc.text
        size = len(text)
        if size == 0:
            return None
        for kind, parts, max_frac, max_char_frac in (
            ("paragraph", paragraphs(text), o.max_duplicate_paragraph_fraction, o.max_duplicate_paragraph_char_fraction),
            ("line", lines(text), o.max_duplicate_line_fraction, o.max_duplicate_line_char_fraction),
        ):
            count, chars = duplicates(parts)
            if count / len(parts) > max_frac:
                return f"duplicate_{kind}_fraction"
            if chars / size > max_char_frac:
                return f"duplicate_{kind}_char_fraction"
        ids, lengths, _ = word_pass(text)
        if len(ids) < 2:
            return None
        top = dict(o.top_ngram_char_fractions)
        repeated = dict(o.duplicate_ngram_char_fractions)
        if not top and not repeated:
            return None
        for n, keys in ngram_keys(ids, max(top | repeated)):
            if n in top and top_ngram_chars(keys, lengths, n) / size > top[n]:
                return f"top_{n}gram_char_fraction"
            if n in repeated:
                fraction = repeated_ngram_chars(keys, lengths, n) / size
                if fraction > repeated[n]:
                    return f"duplicate_{n}gram_char_fraction"
                # coverage by repeated n-grams can only shrink as n grows: stop once no
                # larger n's threshold can be reached (and no top-n-gram check is left)
                if all(fraction <= t for m, t in repeated.items() if m > n) and max(top, default=0) <= n:
                    return None
        return None


def duplicates(parts: list[str]) -> tuple[int, int]:
    """(number of parts equal to an earlier part, their total characters): everything
    but the first occurrence of each distinct part."""
    distinct = set(parts)
    return len(parts) - len(distinct), sum(map(len, parts)) - sum(map(len, distinct))


class WordPass(NamedTuple):
    """What the Gopher rules need of `words(text)` (see `vector_words`)."""

    ids: np.ndarray  # a 64-bit key per word: equal words, equal keys
    lengths: np.ndarray  # characters per word
    with_letter: int  # words holding at least one letter


@lru_cache(maxsize=BATCH_DOCS)  # both Gopher filters look at the same batch of texts one after the other
def word_pass(text: str) -> WordPass:
    return WordPass(*vector_words(text))


def ngram_keys(ids: np.ndarray, max_n: int):
    """(n, key per n-gram start) for n = 2..max_n; equal n-grams get equal keys (a
    polynomial hash in uint64 that wraps around; collisions are negligible)."""
    keys = ids
    for n in range(2, min(max_n, len(ids)) + 1):
        keys = keys[:-1] * np.uint64(1_000_003) + ids[n - 1:]
        yield n, keys


def _sorted_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of `keys` in key order, True where a sorted key starts a new group); the
    first member of each group is the n-gram's earliest occurrence.

    The position replaces the key's low bits and one plain (SIMD) sort of the packed
    values does what a stable argsort did at several times the cost; the n-gram hash
    keeps 64 - log2(words) bits (47 at 100k words)."""
    bits = max(1, (len(keys) - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    packed = np.sort((keys & ~low) | np.arange(len(keys), dtype=np.uint64))
    order = (packed & low).astype(np.intp)
    grams = packed >> np.uint64(bits)
    starts = np.empty(len(keys), dtype=bool)
    starts[0] = True
    np.not_equal(grams[1:], grams[:-1], out=starts[1:])
    return order, starts


def top_ngram_chars(keys: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters in all occurrences of the most frequent n-gram (words joined by spaces).

    Ties go to the longest n-gram, so the answer does not depend on hash order; an
    n-gram seen only once is not repetition (0)."""
    order, starts = _sorted_groups(keys)
    group_starts = starts.nonzero()[0]
    counts = np.empty_like(group_starts)
    np.subtract(group_starts[1:], group_starts[:-1], out=counts[:-1])
    counts[-1] = len(keys) - group_starts[-1]
    top = counts.max()
    if top < 2:
        return 0
    firsts = order[group_starts[counts == top]]
    longest = int(lengths[firsts[:, None] + np.arange(n)].sum(axis=1).max())
    return (longest + n - 1) * int(top)


def repeated_ngram_chars(keys: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters of the words covered by any n-gram occurrence that repeats an earlier one."""
    order, starts = _sorted_groups(keys)
    if starts.all():
        return 0
    repeat_starts = np.empty(len(keys), dtype=np.int64)
    repeat_starts[order] = ~starts
    # word i is covered if a repeat starts in [i - n + 1, i]
    covered = np.concatenate([np.cumsum(repeat_starts), np.full(n - 1, repeat_starts.sum())])
    window = covered - np.concatenate([np.zeros(n, dtype=np.int64), covered[:-n]])
    return int(lengths[window > 0].sum())
