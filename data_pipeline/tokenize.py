"""`gpt-data tokenize`: document shards -> one Megatron token shard (``PREFIX.bin/.idx``).

Each input shard (parquet with a ``text`` column, or JSONL(.gz) in our, dolma's or
CCNet's field names) is tokenized by one worker into ``PREFIX.parts/<shard>.bin/.idx``,
every document followed by the tokenizer's EOD id, then marked done (resume point).
When every shard is done the parts are concatenated in sorted input order into
``PREFIX.bin/.idx``, so the output does not depend on ``--workers`` or on which rank
ran which shard. Empty documents are skipped (counted in stats). ``PREFIX.stats.json``
records what the shard was made from (inputs, options, code): a rerun with anything
else is refused, or with ``--overwrite`` redone. PREFIX may be a URL (``s3://...``):
the parts, their markers and the merged shard are then objects there.
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import indexed
from common.errors import UserError
from common.files import output_directory
from common.options import add_arguments, from_arguments
from data_pipeline.executor import (ShardTask, add_executor_args, changes, detect_rank, inputs_digest, make_tasks,
                                    normalised, run_shards)
from data_pipeline.remote import (is_url, location, lock_directory, open_input, remove_tree, write_bytes_at,
                                  write_json_at)
from data_pipeline.shards import (DONE_DIR, PARQUET_SUFFIXES, code_version, discover_shards, read_batches,
                                  read_documents, read_schema)
from data_pipeline.stats import Stats
from data_pipeline.tokenizers import Tokenizer, load_tokenizer

STAGE = "tokenize"
DEFAULT_BATCH = 1024


@dataclass(frozen=True)
class TokenizeOptions:
    """The options of `gpt-data tokenize` and of a recipe's ``tokenize`` step: one definition for both."""

    tokenizer: str = field(default="gpt2", metadata={"help": "gpt2 (bundled GPT-2 BPE), gpt2:FILE.tiktoken, "
                                                             "sentencepiece:FILE.model, byte-bpe:DIR "
                                                             "(default %(default)s)"})
    text_column: str = field(default="text", metadata={"help": "parquet column holding the text (default %(default)s)"})
    quality_column: str = field(default="quality", metadata={
        "help": "parquet column with a quality score per document; when present it is kept as PREFIX.quality.npy "
                "for `gpt-data mixture --quality-split` (default %(default)s)"})
    batch_size: int = field(default=DEFAULT_BATCH, metadata={"help": "documents per encode call (default %(default)s)"})
    keep_parts: bool = field(default=False, metadata={"help": "keep the per-shard .bin/.idx parts after the merge"})

    def __post_init__(self):
        load_tokenizer(self.tokenizer)  # an unknown tokenizer fails with the other option mistakes, up front


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize", help="documents -> Megatron token shard PREFIX.bin/.idx",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: gpt-data tokenize --input dedup/ --output tokens/cc_gpt2_text_document "
               "--tokenizer gpt2 --workers 8")
    add_executor_args(parser, output_help="output prefix: writes PREFIX.bin, PREFIX.idx, PREFIX.stats.json "
                                          "(work dir PREFIX.parts/)")
    add_arguments(parser, TokenizeOptions)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """`gpt-data tokenize`, and the recipe's ``tokenize`` step (its output is the prefix)."""
    options = from_arguments(TokenizeOptions, args)
    summary = tokenize(args.input, args.output, options.tokenizer, workers=args.workers, executor=args.executor,
                       text_column=options.text_column, quality_column=options.quality_column,
                       batch_size=options.batch_size, keep_parts=options.keep_parts, overwrite=args.overwrite)
    if summary is not None:
        print(f"tokenize: wrote {args.output}.bin/.idx: {summary['tokens']:,} tokens "
              f"({summary['dtype']}), {summary['documents']:,} documents", file=sys.stderr)
    return 0


def tokenize(input_path: str | Path, prefix: str | Path, tokenizer: str | dict | Tokenizer = "gpt2", *,
             workers: int = 1, executor: str = "auto", text_column: str = "text", quality_column: str = "quality",
             batch_size: int = DEFAULT_BATCH, keep_parts: bool = False, quiet: bool = False,
             overwrite: bool = False) -> dict | None:
    """Tokenize every shard under `input_path` into ``prefix.bin/.idx``; returns the summary
    (None on a rank that did not do the merge). A prefix made from other inputs, options or
    code is refused, or with `overwrite` replaced."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    tok = load_tokenizer(tokenizer)
    prefix = location(prefix)
    prefix = prefix if is_url(prefix) else prefix.resolve()
    if prefix.is_dir():
        raise UserError(f"--output is a prefix, not a directory: {prefix} (try {prefix}/NAME_text_document)")
    if not is_url(prefix):
        output_directory(prefix.parent)
    parts = location(f"{prefix}.parts")
    inputs = discover_shards(input_path)
    tasks = make_tasks(inputs, parts, input_path)
    names = [t.name for t in tasks]
    options = normalised({"tokenizer": tok.spec(), "text_column": text_column, "quality_column": quality_column})
    code = code_version(__name__)
    expected = {"input": inputs_digest(tasks), "depends": None, "options": options, "code": code}
    merged = _merged_summary(prefix)
    why = None if merged is None else changes(merged, expected)
    if merged is not None and why is None:
        if not quiet:
            print(f"tokenize: {prefix} is already complete for these {len(names)} shard(s)", file=sys.stderr)
        return merged
    if why and not overwrite:
        raise UserError(f"{prefix}.bin/.idx do not match this run: {why}; rerun with --overwrite to replace them, "
                        "or choose another --output")
    _forget_missing_parts(parts, names)
    process = functools.partial(tokenize_shard, tokenizer=tok.spec(), text_column=text_column,
                                quality_column=quality_column, batch_size=batch_size)
    stats = run_shards(process, inputs, parts, options=options, code=code, overwrite=overwrite, input_root=input_path,
                       workers=workers, executor=executor, stage=STAGE, quiet=quiet)
    if stats.get("shards_done") != len(tasks):
        return None  # another rank finishes the remaining shards and merges
    # Other ranks may still be writing the stage stats in the work dir: then only drop the parts.
    cleanup = "none" if keep_parts else ("dir" if detect_rank(executor).world == 1 else "parts")
    return _merge(prefix, parts, tasks, tok, expected, stats, cleanup)


def tokenize_shard(task: ShardTask, stats: Stats, *, tokenizer: dict, text_column: str,
                   quality_column: str, batch_size: int) -> None:
    """Tokenize one input shard into ``PREFIX.parts/<name>.bin/.idx`` (+ ``.quality.npy``
    with each kept document's quality score when the shard has that column)."""
    tok = _load_cached(json.dumps(tokenizer, sort_keys=True))
    part = task.output(suffix="")
    scores: list[float | None] = []
    with indexed.TokenShardWriter(part, tok.dtype) as writer:
        for texts, quality in _text_batches(task.path, text_column, quality_column, batch_size, stats):
            writer.add_documents(tok.encode_batch(texts), tok.eod_id)
            stats.add("characters_in", n=sum(map(len, texts)))
            scores.extend(quality)
        if any(q is not None for q in scores):
            _save_npy(quality_path(part), np.array(scores, dtype=np.float32))  # None -> nan
    stats.add("documents_out", n=writer.documents)
    stats.add("tokens_out", n=writer.tokens)
    stats.add("bytes_out", n=writer.tokens * tok.dtype().itemsize)


def quality_path(prefix: str | Path) -> Path:
    """Per-document quality scores of a token shard, aligned with its documents."""
    return location(f"{prefix}.quality.npy")


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_at(path, buffer.getvalue())


def _load_npy(path: Path) -> np.ndarray:
    with open_input(path) as raw:
        return np.load(raw)


@functools.lru_cache(maxsize=4)
def _load_cached(spec_json: str) -> Tokenizer:
    return load_tokenizer(json.loads(spec_json))


def _text_batches(path: Path, text_column: str, quality_column: str, batch_size: int,
                  stats: Stats) -> Iterator[tuple[list[str], list[float | None]]]:
    """Non-empty texts of a shard in order with their quality scores (None when absent),
    `batch_size` at a time; empty texts are counted and dropped."""
    if path.name.endswith(PARQUET_SUFFIXES):
        batches = _parquet_batches(path, text_column, quality_column, batch_size)
    else:
        batches = _chunks(((d.text, d.get(quality_column)) for d in read_documents(path, stats)), batch_size)
    for rows in batches:
        stats.add("documents_in", n=len(rows))
        kept = [(t, q) for t, q in rows if t]
        if len(kept) < len(rows):
            stats.add("skipped", "empty_text", n=len(rows) - len(kept))
        if kept:
            texts, quality = zip(*kept)
            yield list(texts), list(quality)


def _parquet_batches(path: Path, text_column: str, quality_column: str,
                     batch_size: int) -> Iterator[list[tuple[str | None, float | None]]]:
    names = read_schema(path).names
    if text_column not in names:
        raise UserError(f"{path}: no column {text_column!r} (use --text-column)")
    has_quality = quality_column in names
    columns = [text_column, quality_column] if has_quality else [text_column]
    for batch in read_batches(path, columns, batch_size):
        texts = batch.column(0).to_pylist()
        quality = batch.column(1).to_pylist() if has_quality else [None] * len(texts)
        yield list(zip(texts, quality))


def _chunks(items, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _forget_missing_parts(parts: Path, names: list[str]) -> None:
    """A marker whose part files are gone (a work dir half-removed) means: redo that shard."""
    for name in names:
        marker = parts / DONE_DIR / f"{name}.json"
        if marker.exists() and not indexed.exists(parts / name):
            marker.unlink()


def _merged_summary(prefix: Path) -> dict | None:
    """The summary of the merged token shard at `prefix`, None if there is none."""
    record = location(f"{prefix}.stats.json")
    if not (record.is_file() and indexed.exists(prefix)):
        return None
    return json.loads(record.read_text()).get("summary", {})


def _merge(prefix: Path, parts: Path, tasks: list[ShardTask], tok: Tokenizer, record: dict, stats: Stats,
           cleanup: str) -> dict:
    """Concatenate the parts in task order into ``prefix`` (made from `record`), once even
    if ranks race here, then remove the work `dir`, only the `parts` files, or `none`."""
    names = [t.name for t in tasks]
    lock = os.open(lock_directory(prefix.parent), os.O_RDONLY)  # a lock that outlives the work dir
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = _merged_summary(prefix)
        if merged is None or changes(merged, record) is not None:
            index = indexed.merge([parts / name for name in names], prefix)
            _merge_quality(parts, names, prefix)
            summary: dict[str, Any] = {
                "prefix": prefix.name, "tokens": index.tokens, "documents": index.documents,
                "dtype": index.dtype.name, "tokenizer": tok.spec(), "shard_names": names, "made_from": record,
            }
            write_json_at(f"{prefix}.stats.json", {"summary": summary, "stats": stats.to_dict()})
            if cleanup == "dir":
                remove_tree(parts)
            elif cleanup == "parts":
                for name in names:
                    for path in (indexed.bin_path(parts / name), indexed.idx_path(parts / name),
                                 quality_path(parts / name)):
                        path.unlink(missing_ok=True)
    finally:
        os.close(lock)
    return _merged_summary(prefix)


def _merge_quality(parts: Path, names: list[str], prefix: Path) -> None:
    """Concatenate the parts' quality scores (nan for shards without scores), if any has them."""
    target = quality_path(prefix)
    target.unlink(missing_ok=True)
    if not any(quality_path(parts / n).exists() for n in names):
        return
    arrays = []
    for name in names:
        path = quality_path(parts / name)
        arrays.append(_load_npy(path) if path.exists() else
                      np.full(indexed.read_index(parts / name).documents, np.nan, np.float32))
    _save_npy(target, np.concatenate(arrays))

