"""Fuzzy dedup with MinHash LSH: signatures -> buckets -> clusters -> removal.

Every stage writes parquet under ``<output>/.dedup/minhash/`` (local for a URL output, see
`remote.work_root`) and marks what it finished, so memory is bounded by one shard
(signatures, removal) or one hash partition (buckets, clusters), and a killed run resumes
where it stopped:

- signatures (per input shard): band keys and the shingle set of every document;
- buckets (per hash partition of the band keys; under MPI one partition per rank,
  exchanged with alltoall): candidate pairs, each verified by exact Jaccard on
  the stored shingle sets;
- clusters (rounds of partition tasks, partitioned by input shard): connected
  components of the verified pairs (`components`), then the document each cluster
  keeps (`keepers`: source priority, then quality, then input order);
- remove (per input shard): the shard without its duplicates.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.dedup.buckets import DEFAULT_WINDOW
from data_pipeline.dedup.components import EDGES_PER_PARTITION, label_components, write_edges
from data_pipeline.dedup.keepers import keepers_partition, members_partition
from data_pipeline.dedup.layout import parse_priority, work_dir
from data_pipeline.dedup.minhash import MinHasher, fold32
from data_pipeline.dedup.pairs import local_band_keys, write_pairs
from data_pipeline.dedup.removal import (RECORD_FIELDS, cluster_summary, read_records, record_columns,
                                         remove_duplicates, report)
from data_pipeline.dedup.stages import KEYS_PER_PARTITION, StageRunner, partition_index, row_count
from data_pipeline.dedup.text import ngrams, words
from common.errors import UserError
from data_pipeline.executor import ShardTask, finish, make_tasks
from data_pipeline.remote import location
from data_pipeline.shards import ShardWriter, code_version, discover_shards, read_documents, read_marker
from data_pipeline.stats import Stats

STAGES = ("signatures", "buckets", "clusters", "remove")
BATCH = 1024  # documents hashed together; also the signature files' row group size
EXAMPLE_PAIRS = 20


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


def duplicate_pairs(path: Path, threshold: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, jaccard) of a pair file's pairs that count as duplicates (verified, or every
    candidate without verification)."""
    table = pq.read_table(path)
    similarity = table["jaccard"].to_numpy()
    keep = np.ones(len(similarity), bool) if threshold is None else similarity >= threshold
    return table["a"].to_numpy()[keep], table["b"].to_numpy()[keep], similarity[keep]


def seed_edges(task: ShardTask, stats: Stats, *, pair_files: list[Path], threshold: float | None,
               partitions: int) -> None:
    """One bucket partition's duplicate pairs as the seed edges of the components rounds."""
    a, b, _ = duplicate_pairs(pair_files[partition_index(task)], threshold)
    write_edges(task.output(), a, b, partitions)


def pair_rank(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A pseudo-random order of pairs that depends on the pair only (a 64-bit mix of a and b)."""
    x = a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ b.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    return x ^ (x >> np.uint64(31))


def example_pairs(pair_files: list[Path], threshold: float | None, signature_files: dict[int, Path]) -> list[dict]:
    """A sample of duplicate pairs for inspection, by similarity: the same sample for any
    partitioning (a pair found in several partitions counts once), one pair file at a time."""
    picked = []
    for path in pair_files:
        a, b, similarity = duplicate_pairs(path, threshold)
        rank = pair_rank(a, b)
        best = np.argsort(rank, kind="stable")[:EXAMPLE_PAIRS]
        picked.append((rank[best], a[best], b[best], similarity[best]))
    rank, a, b, similarity = (np.concatenate(column) for column in zip(*picked))
    _, first = np.unique(rank, return_index=True)  # sorted by rank, repeats dropped
    chosen = first[:EXAMPLE_PAIRS]
    chosen = chosen[np.lexsort((b[chosen], a[chosen], similarity[chosen]))]
    ids = np.unique(np.concatenate([a[chosen], b[chosen]]))
    names = read_records(signature_files, ids)["id"]
    name = {doc: names[i].as_py() for i, doc in enumerate(ids.tolist())}
    return [{"a": name[x], "b": name[y], "jaccard": None if np.isnan(s) else round(float(s), 4)}
            for x, y, s in zip(a[chosen].tolist(), b[chosen].tolist(), similarity[chosen].tolist())]


def build_clusters(runner: StageRunner, work: Path, cfg: MinhashConfig, pair_files: list[Path],
                   signature_files: dict[int, Path], result: tuple[ShardTask, dict]) -> None:
    """Connected components of the duplicate pairs, then what each cluster keeps: all in
    partition tasks (see `components` and `keepers`), so no task holds every pair. Rank 0
    marks the `result` task done with the summary."""
    stage = "dedup minhash: clusters"
    graph = work / "components"
    # Partitions group whole input shards (shard % count): at most one per shard.
    partitions = runner.partition_count(cfg.partitions, 2 * row_count(pair_files), EDGES_PER_PARTITION,
                                        most=len(signature_files))
    run = partial(runner.per_partition, summary=False)
    run(partial(seed_edges, pair_files=pair_files, threshold=cfg.threshold, partitions=partitions),
        len(pair_files), graph / "round-000", f"{stage}, seed edges")
    found = label_components(run, graph, partitions, stage)
    run(partial(members_partition, labels=found.labels, partitions=partitions, record_files=signature_files),
        partitions, work / "members", f"{stage}, members")
    kept = run(partial(keepers_partition, members=work / "members", priority=list(cfg.priority)),
               partitions, work / "clusters", f"{stage}, keepers")
    if runner.rank.rank == 0:
        stats = cluster_summary(kept)
        stats.update(duplicate_pairs=found.edges, component_rounds=found.rounds, cluster_partitions=partitions,
                     example_pairs=example_pairs(pair_files, cfg.threshold, signature_files))
        finish(*result, stats)
        print(f"{stage}: {stats['clusters']:,} clusters of {stats['documents_in_clusters']:,} documents from "
              f"{found.edges:,} distinct duplicate pairs; {found.rounds} rounds over {partitions} partition(s)",
              file=sys.stderr)
    runner.barrier()


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
    cfg = config_from_args(args)
    work = work_dir(args.output, "minhash")
    with StageRunner(args, discover_shards(args.input), work, asdict(cfg), code_version(__name__)) as runner:
        run_stages(args, runner, cfg, work)
    return 0


def run_stages(args, runner: StageRunner, cfg: MinhashConfig, work: Path) -> None:
    sig_dir, pairs_dir = work / "signatures", work / "pairs"
    signature_files = runner.files(sig_dir)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if "clusters" in stages and runner.rank.kind == "slurm" and runner.rank.world > 1:
        raise UserError("the clusters stage runs its rounds with barriers between them: submit it as one "
                        "Slurm task (--array=0) with --workers, or under mpiexec")
    if "signatures" in stages:
        runner.per_shard(partial(signatures_shard, cfg=cfg), sig_dir, "dedup minhash: signatures")
    if "buckets" in stages or "clusters" in stages:
        runner.shards_complete(sig_dir, "signatures")
        partitions = runner.partition_count(cfg.partitions, row_count(signature_files) * cfg.bands,
                                            KEYS_PER_PARTITION)
    if "buckets" in stages:
        if runner.is_mpi:
            from data_pipeline.dedup.mpi import exchange_buckets

            exchange_buckets(runner, signature_files, pairs_dir, cfg.window, cfg.threshold)
        else:
            runner.per_partition(partial(buckets_partition, cfg=cfg, partitions=partitions,
                                         signature_files=signature_files),
                                 partitions, pairs_dir, "dedup minhash: buckets")
    if "clusters" in stages:
        runner.partitions_complete(pairs_dir, partitions, "buckets")
        result = runner.single(work, "clusters", runner.settings)
        if result is not None:
            build_clusters(runner, work, cfg, [pairs_dir / f"part-{k:05d}.parquet" for k in range(partitions)],
                           signature_files, result)
    if "remove" in stages:
        runner.require_complete(make_tasks([Path("clusters")], work), runner.settings, "clusters")
        decision_files = sorted((work / "clusters").glob("part-*.parquet"))
        runner.per_shard(partial(remove_duplicates, decision_files=decision_files, method="minhash"),
                         location(args.output), "dedup minhash: remove")
        summary = read_marker(work, "clusters")["stats"]
        report(location(args.output), "minhash", summary, show=runner.rank.rank == 0)
