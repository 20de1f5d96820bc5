"""What exact and fuzzy dedup share: per-shard record files, keep/remove decisions, removal.

Both methods first write one small parquet file per input shard with each
document's `id`, `source` and quality (plus the method's own columns), then
decide per duplicate group which document to keep (`clusters.choose_keepers`),
and finally rewrite every input shard without the removed documents. Removed
documents are not lost: they go to ``removed/<shard>.parquet`` with the cluster
and the id of the copy that was kept, for inspection.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.dedup.clusters import Clusters, choose_keepers, size_histogram, sort_histogram
from data_pipeline.dedup.layout import priority_rank, row_of, shard_of
from data_pipeline.dedup.stages import add_to_stats
from data_pipeline.document import Document, extend_schema
from data_pipeline.executor import ShardTask
from data_pipeline.shards import ShardWriter, read_documents, read_schema
from data_pipeline.stats import Stats

RECORD_FIELDS = [pa.field("id", pa.string()), pa.field("source", pa.string()),
                 pa.field("quality", pa.float64())]
DECISION_SCHEMA = pa.schema([
    pa.field("doc", pa.int64()), pa.field("id", pa.string()), pa.field("shard", pa.int64()),
    pa.field("cluster", pa.int64()),
    pa.field("keeper", pa.int64()), pa.field("keeper_id", pa.string()),
    pa.field("source", pa.string()), pa.field("removed", pa.bool_()),
])
DECISION_STATS = ("clusters", "documents_in_clusters", "cluster_size_histogram", "removed_per_source",
                  "removed_total")


def record_columns(docs: list[Document], quality_column: str) -> dict[str, pa.Array]:
    """The `RECORD_FIELDS` columns of a batch of documents."""
    def quality(doc: Document) -> float | None:
        value = doc.get(quality_column)
        return float(value) if isinstance(value, (int, float)) else None

    return {"id": pa.array([d.id for d in docs], pa.string()),
            "source": pa.array([d.source for d in docs], pa.string()),
            "quality": pa.array([quality(d) for d in docs], pa.float64())}


def read_records(files: dict[int, Path], ids: np.ndarray) -> pa.Table:
    """`id`, `source`, `quality` of the given documents (sorted ids), read shard by shard."""
    parts = []
    for shard in np.unique(shard_of(ids)).tolist():
        table = pq.read_table(files[shard], columns=["id", "source", "quality"])
        parts.append(table.take(pa.array(row_of(ids[shard_of(ids) == shard]))))
    return pa.concat_tables(parts) if parts else pa.schema(RECORD_FIELDS).empty_table()


def decide(ids: np.ndarray, cluster: np.ndarray, records: pa.Table, priority: list[str]) -> pa.Table:
    """Decision rows for clustered documents (`ids` sorted, `records` in the same order)."""
    sources = np.array(records["source"].to_pylist(), dtype=object)
    quality = records["quality"].to_numpy(zero_copy_only=False)
    chosen: Clusters = choose_keepers(ids, cluster, priority_rank(sources, priority), quality)
    keeper_row = np.searchsorted(ids, chosen.keeper)
    return pa.table({
        "doc": ids, "id": records["id"], "shard": shard_of(ids), "cluster": cluster, "keeper": chosen.keeper,
        "keeper_id": records["id"].take(pa.array(keeper_row)),
        "source": records["source"], "removed": chosen.removed,
    }, schema=DECISION_SCHEMA)


def decision_stats(decisions: pa.Table) -> dict:
    """Clusters, cluster-size histogram and removed per source of whole clusters: these add
    up over partitions that hold disjoint clusters (see `cluster_summary`)."""
    cluster = decisions["cluster"].to_numpy()
    removed = decisions.filter(decisions["removed"])
    per_source = pc.value_counts(removed["source"]).to_pylist() if removed.num_rows else []
    return {
        "clusters": int(len(np.unique(cluster))),
        "documents_in_clusters": int(decisions.num_rows),
        "cluster_size_histogram": size_histogram(cluster),
        "removed_per_source": {str(v["values"]) or "unknown": int(v["counts"]) for v in per_source},
        "removed_total": int(removed.num_rows),
    }


def cluster_summary(merged: Stats) -> dict:
    """The `decision_stats` part of partition tasks' merged stats."""
    summary = {key: merged.get(key) for key in DECISION_STATS}
    summary["cluster_size_histogram"] = sort_histogram(merged.get("cluster_size_histogram", default={}))
    summary["removed_per_source"] = dict(sorted(merged.get("removed_per_source", default={}).items()))
    return summary


def load_removed(decision_files: list[Path], shard_index: int) -> dict[int, tuple[int, str]]:
    """row -> (cluster, kept copy's id) for this shard's removed documents."""
    removed: dict[int, tuple[int, str]] = {}
    for path in decision_files:
        table = pq.read_table(path, filters=[("shard", "=", shard_index), ("removed", "=", True)])
        rows = row_of(table["doc"].to_numpy())
        removed.update(zip(rows.tolist(), zip(table["cluster"].to_pylist(), table["keeper_id"].to_pylist())))
    return removed


def remove_duplicates(task: ShardTask, stats: Stats, *, decision_files: list[Path], method: str) -> None:
    """Rewrite one input shard without its removed duplicates (they go to removed/)."""
    removed = load_removed(decision_files, task.index)
    schema = read_schema(task.path)
    removed_schema = extend_schema(schema, duplicate_of=pa.string(), dedup_cluster=pa.int64())
    with ShardWriter(task.output(), schema) as kept, \
            ShardWriter(task.output(subdir="removed"), removed_schema) as dropped:
        for row, doc in enumerate(read_documents(task.path, stats)):
            stats.add("documents_in")
            if row in removed:
                cluster, keeper_id = removed[row]
                doc.metadata.update(duplicate_of=keeper_id, dedup_cluster=cluster)
                dropped.write(doc)
                stats.add("removed", f"{method}:{doc.source or 'unknown'}")
            else:
                kept.write(doc)
                stats.add("documents_out")
                stats.add("bytes_out", n=len(doc.text.encode("utf-8")))


def report(output: Path, method: str, summary: dict, show: bool) -> None:
    """Add the cluster summary to the output's stats.json and print it."""
    add_to_stats(output, method, summary)
    if show:
        print(f"  {method} clusters: {summary['clusters']:,} holding {summary['documents_in_clusters']:,} "
              f"documents; removed {summary['removed_total']:,} {summary['removed_per_source']}; "
              f"cluster sizes {summary['cluster_size_histogram']}")
