"""Candidate pairs on disk: band keys in, (a, b, jaccard) parquet out.

Used by the buckets stage both in its per-partition form (each task reads the
keys of its partition from every signature file) and under MPI (keys arrive by
alltoall), so the two produce the same pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.dedup.buckets import candidate_pairs, partition_of
from data_pipeline.dedup.jaccard import ShingleStore, verify_pairs
from data_pipeline.dedup.layout import doc_ids
from data_pipeline.shards import ShardWriter
from data_pipeline.stats import Stats

PAIR_SCHEMA = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.int64()), pa.field("jaccard", pa.float32())])


def read_keys(path: Path) -> np.ndarray:
    """The (documents x bands) band keys of a signature file."""
    column = pq.read_table(path, columns=["keys"])["keys"].combine_chunks()
    return column.values.to_numpy().reshape(len(column), column.type.list_size)


def local_band_keys(signature_files: dict[int, Path], partition: int, partitions: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(keys, document ids) of every (document, band) whose key falls in `partition`."""
    keys, ids = [], []
    for shard, path in sorted(signature_files.items()):
        shard_keys = read_keys(path)
        mine = partition_of(shard_keys, partitions) == partition
        keys.append(shard_keys[mine])
        ids.append(doc_ids(shard, np.nonzero(mine)[0]))
    return np.concatenate(keys), np.concatenate(ids)


def write_pairs(path: Path, keys: np.ndarray, ids: np.ndarray, window: int, threshold: float | None,
                signature_files: dict[int, Path], stats: Stats) -> None:
    """Candidate pairs of these band keys, with their Jaccard similarity unless threshold is None."""
    pairs = candidate_pairs(keys, ids, window)
    if threshold is None:
        similarity = np.full(len(pairs), np.nan, dtype=np.float32)
    else:
        similarity = verify_pairs(pairs, ShingleStore(signature_files))
        stats.add("verified_pairs", n=int((similarity >= threshold).sum()))
    stats.add("band_keys", n=len(keys))
    stats.add("candidate_pairs", n=len(pairs))
    with ShardWriter(path, PAIR_SCHEMA) as out:
        out.write_table(pa.table({"a": pairs[:, 0], "b": pairs[:, 1], "jaccard": similarity}))
