"""Gopher's quality and repetition rules (Rae et al. 2021, Appendix A; defaults as in the paper).

Character fractions are taken over ``len(text)``, as in the paper and datatrove.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from data_pipeline.document import Document
from data_pipeline.filters.base import Filter
from data_pipeline.filters.text import lines, paragraphs, words

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "-", "*", "‣", "◦", "⁃")
ELLIPSES = ("...", "…")
HAS_LETTER = re.compile(r"[^\W\d_]")


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
        ws = words(text)
        n = len(ws)
        if n < o.min_words:
            return "min_words"
        if n > o.max_words:
            return "max_words"
        mean_length = sum(map(len, ws)) / n
        if mean_length < o.min_mean_word_length:
            return "min_mean_word_length"
        if mean_length > o.max_mean_word_length:
            return "max_mean_word_length"
        if (text.count("#") + text.count("...") + text.count("…")) / n > o.max_symbol_word_ratio:
            return "symbol_word_ratio"
        text_lines = [line.strip() for line in lines(text.strip())]
        if sum(line.startswith(BULLETS) for line in text_lines) / len(text_lines) > o.max_bullet_lines_ratio:
            return "bullet_lines_ratio"
        if sum(line.endswith(ELLIPSES) for line in text_lines) / len(text_lines) > o.max_ellipsis_lines_ratio:
            return "ellipsis_lines_ratio"
        if sum(1 for w in ws if HAS_LETTER.search(w)) / n < o.min_alpha_words_ratio:
            return "alpha_words_ratio"
        if sum(w.lower() in self.stop_words for w in ws) < o.min_stop_words:
            return "stop_words"
        return None


@dataclass(frozen=True)
class GopherRepetitionOptions:
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_char_fraction: float = 0.20
    # (n, max fraction of characters in the most frequent n-gram)
    top_ngram_char_fractions: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    # (n, max fraction of characters covered by repeated n-grams)
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
        ws = words(text)
        for n, max_frac in o.top_ngram_char_fractions:
            if len(ws) >= n and top_ngram_chars(ws, n) / size > max_frac:
                return f"top_{n}gram_char_fraction"
        if o.duplicate_ngram_char_fractions:
            ids, lengths = word_ids(ws)
            for n, max_frac in o.duplicate_ngram_char_fractions:
                if repeated_ngram_chars(ids, lengths, n) / size > max_frac:
                    return f"duplicate_{n}gram_char_fraction"
        return None


def duplicates(parts: list[str]) -> tuple[int, int]:
    """(number of parts equal to an earlier part, their total characters)."""
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        else:
            seen.add(part)
    return count, chars


def top_ngram_chars(ws: list[str], n: int) -> int:
    """Characters in all occurrences of the most frequent n-gram (words joined by spaces)."""
    gram, count = Counter(zip(*(ws[i:] for i in range(n)))).most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def word_ids(ws: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Integer id per word (equal words, equal ids) and word lengths, as arrays."""
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in ws), dtype=np.uint64, count=len(ws))
    lengths = np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))
    return ids, lengths


def repeated_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters of the words covered by any n-gram occurrence that repeats an earlier one."""
    count = len(ids) - n + 1
    if count < 2:
        return 0
    keys = ids[:count].copy()
    for j in range(1, n):  # polynomial hash of each n-gram; uint64 wraps around
        keys = keys * np.uint64(1_000_003) + ids[j:j + count]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    repeat_starts = (first[inverse] < np.arange(count)).astype(np.int64)
    if not repeat_starts.any():
        return 0
    # word i is covered if a repeat starts in [i - n + 1, i]
    starts = np.concatenate([np.cumsum(repeat_starts), np.full(n - 1, repeat_starts.sum())])
    window = starts - np.concatenate([np.zeros(n, dtype=np.int64), starts[:-n]])
    return int(lengths[window > 0].sum())
