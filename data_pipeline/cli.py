"""`gpt-data`: one command, one subcommand per pipeline stage.

Each stage module exposes `register(subparsers)`, which adds its subcommand and sets
`func` on the parser; `func(args)` runs it and returns an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from common.errors import UserError
from data_pipeline.executor import use_returning_memory_pool

# Modules that register subcommands, in the order `--help` lists them.
STAGE_MODULES: list[str] = [
    "data_pipeline.extract.stage",
    "data_pipeline.filters.stage",
    "data_pipeline.classifier",
    "data_pipeline.dedup.cli",
    "data_pipeline.decontaminate",
    "data_pipeline.summary",
    "data_pipeline.report",
    "data_pipeline.recipe",
    "data_pipeline.tokenizer_train",
    "data_pipeline.tokenize",
    "data_pipeline.mixture",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-data",
        description="Common Crawl to training data: extract, filter, dedup, decontaminate, "
        "tokenize, mix. Every stage reads --input (file or directory of shards) and writes --output.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGE_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_returning_memory_pool()  # also for the stages that run tasks outside run_shards (dedup partitions, MPI)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"gpt-data {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt-data {args.command}: interrupted; completed shards are kept, re-run to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
