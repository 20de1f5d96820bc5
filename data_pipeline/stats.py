"""Mergeable run statistics.

`Stats` is a nested dict of counters that every shard task fills in and that merges
by addition, so per-shard records combine into one ``stats.json`` in any order:
numbers add, except keys starting with ``max_`` (peak values) which take the maximum;
dicts merge key by key; lists (``notes``) concatenate up to `MAX_NOTES` entries.

Conventional keys: ``records_in`` (crawl records read), ``documents_in``, ``documents_out``, ``bytes_out``, ``tokens_out``,
``seconds`` (work time summed over shards), ``skipped: {reason: n}`` (input damage),
``removed: {rule: n}``, ``language: {code: n}``, ``quality_histogram: {bucket: n}``,
``max_rss_mb``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


MAX_NOTES = 50


class Stats:
    """Nested counters: ``stats.add("removed", "c4:lorem_ipsum")`` adds 1 at that path."""

    def __init__(self, data: dict[str, Any] | None = None):
        self.data: dict[str, Any] = data if data is not None else {}

    def _parent(self, keys: tuple[str, ...]) -> dict[str, Any]:
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        return node

    def add(self, *keys: str, n: float = 1) -> None:
        node = self._parent(keys)
        node[keys[-1]] = node.get(keys[-1], 0) + n

    def set_max(self, *keys: str, value: float) -> None:
        node = self._parent(keys)
        node[keys[-1]] = max(node.get(keys[-1], value), value)

    def note(self, message: str) -> None:
        notes = self.data.setdefault("notes", [])
        if len(notes) < MAX_NOTES:
            notes.append(message)

    def get(self, *keys: str, default: Any = 0) -> Any:
        node: Any = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def merge(self, other: Stats | dict[str, Any]) -> Stats:
        merge_into(self.data, other.data if isinstance(other, Stats) else other)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.data


def merge_into(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Merge `other` into `into` in place (see module docstring for the rules)."""
    for key, value in other.items():
        if key not in into:
            into[key] = _copy(value)
        elif isinstance(value, dict):
            merge_into(into[key], value)
        elif isinstance(value, list):
            into[key] = (into[key] + value)[:MAX_NOTES]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = max(into[key], value) if key.startswith("max_") else into[key] + value
    return into


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return merge_into({}, value)
    if isinstance(value, list):
        return list(value)
    return value


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Reads VmHWM, which starts afresh in a
    spawned worker (``ru_maxrss`` would carry over the parent's peak from before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_output(stats: Stats, text: str) -> None:
    """Count one written document: ``documents_out`` and its UTF-8 ``bytes_out``."""
    stats.add("documents_out")
    stats.add("bytes_out", n=len(text.encode("utf-8", errors="replace")))
