"""HTTP payloads as the crawl stored them -> the bytes the server meant: undo the transfer
encoding (chunked, with fastwarc's reader) and the content encodings (gzip, deflate with
zlib; br with fastwarc's reader) that the HTTP headers name, last applied first.

zlib, not fastwarc's GzipReader, for gzip and deflate: that reader returns a cut-off
member's prefix without an error, and reads no raw (headerless) deflate, which servers
send as ``deflate`` as often as the zlib framing the standard names.
"""
from __future__ import annotations

import io
import zlib

from fastwarc.stream_io import BrotliReader, ChunkedReader


class UndecodableBody(ValueError):
    """The payload's encoding is unknown or its bytes are damaged; the message says which."""


def decode_payload(body: bytes, transfer_encoding: str | None, content_encoding: str | None) -> bytes:
    """`body` with the named encodings (comma-separated header values) undone."""
    for name in reversed(_names(content_encoding) + _names(transfer_encoding)):  # applied in this order
        body = _undo(name, body)
    return body


def _names(header: str | None) -> list[str]:
    return [n for n in (part.strip().lower() for part in (header or "").split(",")) if n and n != "identity"]


def _undo(name: str, body: bytes) -> bytes:
    try:
        if name == "chunked":
            return _read_all(ChunkedReader(io.BytesIO(body)))
        if name == "br":
            return _read_all(BrotliReader(io.BytesIO(body)))
        if name in ("gzip", "x-gzip"):
            return _inflate(body, zlib.MAX_WBITS | 16)
        if name == "deflate":
            return _inflate(body, zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
    except (OSError, zlib.error) as err:
        raise UndecodableBody(f"{name}: {err}") from None
    raise UndecodableBody(f"{name}: unknown encoding")


def _inflate(body: bytes, wbits: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    data = inflater.decompress(body) + inflater.flush()
    if not inflater.eof:
        raise zlib.error("compressed data cut short")
    return data


def _read_all(reader) -> bytes:
    """Everything a fastwarc stream reader yields (one `read` returns at most a buffer)."""
    parts = []
    while part := reader.read():
        parts.append(part)
    return b"".join(parts)
