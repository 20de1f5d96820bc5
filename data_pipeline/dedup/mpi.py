"""The buckets stage under mpiexec: band keys are exchanged between ranks by hash.

Rank r reads the signature files of its own shards (the executor's split: every
w-th shard from r), sends each (band key, document) to the rank that owns the
key's hash partition with one alltoallv, and turns what it receives into verified
candidate pairs. A bucket always lands whole on one rank, so the union of all
ranks' pairs is exactly the single-process result, whatever the rank count.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mpi4py import MPI

from data_pipeline.dedup.buckets import partition_of
from data_pipeline.dedup.layout import doc_ids
from data_pipeline.dedup.pairs import read_keys, write_pairs
from data_pipeline.dedup.stages import StageRunner
from data_pipeline.executor import finish
from data_pipeline.stats import Stats


def _alltoallv(comm: MPI.Comm, values: np.ndarray, owner: np.ndarray, counts: np.ndarray,
               received: np.ndarray) -> np.ndarray:
    order = np.argsort(owner, kind="stable")
    send = np.ascontiguousarray(values[order])
    recv = np.empty(int(received.sum()), dtype=values.dtype)
    send_displ = np.concatenate([[0], np.cumsum(counts)[:-1]])
    recv_displ = np.concatenate([[0], np.cumsum(received)[:-1]])
    comm.Alltoallv([send, (counts, send_displ)], [recv, (received, recv_displ)])  # MPI type from the dtype
    return recv


def exchange_buckets(runner: StageRunner, signature_files: dict[int, Path], pairs_dir: Path, window: int,
                     threshold: float | None) -> None:
    """Collective: every rank writes the verified pairs of its key partition."""
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    pending = runner.single(pairs_dir, f"part-{rank:05d}", runner.partition_options(world))
    if comm.allreduce(pending is None, op=MPI.LAND):
        return
    keys, ids = [], []
    for shard in sorted(signature_files)[rank::world]:
        shard_keys = read_keys(signature_files[shard])
        keys.append(shard_keys.ravel())
        ids.append(np.repeat(doc_ids(shard, np.arange(len(shard_keys))), shard_keys.shape[1]))
    keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    owner = partition_of(keys, world)
    counts = np.bincount(owner, minlength=world).astype(np.int64)
    received = np.empty(world, dtype=np.int64)
    comm.Alltoall(counts, received)
    my_keys = _alltoallv(comm, keys, owner, counts, received)
    my_ids = _alltoallv(comm, ids, owner, counts, received)
    stats = Stats()
    write_pairs(pairs_dir / f"part-{rank:05d}.parquet", my_keys, my_ids, window, threshold, signature_files, stats)
    if pending is not None:  # a rank already done rewrote the same pairs: its marker still holds
        finish(*pending, stats.to_dict())
    comm.Barrier()
