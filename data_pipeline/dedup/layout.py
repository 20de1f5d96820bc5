"""Names shared by the dedup stages: document ids, source priority, work-file paths.

A document's id inside a dedup run is ``shard_index << 32 | row``: an int64 that
sorts like the input, needs no string join, and is the same for any number of
ranks or workers (shards are numbered in sorted input order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.remote import work_root

WORK_DIR = ".dedup"  # hidden, so the output directory is still a clean next input
ROW_BITS = 32


def doc_ids(shard_index: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(shard_index) << ROW_BITS) | rows.astype(np.int64)


def shard_of(ids: np.ndarray) -> np.ndarray:
    return ids >> ROW_BITS


def row_of(ids: np.ndarray) -> np.ndarray:
    return ids & ((1 << ROW_BITS) - 1)


def work_dir(output: str | Path, method: str) -> Path:
    """A method's intermediate files: local even when `output` is a URL (`remote.work_root`)."""
    return work_root(output) / WORK_DIR / method


def parse_priority(spec: str | None) -> list[str]:
    """'wikipedia,books,webtext' -> ['wikipedia', 'books', 'webtext'] (first wins)."""
    return [s.strip() for s in (spec or "").split(",") if s.strip()]


def priority_rank(sources: np.ndarray, priority: list[str]) -> np.ndarray:
    """0 for the first listed source, 1 for the next, ...; unlisted sources rank last."""
    ranks = np.full(len(sources), len(priority), dtype=np.int64)
    for rank, name in enumerate(priority):
        ranks[sources == name] = rank
    return ranks
