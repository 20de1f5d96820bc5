"""Exact dedup: documents whose normalised text has the same 128-bit xxhash.

Stages, each resumable: ``hashes`` (per input shard: the xxh3-128 of the text
after lower-casing and folding punctuation and whitespace, plus id, source and
quality), ``groups`` (per hash partition: equal hashes form a cluster; the copy
from the highest-priority source, then the best quality, then the first in input
order is kept; decisions written one row group per input shard, stats summed
over partitions), and ``remove`` (per input shard). Memory is one shard or one
hash partition.
"""
from __future__ import annotations

import json
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.dedup.buckets import partition_of
from data_pipeline.dedup.layout import doc_ids, parse_priority, work_dir
from data_pipeline.dedup.components import write_grouped
from data_pipeline.dedup.removal import (RECORD_FIELDS, cluster_summary, decide, decision_stats, read_records,
                                         record_columns, remove_duplicates, report)
from data_pipeline.dedup.stages import KEYS_PER_PARTITION, StageRunner, partition_index, row_count
from data_pipeline.dedup.text import exact_hash
from data_pipeline.executor import ShardTask
from data_pipeline.remote import location
from data_pipeline.shards import ShardWriter, code_version, discover_shards, read_documents
from data_pipeline.stats import Stats

STAGES = ("hashes", "groups", "remove")
BATCH = 4096
HASH_SCHEMA = pa.schema(RECORD_FIELDS + [pa.field("hi", pa.uint64()), pa.field("lo", pa.uint64())])


def hashes_shard(task: ShardTask, stats: Stats, *, fold_digits: bool, quality_column: str) -> None:
    docs = read_documents(task.path, stats)
    with ShardWriter(task.output(), HASH_SCHEMA) as out:
        while batch := list(islice(docs, BATCH)):
            digests = np.array([exact_hash(d.text, fold_digits) for d in batch], dtype=np.uint64).reshape(-1, 2)
            columns = record_columns(batch, quality_column)
            columns["hi"], columns["lo"] = digests[:, 0], digests[:, 1]
            out.write_table(pa.table(columns))
            stats.add("documents_in", n=len(batch))


def groups_partition(task: ShardTask, stats: Stats, *, hash_files: dict[int, Path], partitions: int,
                     priority: list[str]) -> None:
    """Clusters of identical hashes in this partition, and what each keeps."""
    part = partition_index(task)
    his, los, ids = [], [], []
    for shard, path in sorted(hash_files.items()):
        table = pq.read_table(path, columns=["hi", "lo"])
        hi, lo = table["hi"].to_numpy(), table["lo"].to_numpy()
        rows = np.flatnonzero(partition_of(hi, partitions) == part)
        his.append(hi[rows]), los.append(lo[rows]), ids.append(doc_ids(shard, rows))
    hi, lo, ids = np.concatenate(his), np.concatenate(los), np.concatenate(ids)
    order = np.lexsort((ids, lo, hi))
    hi, lo, ids = hi[order], lo[order], ids[order]
    new_group = np.ones(len(ids), dtype=bool)
    new_group[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    group = np.cumsum(new_group) - 1
    size = np.bincount(group)[group]
    first_of_group = ids[new_group][group]  # smallest id: ids are sorted inside a group
    dup = size > 1
    by_id = np.argsort(ids[dup], kind="stable")
    dup_ids, cluster = ids[dup][by_id], first_of_group[dup][by_id]
    decisions = decide(dup_ids, cluster, read_records(hash_files, dup_ids), priority)
    stats.add("documents_in", n=len(ids))
    stats.merge(decision_stats(decisions))
    write_grouped(task.output(), decisions, "shard")


def run(args) -> int:
    """`gpt-data dedup exact`: the stages selected by --stage, in order."""
    settings = {"fold_digits": args.fold_digits, "partitions": args.partitions,
                "priority": parse_priority(args.priority), "quality_column": args.quality_column}
    work = work_dir(args.output, "exact")
    with StageRunner(args, discover_shards(args.input), work, settings, code_version(__name__)) as runner:
        run_stages(args, runner, work)
    return 0


def run_stages(args, runner: StageRunner, work: Path) -> None:
    hash_dir, group_dir = work / "hashes", work / "groups"
    hash_files = runner.files(hash_dir)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if "hashes" in stages:
        runner.per_shard(partial(hashes_shard, fold_digits=args.fold_digits, quality_column=args.quality_column),
                         hash_dir, "dedup exact: hashes")
    if "groups" in stages or "remove" in stages:
        runner.shards_complete(hash_dir, "hashes")
        partitions = runner.partition_count(args.partitions, row_count(hash_files), KEYS_PER_PARTITION)
        decision_files = [group_dir / f"part-{k:05d}.parquet" for k in range(partitions)]
    if "groups" in stages:
        runner.per_partition(partial(groups_partition, hash_files=hash_files, partitions=partitions,
                                     priority=parse_priority(args.priority)),
                             partitions, group_dir, "dedup exact: groups")
    if "remove" in stages:
        runner.partitions_complete(group_dir, partitions, "groups")
        runner.per_shard(partial(remove_duplicates, decision_files=decision_files, method="exact"),
                         location(args.output), "dedup exact: remove")
        groups = Stats().merge(json.loads((group_dir / "stats.json").read_text()))
        report(location(args.output), "exact", cluster_summary(groups), show=runner.rank.rank == 0)
