"""Megatron's indexed token format (``PREFIX.bin`` + ``PREFIX.idx``), written and read with numpy.

megatron-core's `IndexedDataset` reads these files unchanged (the tests check it). We
write them ourselves rather than with its `IndexedDatasetBuilder` because that class
imports torch (~5 s per worker process), keeps every length in Python lists and walks
them in a Python loop; here each batch of documents is one numpy write.

``.idx`` layout: magic ``MMIDIDX\\x00\\x00``, ``<Q`` version 1, ``<B`` dtype code,
``<Q`` sequence count, ``<Q`` document count (sequences + 1), int32 sequence lengths,
int64 byte pointers, int64 document indices. We store one sequence per document,
ending with the EOD token, so document indices are ``0..n``.

A prefix may be a URL (``s3://...``, see `remote`): the ``.bin`` streams into a multipart
upload, the ``.idx`` is one object written after it, and `read_index`/`merge` read them
through fsspec; `read_tokens` (memory-mapped) is for local files only.
"""
from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.errors import UserError
from common.files import AtomicOutput
from data_pipeline.remote import is_url, location, open_input, open_upload

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# Megatron's DType codes (megatron.core.datasets.indexed_dataset.DType).
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7,
               np.dtype(np.uint16): 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQB")


def bin_path(prefix: str | os.PathLike) -> Path:
    return location(f"{prefix}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return location(f"{prefix}.idx")


def exists(prefix: str | os.PathLike) -> bool:
    return bin_path(prefix).is_file() and idx_path(prefix).is_file()


class TokenShardWriter(AtomicOutput):
    """Appends documents to ``PREFIX.bin`` and writes ``PREFIX.idx`` on `close`.

    Both files are written under temporary names and renamed (``.bin`` first, ``.idx``
    last), so a prefix whose ``.idx`` exists is always complete. At a URL the ``.bin`` is
    an upload committed at `close` (discarded by `abort`), then the ``.idx`` is written.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {self.dtype} has no Megatron code")
        if is_url(self.prefix):
            self._tmp = None
            self._bin = open_upload(bin_path(self.prefix))
        else:
            Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
            self._tmp = f".tmp-{os.getpid()}"
            self._bin = open(f"{bin_path(self.prefix)}{self._tmp}", "wb")
        self._lengths: list[np.ndarray] = []
        self.documents = 0
        self.tokens = 0

    def add_documents(self, documents: Sequence[list[int]], eod_id: int) -> None:
        """Append each document's ids followed by `eod_id` (the lists are extended in place)."""
        if not documents:
            return
        for ids in documents:
            ids.append(eod_id)
        lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
        total = int(lengths.sum())
        tokens = np.fromiter(chain.from_iterable(documents), dtype=self.dtype, count=total)
        self.add_array(tokens, lengths)

    def add_array(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat token array and their lengths."""
        if int(lengths.sum()) != tokens.size:
            raise ValueError("document lengths do not add up to the token count")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self.documents += len(lengths)
        self.tokens += tokens.size

    def add_prefix(self, prefix: str | os.PathLike) -> None:
        """Append every document of another token shard of the same dtype (a merge)."""
        index = read_index(prefix)
        if index.dtype != self.dtype:
            raise UserError(f"cannot merge {prefix}: dtype {index.dtype} differs from {self.dtype}")
        with open_input(bin_path(prefix)) as src:
            shutil.copyfileobj(src, self._bin, 16 << 20)
        self._lengths.append(index.lengths.astype(np.int64))
        self.documents += index.documents
        self.tokens += index.tokens

    def close(self) -> None:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        if lengths.size and lengths.max() > np.iinfo(np.int32).max:
            raise ValueError("a document longer than 2^31 tokens cannot be indexed")
        if self._tmp is None:
            self._bin.commit()
            with idx_path(self.prefix).open("wb") as out:
                write_index(out, self.dtype, lengths)
            return
        with open(f"{idx_path(self.prefix)}{self._tmp}", "wb") as out:
            write_index(out, self.dtype, lengths)
        os.replace(f"{bin_path(self.prefix)}{self._tmp}", bin_path(self.prefix))
        os.replace(f"{idx_path(self.prefix)}{self._tmp}", idx_path(self.prefix))

    def abort(self) -> None:
        self._bin.close()
        if self._tmp is None:
            self._bin.discard()
            return
        for path in (f"{bin_path(self.prefix)}{self._tmp}", f"{idx_path(self.prefix)}{self._tmp}"):
            Path(path).unlink(missing_ok=True)


def write_index(out: BinaryIO, dtype: np.dtype, lengths: np.ndarray) -> None:
    """Write a ``.idx`` for one sequence per document with the given lengths to `out`."""
    dtype = np.dtype(dtype)
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    out.write(_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, DTYPE_CODES[dtype]))
    out.write(struct.pack("<QQ", n, n + 1))
    out.write(np.asarray(lengths, dtype=np.int32).tobytes())
    out.write(pointers.tobytes())
    out.write(np.arange(n + 1, dtype=np.int64).tobytes())


@dataclass(frozen=True)
class Index:
    """What a ``.idx`` says: token dtype, per-sequence lengths and byte pointers, documents."""

    dtype: np.dtype
    lengths: np.ndarray
    pointers: np.ndarray
    document_indices: np.ndarray

    @property
    def documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))


def read_index(prefix: str | os.PathLike) -> Index:
    """Parse ``PREFIX.idx`` (memory-mapped; a URL's is read whole); a clear error if it is
    missing or not Megatron's format."""
    path = idx_path(prefix)
    if not exists(prefix):
        raise UserError(f"token shard not found: {prefix}(.bin/.idx)")
    raw = np.frombuffer(path.read_bytes(), np.uint8) if is_url(path) else np.memmap(path, dtype=np.uint8, mode="r")
    magic, version, code = _HEADER.unpack_from(raw, 0)
    if magic != INDEX_MAGIC or version != INDEX_VERSION or code not in CODE_DTYPES:
        raise UserError(f"not a Megatron index file (magic/version/dtype): {path}")
    offset = _HEADER.size
    sequences, documents = struct.unpack_from("<QQ", raw, offset)
    offset += 16
    lengths = np.frombuffer(raw, np.int32, sequences, offset)
    offset += lengths.nbytes
    pointers = np.frombuffer(raw, np.int64, sequences, offset)
    offset += pointers.nbytes
    document_indices = np.frombuffer(raw, np.int64, documents, offset)
    return Index(CODE_DTYPES[code], lengths, pointers, document_indices)


def read_tokens(prefix: str | os.PathLike) -> np.ndarray:
    """All tokens of a shard as one memory-mapped array."""
    dtype = read_index(prefix).dtype
    if bin_path(prefix).stat().st_size == 0:
        return np.zeros(0, dtype)  # numpy cannot map an empty file
    return np.memmap(bin_path(prefix), dtype=dtype, mode="r")


def merge(prefixes: Sequence[str | os.PathLike], output: str | os.PathLike) -> Index:
    """Concatenate token shards, in the given order, into one ``output`` prefix."""
    if not prefixes:
        raise UserError("nothing to merge: no token shards")
    dtype = read_index(prefixes[0]).dtype
    with TokenShardWriter(output, dtype) as writer:
        for prefix in prefixes:
            writer.add_prefix(prefix)
    return read_index(output)
