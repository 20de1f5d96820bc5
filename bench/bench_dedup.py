"""Fuzzy dedup side by side: ours vs datatrove's MinHash pipeline vs datasketch's MinHashLSH.

All tools get the same corpus (real Lee news articles and Wikipedia text, plus
documents composed of their real sentences, with injected near-duplicates: word
edits, paragraph reordering, boilerplate, truncation; see
tests/data_pipeline/dedup_corpus.py), the same shingles (word 5-grams) and the
same 14 x 8 LSH, on one core each (one process, one worker), one after the other.
Each tool runs in its own child process so that its peak RSS and CPU time are its
own; throughput is documents per CPU-second of that process (the wall time is
printed too, but on a shared machine it depends on what else runs).

Scores on the injected ground truth (pairs with true Jaccard >= 0.8):
  precision  reported duplicate pairs (our verified pairs; datatrove's .dups
             pairs; datasketch's LSH query hits) whose true Jaccard is >= 0.8
  recall     true pairs whose two documents end in one cluster
  cl-prec    all pairs inside the reported clusters with true Jaccard >= 0.8
  rm<0.5     removed documents whose Jaccard to their cluster's kept one is < 0.5

Needs `pip install datatrove datasketch spacy` (not project dependencies).
Usage: python bench/bench_dedup.py [--sizes 50000,100000] [--tools ours,datasketch,datatrove]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data_pipeline"))
import dedup_corpus as dc  # noqa: E402

TOOLS = ("ours", "datasketch", "datatrove")
BANDS, ROWS, NGRAM = 14, 8, 5


def source_texts() -> list[str]:
    """Real documents: the Lee news articles and the bundled Wikipedia articles."""
    texts = dc.real_texts()
    wiki = REPO / "tests" / "data" / "wiki-en-sample.jsonl.gz"
    if wiki.exists():
        with gzip.open(wiki, "rt", encoding="utf-8") as lines:
            texts += [json.loads(line)["text"] for line in lines if line.strip()]
    return texts


# ---------------------------------------------------------------- the tools (child processes)


def run_ours(src: Path, work: Path, n_shards: int) -> dict:
    import pyarrow.parquet as pq

    from data_pipeline.cli import main

    out = work / "ours"
    code = main(["dedup", "minhash", "--input", str(src), "--output", str(out), "--workers", "1",
                 "--executor", "local", "--bands", str(BANDS), "--rows", str(ROWS), "--ngram", str(NGRAM)])
    assert code == 0
    decisions = dc.read_decisions(out).to_pydict()
    index = {d: dc.doc_index(i) for d, i in zip(decisions["doc"], decisions["id"])}
    pairs = []
    for path in sorted((out / ".dedup/minhash/pairs").glob("*.parquet")):
        t = pq.read_table(path).to_pydict()
        pairs += [(index[a], index[b]) for a, b, j in zip(t["a"], t["b"], t["jaccard"]) if j >= 0.8]
    return {"pairs": pairs, "members": [index[d] for d in decisions["doc"]], "cluster": decisions["cluster"],
            "removed": [index[d] for d, r in zip(decisions["doc"], decisions["removed"]) if r]}


def union_find_clusters(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)])


def run_datasketch(src: Path, work: Path, n_shards: int) -> dict:
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    pairs = []
    indices = []
    for path in sorted(src.glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "text"]).to_pydict()
        for doc_id, text in zip(table["id"], table["text"]):
            words = dc.WORD.findall(text.lower())
            grams = {" ".join(words[i:i + NGRAM]).encode() for i in range(max(1, len(words) - NGRAM + 1))}
            m = MinHash(num_perm=BANDS * ROWS, seed=1)
            m.update_batch(list(grams))
            me = dc.doc_index(doc_id)
            pairs += [(min(me, o), max(me, o)) for o in lsh.query(m)]
            lsh.insert(me, m)
            indices.append(me)
    n = max(indices) + 1
    roots = union_find_clusters(n, pairs)
    in_pair = np.zeros(n, bool)
    for a, b in pairs:
        in_pair[a] = in_pair[b] = True
    members = np.flatnonzero(in_pair)
    return {"pairs": pairs, "members": members.tolist(), "cluster": roots[members].tolist(),
            "removed": members[roots[members] != members].tolist()}


def run_datatrove(src: Path, work: Path, n_shards: int) -> dict:
    import struct

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove 0.10.1 passes str to xxhash, which xxhash 4 rejects.
    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, hash_config=HashConfig(hash_fc="sha1"))
    base = work / "datatrove"

    def reader():
        return ParquetReader(str(src), text_key="text", id_key="id")

    stages = [
        ([reader(), MinhashDedupSignature(output_folder=str(base / "sigs"), config=cfg)], n_shards),
        ([MinhashDedupBuckets(input_folder=str(base / "sigs"), output_folder=str(base / "buckets"), config=cfg)],
         BANDS),
        ([MinhashDedupCluster(input_folder=str(base / "buckets"), output_folder=str(base / "remove"), config=cfg,
                              save_cluster_id=True)], 1),
        ([reader(), MinhashDedupFilter(input_folder=str(base / "remove")),
          ParquetWriter(output_folder=str(base / "out"))], n_shards),
    ]
    for pipeline, tasks in stages:
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(base / "logs"),
                              skip_completed=False).run()

    def to_index(shard: int, row: int) -> int:  # shards hold documents dealt round-robin
        return shard + row * n_shards

    pairs = []
    for path in sorted((base / "buckets").glob("*.dups")):
        data = np.frombuffer(path.read_bytes(), dtype="<u4").reshape(-1, 4)
        pairs += [(to_index(f1, d1), to_index(f2, d2)) for f1, d1, f2, d2 in data.tolist()]
    members, cluster, removed = [], [], []
    for path in sorted((base / "remove").glob("*.clusters")):
        shard = int(path.name.split(".")[0])
        data = np.frombuffer(path.read_bytes(), dtype="<u4").reshape(-1, 2)
        members += [to_index(shard, d) for d in data[:, 0].tolist()]
        cluster += data[:, 1].tolist()
    for path in sorted((base / "remove").glob("*.remove")):
        shard = int(path.name.split(".")[0])
        removed += [to_index(shard, d) for d in struct.unpack(f"<{path.stat().st_size // 4}I", path.read_bytes())]
    return {"pairs": pairs, "members": members, "cluster": cluster, "removed": removed}


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries the forking parent's
    high-water mark into the child's ru_maxrss at exec, so it would count the corpus."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status")


def child(tool: str, src: Path, work: Path, result: Path, n_shards: int) -> None:
    start = time.perf_counter()
    out = {"ours": run_ours, "datasketch": run_datasketch, "datatrove": run_datatrove}[tool](src, work, n_shards)
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mib"] = peak_rss_mib()
    result.write_text(json.dumps(out))


# ---------------------------------------------------------------- the parent


def measure(tool: str, src: Path, work: Path, n_shards: int) -> tuple[dict, float, float]:
    """Run one tool in a child process; (its results, its peak RSS in MiB, its CPU seconds)."""
    result = work / f"{tool}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--child", tool, "--src", str(src), "--work", str(work),
                             "--result", str(result), "--shards", str(n_shards)],
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{tool}.log", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{tool} failed, see {work / f'{tool}.log'}")
    out = json.loads(result.read_text())
    return out, out["peak_rss_mib"], usage.ru_utime + usage.ru_stime


def score(corpus: dc.Corpus, out: dict) -> dc.Scores:
    n = len(corpus.texts)
    cluster = np.full(n, -1, dtype=np.int64)
    cluster[np.array(out["members"], dtype=np.int64)] = out["cluster"]
    removed = np.zeros(n, dtype=bool)
    removed[np.array(out["removed"], dtype=np.int64)] = True
    return dc.evaluate(corpus, np.array(out["pairs"], dtype=np.int64).reshape(-1, 2), cluster, removed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50000,100000", help="corpus sizes in documents")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--shard-docs", type=int, default=10_000, help="documents per input shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datatrove-all-sizes", action="store_true",
                        help="run datatrove (~10x slower than the others) at every size, not only the largest")
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.src, args.work, args.result, args.shards)
    texts = source_texts()
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        start = time.perf_counter()
        corpus = dc.build(size, seed=args.seed, texts=texts)
        n_shards = max(1, len(corpus.texts) // args.shard_docs)
        work = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
        dc.write_shards(corpus, work / "in", n_shards)
        words = sum(len(dc.WORD.findall(t)) for t in corpus.texts[:2000]) / min(2000, len(corpus.texts))
        print(f"corpus: {len(corpus.texts):,} documents ({words:.0f} words on average) in {n_shards} shards, "
              f"{len(corpus.true_pairs()):,} true pairs >= 0.8; built in {time.perf_counter() - start:.0f} s",
              flush=True)
        for tool in args.tools.split(","):
            if tool == "datatrove" and size != max(sizes) and not args.datatrove_all_sizes:
                continue
            out, rss, cpu = measure(tool, work / "in", work, n_shards)
            s = score(corpus, out)
            rows.append((len(corpus.texts), tool, len(corpus.texts) / cpu, out["seconds"], rss, s))
            print(f"  {tool:<10} {rows[-1][2]:>8,.0f} docs/CPU-s {out['seconds']:>7.1f} s wall {rss:>7,.0f} MiB  "
                  f"precision {s.precision:.3f} recall {s.recall:.3f} cl-prec {s.cluster_pair_precision:.3f} "
                  f"rm<0.5 {s.removed_below} removed {s.removed:,}", flush=True)
        shutil.rmtree(work)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("\n| documents | tool | docs per CPU-second | wall seconds | peak RSS MiB | precision | recall | cluster-pair "
          "precision | removed < 0.5 J | removed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, tool, rate, secs, rss, s in rows:
        print(f"| {n:,} | {tool} | {rate:,.0f} | {secs:.1f} | {rss:,.0f} | {s.precision:.3f} | {s.recall:.3f} | "
              f"{s.cluster_pair_precision:.3f} | {s.removed_below} | {s.removed:,} |")


if __name__ == "__main__":
    main()
