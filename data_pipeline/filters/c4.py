"""C4's clean-up rules (Raffel et al. 2020, Sec. 2.2), as a line filter plus document rules.

Lines are dropped when they lack terminal punctuation, are too short, hold an absurdly
long word, mention javascript or are cookie/policy boilerplate (dropped lines are
counted per reason in ``stats["c4_lines_removed"]`` by the stage). The document is
removed when it contains "lorem ipsum" or a curly brace, when nothing is left, or when
fewer than ``min_sentences`` sentences remain.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import compress, islice, repeat
from operator import gt

from data_pipeline.document import Document
from data_pipeline.filters.base import Filter

TERMINAL_PUNCTUATION = (".", "?", "!", '"', "'", "”", "’")
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")
POLICY = re.compile("|".join(map(re.escape, POLICY_PHRASES)))  # any phrase, in one C-level scan
POLICY_WORDS = ("polic", "cookie", "terms of use")  # every phrase holds one


@dataclass(frozen=True)
class C4Options:
    require_terminal_punctuation: bool = True
    min_words_per_line: int = 3
    max_word_length: int = 1000
    min_sentences: int = 5
    remove_citations: bool = True
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    reject_lorem_ipsum: bool = True
    reject_curly_braces: bool = True


class C4Filter(Filter):
    """C4 rules; rewrites `doc.text` to the kept lines. `line_reasons` counts dropped lines."""

    name = "c4"

    def __init__(self, options: C4Options = C4Options()):
        self.o = options
        self.line_reasons: dict[str, int] = {}

    def check(self, doc: Document) -> str | None:
        o, text = self.o, doc.text
        lowered = text.lower()  # also the lowered text below unless citations are cut out
        if o.reject_lorem_ipsum and "lorem ipsum" in lowered:
            return "lorem_ipsum"
        if o.reject_curly_braces and "{" in text:
            return "curly_braces"
        if o.remove_citations:  # no citation spans a newline: one pass over the text, not one per line
            cited, text = text, CITATION.sub("", text)
            if text is not cited:  # sub returns its input when nothing matched
                lowered = text.lower()
        lines = candidates = list(filter(None, map(str.strip, text.split("\n"))))
        if o.require_terminal_punctuation:
            # most dropped lines fail this first rule: settle it for every line at C speed
            # (ends with terminal punctuation > ends with "...": True only for True, False)
            punctuated = map(gt, map(str.endswith, lines, repeat(TERMINAL_PUNCTUATION)),
                             map(str.endswith, lines, repeat("...")))
            candidates = list(compress(lines, punctuated))
            self._count("no_terminal_punctuation", len(lines) - len(candidates))
        if self._only_word_count_applies(lowered, candidates):
            # at most min_words_per_line pieces: enough to count to it, without a string per word
            kept = [line for line in candidates if len(line.split(None, o.min_words_per_line - 1))
                    >= o.min_words_per_line]
            self._count("too_few_words", len(candidates) - len(kept))
        else:
            kept = []
            for line in candidates:
                reason = self._line_reason(line)
                if reason is None:
                    kept.append(line)
                else:
                    self._count(reason)
        if not kept:
            return "no_lines_left"
        text = "\n".join(kept)
        if sum(1 for _ in islice(SENTENCE_END.finditer(text), o.min_sentences)) < o.min_sentences:
            return "min_sentences"
        doc.text = text
        return None

    def _count(self, reason: str, n: int = 1) -> None:
        if n:
            self.line_reasons[reason] = self.line_reasons.get(reason, 0) + n

    def _only_word_count_applies(self, lowered: str, lines: list[str]) -> bool:
        """Whether no line can break a rule after too_few_words: none is long enough to hold a
        long word, and the `lowered` text (a lowered line is part of it) has no "javascript"
        and no word every policy phrase contains. True for most pages: a few C-level scans
        of the text instead of a lowered copy and a regex search per line."""
        o = self.o
        if max(map(len, lines), default=0) > o.max_word_length:
            return False
        if o.drop_javascript_lines and "javascript" in lowered:
            return False
        return not (o.drop_policy_lines and any(map(lowered.__contains__, POLICY_WORDS)))

    def _line_reason(self, line: str) -> str | None:
        """Why a line with terminal punctuation (if required) is dropped, or None."""
        o = self.o
        line_words = line.split()
        if len(line_words) < o.min_words_per_line:
            return "too_few_words"
        if len(line) > o.max_word_length and max(map(len, line_words)) > o.max_word_length:
            return "long_word"
        lowered = line.lower()
        if o.drop_javascript_lines and "javascript" in lowered:
            return "javascript"
        if o.drop_policy_lines and POLICY.search(lowered):
            return "policy"
        return None
