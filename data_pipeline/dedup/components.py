"""Connected components of the duplicate-pair graph, in rounds over partitions on disk.

Holding every duplicate pair in one union-find is what runs out of memory at Common
Crawl scale: the pairs grow with the number of duplicates, not with a shard. Here
the graph stays on disk as directed edges, each stored in the partition of its
source node (``shard % partitions``), and every task sees only the edges of its own
partition's documents. The rounds alternate Kiveris et al.'s (2014) large-star and
small-star operations, which turn every component into a star around its smallest
document id in O(log^2 n) rounds; a round whose input is already a star forest in
every partition ends the loop. Each round is a set of ordinary partition tasks, so
it runs on local workers or MPI ranks and resumes like any other stage.

Files: ``<dir>/round-000`` holds the seed edges (written by the caller, e.g. from
verified pairs), ``round-NNN`` the edges after round NNN. Each file has columns
`dest` (the partition that reads the row), `src`, `dst`, one row group per `dest`.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from data_pipeline.dedup.layout import shard_of
from data_pipeline.dedup.stages import partition_index
from common.errors import UserError
from data_pipeline.executor import ShardTask
from data_pipeline.shards import ShardWriter
from data_pipeline.stats import Stats

EDGE_SCHEMA = pa.schema([pa.field("dest", pa.int64()), pa.field("src", pa.int64()), pa.field("dst", pa.int64())])
EDGES_PER_PARTITION = 4_000_000  # directed edges, ~100 MB while a task sorts them
MAX_ROUNDS = 200  # far above O(log^2 n) for any real corpus: reaching it is a bug

# run(process, count, out_dir, stage) -> merged stats: StageRunner.per_partition's signature
PartitionRunner = Callable[[Callable[[ShardTask, Stats], None], int, Path, str], Stats]


def partition_of_node(nodes: np.ndarray, partitions: int) -> np.ndarray:
    return shard_of(nodes) % partitions


def write_grouped(path: Path, table: pa.Table, key: str) -> None:
    """`table` sorted by column `key`, one parquet row group per key value, so a reader that
    filters on `key` skips the other groups by their statistics."""
    values = table[key].to_numpy()
    order = np.argsort(values, kind="stable")
    table, values = table.take(pa.array(order)), values[order]
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]])) if len(values) else []
    with ShardWriter(path, table.schema) as out:
        for start, end in zip(starts, [*starts[1:], len(values)]):
            out.write_table(table.slice(int(start), int(end - start)))


def write_edges(path: Path, a: np.ndarray, b: np.ndarray, partitions: int) -> None:
    """Undirected edges (a, b) as the directed a->b and b->a, each in its source's partition."""
    src, dst = np.concatenate([a, b]), np.concatenate([b, a])
    table = pa.table({"dest": partition_of_node(src, partitions), "src": src, "dst": dst}, schema=EDGE_SCHEMA)
    write_grouped(path, table, "dest")


def read_partition(directory: Path, partition: int, columns: list[str]) -> pa.Table:
    """The rows of every parquet file in `directory` addressed to `partition`."""
    files = sorted(str(p) for p in directory.glob("part-*.parquet"))
    return ds.dataset(files, format="parquet").to_table(columns=columns, filter=ds.field("dest") == partition)


def read_edges(directory: Path, partition: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique directed edges (src, dst) whose source is in `partition`, sorted by (src, dst)."""
    table = read_partition(directory, partition, ["src", "dst"])
    src, dst = table["src"].to_numpy(), table["dst"].to_numpy()
    order = np.lexsort((dst, src))  # 5x faster than np.unique(axis=0) on the stacked pairs
    src, dst = src[order], dst[order]
    new = np.ones(len(src), bool)
    new[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return src[new], dst[new]


def neighbourhoods(src: np.ndarray, dst: np.ndarray):
    """Per edge: its source's smallest neighbour, and the source's count of smaller and larger
    neighbours (edges sorted by (src, dst), so each source's first edge holds its minimum)."""
    first = np.concatenate([[True], src[1:] != src[:-1]]) if len(src) else np.zeros(0, bool)
    group = np.cumsum(first) - 1
    smallest = dst[first][group]
    smaller = np.bincount(group, weights=dst < src).astype(np.int64)[group]
    larger = np.bincount(group, weights=dst > src).astype(np.int64)[group]
    return first, smallest, smaller, larger


def star_round(task: ShardTask, stats: Stats, *, previous: Path, partitions: int, large: bool) -> None:
    """One large-star (odd rounds) or small-star (even rounds) step for one partition.

    With m(u) = min(u, neighbours of u): large-star links every larger neighbour v of u
    to m(u); small-star links u and every smaller neighbour v of u to m(u). Both keep
    a component connected and only move edges towards its smallest node."""
    src, dst = read_edges(previous, partition_index(task))
    first, smallest, smaller, larger = neighbourhoods(src, dst)
    star = (smaller == 0) | ((smaller == 1) & (larger == 0))  # a centre, or a leaf of one centre
    stats.add("nodes", n=int(first.sum()))
    stats.add("not_star", n=int((~star & first).sum()))
    stats.add("edges", n=int((src < dst).sum()))
    centre = np.minimum(src, smallest)
    if large:
        pick = dst > src
        a, b = dst[pick], centre[pick]
    else:
        pick = (dst < src) & (dst != centre)
        leaf = first & (smaller > 0)
        a, b = np.concatenate([dst[pick], src[leaf]]), np.concatenate([centre[pick], centre[leaf]])
    write_edges(task.output(), a, b, partitions)


class Components(NamedTuple):
    labels: Path  # the converged edges, for read_labels
    rounds: int
    edges: int  # distinct undirected seed edges


def label_components(run: PartitionRunner, directory: Path, partitions: int, stage: str) -> Components:
    """Run rounds on the seed edges in ``directory/round-000`` until every component is a
    star around its smallest node."""
    previous, edges = directory / "round-000", 0
    for number in range(1, MAX_ROUNDS + 1):
        current = directory / f"round-{number:03d}"
        stats = run(partial(star_round, previous=previous, partitions=partitions, large=number % 2 == 1),
                    partitions, current, f"{stage}, round {number}")
        if stats.get("shards_done") != partitions:  # a rank without a barrier (Slurm tasks) would race ahead
            raise UserError(f"{stage}: round {number} has {stats.get('shards_done')} of {partitions} partitions "
                            "done; the rounds need one job for all partitions (local workers or mpiexec, "
                            "or a single Slurm task)")
        if number == 1:
            edges = int(stats.get("edges"))
        if stats.get("not_star") == 0:
            return Components(current, number, edges)
        previous = current
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds ({directory})")


def read_labels(directory: Path, partition: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component ids) of this partition's nodes from converged (star) edges:
    a centre is its own component's id, a leaf takes its one neighbour's."""
    src, dst = read_edges(directory, partition)
    first, smallest, _, _ = neighbourhoods(src, dst)
    return src[first], np.minimum(src[first], smallest[first])
