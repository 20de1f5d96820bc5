"""Ingest: crawl files (WARC, WET) and document files (JSONL, parquet) -> `Document` streams.

`read_any(path, stats, options)` picks the reader by file name, so every stage that
reads documents through it accepts raw crawl files too. `gpt-data extract` (in
`data_pipeline.extract.stage`) writes them as parquet shards.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_pipeline.document import Document
from data_pipeline.extract.warc import ExtractOptions, read_crawl_file
from data_pipeline.shards import DOCUMENT_SUFFIXES, read_documents
from data_pipeline.stats import Stats

CRAWL_SUFFIXES = (".warc.gz", ".warc", ".wet.gz", ".wet")
INPUT_SUFFIXES = CRAWL_SUFFIXES + DOCUMENT_SUFFIXES


def read_any(path: str | Path, stats: Stats, options: ExtractOptions = ExtractOptions()) -> Iterator[Document]:
    """Documents from any supported input file; damage is counted in `stats`."""
    if str(path).endswith(CRAWL_SUFFIXES):
        return read_crawl_file(path, stats, options)
    return read_documents(path, stats)


__all__ = ["CRAWL_SUFFIXES", "INPUT_SUFFIXES", "ExtractOptions", "read_any"]
