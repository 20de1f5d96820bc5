"""Word and line splitting shared by the heuristic filters.

Words are whitespace tokens with punctuation stripped from both ends (tokens that are
all punctuation are dropped). This is what the Gopher rules count; it avoids a
linguistic tokenizer, which is where datatrove spends most of its filter time.
"""
from __future__ import annotations

import re
import string
import unicodedata
from itertools import repeat

PUNCTUATION = "".join(
    sorted(set(string.punctuation) | {chr(i) for i in range(0x2000, 0x2070)
                                     if unicodedata.category(chr(i)).startswith("P")} | set("«»¡¿…“”‘’–—•·"))
)
HAS_LETTER = re.compile(r"[^\W\d_]")


def words(text: str) -> list[str]:
    """Whitespace tokens of `text` with leading/trailing punctuation removed; empty ones dropped.

    The definition of the Gopher rules' words; `word_pass.vector_words` computes what
    the rules need of them without making them."""
    return list(filter(None, map(str.strip, text.split(), repeat(PUNCTUATION))))


def paragraphs(text: str) -> list[str]:
    """``re.split(r"\\n{2,}", text.strip())``, by `str.split` (several times faster).

    Splitting at every "\\n\\n" leaves empty pieces inside longer breaks and, after an
    odd-length break, one leading newline on the next paragraph."""
    text = text.strip()
    if not text:
        return [text]
    return [part[1:] if part[0] == "\n" else part for part in text.split("\n\n") if part]


def lines(text: str) -> list[str]:
    """``re.split(r"\\n+", text)``, by `str.split`: the empty strings it gives for a leading or
    trailing break are kept, as duplicate-line counts include them."""
    if not text:
        return [text]
    found = list(filter(None, text.split("\n")))
    if text[0] == "\n":
        found.insert(0, "")
    if text[-1] == "\n":
        found.append("")
    return found
