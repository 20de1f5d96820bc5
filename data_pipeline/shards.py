"""Shard I/O shared by every stage: find inputs, read documents, write parquet atomically,
and mark finished shards so that an interrupted run resumes without loss or duplicates.

API (everything a stage needs besides `executor.run_shards`):

- `discover_shards(path, suffixes, manifest)` -> sorted list of input files. `path` is a file
  or a directory searched recursively; hidden (``.``), ``_``-prefixed and ``removed/``
  directories are skipped, so a stage's output directory is a valid next input. It may be a
  URL (``https://`` file, ``s3://`` file or prefix; see `remote`) or a path manifest
  (``*.paths.gz``), whose files come in the manifest's order.
- `shard_name(path, root)` -> a stable, unique name for an input (its path relative to
  the input root without the data suffix, ``/`` replaced by ``__``). Outputs are named
  after it, so a re-run rewrites the same files.
- `read_documents(path, stats)` -> iterator of `Document` from parquet or JSONL(.gz)
  (dolma/CCNet field names are understood). Damage (truncated gzip, bad JSON lines,
  records without text) is counted in ``stats["skipped"][reason]`` and the readable
  part of the shard is still yielded.
- `read_batches(path, columns)` -> pyarrow RecordBatches of a parquet shard, for stages
  that want columns, not objects (tokenization).
- `ShardWriter(path, schema)` -> context manager; `write(doc)` / `write_table(table)`;
  rows go to ``<path>.tmp-<pid>`` and are renamed to `path` only on a clean exit
  (`common.files.AtomicOutput` is its context-manager base).
- `read_marker(output_dir, name)`, `mark_done(output_dir, name, record)`,
  `unmark(output_dir, name)`: per-shard completion markers in ``output_dir/.done/``.
  A marker is written after all of the shard's outputs are renamed into place, so a
  shard without a marker is simply redone (overwriting its outputs atomically). It
  records what the shard was made from (`executor.made_from`): `file_identity` of its
  input, the stage's options and `code_version`.
Every path here may also be a URL (`remote.location`): inputs are streamed, outputs and
markers written to the object store, which publishes an object only when it is complete.
Creating an ``--output`` directory (`output_directory`) and atomic JSON writes (`write_json`)
are in `common.files`.
"""
from __future__ import annotations

import ast
import functools
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from data_pipeline.document import DOCUMENT_SCHEMA, Document, documents_to_table
from common.errors import UserError
from common.files import AtomicOutput
from data_pipeline.remote import (ManifestSelection, identity, is_manifest, is_url, location, open_input,
                                  open_upload, read_manifest, write_json_at)
from data_pipeline.stats import Stats

PARQUET_SUFFIXES = (".parquet",)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
DOCUMENT_SUFFIXES = PARQUET_SUFFIXES + JSONL_SUFFIXES
# Every suffix any stage understands; used to strip the data suffix off shard names.
KNOWN_SUFFIXES = (".warc.wet.gz", ".wet.gz", ".warc.gz", ".warc", ".wet") + DOCUMENT_SUFFIXES
SKIPPED_DIRS = ("removed",)
DONE_DIR = ".done"
COMPRESSION = "zstd"


def discover_shards(path: str | os.PathLike, suffixes: Iterable[str] = DOCUMENT_SUFFIXES,
                    manifest: ManifestSelection = ManifestSelection()) -> list[Path]:
    """Sorted input files under `path` (a file or a directory) whose names end in `suffixes`,
    or the files a path manifest lists (chosen by `manifest`), in its order."""
    suffixes = tuple(suffixes)
    if is_manifest(path):
        return read_manifest(path, manifest)
    if is_url(path):
        return _discover_remote(location(path), suffixes)
    root = Path(path)
    if not root.exists():
        raise UserError(f"input path does not exist: {root}")
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d) and d not in SKIPPED_DIRS)
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(suffixes) and not _ignored(f))
    if not found:
        raise UserError(f"no input shards ({', '.join(suffixes)}) found under {root}")
    return sorted(found)


def _discover_remote(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """A remote file, or the matching files under a prefix (HTTP has no listing: a file)."""
    if root.protocol in ("http", "https"):
        return [root]
    try:
        if root.fs.isfile(root.path):
            return [root]
        found = [location(f"{root.protocol}://{name}") for name in root.fs.find(root.path)]
    except FileNotFoundError:
        found = []
    found = [f for f in found if f.name.endswith(suffixes)
             and not any(_ignored(part) or part in SKIPPED_DIRS for part in f.relative_to(root).parts)]
    if not found:
        raise UserError(f"no input shards ({', '.join(suffixes)}) found under {root}")
    return sorted(found, key=str)


def _ignored(name: str) -> bool:
    return name.startswith((".", "_"))


def shard_name(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Stable name for an input shard: relative path without data suffix, '/' -> '__'."""
    path, prefix = str(path), str(root).rstrip("/") + "/"
    rel = path[len(prefix):] if root is not None and path.startswith(prefix) else path.rsplit("/", 1)[-1]
    for suffix in KNOWN_SUFFIXES:
        if rel.endswith(suffix):
            rel = rel[: -len(suffix)]
            break
    return rel.replace("/", "__")


# ---------------------------------------------------------------- reading


def read_documents(path: str | os.PathLike, stats: Stats | None = None) -> Iterator[Document]:
    """Documents of a parquet or JSONL(.gz) shard; damage is counted in `stats`, not raised."""
    path = location(path)
    stats = stats if stats is not None else Stats()
    name = path.name
    if name.endswith(PARQUET_SUFFIXES):
        yield from _read_parquet(path, stats)
    elif name.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(path, stats)
    else:
        raise UserError(f"not a document shard (expected {', '.join(DOCUMENT_SUFFIXES)}): {path}")


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """Columns of a parquet shard (the core schema for JSONL), so a stage can keep them."""
    path = location(path)
    if not path.name.endswith(PARQUET_SUFFIXES):
        return DOCUMENT_SCHEMA
    try:
        with open_input(path) as raw:
            return pq.read_schema(raw)
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"cannot read parquet shard {path}: {err}") from None


def read_batches(path: str | os.PathLike, columns: list[str] | None = None,
                 batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
    """RecordBatches of a parquet shard (only `columns` when given)."""
    with open_input(path) as raw:
        try:
            parquet = pq.ParquetFile(raw)
        except (OSError, pa.ArrowInvalid) as err:
            raise UserError(f"cannot read parquet shard {path}: {err}") from None
        yield from parquet.iter_batches(batch_size=batch_size, columns=columns)


def _read_parquet(path: Path, stats: Stats) -> Iterator[Document]:
    columns = read_schema(path).names
    missing = [c for c in ("id", "text") if c not in columns]
    if missing:  # every row would be skipped: this is not a document shard, not damage
        raise UserError(f"{path}: no {' or '.join(map(repr, missing))} column (columns: {', '.join(columns)})")
    for batch in read_batches(path):
        for row in batch.to_pylist():
            if row.get("text") is None or row.get("id") is None:
                stats.add("skipped", "missing_text_or_id")
                continue
            yield Document.from_row(row)


@contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOBase]:
    with open_input(path) as raw, (gzip.open(raw) if path.name.endswith(".gz") else raw) as binary:
        yield io.TextIOWrapper(binary, encoding="utf-8", errors="replace")


def _read_jsonl(path: Path, stats: Stats) -> Iterator[Document]:
    default_id = shard_name(path)
    try:
        with _open_text(path) as lines:
            for line_no, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    stats.add("skipped", "bad_json_line")
                    continue
                doc = document_from_json(record, f"{default_id}/{line_no}") if isinstance(record, dict) else None
                if doc is None:
                    stats.add("skipped", "no_text")
                    continue
                yield doc
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        stats.add("skipped", "truncated_or_corrupt_gzip")
        stats.add("damaged_files", path.name, n=1)
        stats.note(f"{path.name}: {type(err).__name__}: {err}")


def _first(record: dict, meta: dict, *keys: str) -> Any:
    for key in keys:
        for source in (record, meta):
            value = source.get(key)
            if value not in (None, ""):
                return value
    return None


def document_from_json(record: dict, default_id: str) -> Document | None:
    """A Document from a JSON object in our schema, dolma's or CCNet's; None without text."""
    meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    text = _first(record, meta, "text", "raw_content", "content")
    if not isinstance(text, str):
        return None
    score = _first(record, meta, "language_score")
    return Document(
        id=str(_first(record, meta, "id", "digest") or default_id),
        text=text,
        url=str(_first(record, meta, "url") or ""),
        crawl_date=str(_first(record, meta, "crawl_date", "date_download", "created") or ""),
        source=str(_first(record, meta, "source") or ""),
        language=_first(record, meta, "language"),
        language_score=float(score) if score is not None else None,
    )


# ---------------------------------------------------------------- writing


class ShardWriter(AtomicOutput):
    """Writes documents to one parquet file (zstd) atomically: tmp file, then rename
    (a remote `path`: an upload that is committed, or discarded, at the end).

    On an exception inside the `with` block the tmp file is deleted and `path` is left
    as it was, so a killed or failed shard never leaves a half-written output.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema = DOCUMENT_SCHEMA,
                 rows_per_group: int = 2048, bytes_per_group: int = 64 << 20):
        self.path = location(path)
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.bytes_per_group = bytes_per_group  # bounds memory with gigantic documents
        self.rows = 0
        self._pending: list[Document] = []
        self._pending_chars = 0
        if is_url(self.path):
            self._upload = open_upload(self.path)
            self._writer = pq.ParquetWriter(self._upload, schema, compression=COMPRESSION)
            return
        self._upload = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(self.path.name + ".tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run
        self._tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._writer = pq.ParquetWriter(self._tmp, schema, compression=COMPRESSION)

    def write(self, doc: Document) -> None:
        self._pending.append(doc)
        self._pending_chars += len(doc.text)
        if len(self._pending) >= self.rows_per_group or self._pending_chars >= self.bytes_per_group:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        self._flush()
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows += table.num_rows

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(documents_to_table(self._pending, self.schema))
            self.rows += len(self._pending)
            self._pending = []
            self._pending_chars = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        if self._upload is None:
            os.replace(self._tmp, self.path)
        else:
            self._upload.close()
            self._upload.commit()

    def abort(self) -> None:
        self._writer.close()
        if self._upload is None:
            self._tmp.unlink(missing_ok=True)
        else:
            self._upload.close()
            self._upload.discard()


# ---------------------------------------------------------------- completion markers


def _marker(output_dir: str | os.PathLike, name: str) -> Path:
    return location(output_dir) / DONE_DIR / f"{name}.json"


def read_marker(output_dir: str | os.PathLike, name: str) -> dict | None:
    """Shard `name`'s completion record, or None if it is not done."""
    try:
        return json.loads(_marker(output_dir, name).read_text())
    except FileNotFoundError:
        return None


def mark_done(output_dir: str | os.PathLike, name: str, record: dict) -> None:
    """Record that shard `name` is complete; `record` holds at least its ``stats``."""
    write_json_at(_marker(output_dir, name), record)


def unmark(output_dir: str | os.PathLike, name: str) -> None:
    """Shard `name` is being redone: until it is marked again it counts as unfinished."""
    _marker(output_dir, name).unlink(missing_ok=True)


def file_identity(path: str | os.PathLike) -> dict | None:
    """Size and modification time of an input (None for a virtual one, a hash partition):
    enough to notice a replaced or grown file without reading it. A remote input: its URL,
    size and ETag (`remote.identity`)."""
    if is_url(path):
        return identity(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


SOURCE_ROOT = Path(__file__).resolve().parents[1]  # where the data_pipeline and common packages are
SOURCE_PACKAGES = ("data_pipeline", "common")


@functools.cache
def code_version(module: str) -> str:
    """Digest of the code a stage runs: `module` (the stage's, e.g. ``__name__``) and every module of
    ours it imports, directly or not (`source_closure`). Every marker records it, so that outputs of
    other code are not silently mixed with this code's, while a change to code the stage does not
    run (the report, another stage) leaves its finished shards finished."""
    digest = xxhash.xxh64()
    for path in source_closure(module):
        digest.update(path.relative_to(SOURCE_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def source_closure(module: str, root: Path = SOURCE_ROOT, packages: tuple[str, ...] = SOURCE_PACKAGES) -> list[Path]:
    """The source files of `module` and of every module of `packages` it imports (at module or
    function level, read from the sources, never executed), their packages' ``__init__.py`` included."""

    def files_of(name: str) -> list[Path]:
        """`name`'s file (a module or a package) and its parent packages' ``__init__.py``; [] if not ours."""
        parts = name.split(".")
        if parts[0] not in packages:
            return []
        found = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts))]
        for candidate in (root.joinpath(*parts[:-1], parts[-1] + ".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return [f for f in found if f.is_file()] + [candidate]
        return []

    seen: set[Path] = set()
    pending = files_of(module)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                pending += [f for alias in node.names for f in files_of(alias.name)]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from a.b import c`: c may be a module of package a.b, or a name defined in it
                pending += files_of(node.module) + [f for alias in node.names
                                                    for f in files_of(f"{node.module}.{alias.name}")]
    return sorted(seen)
