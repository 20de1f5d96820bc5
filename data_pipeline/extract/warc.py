"""Stream documents out of WARC (HTML responses) and WET (text conversions) files with fastwarc.

Damage never stops a shard: a region fastwarc cannot parse (garbage bytes, a broken
gzip member) is skipped by resynchronising at the next gzip member or ``WARC/``
header, a record cut short by truncation is dropped, and each case is counted in
``stats["skipped"]``. Common Crawl writes one gzip member per record, so resyncing loses
at most the damaged records. A file that ends inside a record (a stopped download) also
counts ``truncated_file`` and ``shards_incomplete``: the executor keeps its output but does
not mark it done, so a rerun with the full file redoes it.

HTTP bodies are decoded (`payload.decode_payload`) before charset detection; one that
cannot be is skipped as ``undecodable_encoding``.

The file is read as a stream (`remote.open_input`: a local file or a URL read in blocks);
resyncing and the end-of-file check seek within it, so a remote file is never copied whole.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

from data_pipeline.document import Document
from data_pipeline.extract.html import decode_html, html_to_text
from data_pipeline.extract.payload import UndecodableBody, decode_payload
from data_pipeline.remote import input_size, location, open_input
from data_pipeline.stats import Stats

HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
KEPT_TYPES = (WarcRecordType.response, WarcRecordType.conversion)
SCAN_BYTES = 1 << 20  # what a resync or the end-of-file check reads at a time


@dataclass(frozen=True)
class ExtractOptions:
    """What to keep from a crawl file; also `gpt-data extract`'s flags and the recipe step's keys."""

    source: str = field(default="common-crawl", metadata={"help": "value of the source column (default %(default)s)"})
    main_content: bool = field(default=True, metadata={
        "flag": "--all-text", "action": "store_false",
        "help": "keep all visible text instead of resiliparse's main-content heuristics"})
    max_record_bytes: int = field(default=10 << 20, metadata={
        "help": "skip larger HTTP payloads as too_large (default %(default)s)"})
    min_text_chars: int = field(default=1, metadata={
        "help": "skip records whose stripped text is shorter than this, as empty_text (default %(default)s)"})


def read_crawl_file(path: str | Path, stats: Stats, options: ExtractOptions = ExtractOptions()) -> Iterator[Document]:
    """Documents of a WARC or WET file: one per usable response / conversion record."""
    path = location(path)
    with open_input(path) as raw:
        if input_size(raw) == 0:
            stats.add("skipped", "empty_file")
            return
        magic = GZIP_MAGIC if raw.read(2) == GZIP_MAGIC[:2] else WARC_MAGIC
        yield from _records(raw, path.name, magic, stats, options)


def _records(raw, name: str, magic: bytes, stats: Stats, options: ExtractOptions) -> Iterator[Document]:
    start, in_damage, last_record = 0, False, None
    while start != -1:
        raw.seek(start)
        last = start
        try:
            for record in ArchiveIterator(raw):  # every type: `last` must reach the final record
                last = last_record = record.stream_pos
                in_damage = False
                if record.record_type not in KEPT_TYPES:
                    continue
                doc = _document(record, stats, options)
                if doc is not None:
                    yield doc
            break
        except OSError as err:
            if not in_damage:  # one count per damaged region, however many resyncs it takes
                stats.add("skipped", "corrupt_region")
                stats.note(f"{name}@{last}: {err}")
            in_damage = True
            start = _find(raw, magic, last + 1)
    if last_record is not None and _cut_short(raw, last_record, magic):
        stats.add("skipped", "truncated_file")
        stats.add("shards_incomplete")
        stats.note(f"{name}: the file ends inside its last record (a stopped download?)")


def _find(raw, magic: bytes, start: int) -> int:
    """Offset of the first `magic` at or after `start` in the file, or -1."""
    raw.seek(start)
    carry = b""  # the end of the previous chunk, for a magic that straddles two
    while chunk := raw.read(SCAN_BYTES):
        window = carry + chunk
        hit = window.find(magic)
        if hit != -1:
            return start - len(carry) + hit
        start += len(chunk)
        carry = window[-(len(magic) - 1):]
    return -1


def _cut_short(raw, last_record: int, magic: bytes) -> bool:
    """Whether the file ends inside a record: the last gzip member from `last_record` on has
    no end (a damaged one is not a cut one), or an uncompressed file lacks a record's closing CRLFs."""
    if magic == WARC_MAGIC:
        raw.seek(max(input_size(raw) - 4, 0))
        return raw.read(4) != b"\r\n\r\n"
    raw.seek(last_record)
    inflater, pending = None, b""
    while True:
        if not pending:
            pending = raw.read(SCAN_BYTES)
            if not pending:
                return inflater is not None  # the file ended inside a gzip member
        inflater = inflater or zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            inflater.decompress(pending, SCAN_BYTES)  # bounded output: the text is not kept
        except zlib.error:
            return False
        if inflater.eof:
            inflater, pending = None, inflater.unused_data
        else:
            pending = inflater.unconsumed_tail


def _document(record, stats: Stats, options: ExtractOptions) -> Document | None:
    stats.add("records_in")
    is_response = record.record_type == WarcRecordType.response
    if is_response and (record.http_headers is None or record.http_headers.status_code != 200):
        return _skip(stats, "http_status_not_200")
    content_type = record.http_content_type if is_response else record.headers.get("Content-Type", "text/plain")
    if is_response and (content_type or "").lower() not in HTML_TYPES:
        return _skip(stats, "not_html")
    if record.content_length > options.max_record_bytes:
        return _skip(stats, "too_large")
    body = record.reader.read()
    if len(body) < record.content_length:
        return _skip(stats, "truncated_record")
    if is_response:
        try:
            body = decode_payload(body, record.http_headers.get("Transfer-Encoding"),
                                  record.http_headers.get("Content-Encoding"))
        except UndecodableBody as err:
            stats.note(f"{record.headers.get('WARC-Target-URI')}: {err}")
            return _skip(stats, "undecodable_encoding")
        html, how = decode_html(body, record.http_charset)
        stats.add("charset", how)
        text = html_to_text(html, options.main_content)
    else:
        text = body.decode("utf-8", errors="replace")
    if len(text.strip()) < options.min_text_chars:
        return _skip(stats, "empty_text")
    headers = record.headers
    return Document(
        id=(record.record_id or "").strip("<>"),
        text=text,
        url=(headers.get("WARC-Target-URI") or "").strip("<>"),
        crawl_date=headers.get("WARC-Date") or "",
        source=options.source,
    )


def _skip(stats: Stats, reason: str) -> None:
    stats.add("skipped", reason)
    return None
