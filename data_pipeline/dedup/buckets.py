"""LSH buckets: documents sharing a band key become candidate pairs.

Keys are sorted, so every bucket is a run of equal keys ordered by document id.
A bucket of m documents would give m*(m-1)/2 pairs; a few huge buckets (the same
page crawled thousands of times) would then dominate the run. Each document is
therefore paired with the next `window - 1` members of its bucket only: small
buckets still give all their pairs, large ones a connected band of pairs whose
number grows linearly, and clustering restores the transitive links.
"""
from __future__ import annotations

import numpy as np

DEFAULT_WINDOW = 16


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Which of `partitions` bucket partitions owns each key (the same for every rank count)."""
    return (keys % np.uint64(partitions)).astype(np.int64)


def candidate_pairs(keys: np.ndarray, doc_ids: np.ndarray, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """Unique (a, b) pairs with a < b of documents sharing a key; shape (n, 2), int64, sorted."""
    keys = np.asarray(keys).ravel()
    doc_ids = np.asarray(doc_ids, dtype=np.int64).ravel()
    order = np.lexsort((doc_ids, keys))
    keys, doc_ids = keys[order], doc_ids[order]
    found = []
    for step in range(1, window):
        same = keys[step:] == keys[:-step]
        if not same.any():
            break
        found.append(np.stack([doc_ids[:-step][same], doc_ids[step:][same]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0)
