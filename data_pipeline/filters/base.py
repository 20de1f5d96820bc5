"""What a filter is: a callable that returns the rule a document breaks, or None to keep it.

A filter may also rewrite the document it keeps (C4 drops lines, language ID fills in
``language``/``language_score``). Rule names are ``<filter>:<rule>``, e.g.
``gopher_quality:min_words``; they are what ``removed/`` shards and ``stats.json``
(``removed: {rule: count}``) record.
"""
from __future__ import annotations

from data_pipeline.document import Document

# The filter stage hands documents to the filters in batches this large (see
# `stage.batches`); a filter may keep per-document work for that many (Gopher's word pass).
BATCH_DOCS = 256
BATCH_CHARS = 16 << 20  # and at most about this many characters of text (memory bound)


class Filter:
    """Base class: subclasses set `name` and implement `check`."""

    name: str = "filter"

    def check(self, doc: Document) -> str | None:
        """The broken rule's short name, or None if `doc` passes."""
        raise NotImplementedError

    def __call__(self, doc: Document) -> str | None:
        rule = self.check(doc)
        return None if rule is None else f"{self.name}:{rule}"
