"""`gpt-data stats`: what a directory of shards holds (documents, bytes, tokens, removals, languages, quality).

The shards may be at a URL (``s3://bucket/stage``, read through fsspec); the summary is written locally."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import output_directory, write_json
from data_pipeline.remote import is_url, location
from data_pipeline.shards import discover_shards, read_batches, read_schema

BYTES_PER_TOKEN = 4.0  # GPT-2 BPE averages about 4 bytes of English per token


def summarize(path: str | Path, bins: int = 10) -> dict[str, Any]:
    """Documents, bytes, estimated tokens, language and quality histograms of the parquet
    shards under `path`; removals per rule from the ``removed/`` shards next to them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    root = location(path)
    summary: dict[str, Any] = {"documents": 0, "bytes": 0, "language": {}, "quality_histogram": {}, "removed": {}}
    quality_counts = np.zeros(bins, dtype=np.int64)
    shards = discover_shards(root, (".parquet",))
    for shard in shards:
        columns = [c for c in ("text", "language", "quality") if c in read_schema(shard).names]
        for batch in read_batches(shard, columns):
            summary["documents"] += batch.num_rows
            summary["bytes"] += int(pc.sum(pc.binary_length(batch.column("text").cast(pa.binary()))).as_py() or 0)
            if "language" in columns:
                for item in pc.value_counts(batch.column("language").fill_null("unknown")).to_pylist():
                    summary["language"][item["values"]] = summary["language"].get(item["values"], 0) + item["counts"]
            if "quality" in columns:
                scores = batch.column("quality").drop_null().to_numpy(zero_copy_only=False)
                quality_counts += np.histogram(scores, bins=bins, range=(0.0, 1.0))[0]
    if quality_counts.any():
        summary["quality_histogram"] = {f"{i / bins:.1f}-{(i + 1) / bins:.1f}": int(c) for i, c in enumerate(quality_counts)}
    removed_dir = root / "removed" if root.is_dir() else None
    if removed_dir is not None and removed_dir.is_dir():
        summary["removed"] = count_values(discover_shards(removed_dir, (".parquet",)), "removed_by")
    summary["shards"] = len(shards)
    summary["estimated_tokens"] = int(summary["bytes"] / BYTES_PER_TOKEN)
    return summary


def count_values(shards: list[Path], column: str) -> dict[str, int]:
    """Rows per value of `column` (null: ``unknown``) in the parquet `shards` that have it; reads only that column."""
    import pyarrow.compute as pc

    counts: dict[str, int] = {}
    for shard in shards:
        if column not in read_schema(shard).names:
            continue
        for batch in read_batches(shard, [column]):
            for item in pc.value_counts(batch.column(column).fill_null("unknown")).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def render_table(summary: dict[str, Any]) -> str:
    """The summary as readable text tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=100, file=io.StringIO())
    totals = Table(title="Totals", show_header=False)
    for key in ("shards", "documents", "bytes", "estimated_tokens"):
        totals.add_row(key, f"{summary[key]:,}")
    console.print(totals)
    for key, title in (("removed", "Removed per rule"), ("language", "Languages"),
                       ("quality_histogram", "Quality score histogram")):
        counts = summary.get(key) or {}
        if not counts:
            continue
        table = Table(title=title)
        table.add_column(key if key != "quality_histogram" else "score")
        table.add_column("documents", justify="right")
        table.add_column("share", justify="right")
        total = sum(counts.values())
        ordered = sorted(counts.items()) if key == "quality_histogram" else sorted(counts.items(), key=lambda kv: -kv[1])
        for name, n in ordered[:40]:
            table.add_row(str(name), f"{n:,}", f"{n / total:.1%}")
        console.print(table)
    return console.export_text()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="documents, bytes, tokens, removals, languages, quality of a shard directory",
        description="Summarise the parquet shards under --input: documents, bytes, estimated tokens "
                    f"(bytes / {BYTES_PER_TOKEN:g}), removals per rule (from removed/), language histogram, "
                    "quality-score histogram. Prints tables; writes summary.json and summary.txt.")
    parser.add_argument("--input", required=True, help="directory (or file) of parquet shards, or a URL (s3://...)")
    parser.add_argument("--output", help="local directory for summary.json/summary.txt (default: --input if a "
                                          "local directory)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    if is_url(args.output or ""):  # before reading the shards, which may be remote and many
        raise UserError(f"--output {args.output}: gpt-data stats writes a local directory")
    summary = summarize(args.input)
    output = Path(args.output) if args.output else Path(args.input)
    if args.output is None and (is_url(args.input) or not output.is_dir()):
        raise UserError("--output is required when --input is a file or a URL")
    output_directory(output)
    table = render_table(summary)
    print(table)
    write_json(output / "summary.json", summary)
    (output / "summary.txt").write_text(table)
    return 0
