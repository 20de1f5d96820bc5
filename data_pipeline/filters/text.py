"""Word and line splitting shared by the heuristic filters.

Words are whitespace tokens with punctuation stripped from both ends (tokens that are
all punctuation are dropped). This is what the Gopher rules count; it avoids a
linguistic tokenizer, which is where datatrove spends most of its filter time.
"""
from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache
from itertools import repeat

PUNCTUATION = "".join(
    sorted(set(string.punctuation) | {chr(i) for i in range(0x2000, 0x2070)
                                     if unicodedata.category(chr(i)).startswith("P")} | set("«»¡¿…“”‘’–—•·"))
)
PARAGRAPH_BREAK = re.compile(r"\n{2,}")
LINE_BREAK = re.compile(r"\n+")


@lru_cache(maxsize=4)  # the Gopher filters split the same text one after the other
def words(text: str) -> list[str]:
    """Whitespace tokens of `text` with leading/trailing punctuation removed; empty ones dropped.

    The returned list is shared between callers: do not modify it."""
    return list(filter(None, map(str.strip, text.split(), repeat(PUNCTUATION))))


def paragraphs(text: str) -> list[str]:
    return PARAGRAPH_BREAK.split(text.strip())


def lines(text: str) -> list[str]:
    return LINE_BREAK.split(text)
