"""`gpt-data extract`: crawl files (WARC/WET) or JSONL -> parquet document shards."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from functools import partial
from pathlib import Path

from common.options import add_arguments, from_arguments, options_from_config
from data_pipeline.executor import ShardTask, add_executor_args, run_shards
from data_pipeline.extract import INPUT_SUFFIXES, ExtractOptions, read_any
from data_pipeline.remote import ManifestSelection, add_manifest_args, selection_from_args
from data_pipeline.shards import ShardWriter, code_version, discover_shards
from data_pipeline.stats import Stats, count_output


def extract_shard(task: ShardTask, stats: Stats, options: ExtractOptions) -> None:
    with ShardWriter(task.output()) as out:
        for doc in read_any(task.path, stats, options):
            stats.add("documents_in")
            out.write(doc)
            count_output(stats, doc.text)


def check(config: dict) -> None:
    options_from_config(ExtractOptions, config, "extract")


def run(input: str | Path, output: str | Path, config: dict | None = None, *,
        workers: int = 1, executor: str = "auto", overwrite: bool = False,
        manifest: ManifestSelection = ManifestSelection()) -> Stats:
    """Extract every input shard under `input` (or listed by a path manifest) into `output` (the recipe step)."""
    options = options_from_config(ExtractOptions, config or {}, "extract")
    return run_shards(partial(extract_shard, options=options), discover_shards(input, INPUT_SUFFIXES, manifest),
                      output, options=asdict(options), code=code_version(__name__), overwrite=overwrite,
                      input_root=input, workers=workers, executor=executor, stage="extract")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract", help="WARC/WET/JSONL -> parquet documents",
        description="Stream HTTP 200 HTML responses out of WARC files (fastwarc), decode their charset and "
                    "extract the main text (resiliparse); WET conversions and JSONL/parquet documents pass "
                    "through. Writes one zstd parquet shard per input; re-running resumes.")
    add_executor_args(parser)
    add_manifest_args(parser)
    add_arguments(parser, ExtractOptions)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    config = asdict(from_arguments(ExtractOptions, args))
    run(args.input, args.output, config, workers=args.workers, executor=args.executor, overwrite=args.overwrite,
        manifest=selection_from_args(args))
    return 0
