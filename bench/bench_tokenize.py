"""Benchmark `gpt-data tokenize` against the tokenizer library's own batch encode, and time the
index build of a 1B-token blended dataset.

Part 1 (throughput): real text (the bundled CCNet, Wikipedia and Lee news samples,
repeated to --text-mb) in --shards parquet shards. The ceiling is the library alone, in a
fresh process, on the same texts already loaded into memory (tiktoken's `encode_ordinary_batch`,
sentencepiece's `encode`), 1 and 2 threads, and 2 single-threaded processes at once on
half the shards each: the scaling this machine allows 2 workers (its cores share caches
and memory bandwidth). `gpt-data tokenize` runs as a CLI process with 1 and 2
workers and includes process start, parquet reading, .bin/.idx writing and the merge.
Besides wall time, CPU time is reported (the ceiling's encode call alone; the whole CLI
process tree for ours): on a shared machine it is the steadier per-core measure.

Part 2 (index build at 1B tokens): two synthetic uint16 sources (0.7B + 0.3B tokens,
document lengths drawn from a log-normal with mean ~1000 tokens) are written with our
writer as 8 parts and merged; then megatron-core builds the 0.7/0.3 blended GPTDataset
(sequence length 2048, one pass over the budget), cold and from its cache. The files
are deleted afterwards.

    python bench/bench_tokenize.py [--text-mb 100] [--index-tokens 1e9] [--skip-index]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))

from data_pipeline import indexed  # noqa: E402
from data_pipeline.tokenizer_train import train_tokenizer  # noqa: E402
from data_pipeline.tokenizers import load_tokenizer  # noqa: E402


def real_texts() -> list[str]:
    texts = []
    for name in ("ccnet-head-0091.jsonl.gz", "wiki-en-sample.jsonl.gz"):
        with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    texts += [line.strip() for line in (DATA / "lee_background.cor").read_text().splitlines() if line.strip()]
    return texts


def build_corpus(root: Path, megabytes: float, shards: int = 4) -> list[str]:
    base = real_texts()
    texts, size = [], 0
    while size < megabytes * 1e6:
        for t in base:
            texts.append(t)
            size += len(t.encode())
    for i in range(shards):
        part = texts[i::shards]
        pq.write_table(pa.table({"id": [str(j) for j in range(len(part))], "text": part}),
                       root / f"part-{i}.parquet")
    return texts


def ceiling_child(spec: str, corpus: Path, threads: int, part: str) -> None:
    """In a fresh process: load the texts of shards k::n (`part` "k/n"), then time the
    library's batch encode alone."""
    k, n = (int(v) for v in part.split("/"))
    files = sorted(corpus.glob("*.parquet"))[k::n]
    texts = [t for p in files for t in pq.read_table(p, columns=["text"])["text"].to_pylist()]
    tok = load_tokenizer(spec)
    start, cpu_start = time.perf_counter(), time.process_time()
    ids = tok.encode_batch(texts, num_threads=threads)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "tokens": sum(map(len, ids)) + len(ids),  # + EODs
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def ceiling(spec: str, corpus: Path, threads: int, processes: int = 1) -> dict:
    """The library's own encode: `threads` threads in one process, or `processes` single-threaded
    processes at once on disjoint halves of the shards (what 2 workers could reach on this
    machine: cores share caches and memory bandwidth). Seconds = the slowest process's encode."""
    children = [subprocess.Popen([sys.executable, __file__, "--ceiling-child", spec, str(corpus), str(threads),
                                  f"{k}/{processes}"], stdout=subprocess.PIPE, text=True) for k in range(processes)]
    results = [json.loads(child.communicate()[0].splitlines()[-1]) for child in children]
    return {"seconds": max(r["seconds"] for r in results), "cpu_seconds": sum(r["cpu_seconds"] for r in results),
            "tokens": sum(r["tokens"] for r in results), "max_rss_mb": max(r["max_rss_mb"] for r in results)}


def run_cli(spec: str, corpus: Path, out: Path, workers: int) -> dict:
    """One run of the real CLI (a fresh process): wall seconds, tokens, stats."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "data_pipeline.cli", "tokenize", "--input", str(corpus), "--output",
           str(out / "t"), "--tokenizer", spec, "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    stats = json.loads((out / "t.stats.json").read_text())
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": stats["summary"]["tokens"],
            "busy_seconds": stats["stats"]["seconds"],
            "max_rss_mb": stats["stats"]["max_rss_mb"], "bin": (out / "t.bin").read_bytes()}


def bench_throughput(args: argparse.Namespace, work: Path) -> None:
    """Ceilings and CLI runs are interleaved, best of `repeats` each, so that load from other
    processes on a shared machine hits both sides alike."""
    corpus = work / "corpus"
    corpus.mkdir()
    texts = build_corpus(corpus, args.text_mb, args.shards)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    specs = ["gpt2"]
    if not args.skip_sentencepiece:
        sp = train_tokenizer(corpus, work / "sp32k", vocab_size=32000, sample_docs=5000, threads=2)
        specs.append(f"sentencepiece:{sp.path}")
    print(f"\n## tokenize throughput: {len(texts):,} real documents, {mb:.1f} MB of text, {args.shards} parquet shards, "
          f"{os.cpu_count()} cores, best of {args.repeats} interleaved runs, "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    print("| tokenizer | run | wall s | tokens/s | tokens/s per core | per core vs 1-thread ceiling "
          "| busy tokens/s per worker | CPU s | tokens per CPU-s | vs ceiling per CPU-s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in specs:
        name = spec.split(":")[0]
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeats):
            for n in (1, 2):
                runs.setdefault(("ceiling", n), []).append(ceiling(spec, corpus, n))
                runs.setdefault(("cli", n), []).append(run_cli(spec, corpus, work / f"out-{name}-{n}", n))
            runs.setdefault(("processes", 2), []).append(ceiling(spec, corpus, 1, processes=2))
        best = {key: min(values, key=lambda r: r["seconds"]) for key, values in runs.items()}
        base = best[("ceiling", 1)]["tokens"] / best[("ceiling", 1)]["seconds"]
        cpu_base = max(r["tokens"] / r["cpu_seconds"] for r in runs[("ceiling", 1)])
        for (kind, n), run in sorted(best.items()):
            rate = run["tokens"] / run["seconds"]
            if kind == "ceiling":
                label, busy, rss = f"library batch encode, {n} thread(s), texts preloaded", "-", run["max_rss_mb"]
            elif kind == "processes":
                label, busy, rss = ("library encode in 2 processes at once, half the shards each, texts preloaded",
                                    "-", f"{run['max_rss_mb']:.0f} per process")
            else:
                label = f"gpt-data tokenize --workers {n} (CLI process, end to end)"
                busy, rss = f"{run['tokens'] / run['busy_seconds']:,.0f}", f"{run['max_rss_mb']:.0f} per worker"
            cpu_rate = max(r["tokens"] / r["cpu_seconds"] for r in runs[(kind, n)])
            print(f"| {name} | {label} | {run['seconds']:.2f} | {rate:,.0f} | {rate / n:,.0f} | {rate / n / base:.0%} "
                  f"| {busy} | {run['cpu_seconds']:.1f} | {cpu_rate:,.0f} | {cpu_rate / cpu_base:.0%} "
                  f"| {rss if isinstance(rss, str) else f'{rss:.0f}'} |")
        assert best[("cli", 1)]["bin"] == best[("cli", 2)]["bin"], "output differs between 1 and 2 workers"
        ours = best[("cli", 1)]["seconds"] / best[("cli", 2)]["seconds"]
        machine = best[("ceiling", 1)]["seconds"] / best[("processes", 2)]["seconds"]
        print(f"\n{name}, 1 -> 2 workers: ours {ours:.2f}x faster (wall, end to end); the library itself in 2 "
              f"processes {machine:.2f}x: ours has {ours / machine:.0%} of the scaling this machine gives")
        fixed_cost(spec, name, texts[0], work, runs, cpu_base)


def fixed_cost(spec: str, name: str, text: str, work: Path, runs: dict, cpu_base: float) -> None:
    """CPU a run spends whatever its size (interpreter, imports, tokenizer load, spawning workers),
    measured on one-document shards (as many shards as the corpus), and the per-CPU-second
    rate once it is taken out."""
    tiny = work / "tiny"
    tiny.mkdir(exist_ok=True)
    for i in range(len(list((work / "corpus").glob("*.parquet")))):
        pq.write_table(pa.table({"id": ["0"], "text": [text]}), tiny / f"part-{i}.parquet")
    for n in (1, 2):
        fixed = min(run_cli(spec, tiny, work / f"tiny-{name}-{n}", n)["cpu_seconds"] for _ in range(2))
        marginal = max(r["tokens"] / (r["cpu_seconds"] - fixed) for r in runs[("cli", n)])
        print(f"\n{name}, --workers {n}: fixed cost {fixed:.2f} CPU-s per run; without it "
              f"{marginal:,.0f} tokens per CPU-s = {marginal / cpu_base:.0%} of the ceiling")


def synth_source(prefix: Path, tokens: int, parts: int, rng: np.random.Generator) -> tuple[float, float]:
    """Write `tokens` synthetic tokens as `parts` shards and merge them; return (write s, merge s)."""
    start = time.perf_counter()
    part_prefixes = []
    per_part = tokens // parts
    for p in range(parts):
        lengths = np.maximum(1, rng.lognormal(mean=6.4, sigma=1.0, size=per_part // 500).astype(np.int64))
        lengths = lengths[np.cumsum(lengths) <= per_part]
        lengths = np.append(lengths, per_part - lengths.sum()) if lengths.sum() < per_part else lengths
        part = prefix.parent / f"{prefix.name}.part{p}"
        with indexed.TokenShardWriter(part, np.uint16) as writer:
            for first in range(0, len(lengths), 100_000):
                chunk = lengths[first:first + 100_000]
                writer.add_array(rng.integers(0, 50256, size=int(chunk.sum()), dtype=np.uint16), chunk)
        part_prefixes.append(part)
    written = time.perf_counter() - start
    start = time.perf_counter()
    indexed.merge(part_prefixes, prefix)
    merged = time.perf_counter() - start
    for part in part_prefixes:
        indexed.bin_path(part).unlink()
        indexed.idx_path(part).unlink()
    return written, merged


def bench_index(args: argparse.Namespace, work: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.distributed as dist
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    total = int(args.index_tokens)
    rng = np.random.default_rng(0)
    print(f"\n## 1B-token blended dataset: index build ({total:,} tokens, 2 sources 0.7/0.3, seq 2048)\n")
    print("| step | seconds |")
    print("|---|---|")
    prefixes = []
    for name, share in (("a", 0.7), ("b", 0.3)):
        prefix = work / f"synth_{name}"
        written, merged = synth_source(prefix, int(total * share), 8, rng)
        index = indexed.read_index(prefix)
        print(f"| source {name}: synthesise {index.tokens:,} random tokens / {index.documents:,} docs, "
              f"write as 8 parts (RNG-bound) | {written:.1f} |")
        print(f"| source {name}: merge 8 parts into one prefix (ours) | {merged:.1f} |")
        prefixes.append(str(prefix))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)

    class Tok:
        eod, vocab_size = 50256, 50257
        unique_identifiers = {"eod": 50256, "vocab_size": 50257}

    samples = total // 2048
    for label in ("megatron-core BlendedMegatronDatasetBuilder, cold (builds + caches indices)",
                  "megatron-core BlendedMegatronDatasetBuilder, from cache"):
        config = GPTDatasetConfig(random_seed=1234, sequence_length=2048, blend=(prefixes, [0.7, 0.3]),
                                  split="100,0,0", path_to_cache=str(work / "cache"), tokenizer=Tok(),
                                  reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                                  create_attention_mask=False)
        start = time.perf_counter()
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()
        seconds = time.perf_counter() - start
        assert len(train[len(train) - 1]["tokens"]) == 2048  # the last sample is readable
        print(f"| {label}: {len(train):,} samples, {len(list((work / 'cache').iterdir()))} cache files | "
              f"{seconds:.2f} |")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-mb", type=float, default=100.0, help="text size for the throughput runs")
    parser.add_argument("--index-tokens", type=float, default=1e9, help="tokens in the blended dataset")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-sentencepiece", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument("--shards", type=int, default=16,
                        help="parquet shards of the corpus (default %(default)s: several per worker, as in real runs)")
    parser.add_argument("--ceiling-child", nargs=4, metavar=("SPEC", "CORPUS", "THREADS", "PART"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir, deleted afterwards)")
    args = parser.parse_args()
    if args.ceiling_child:
        spec, corpus, threads, part = args.ceiling_child
        return ceiling_child(spec, Path(corpus), int(threads), part)
    work = Path(tempfile.mkdtemp(prefix="bench_tokenize_", dir=args.workdir))
    try:
        if not args.skip_throughput:
            bench_throughput(args, work)
        if not args.skip_index:
            bench_index(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
