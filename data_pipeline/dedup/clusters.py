"""Which document of a cluster to keep, and the cluster-size histogram.

The kept document is chosen by source priority, then quality score, then input
order: a rule that depends on the documents only, so any rank count, partitioning
or merge order gives the same clusters (see `components` for how fuzzy clusters
are found, `exact` for exact ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clusters:
    """Documents that have at least one duplicate, with their cluster and the keeper."""

    ids: np.ndarray  # int64 document ids, sorted
    cluster: np.ndarray  # cluster id = smallest document id in the cluster
    keeper: np.ndarray  # id of the document this cluster keeps

    @property
    def removed(self) -> np.ndarray:
        return self.ids != self.keeper


def choose_keepers(ids: np.ndarray, cluster: np.ndarray, priority: np.ndarray,
                   quality: np.ndarray) -> Clusters:
    """Keep per cluster the document with the best (priority rank, -quality, id)."""
    quality = np.nan_to_num(np.asarray(quality, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((ids, -quality, priority, cluster))
    first = np.ones(len(order), dtype=bool)
    first[1:] = cluster[order][1:] != cluster[order][:-1]
    cluster_ids, best = cluster[order][first], ids[order][first]  # sorted by cluster id
    return Clusters(ids, cluster, best[np.searchsorted(cluster_ids, cluster)])


def size_histogram(cluster: np.ndarray) -> dict[str, int]:
    """Number of clusters per size, in power-of-two size ranges ('2', '3-4', '5-8', ...)."""
    _, sizes = np.unique(cluster, return_counts=True)
    hist: dict[str, int] = {}
    for size in sizes.tolist():
        hi = 1 << (size - 1).bit_length()
        lo = hi // 2 + 1
        label = str(size) if size <= 2 else f"{lo}-{hi}"
        hist[label] = hist.get(label, 0) + 1
    return sort_histogram(hist)


def sort_histogram(hist: dict[str, int]) -> dict[str, int]:
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0])))
