"""`gpt-data decontaminate`: remove benchmark text from training documents, as GPT-3 did.

GPT-3 (section 4, Appendix C) removed every n-gram that also occurs in a benchmark
together with 200 characters on each side, kept the pieces in between only if they
are at least 200 characters long, dropped a document that fell into more than 10
pieces, and ignored n-grams found in more than 10 training documents (common
phrases, not leaked test data). n is chosen per benchmark: min(13, the 5th
percentile of its examples' lengths in words), so a benchmark of short examples is
still checked. Words are compared after lower-casing and folding punctuation and
whitespace (the dedup normalisation).

Two resumable per-shard passes: ``count`` (in how many training documents each
benchmark n-gram occurs) and ``clean`` (apply the rules with the summed counts).
Contamination is reported per benchmark: its n, the examples found in the training
data (count and indices), documents touched and dropped, characters removed.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import json
from functools import partial
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import xxhash
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.dedup.layout import work_dir
from data_pipeline.dedup.text import ngrams, words
from data_pipeline.document import Document, extend_schema
from common.errors import UserError
from common.options import add_arguments
from data_pipeline.dedup.stages import StageRunner, add_to_stats
from data_pipeline.executor import ShardTask, add_executor_args
from data_pipeline.remote import location, open_input
from data_pipeline.shards import ShardWriter, code_version, discover_shards, read_documents, read_schema
from data_pipeline.stats import Stats

BATCH = 512
GPT3_NGRAM = 13
INDEX_SCHEMA = pa.schema([pa.field("hash", pa.uint64()), pa.field("benchmark", pa.int32()),
                          pa.field("example", pa.int64())])
COUNT_SCHEMA = pa.schema([pa.field("hash", pa.uint64()), pa.field("documents", pa.int64())])
HIT_SCHEMA = pa.schema([pa.field("benchmark", pa.int32()), pa.field("example", pa.int64())])


class Rules:
    """GPT-3's decontamination rules (defaults from the paper)."""

    def __init__(self, window: int = 200, min_fragment: int = 200, max_pieces: int = 10, max_documents: int = 10):
        self.window, self.min_fragment = window, min_fragment
        self.max_pieces, self.max_documents = max_pieces, max_documents

    def clean(self, text: str, spans: list[tuple[int, int]]) -> tuple[str | None, str]:
        """(cleaned text or None if the document goes, reason) for overlaps at char `spans`."""
        cut: list[list[int]] = []
        for start, end in sorted(spans):
            start, end = max(0, start - self.window), min(len(text), end + self.window)
            if cut and start <= cut[-1][1]:
                cut[-1][1] = max(cut[-1][1], end)
            else:
                cut.append([start, end])
        bounds = [0] + [x for span in cut for x in span] + [len(text)]
        fragments = [text[bounds[i]:bounds[i + 1]].strip() for i in range(0, len(bounds), 2)]
        pieces = [f for f in fragments if len(f) >= self.min_fragment]
        if len(pieces) > self.max_pieces:
            return None, "too_many_pieces"
        if not pieces:
            return None, "nothing_left"
        return "\n\n".join(pieces), "cleaned"


# ---------------------------------------------------------------- benchmark index


def example_text(record, fields: list[str]) -> str:
    """All string values of an evaluation example (or only `fields`), one per line."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        values = [record.get(f) for f in fields] if fields else list(record.values())
        return "\n".join(example_text(v, []) for v in values if v is not None)
    if isinstance(record, list):
        return "\n".join(example_text(v, []) for v in record)
    return ""


def benchmark_name(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_benchmarks(path: str, fields: list[str]) -> dict[str, list[str]]:
    """Example texts per benchmark, from one JSONL(.gz) file or a directory of them."""
    files = discover_shards(path, (".jsonl", ".jsonl.gz"))
    benchmarks: dict[str, list[str]] = {}
    for file in files:
        opener = gzip.open if file.name.endswith(".gz") else open
        examples = benchmarks.setdefault(benchmark_name(file), [])
        with opener(file, "rt", encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    examples.append(example_text(json.loads(line), fields))
                except json.JSONDecodeError as err:
                    raise UserError(f"{file}:{line_no}: not a JSON line ({err.msg})") from None
    return benchmarks


def gpt3_ngram(lengths: np.ndarray) -> int:
    """GPT-3's n for a benchmark whose examples have `lengths` words: min(13, 5th percentile),
    the percentile numpy's default (linear interpolation) rounded down, so that at least 95%
    of the examples have an n-gram; at least 1 (13 for a benchmark without examples)."""
    if not len(lengths):
        return GPT3_NGRAM
    return max(1, min(GPT3_NGRAM, int(np.percentile(lengths, 5))))


def build_index(benchmarks: dict[str, list[str]], ngram: int | None) -> tuple[pa.Table, dict]:
    """(hash, benchmark, example) for every benchmark n-gram, and per benchmark its n (`ngram`,
    or GPT-3's rule when None) and sizes. The n-gram hashes include n, so one index holds all n."""
    hashes, bench, example, sizes = [], [], [], {}
    for b, (name, texts) in enumerate(sorted(benchmarks.items())):
        w = words(texts)
        lengths = np.bincount(w.doc, minlength=len(texts))
        n = ngram or gpt3_ngram(lengths)
        grams = ngrams(w, n, len(texts), short_texts=False)
        hashes.append(grams.hashes)
        bench.append(np.full(len(grams.hashes), b, dtype=np.int32))
        example.append(grams.doc)
        sizes[name] = {"ngram": n, "examples": len(texts), "ngrams": int(len(np.unique(grams.hashes))),
                       "examples_shorter_than_ngram": int((lengths < n).sum())}
    table = pa.table({"hash": np.concatenate(hashes), "benchmark": np.concatenate(bench),
                      "example": np.concatenate(example)}, schema=INDEX_SCHEMA)
    return table.sort_by("hash"), sizes


@functools.cache
def load_index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    return table["hash"].to_numpy(), table["benchmark"].to_numpy(), table["example"].to_numpy()


# ---------------------------------------------------------------- per-shard passes


@dataclass
class Matches:
    """Benchmark n-grams found in a batch of texts: hash, text index and character span of each."""

    hashes: np.ndarray
    doc: np.ndarray
    starts: np.ndarray  # first character of the n-gram's first word
    ends: np.ndarray  # end of its last word

    def __getitem__(self, keep: np.ndarray) -> Matches:
        return Matches(self.hashes[keep], self.doc[keep], self.starts[keep], self.ends[keep])


def matches(texts: list[str], index_hashes: np.ndarray, ngram_sizes: list[int]) -> Matches:
    """The n-grams of a batch, for every n in `ngram_sizes`, that are in the index."""
    w = words(texts)
    found = []
    for n in ngram_sizes:
        grams = ngrams(w, n, len(texts), short_texts=False)
        pos = np.searchsorted(index_hashes, grams.hashes)
        pos[pos == len(index_hashes)] = 0
        hit = np.flatnonzero(index_hashes[pos] == grams.hashes) if len(index_hashes) else np.zeros(0, np.int64)
        first = grams.first_word[hit]
        found.append((grams.hashes[hit], grams.doc[hit], w.starts[first], w.ends[first + n - 1]))
    return Matches(*(np.concatenate(column) for column in zip(*found)))


def count_shard(task: ShardTask, stats: Stats, *, index_path: str, ngram_sizes: list[int]) -> None:
    """In how many of this shard's documents each benchmark n-gram occurs."""
    index_hashes = load_index(index_path)[0]
    docs = read_documents(task.path, stats)
    found = []
    while batch := list(islice(docs, BATCH)):
        hits = matches([d.text for d in batch], index_hashes, ngram_sizes)
        pairs = np.unique(np.stack([hits.doc.astype(np.uint64), hits.hashes], axis=1), axis=0)
        found.append(pairs[:, 1])
        stats.add("documents_in", n=len(batch))
    hashes, counts = np.unique(np.concatenate(found) if found else np.zeros(0, np.uint64), return_counts=True)
    with ShardWriter(task.output(), COUNT_SCHEMA) as out:
        out.write_table(pa.table({"hash": hashes, "documents": counts}, schema=COUNT_SCHEMA))


def frequent_ngrams(count_dir: Path, names: list[str], max_documents: int) -> np.ndarray:
    """Benchmark n-grams found in more than `max_documents` training documents (sorted)."""
    tables = [pq.read_table(count_dir / f"{name}.parquet") for name in names]
    table = pa.concat_tables(tables) if tables else COUNT_SCHEMA.empty_table()
    totals = table.group_by("hash").aggregate([("documents", "sum")])
    return np.sort(totals.filter(pc.greater(totals["documents_sum"], max_documents))["hash"].to_numpy())


def clean_shard(task: ShardTask, stats: Stats, *, index_path: str, ngram_sizes: list[int], frequent: np.ndarray,
                rules: Rules, names: list[str]) -> None:
    """Apply the rules to one shard; dropped documents go to removed/ with the reason."""
    index_hashes, index_bench, index_example = load_index(index_path)
    schema = read_schema(task.path)
    removed_schema = extend_schema(schema, removed_by=pa.string(), contaminated_by=pa.string())
    hits: set[tuple[int, int]] = set()
    docs = read_documents(task.path, stats)
    with ShardWriter(task.output(), schema) as kept, \
            ShardWriter(task.output(subdir="removed"), removed_schema) as dropped, \
            ShardWriter(task.output(".parquet", subdir=".hits"), HIT_SCHEMA) as hit_out:
        while batch := list(islice(docs, BATCH)):
            found = matches([d.text for d in batch], index_hashes, ngram_sizes)
            found = found[~np.isin(found.hashes, frequent)]
            for i, doc in enumerate(batch):
                mine = found[found.doc == i]
                stats.add("documents_in")
                if len(mine.hashes) == 0:
                    write_kept(kept, doc, stats)
                    continue
                spans = list(zip(mine.starts.tolist(), mine.ends.tolist()))
                benches = contamination(mine.hashes, index_hashes, index_bench, index_example, hits)
                for b in benches:
                    stats.add("contamination", names[b], "documents")
                text, reason = rules.clean(doc.text, spans)
                stats.add("decontaminate", reason)
                if text is None:
                    doc.metadata.update(removed_by=f"decontaminate:{reason}",
                                        contaminated_by=",".join(names[b] for b in benches))
                    dropped.write(doc)
                    stats.add("removed", f"decontaminate:{reason}")
                    for b in benches:
                        stats.add("contamination", names[b], "documents_dropped")
                else:
                    stats.add("chars_removed", n=len(doc.text) - len(text))
                    doc.text = text
                    write_kept(kept, doc, stats)
        if hits:
            bench, example = zip(*sorted(hits))
            hit_out.write_table(pa.table({"benchmark": bench, "example": example}, schema=HIT_SCHEMA))


def write_kept(writer: ShardWriter, doc: Document, stats: Stats) -> None:
    writer.write(doc)
    stats.add("documents_out")
    stats.add("bytes_out", n=len(doc.text.encode("utf-8")))


def contamination(doc_hashes: np.ndarray, index_hashes: np.ndarray, index_bench: np.ndarray,
                  index_example: np.ndarray, hits: set[tuple[int, int]]) -> list[int]:
    """Benchmarks whose n-grams these are; records the (benchmark, example) pairs in `hits`."""
    lo = np.searchsorted(index_hashes, doc_hashes, side="left")
    hi = np.searchsorted(index_hashes, doc_hashes, side="right")
    rows = np.concatenate([np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist())])
    hits.update(zip(index_bench[rows].tolist(), index_example[rows].tolist()))
    return sorted(set(index_bench[rows].tolist()))


# ---------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    if args.ngram is not None and args.ngram < 1:
        raise UserError("--ngram must be at least 1")
    for name in ("window", "min_fragment", "max_pieces", "max_documents"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be non-negative")
    rules = Rules(args.window, args.min_fragment, args.max_pieces, args.max_documents)
    benchmarks = read_benchmarks(args.benchmarks, [f for f in args.fields.split(",") if f])
    table, sizes = build_index(benchmarks, args.ngram)
    settings = dict(vars(rules), benchmarks={name: size["ngram"] for name, size in sizes.items()},
                    index=xxhash.xxh3_64_hexdigest(table["hash"].to_numpy().tobytes()))
    work = work_dir(args.output, "decontaminate")
    with StageRunner(args, discover_shards(args.input), work, settings, code_version(__name__)) as runner:
        run_passes(args, runner, work, rules, table, sizes)
    return 0


def run_passes(args: argparse.Namespace, runner: StageRunner, work: Path, rules: Rules, table: pa.Table,
               sizes: dict) -> None:
    out = location(args.output)
    count_dir = work / "counts"
    names = sorted(sizes)
    ngram_sizes = sorted({size["ngram"] for size in sizes.values()})
    index_path = work / f"index-{runner.rank.rank}.parquet"
    with ShardWriter(index_path, INDEX_SCHEMA) as writer:  # rebuilt each run from the benchmark files
        writer.write_table(table)
    if args.stage in ("all", "count"):
        runner.per_shard(partial(count_shard, index_path=str(index_path), ngram_sizes=ngram_sizes), count_dir,
                         "decontaminate: count")
    if args.stage in ("all", "clean"):
        runner.shards_complete(count_dir, "count")
        frequent = frequent_ngrams(count_dir, [t.name for t in runner.tasks], rules.max_documents)
        stats = runner.per_shard(partial(clean_shard, index_path=str(index_path), ngram_sizes=ngram_sizes,
                                         frequent=frequent, rules=rules, names=names), out, "decontaminate: clean")
        report = contamination_report(out, [t.name for t in runner.tasks], names, sizes, stats)
        report["_ignored_frequent_ngrams"] = int(len(frequent))
        add_to_stats(out, "benchmarks", report)
        if runner.rank.rank == 0:
            for name in names:
                row = report[name]
                print(f"  {name} ({row['ngram']}-grams): {row['contaminated_examples']:,}/{row['examples']:,} examples "
                      f"found in training data, {row['documents']:,} documents touched, "
                      f"{row['documents_dropped']:,} dropped")


def contamination_report(out: Path, shards: list[str], names: list[str], sizes: dict, stats: Stats) -> dict:
    """Per benchmark: n, size, examples found in training data (0-based, in the benchmark file's
    order), documents touched and dropped."""
    hit_files = [out / ".hits" / f"{shard}.parquet" for shard in shards]
    hits = pa.concat_tables([_read_table(p) for p in hit_files if p.exists()] or [HIT_SCHEMA.empty_table()])
    unique = set(zip(hits["benchmark"].to_pylist(), hits["example"].to_pylist()))
    report = {}
    for b, name in enumerate(names):
        ids = sorted(example for bench, example in unique if bench == b)
        report[name] = dict(sizes[name], contaminated_examples=len(ids), contaminated_example_ids=ids,
                            documents=int(stats.get("contamination", name, "documents")),
                            documents_dropped=int(stats.get("contamination", name, "documents_dropped")))
    return report


def _read_table(path: Path) -> pa.Table:
    with open_input(path) as raw:
        return pq.read_table(raw)


@dataclass(frozen=True, kw_only=True)
class DecontaminateOptions:
    """`gpt-data decontaminate` and the recipe's ``decontaminate`` step."""

    stage: str = field(default="all", metadata={"choices": ("all", "count", "clean"),
                                                "help": "run only this pass (for one Slurm job per pass; default all)"})
    benchmarks: str = field(metadata={
        "help": "JSONL file of evaluation examples, or a directory of them (one benchmark per file)"})
    fields: str = field(default="", metadata={
        "help": "comma-separated example fields to index (default: every string value)"})
    ngram: int | None = field(default=None, metadata={
        "help": "words per n-gram for every benchmark (default: per benchmark, GPT-3's min(13, 5th percentile "
                "of its examples' lengths in words))"})
    window: int = field(default=200, metadata={
        "help": "characters removed on each side of an overlap (default %(default)s)"})
    min_fragment: int = field(default=200, metadata={
        "help": "drop remaining pieces shorter than this many characters (default %(default)s)"})
    max_pieces: int = field(default=10, metadata={
        "help": "drop a document split into more pieces than this (default %(default)s)"})
    max_documents: int = field(default=10, metadata={
        "help": "ignore n-grams found in more training documents than this (default %(default)s)"})


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "decontaminate", help="remove benchmark n-gram overlaps from training documents (GPT-3 rules)",
        description=__doc__.split("\n\n")[1],
        epilog="Intermediate files go to OUTPUT/.dedup/decontaminate/; with a URL --output to a local directory "
               "named after it under ~/.cache/gpt-data/work/ ($XDG_CACHE_HOME: shared by ranks on several machines).")
    add_executor_args(parser)
    add_arguments(parser, DecontaminateOptions)
    parser.set_defaults(func=run)
