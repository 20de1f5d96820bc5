"""The document record every stage passes along, and its parquet schema.

A shard is a parquet file whose rows are documents. The core columns are fixed:

===================  ===========  ==========================================================
column               type         meaning
===================  ===========  ==========================================================
``id``               string       stable identifier (WARC-Record-ID, or the input's own id)
``url``              string       source URL ("" when unknown)
``crawl_date``       string       ISO 8601 date of the crawl, e.g. ``2020-03-29T09:04:10Z``
``source``           string       corpus name: ``common-crawl``, ``wikipedia``, ...
``text``             string       the document's plain text (UTF-8)
``language``         string       ISO 639 code from language ID (null before LID)
``language_score``   float32      LID confidence in [0, 1] (null before LID)
===================  ===========  ==========================================================

Later stages add their own columns after these (``quality`` from the classifier,
``removed_by`` in a filter's ``removed/`` output, ...). On a `Document` they live in
``metadata``; a writer stores exactly the columns of the schema it was given, so a
stage declares what it adds with `extend_schema` and keeps what it read with
`shards.read_schema`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

CORE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("crawl_date", pa.string()),
    pa.field("source", pa.string()),
    pa.field("text", pa.string(), nullable=False),
    pa.field("language", pa.string()),
    pa.field("language_score", pa.float32()),
)
CORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in CORE_FIELDS)
DOCUMENT_SCHEMA = pa.schema(CORE_FIELDS)


def extend_schema(schema: pa.Schema, **columns: pa.DataType) -> pa.Schema:
    """`schema` plus the named columns (replacing a same-named column's type)."""
    for name, dtype in columns.items():
        index = schema.get_field_index(name)
        schema = schema.set(index, pa.field(name, dtype)) if index >= 0 else schema.append(pa.field(name, dtype))
    return schema


@dataclass(slots=True)
class Document:
    """One document. Core columns are attributes; any other column is in `metadata`."""

    id: str
    text: str
    url: str = ""
    crawl_date: str = ""
    source: str = ""
    language: str | None = None
    language_score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        """Build from a parquet row (a dict of column -> value)."""
        extra = {k: v for k, v in row.items() if k not in CORE_COLUMNS}
        return cls(
            id=row["id"], text=row["text"] or "", url=row.get("url") or "",
            crawl_date=row.get("crawl_date") or "", source=row.get("source") or "",
            language=row.get("language"), language_score=row.get("language_score"),
            metadata=extra,
        )

    def get(self, column: str) -> Any:
        """Value of a core column or a metadata column (None when absent)."""
        if column in CORE_COLUMNS:
            return getattr(self, column)
        return self.metadata.get(column)


def documents_to_table(docs: list[Document], schema: pa.Schema = DOCUMENT_SCHEMA) -> pa.Table:
    """Column-wise table of `docs` with exactly the columns of `schema`."""
    arrays = [pa.array([d.get(f.name) for d in docs], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
