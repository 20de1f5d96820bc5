"""Split a token shard into quality-score buckets, so a blend can sample better text more often.

The tokenize stage keeps each document's classifier score (``PREFIX.quality.npy``). Here
the shard is cut into sub-shards by score bucket (``[edge_i, edge_i+1)``, the last bucket
closed), and the source's blend weight is shared among them as

    weight_b = source_weight * tokens_b * m_b / sum_j tokens_j * m_j

with a multiplier ``m_b`` per bucket from a curve: ``power:A`` is ``m = mid_b ** A``
(``mid_b`` the bucket's midpoint score; ``power:0`` keeps the natural proportions),
or an explicit list ``1,1,2,4``. Higher-quality buckets are then repeated more epochs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline import indexed
from common.errors import UserError
from data_pipeline.executor import changed_keys
from data_pipeline.shards import file_identity
from data_pipeline.tokenize import quality_path

_CHUNK_DOCS = 1 << 16


@dataclass(frozen=True)
class Bucket:
    """One sub-shard: documents whose score is in [low, high)."""

    low: float
    high: float
    prefix: str
    tokens: int
    documents: int

    @property
    def label(self) -> str:
        return _label(self.low, self.high)


def _label(low: float, high: float) -> str:
    return f"q{low:g}-{high:g}"


def parse_edges(text: str) -> np.ndarray:
    """``"4"`` -> 4 equal-width buckets over [0, 1]; ``"0,0.5,0.8,1"`` -> those edges."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return np.linspace(0.0, 1.0, count + 1)
        edges = np.array([float(x) for x in text.split(",")])
    except ValueError:
        raise UserError(f"--quality-buckets must be a bucket count or comma-separated edges, got {text!r}") from None
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise UserError(f"--quality-buckets edges must increase, got {text!r}")
    return edges


def curve_multipliers(curve: str, edges: np.ndarray) -> np.ndarray:
    """Per-bucket sampling multipliers from ``power:A`` or an explicit comma-separated list."""
    count = len(edges) - 1
    if curve.startswith("power:"):
        try:
            exponent = float(curve.split(":", 1)[1])
        except ValueError:
            raise UserError(f"--quality-curve power:A needs a number, got {curve!r}") from None
        mids = (edges[:-1] + edges[1:]) / 2
        if exponent != 0 and np.any(mids <= 0):
            raise UserError("--quality-curve power:A needs bucket midpoints above 0")
        return mids ** exponent
    try:
        values = np.array([float(x) for x in curve.split(",")])
    except ValueError:
        raise UserError(f"--quality-curve must be power:A or a list of {count} multipliers, got {curve!r}") from None
    if len(values) != count or np.any(values < 0) or not np.any(values > 0):
        raise UserError(f"--quality-curve needs {count} non-negative multipliers (one per bucket), got {curve!r}")
    return values


def bucket_weights(weight: float, buckets: list[Bucket], multipliers: np.ndarray) -> np.ndarray:
    """The source's `weight` shared among its buckets (tokens x multiplier)."""
    mass = np.array([b.tokens for b in buckets], dtype=np.float64) * multipliers
    if mass.sum() <= 0:
        raise UserError("every quality bucket with a non-zero multiplier is empty")
    return weight * mass / mass.sum()


def split_by_quality(prefix: str | os.PathLike, edges: np.ndarray, output_dir: str | os.PathLike,
                     overwrite: bool = False) -> list[Bucket]:
    """Write one sub-shard per bucket under `output_dir`: reused when already split the same
    way from the same files; a split of anything else is refused, or with `overwrite` replaced."""
    prefix, output_dir = Path(prefix), Path(output_dir)
    index = indexed.read_index(prefix)
    scores_file = quality_path(prefix)
    if not scores_file.is_file():
        raise UserError(f"{prefix}: no quality scores ({scores_file.name}); tokenize parquet with a "
                        "quality column (part of the filter stage's output) to split by quality")
    scores = np.load(scores_file)
    if len(scores) != index.documents:
        raise UserError(f"{scores_file}: {len(scores)} scores for {index.documents} documents")
    if np.isnan(scores).any():
        raise UserError(f"{scores_file}: {int(np.isnan(scores).sum())} documents have no quality score")
    outside = (scores < edges[0]) | (scores > edges[-1])
    if outside.any():
        raise UserError(f"{prefix}: {int(outside.sum())} quality scores outside [{edges[0]:g}, {edges[-1]:g}]")
    manifest_path = output_dir / "split.json"
    manifest = {"source": str(prefix.resolve()), "tokens": index.tokens, "documents": index.documents,
                "edges": [float(e) for e in edges],
                "files": {p.name: file_identity(p) for p in (indexed.bin_path(prefix), scores_file)}}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        changed = changed_keys({k: old.get(k) for k in manifest}, manifest)
        if not changed:
            return [Bucket(**b) for b in old["buckets"]]
        if not overwrite:
            raise UserError(f"{output_dir} holds a quality split of another shard or edges ({', '.join(changed)}); "
                            "rerun with --overwrite to replace it, or choose another --output")
    buckets = _write_buckets(prefix, index, scores, edges, output_dir)
    manifest["buckets"] = [b.__dict__ for b in buckets]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return buckets


def _write_buckets(prefix: Path, index: indexed.Index, scores: np.ndarray, edges: np.ndarray,
                   output_dir: Path) -> list[Bucket]:
    # np.digitize puts x == edges[-1] past the end: fold it into the last bucket.
    which = np.minimum(np.digitize(scores, edges[1:-1], right=False), len(edges) - 2)
    tokens = indexed.read_tokens(prefix)
    lengths = index.lengths.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    names = [_label(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    writers = [indexed.TokenShardWriter(output_dir / name, index.dtype) for name in names]
    try:
        for first in range(0, index.documents, _CHUNK_DOCS):
            last = min(first + _CHUNK_DOCS, index.documents)
            chunk = np.asarray(tokens[starts[first]:starts[last]])
            per_token = np.repeat(which[first:last], lengths[first:last])
            for b, writer in enumerate(writers):
                docs = which[first:last] == b
                if docs.any():
                    writer.add_array(chunk[per_token == b], lengths[first:last][docs])
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.close()
    return [Bucket(float(lo), float(hi), str(output_dir / name), w.tokens, w.documents)
            for lo, hi, name, w in zip(edges[:-1], edges[1:], names, writers)]
