"""Memory of the minhash clusters stage: partitioned rounds on disk vs every pair in one process.

The input is synthetic but shaped like a real run, so that sizes can grow past what the
bundled text gives: S input shards of --rows documents (47-character ids, three sources,
a quality score); 30% of the documents sit in clusters of 4 spread over random shards
(each cluster a clique of 6 verified pairs), and each pair is stored by 3 bucket
partitions, as near-identical documents share most band keys. Both sides read the same
files and apply the same keeper rule:

- ours: `gpt-data dedup minhash --stage clusters` with one worker and --partitions S
  (seed edges, large-star/small-star rounds, members, keepers; see
  data_pipeline/dedup/components.py);
- one process: all pairs at once, np.unique, scipy's connected_components, the records
  of every clustered document, then `removal.decide` (the design this stage replaced;
  datatrove's MinhashDedupCluster likewise holds every pair in one union-find).

Each side runs in its own child process (peak RSS = its VmHWM); their decisions are
asserted equal. Usage: python bench/bench_dedup_clusters.py [--shards 4,16] [--rows 250000]
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.dedup.layout import doc_ids  # noqa: E402
from data_pipeline.dedup.pairs import PAIR_SCHEMA  # noqa: E402
from data_pipeline.dedup.stages import StageRunner, partition_inputs  # noqa: E402
from data_pipeline.executor import finish, made_from, make_tasks  # noqa: E402
from data_pipeline.shards import DOCUMENT_SCHEMA, ShardWriter  # noqa: E402
from data_pipeline.stats import peak_rss_mb  # noqa: E402

CLUSTER_SIZE, CLUSTERED_SHARE, COPIES = 4, 0.3, 3
SOURCES = np.array(["common-crawl", "wikipedia", "books"])


def build(root: Path, shards: int, rows: int, seed: int = 0) -> dict:
    """Input placeholders, signature record files and pair files, with their completion markers."""
    rng = np.random.default_rng(seed)
    work = root / "out" / ".dedup" / "minhash"
    for shard in range(shards):
        name = f"shard-{shard:03d}"
        with ShardWriter(root / "in" / f"{name}.parquet", DOCUMENT_SCHEMA):
            pass  # the clusters stage reads only the names of the inputs
        records = pa.table({"id": [f"{name}-{row:08d}-" + "x" * 24 for row in range(rows)],
                            "source": SOURCES[rng.integers(0, 3, rows)],
                            "quality": rng.random(rows)})
        with ShardWriter(work / "signatures" / f"{name}.parquet", records.schema) as out:
            out.write_table(records)
    everyone = np.concatenate([doc_ids(s, np.arange(rows)) for s in range(shards)])
    clustered = rng.permutation(everyone)[:int(CLUSTERED_SHARE * len(everyone)) // CLUSTER_SIZE * CLUSTER_SIZE]
    groups = np.sort(clustered.reshape(-1, CLUSTER_SIZE), axis=1)
    i, j = np.triu_indices(CLUSTER_SIZE, 1)
    pairs = np.stack([groups[:, i].ravel(), groups[:, j].ravel()], axis=1)
    stored = [[] for _ in range(shards)]
    first = rng.integers(0, shards, len(pairs))
    for copy in range(min(COPIES, shards)):  # distinct partitions per pair
        owner = (first + copy) % shards
        for partition in range(shards):
            stored[partition].append(pairs[owner == partition])
    for partition, parts in enumerate(stored):
        mine = np.concatenate(parts)
        name = f"part-{partition:05d}"
        with ShardWriter(work / "pairs" / f"{name}.parquet", PAIR_SCHEMA) as out:
            out.write_table(pa.table({"a": mine[:, 0], "b": mine[:, 1],
                                      "jaccard": rng.uniform(0.8, 1.0, len(mine)).astype(np.float32)}))
    mark_earlier_stages_done(root, shards)
    return {"documents": len(everyone), "clustered": len(clustered), "pairs": len(pairs),
            "stored": sum(len(np.concatenate(p)) for p in stored)}


def ours_argv(root: Path, shards: int) -> list[str]:
    return ["dedup", "minhash", "--input", str(root / "in"), "--output", str(root / "out"), "--stage", "clusters",
            "--partitions", str(shards), "--workers", "1", "--executor", "local"]


def mark_earlier_stages_done(root: Path, shards: int) -> None:
    """Completion markers of the faked signatures and buckets stages, recording what `ours_argv`'s
    run expects them to be made from (its settings and inputs), so that it takes them as done."""
    from dataclasses import asdict

    from data_pipeline.cli import build_parser
    from data_pipeline.dedup.fuzzy import config_from_args
    from data_pipeline.dedup.layout import work_dir
    from data_pipeline.shards import code_version, discover_shards

    args = build_parser().parse_args(ours_argv(root, shards))
    work = work_dir(args.output, "minhash")
    runner = StageRunner(args, discover_shards(args.input), work, asdict(config_from_args(args)),
                         code_version("data_pipeline.dedup.fuzzy"))
    for task in make_tasks(runner.inputs, work / "signatures", args.input):
        finish(task, made_from(task, runner.settings, runner.depends, runner.code), {})
    for task in make_tasks(partition_inputs(shards), work / "pairs"):
        finish(task, made_from(task, runner.partition_options(shards), runner.depends, runner.code), {})


def run_ours(root: Path, shards: int) -> None:
    from data_pipeline.cli import main

    assert main(ours_argv(root, shards)) == 0


def run_in_memory(root: Path, shards: int) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from data_pipeline.dedup.removal import decide, read_records

    work = root / "out" / ".dedup" / "minhash"
    table = pa.concat_tables([pq.read_table(p) for p in sorted((work / "pairs").glob("part-*.parquet"))])
    pairs = np.stack([table["a"].to_numpy(), table["b"].to_numpy()], axis=1)[table["jaccard"].to_numpy() >= 0.8]
    ids, index = np.unique(pairs.ravel(), return_inverse=True)
    index = index.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(index), np.int8), (index[:, 0], index[:, 1])), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(smallest, labels, ids)
    files = {s: work / "signatures" / f"shard-{s:03d}.parquet" for s in range(shards)}
    decisions = decide(ids, smallest[labels], read_records(files, ids), [])
    pq.write_table(decisions, root / "in_memory.parquet")


def child(side: str, root: Path, shards: int) -> dict:
    """Run one side in a fresh process: wall s, and the CPU s and peak RSS MB it reports
    (VmHWM: ru_maxrss would include this parent's peak, carried over the exec)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", side, "--dir", str(root), "--shards", str(shards)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{side} failed:\n{err.decode()[-2000:]}")
    rss, cpu = (float(v) for v in out.decode().split()[-2:])
    return {"wall": time.perf_counter() - start, "cpu": cpu, "rss": rss}


def same_decisions(root: Path) -> int:
    ours = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(str(root / "out/.dedup/minhash/clusters/part-*.parquet")))])
    ours, reference = ours.sort_by("doc"), pq.read_table(root / "in_memory.parquet")
    for column in ("doc", "cluster", "keeper", "removed"):
        assert ours[column].equals(reference[column]), column
    return ours.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="4,16", help="input shards per size (default %(default)s)")
    parser.add_argument("--rows", type=int, default=250_000, help="documents per shard (default %(default)s)")
    parser.add_argument("--child", choices=("ours", "in-memory", "imports"))
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.child:
        shards = int(args.shards)
        if args.child == "ours":
            run_ours(args.dir, shards)
        elif args.child == "in-memory":
            run_in_memory(args.dir, shards)
        else:
            import data_pipeline.cli  # noqa: F401
            import scipy.sparse.csgraph  # noqa: F401
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(peak_rss_mb(), usage.ru_utime + usage.ru_stime)
        return
    print(f"## minhash clusters stage: {args.rows:,} documents per shard, {CLUSTERED_SHARE:.0%} in clusters of "
          f"{CLUSTER_SIZE}, each pair stored {COPIES}x, load average {os.getloadavg()[0]:.1f}\n")
    print("| input shards | documents | clustered docs | distinct pairs | stored pairs | run | wall s | CPU s | "
          "peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for shards in [int(s) for s in args.shards.split(",")]:
        with tempfile.TemporaryDirectory(prefix="bench_clusters_") as tmp:
            root = Path(tmp)
            sizes = build(root, shards, args.rows)
            head = (f"| {shards} | {sizes['documents']:,} | {sizes['clustered']:,} | {sizes['pairs']:,} | "
                    f"{sizes['stored']:,}")
            for side, label in (("imports", "python + imports only"), ("ours", "ours: `--stage clusters`"),
                                ("in-memory", "all pairs in one process (scipy)")):
                m = child(side, root, shards)
                print(f"{head} | {label} | {m['wall']:.1f} | {m['cpu']:.1f} | {m['rss']:,.0f} |", flush=True)
            assert same_decisions(root) == sizes["clustered"]
    print("\nBoth sides' decisions (cluster, keeper, removed per document) are equal.")


if __name__ == "__main__":
    main()
