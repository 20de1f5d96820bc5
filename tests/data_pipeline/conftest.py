"""Shared fixtures for the data pipeline tests: real sample paths, a CLI runner, WARC builders."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
REPO = DATA.parents[1]


@pytest.fixture(scope="session")
def warc_sample() -> Path:
    """Real crawl WARC: 22 HTTP 200 HTML responses (dolma test fixture, Apache-2.0)."""
    return DATA / "cc-sample-0000.warc.gz"


@pytest.fixture(scope="session")
def ccnet_sample() -> Path:
    """10 real Common Crawl documents after CCNet, in dolma's JSONL format."""
    return DATA / "ccnet-head-0091.jsonl.gz"


@pytest.fixture(scope="session")
def wiki_sample() -> Path:
    """16 English Wikipedia articles (see tests/data/README.md)."""
    return DATA / "wiki-en-sample.jsonl.gz"


@pytest.fixture
def cli(capsys):
    """Run `gpt-data ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


class Helpers:
    """Helpers the tests reach through the `h` fixture (conftest modules are not importable by name)."""

    @staticmethod
    def gpt_data_process(*argv: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
        """`gpt-data ARGS...` as a separate process (for kill / multi-rank tests)."""
        return subprocess.Popen([sys.executable, "-m", "data_pipeline.cli", *map(str, argv)],
                                env={**os.environ, **(env or {})}, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    @staticmethod
    def read_rows(path: Path) -> list[dict]:
        """All rows of the parquet shards at `path` (a file or the top level of a directory), in name order."""
        files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
        return [row for f in files for row in pq.read_table(f).to_pylist()]

    @staticmethod
    def warc_record(warc_type: str, uri: str, block: bytes, content_type: str, date: str = "2024-01-02T03:04:05Z") -> bytes:
        """One WARC/1.0 record, built by hand (independent of fastwarc)."""
        headers = (f"WARC/1.0\r\nWARC-Type: {warc_type}\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, warc_type + uri)}>\r\n"
                   f"WARC-Date: {date}\r\nWARC-Target-URI: {uri}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(block)}\r\n\r\n")
        return headers.encode() + block + b"\r\n\r\n"

    @staticmethod
    def http_response(body: bytes, content_type: str = "text/html", status: str = "200 OK") -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    @staticmethod
    def write_warc(path: Path, records: list[bytes]) -> Path:
        """Gzip each record as its own member, as Common Crawl does."""
        path.write_bytes(b"".join(gzip.compress(r) for r in records))
        return path


@pytest.fixture(scope="session")
def h() -> type[Helpers]:
    return Helpers
