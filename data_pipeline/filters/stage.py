"""`gpt-data filter`: keep the documents that pass every filter; removed ones go to ``removed/``.

Kept documents keep every column of the input (``language``/``language_score`` are filled
in by language ID). Removed documents carry one more column, ``removed_by``, naming the
first rule they broke; ``stats.json`` counts ``removed: {rule: n}``, the time spent per
filter in CPU seconds (``filter_cpu_seconds``) and the lines C4 dropped (``c4_lines_removed``).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa
import yaml

from data_pipeline.document import DOCUMENT_SCHEMA, Document, extend_schema
from common.errors import UserError
from data_pipeline.executor import ShardTask, add_executor_args, run_shards
from data_pipeline.extract import INPUT_SUFFIXES, read_any
from data_pipeline.filters import DEFAULT_CONFIG, Filter, build_filters
from data_pipeline.filters.base import BATCH_CHARS, BATCH_DOCS
from data_pipeline.filters.c4 import C4Filter
from data_pipeline.shards import ShardWriter, code_version, discover_shards, file_identity, read_schema
from data_pipeline.stats import Stats, count_output

_built: dict[str, list[Filter]] = {}  # per process: load models once, not once per shard


def _filters_for(config: dict) -> list[Filter]:
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _built:
        _built[key] = build_filters(config)
    return _built[key]


def filter_shard(task: ShardTask, stats: Stats, config: dict) -> None:
    filters = _filters_for(config)
    schema = read_schema(task.path) if task.path.name.endswith(".parquet") else DOCUMENT_SCHEMA
    removed_schema = extend_schema(schema, removed_by=pa.string())
    seconds = dict.fromkeys((f.name for f in filters), 0.0)
    for f in filters:
        if isinstance(f, C4Filter):
            f.line_reasons.clear()
    with ShardWriter(task.output()) as kept, ShardWriter(task.output(subdir="removed"), removed_schema) as removed:
        for batch in batches(read_any(task.path, stats), BATCH_DOCS, BATCH_CHARS):
            stats.add("documents_in", n=len(batch))
            rules: list[str | None] = [None] * len(batch)
            alive = range(len(batch))
            for f in filters:
                start = time.process_time()
                for i in alive:
                    rules[i] = f(batch[i])
                seconds[f.name] += time.process_time() - start
                alive = [i for i in alive if rules[i] is None]
            for doc, rule in zip(batch, rules):
                if rule is None:
                    kept.write(doc)
                    count_output(stats, doc.text)
                else:
                    doc.metadata["removed_by"] = rule
                    removed.write(doc)
                    stats.add("removed", rule)
    for name, spent in seconds.items():
        stats.add("filter_cpu_seconds", name, n=round(spent, 4))
    for f in filters:
        for reason, n in getattr(f, "line_reasons", {}).items():
            stats.add("c4_lines_removed", reason, n=n)


def batches(docs: Iterable[Document], max_docs: int, max_chars: int) -> Iterator[list[Document]]:
    """`docs` in lists of up to `max_docs` documents or about `max_chars` characters.

    Each filter runs over a whole batch before the next one starts: its model and tables
    stay in the CPU caches instead of being evicted by extraction and the other filters
    after every document (about a quarter less CPU per real page, docs/benchmarks.md).
    Output order and every decision are those of one document at a time."""
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def check(config: dict) -> None:
    build_filters(config or DEFAULT_CONFIG)


def run(input: str | Path, output: str | Path, config: dict | None = None, *,
        workers: int = 1, executor: str = "auto", overwrite: bool = False) -> Stats:
    """Filter every shard under `input` into `output` (the recipe step)."""
    config = config or DEFAULT_CONFIG
    check(config)  # fail on a bad key before any shard starts
    return run_shards(partial(filter_shard, config=config), discover_shards(input, INPUT_SUFFIXES), output,
                      options=recorded_options(config), code=code_version(__name__), overwrite=overwrite,
                      input_root=input, workers=workers, executor=executor, stage="filter")


def recorded_options(config: dict) -> dict:
    """What decides the filter's output: the filters in their order with their options, and
    the files they name (``domains_file``, ``model_path``) by size and mtime."""
    files = {path: file_identity(path) for options in config.values() for key, path in (options or {}).items()
             if key.endswith(("_file", "_path")) and path}
    return {"order": list(config), "filters": config, "files": files}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"filter config not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"filter config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return config.get("filter", config) if isinstance(config, dict) else config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter", help="language ID, Gopher, C4 and URL filters",
        description="Run the filters of a YAML config (default: language en >= 0.65, Gopher repetition, "
                    "Gopher quality, C4) over documents (parquet, JSONL, or WARC/WET extracted on the fly). "
                    "Kept documents go to OUTPUT, removed ones to OUTPUT/removed with the rule that removed them.")
    add_executor_args(parser)
    parser.add_argument("--config", help="YAML mapping {filter: {option: value}} in run order; see "
                                         "configs/data/filters.yaml for every option and its default")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    run(args.input, args.output, config, workers=args.workers, executor=args.executor, overwrite=args.overwrite)
    return 0
