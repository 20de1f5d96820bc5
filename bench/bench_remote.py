"""Remote streaming: reading and extracting a WARC over HTTP (fsspec, as `gpt-data` reads a URL)
against the same file on local disk, side by side.

The bundled real WARC (tests/data/cc-sample-0000.warc.gz, 22 HTML pages, one gzip member
per record) is repeated into a larger valid WARC. An aiohttp static-file server (Range
requests, ETags) serves it from another process on 127.0.0.1, so that server and reader do
not share a GIL. Two measurements, best of --repeats, each row local then HTTP:

- raw: read the whole file (--raw-mb) in 8 MB blocks: `open()` vs `remote.open_input(url)`
  (fsspec's HTTPFile, the read-ahead block `gpt-data` uses); the local file is in the page cache.
- extract: `read_crawl_file` (fastwarc + resiliparse, what `gpt-data extract` runs per shard)
  over --extract-copies copies of the sample: documents per second.

    python bench/bench_remote.py [--raw-mb 256] [--extract-copies 100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline import remote  # noqa: E402
from data_pipeline.extract.warc import read_crawl_file  # noqa: E402
from data_pipeline.stats import Stats  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "cc-sample-0000.warc.gz"


def serve(directory: str) -> None:
    """Serve `directory` on a free port of 127.0.0.1; print the port, run until killed."""
    import asyncio

    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        app.router.add_static("/", directory)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def repeated_warc(path: Path, copies: int) -> Path:
    """`copies` concatenations of the sample: still a valid WARC (gzip members back to back)."""
    data = SAMPLE.read_bytes()
    with open(path, "wb") as out:
        for _ in range(copies):
            out.write(data)
    return path


def best_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(opener) -> None:
    with opener() as f:
        while f.read(remote.READ_BLOCK_BYTES):
            pass


def extract_all(path) -> int:
    return sum(1 for _ in read_crawl_file(path, Stats()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-mb", type=int, default=256)
    parser.add_argument("--extract-copies", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    with tempfile.TemporaryDirectory() as tmp:
        raw = repeated_warc(Path(tmp) / "raw.warc.gz", max(1, args.raw_mb * 2**20 // SAMPLE.stat().st_size))
        warc = repeated_warc(Path(tmp) / "extract.warc.gz", args.extract_copies)
        server = subprocess.Popen([sys.executable, __file__, "--serve", tmp], stdout=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
            rows = []
            size_mb = raw.stat().st_size / 1e6
            for where, opener in (("local", lambda: open(raw, "rb")),
                                  ("http", lambda: remote.open_input(f"{base}/{raw.name}"))):
                seconds = best_seconds(lambda: read_all(opener), args.repeats)
                rows.append(("raw read", where, f"{size_mb:,.0f} MB", seconds, f"{size_mb / seconds:,.0f} MB/s"))
            docs = extract_all(warc)
            for where, path in (("local", warc), ("http", f"{base}/{warc.name}")):
                seconds = best_seconds(lambda: extract_all(path), args.repeats)
                rows.append(("extract", where, f"{docs:,} docs", seconds, f"{docs / seconds:,.0f} docs/s"))
        finally:
            server.kill()
            server.wait()
    print(f"{'what':<9} {'from':<6} {'size':>10} {'seconds':>8} {'throughput':>13} {'http/local':>10}")
    for i, (what, where, size, seconds, rate) in enumerate(rows):
        ratio = f"{rows[i - 1][3] / seconds:.2f}" if where == "http" else ""
        print(f"{what:<9} {where:<6} {size:>10} {seconds:>8.3f} {rate:>13} {ratio:>10}")


if __name__ == "__main__":
    main()
