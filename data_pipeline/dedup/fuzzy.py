"""Fuzzy dedup with MinHash LSH: signatures -> buckets -> clusters -> removal.

Every stage writes parquet under ``<output>/.dedup/minhash/`` and marks what it
finished, so memory is bounded by one shard (signatures, removal) or one hash
partition (buckets), and a killed run resumes where it stopped:

- signatures (per input shard): band keys and the shingle set of every document;
- buckets (per hash partition of the band keys; under MPI one partition per rank,
  exchanged with alltoall): candidate pairs, each verified by exact Jaccard on
  the stored shingle sets;
- clusters (one task): connected components of the verified pairs and the
  document each cluster keeps (source priority, then quality, then input order);
- remove (per input shard): the shard without its duplicates.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.dedup.buckets import DEFAULT_WINDOW
from data_pipeline.dedup.clusters import components
from data_pipeline.dedup.layout import parse_priority, work_dir
from data_pipeline.dedup.minhash import MinHasher, fold32
from data_pipeline.dedup.pairs import PAIR_SCHEMA, local_band_keys, write_pairs
from data_pipeline.dedup.removal import (DECISION_SCHEMA, EXAMPLE_PAIRS, RECORD_FIELDS, decide, decision_stats,
                                         read_records, record_columns, remove_duplicates, report)
from data_pipeline.dedup.stages import StageRunner, partition_index
from data_pipeline.dedup.text import ngrams, words
from data_pipeline.errors import UserError
from data_pipeline.executor import ShardTask
from data_pipeline.shards import ShardWriter, discover_shards, is_done, mark_done, read_documents
from data_pipeline.stats import Stats

STAGES = ("signatures", "buckets", "clusters", "remove")
BATCH = 1024  # documents hashed together; also the signature files' row group size


@dataclass(frozen=True)
class MinhashConfig:
    bands: int = 14
    rows: int = 8
    ngram: int = 5
    seed: int = 1
    fold_digits: bool = False
    threshold: float | None = 0.8  # None: keep every LSH candidate pair (no verification)
    window: int = DEFAULT_WINDOW
    partitions: int = 0  # 0: sized by the number of documents (see StageRunner.partition_count)
    priority: tuple[str, ...] = ()
    quality_column: str = "quality"

    @property
    def hasher(self) -> MinHasher:
        return MinHasher(self.bands, self.rows, self.seed)


def signature_schema(bands: int) -> pa.Schema:
    return pa.schema(RECORD_FIELDS + [pa.field("keys", pa.list_(pa.uint64(), bands)),
                                      pa.field("shingles", pa.binary())])


def sketch(texts: list[str], cfg: MinhashConfig) -> tuple[np.ndarray, pa.Array]:
    """Band keys (documents x bands) and each document's sorted unique 32-bit shingle set.

    The sets are stored as raw little-endian uint32 bytes: parquet's dictionary
    encoding, tried by default on a list<uint32> column, cost 30x more time here."""
    grams = ngrams(words(texts, cfg.fold_digits), cfg.ngram, len(texts))
    keys = cfg.hasher.band_keys(cfg.hasher.signatures(grams.hashes, grams.offsets))
    # One sort of (document << 32 | shingle) gives every document's sorted set at once.
    packed = np.sort((grams.doc.astype(np.uint64) << np.uint64(32)) | fold32(grams.hashes).astype(np.uint64))
    packed = packed[np.concatenate([[True], packed[1:] != packed[:-1]])] if len(packed) else packed
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(np.bincount((packed >> np.uint64(32)).astype(np.int64), minlength=len(texts)), out=offsets[1:])
    data = packed.astype("<u4").tobytes()
    return keys, pa.BinaryArray.from_buffers(pa.binary(), len(texts), [None, pa.py_buffer(offsets * 4), pa.py_buffer(data)])


def signatures_shard(task: ShardTask, stats: Stats, *, cfg: MinhashConfig) -> None:
    """Band keys and shingle sets of one input shard, one row group per batch."""
    docs = read_documents(task.path, stats)
    with ShardWriter(task.output(), signature_schema(cfg.bands)) as out:
        while batch := list(islice(docs, BATCH)):
            keys, sets = sketch([d.text for d in batch], cfg)
            columns = record_columns(batch, cfg.quality_column)
            columns["keys"] = pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel()), cfg.bands)
            columns["shingles"] = sets
            out.write_table(pa.table(columns))
            stats.add("documents_in", n=len(batch))


def buckets_partition(task: ShardTask, stats: Stats, *, cfg: MinhashConfig, partitions: int,
                      signature_files: dict[int, Path]) -> None:
    keys, ids = local_band_keys(signature_files, partition_index(task), partitions)
    write_pairs(task.output(), keys, ids, cfg.window, cfg.threshold, signature_files, stats)


def duplicate_edges(pair_files: list[Path], threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs that count as duplicates (verified, or all candidates without verification)."""
    tables = [pq.read_table(p) for p in pair_files]
    table = pa.concat_tables(tables) if tables else PAIR_SCHEMA.empty_table()
    pairs = np.stack([table["a"].to_numpy(), table["b"].to_numpy()], axis=1)
    similarity = table["jaccard"].to_numpy()
    keep = np.ones(len(pairs), bool) if threshold is None else similarity >= threshold
    return pairs[keep], similarity[keep]


def example_pairs(pairs: np.ndarray, similarity: np.ndarray, ids: np.ndarray, records: pa.Table) -> list[dict]:
    """A spread of duplicate pairs over the similarity range, by document id, for inspection."""
    if not len(pairs):
        return []
    order = np.argsort(similarity, kind="stable")
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(EXAMPLE_PAIRS, len(order))).astype(int))]
    names = records["id"]
    return [{"a": names[int(np.searchsorted(ids, a))].as_py(), "b": names[int(np.searchsorted(ids, b))].as_py(),
             "jaccard": None if np.isnan(s) else round(float(s), 4)}
            for (a, b), s in zip(pairs[picks].tolist(), similarity[picks].tolist())]


def build_clusters(work: Path, cfg: MinhashConfig, pair_files: list[Path],
                   signature_files: dict[int, Path]) -> None:
    """Union the duplicate pairs into clusters and decide what each cluster keeps."""
    pairs, similarity = duplicate_edges(pair_files, cfg.threshold)
    ids, cluster = components(pairs)
    records = read_records(signature_files, ids)
    decisions = decide(ids, cluster, records, list(cfg.priority))
    with ShardWriter(work / "clusters.parquet", DECISION_SCHEMA) as out:
        out.write_table(decisions)
    stats = decision_stats(decisions, example_pairs(pairs, similarity, ids, records))
    stats["duplicate_pairs"] = int(len(pairs))
    mark_done(work, "clusters", {"shard": "clusters", "stats": stats})


def config_from_args(args) -> MinhashConfig:
    for name in ("bands", "rows", "ngram", "window"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0.0 < args.threshold <= 1.0:
        raise UserError(f"--threshold must be in (0, 1], got {args.threshold}")
    return MinhashConfig(
        bands=args.bands, rows=args.rows, ngram=args.ngram, seed=args.seed, fold_digits=args.fold_digits,
        threshold=None if args.no_verify else args.threshold, window=args.window, partitions=args.partitions,
        priority=tuple(parse_priority(args.priority)), quality_column=args.quality_column)


def run(args) -> int:
    """`gpt-data dedup minhash`: the stages selected by --stage, in order."""
    inputs = discover_shards(args.input)
    runner = StageRunner(args, inputs)
    cfg = config_from_args(args)
    work = work_dir(args.output, "minhash")
    sig_dir, pairs_dir = work / "signatures", work / "pairs"
    runner.check_settings(work, asdict(cfg))
    signature_files = runner.files(sig_dir)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if "signatures" in stages:
        runner.per_shard(partial(signatures_shard, cfg=cfg), sig_dir, "dedup minhash: signatures")
    if "buckets" in stages or "clusters" in stages:
        runner.shards_complete(sig_dir, "signatures")
        partitions = runner.partition_count(cfg.partitions, signature_files, cfg.bands)
    if "buckets" in stages:
        if runner.is_mpi:
            from data_pipeline.dedup.mpi import exchange_buckets

            exchange_buckets(signature_files, pairs_dir, cfg.window, cfg.threshold)
        else:
            runner.per_partition(partial(buckets_partition, cfg=cfg, partitions=partitions,
                                         signature_files=signature_files),
                                 partitions, pairs_dir, "dedup minhash: buckets")
    if "clusters" in stages:
        runner.partitions_complete(pairs_dir, partitions, "buckets")
        if runner.rank.rank == 0 and not is_done(work, "clusters"):
            pair_files = [pairs_dir / f"part-{k:05d}.parquet" for k in range(partitions)]
            build_clusters(work, cfg, pair_files, signature_files)
        runner.barrier()
    if "remove" in stages:
        runner.require_complete(work, ["clusters"], "clusters")
        runner.per_shard(partial(remove_duplicates, decision_files=[work / "clusters.parquet"], method="minhash"),
                         Path(args.output), "dedup minhash: remove")
        summary = json.loads((work / ".done" / "clusters.json").read_text())["stats"]
        report(Path(args.output), "minhash", summary, show=runner.rank.rank == 0)
    return 0
