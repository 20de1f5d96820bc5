"""Which document each cluster keeps, when clusters are spread over partitions.

The component labels (`components.read_labels`) sit in the partition of each
document; the keeper rule needs a whole cluster. Two partition steps bring them
together without any task holding more than its partition or its clusters:

- members (per partition): each labelled document with its id, source and quality
  (read from its own shard's record file), sent to the partition of its cluster id;
- keepers (per partition): the clusters whose id falls there are now whole, so
  `removal.decide` picks their keepers; the decisions are written one row group per
  input shard, which the removal stage reads by filter, and their stats (counts,
  size histogram, removed per source) add up across partitions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.dedup.components import partition_of_node, read_labels, read_partition, write_grouped
from data_pipeline.dedup.removal import decide, decision_stats, read_records
from data_pipeline.dedup.stages import partition_index
from data_pipeline.executor import ShardTask
from data_pipeline.stats import Stats


def members_partition(task: ShardTask, stats: Stats, *, labels: Path, partitions: int,
                      record_files: dict[int, Path]) -> None:
    """This partition's labelled documents with their records, addressed to their cluster's partition."""
    docs, cluster = read_labels(labels, partition_index(task))
    table = read_records(record_files, docs)
    table = table.add_column(0, "dest", pa.array(partition_of_node(cluster, partitions)))
    table = table.append_column("doc", pa.array(docs)).append_column("cluster", pa.array(cluster))
    write_grouped(task.output(), table, "dest")


def keepers_partition(task: ShardTask, stats: Stats, *, members: Path, priority: list[str]) -> None:
    """Keep/remove decisions for the clusters whose id is in this partition."""
    table = read_partition(members, partition_index(task), ["doc", "cluster", "id", "source", "quality"])
    table = table.take(pa.array(np.argsort(table["doc"].to_numpy(), kind="stable")))
    decisions = decide(table["doc"].to_numpy(), table["cluster"].to_numpy(), table, priority)
    write_grouped(task.output(), decisions, "shard")
    stats.merge(decision_stats(decisions))
