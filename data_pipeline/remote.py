"""Inputs and outputs given as URLs (``https://``, ``s3://``, any fsspec protocol), streamed.

A location is a `pathlib.Path` for a local path and a `upath.UPath` for a URL (a plain
`Path` would fold the ``//`` of ``s3://``); both have the pathlib API the stages use.
Reads go through fsspec with a bounded read-ahead block (`READ_BLOCK_BYTES`), never a full
local copy; writes stream to the object store, which publishes an object only when it is
closed. Credentials, endpoints and other storage options come from fsspec's own config:
``FSSPEC_S3_ENDPOINT_URL=http://host:9000``, ``FSSPEC_S3='{"anon": true}'`` or
``~/.config/fsspec/*.json`` (spawned workers and Slurm jobs inherit the environment).

Transient failures (connection reset or refused, timeouts, HTTP 5xx/429, a transfer that
ends early) are retried by `retrying` with exponential backoff; s3fs and botocore retry S3's
``SlowDown`` and 5xx themselves first. Every HTTP read has a socket timeout
(`HTTP_SOCKET_TIMEOUT_S`); s3fs's botocore client has its own (60 s connect and read).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import xxhash

from common.errors import UserError
from common.files import write_json

URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
MANIFEST_SUFFIXES = (".paths.gz", ".paths")
DEFAULT_BASE_URL = "https://data.commoncrawl.org/"
READ_BLOCK_BYTES = 8 << 20  # the read-ahead window: memory per open remote input
HTTP_PROTOCOLS = ("http", "https")
HTTP_SOCKET_TIMEOUT_S = 60.0
ATTEMPTS = 4
BACKOFF_S = 0.5  # doubled after each failed attempt
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt-data"
LOCK_ROOT = CACHE_ROOT / "locks"
WORK_ROOT = CACHE_ROOT / "work"

T = TypeVar("T")


def is_url(location: object) -> bool:
    """Whether `location` names a remote object (a URL other than ``file://``)."""
    text = str(location)
    return bool(URL_PATTERN.match(text)) and not text.startswith("file://")


def location(path: str | os.PathLike) -> Path:
    """A `Path` for a local path (``file://`` URLs too), a `UPath` (same API, through fsspec) for a URL."""
    if not is_url(path):
        return Path(str(path).removeprefix("file://") if isinstance(path, str) else path)
    from upath import UPath

    if isinstance(path, UPath):
        return path
    protocol = str(path).split("://", 1)[0]
    return UPath(str(path), **_default_options(protocol))


def _default_options(protocol: str) -> dict:
    """Read timeouts for HTTP unless the user's fsspec config sets its own client options."""
    import fsspec.config

    if protocol not in HTTP_PROTOCOLS or "client_kwargs" in fsspec.config.conf.get(protocol, {}):
        return {}
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_SOCKET_TIMEOUT_S, sock_read=HTTP_SOCKET_TIMEOUT_S)
    return {"client_kwargs": {"timeout": timeout}}


def open_input(path: str | os.PathLike) -> BinaryIO:
    """A seekable binary file: the local file, or the remote object read in blocks."""
    path = location(path)
    if not is_url(path):
        return open(path, "rb")
    return path.open("rb", block_size=READ_BLOCK_BYTES, cache_type="readahead")


def open_upload(path: Path):
    """A remote file for writing that becomes visible only on ``commit()`` after ``close()``
    (``discard()`` drops it): an S3 multipart upload completed or aborted."""
    return path.fs.open(path.path, "wb", autocommit=False)


def input_size(raw: BinaryIO) -> int:
    """Size of a file opened by `open_input`."""
    size = getattr(raw, "size", None)
    return size if size is not None else os.fstat(raw.fileno()).st_size


def identity(path: str | os.PathLike) -> dict:
    """What a remote input's completion marker records: URL, size and ETag (Last-Modified
    where a server sends no ETag), so that a replaced object is redone."""
    path = location(path)
    try:
        info = path.fs.info(path.path)
    except FileNotFoundError as err:
        if transient(err):
            raise
        raise UserError(f"input not found: {path}") from None
    return {"url": str(path), "size": info.get("size"),
            "etag": info.get("ETag") or info.get("etag") or info.get("Last-Modified")}


# ---------------------------------------------------------------- retries


def transient(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is worth retrying: a network failure, a timeout,
    a server error or throttling, a transfer that ended early. fsspec's HTTP `info` re-raises
    such failures as FileNotFoundError and s3fs as OSError, hence the walk along the cause chain."""
    import aiohttp
    import botocore.exceptions as boto

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, aiohttp.ClientResponseError):
            return err.status >= 500 or err.status == 429
        if isinstance(err, boto.ClientError):
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or status == 429 or err.response.get("Error", {}).get("Code") == "SlowDown"
        if isinstance(err, (ConnectionError, TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                            boto.HTTPClientError, boto.ConnectionError, boto.IncompleteReadError)):
            return True
        err = err.__cause__ or err.__context__
    return False


def retrying(attempt: Callable[[], T], what: str) -> T:
    """`attempt()`, again after a backoff while it fails transiently (`ATTEMPTS` in all);
    the last failure is raised. `attempt` must start from scratch each time."""
    for number in range(1, ATTEMPTS + 1):
        try:
            return attempt()
        except Exception as err:
            if number == ATTEMPTS or not transient(err):
                raise
            wait = BACKOFF_S * 2 ** (number - 1)
            print(f"gpt-data: {what}: {type(err).__name__}: {err}; retry {number}/{ATTEMPTS - 1} in {wait:g} s",
                  file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- outputs


def write_json_at(path: str | os.PathLike, obj: object) -> None:
    """`common.files.write_json` for a local path; one PUT (atomic on object stores) for a URL."""
    path = location(path)
    if not is_url(path):
        write_json(path, obj)
        return
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_bytes_at(path: str | os.PathLike, data: bytes) -> None:
    """`data` as a whole file: a tmp file renamed into place locally, one PUT for a URL."""
    path = location(path)
    if is_url(path):
        path.write_bytes(data)
        return
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory (a URL: every object under the prefix), if it exists."""
    path = location(path)
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.fs.rm(path.path, recursive=True)
    except FileNotFoundError:
        pass


def lock_directory(output_dir: str | os.PathLike) -> Path:
    """Where a run keeps its lock files: the output directory itself, or for a remote output
    (object stores have no locks) a local directory named after its URL, so that runs on one
    machine still refuse to write the same shards."""
    if not is_url(output_dir):
        from common.files import output_directory

        return output_directory(output_dir)
    return _local_directory(LOCK_ROOT, output_dir)


def work_root(output_dir: str | os.PathLike) -> Path:
    """Where a command keeps its intermediate files (dedup's and decontaminate's ``.dedup/``):
    in the output directory, or for a remote output in a local directory named after its URL
    (under ``$XDG_CACHE_HOME``, which must be a shared filesystem when ranks on several
    machines write one remote output): those files are rewritten in place, which object
    stores cannot do."""
    return _local_directory(WORK_ROOT, output_dir) if is_url(output_dir) else Path(output_dir)


def _local_directory(root: Path, url: str | os.PathLike) -> Path:
    directory = root / xxhash.xxh64(str(url).rstrip("/").encode()).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# ---------------------------------------------------------------- path manifests


class ManifestInputs(list):
    """Inputs listed by a path manifest, in its order: the order that assigns shards to ranks."""


@dataclass(frozen=True)
class ManifestSelection:
    """Which lines of a Common Crawl path manifest (``warc.paths.gz``) to read, and from where."""

    base_url: str = DEFAULT_BASE_URL
    limit: int | None = None  # the first N (after sampling)
    sample: float | None = None  # keep a line iff the hash of its path falls below this fraction


def is_manifest(path: str | os.PathLike) -> bool:
    return str(path).endswith(MANIFEST_SUFFIXES)


def read_manifest(path: str | os.PathLike, selection: ManifestSelection) -> ManifestInputs:
    """The inputs a manifest lists (relative paths joined to `selection.base_url`)."""
    import gzip

    try:
        with open_input(path) as raw:
            data = retrying(raw.read, f"reading {path}")
        text = (gzip.decompress(data) if str(path).endswith(".gz") else data).decode()
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read manifest {path}: {err}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if selection.sample is not None:
        lines = [line for line in lines if xxhash.xxh64_intdigest(line.encode()) < selection.sample * 2**64]
    if selection.limit is not None:
        lines = lines[:selection.limit]
    base = selection.base_url.rstrip("/")
    return ManifestInputs(location(line if is_url(line) else f"{base}/{line.lstrip('/')}") for line in lines)


def add_manifest_args(parser) -> None:
    """--base-url, --limit, --sample: how a path manifest given as --input is read."""
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help="prefix of the paths in a --input manifest (*.paths.gz) (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N files of a manifest")
    parser.add_argument("--sample", type=float, default=None,
                        help="read a deterministic FRACTION (0-1] of a manifest's files, chosen by path hash")


def selection_from_args(args) -> ManifestSelection:
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.sample is not None and not 0 < args.sample <= 1:
        raise UserError(f"--sample must be a fraction in (0, 1], got {args.sample}")
    return ManifestSelection(args.base_url, args.limit, args.sample)
