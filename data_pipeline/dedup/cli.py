"""`gpt-data dedup exact|minhash`: the options of both methods (their flags and their recipe steps'
keys); the stages live in exact.py and fuzzy.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.options import add_arguments
from data_pipeline.dedup import exact, fuzzy
from data_pipeline.executor import add_executor_args

EPILOG = """Stages run in order and resume after a kill (finished shards and partitions are kept).
Under mpiexec the same command runs on every rank; with a Slurm array run one --stage per job
(minhash's clusters stage as a single task: its rounds need a barrier, use --workers there).
Intermediate files go to OUTPUT/.dedup/; with a URL --output to a local directory named after it
under ~/.cache/gpt-data/work/ ($XDG_CACHE_HOME: shared by ranks on several machines)."""


def _stage(stages: tuple[str, ...]):
    return field(default="all", metadata={"choices": ("all",) + stages,
                                          "help": "run only this stage (for one Slurm job per stage; default all)"})


@dataclass(frozen=True)
class DedupOptions:
    """What both methods take."""

    priority: str = field(default="", metadata={
        "help": "comma-separated sources, best first: a duplicate group keeps the copy from the first listed "
                "source (e.g. wikipedia,books,webtext,common-crawl); unlisted sources come last, ties go to "
                "higher --quality-column, then input order"})
    quality_column: str = field(default="quality", metadata={
        "help": "numeric column that breaks ties between sources (default %(default)s)"})
    fold_digits: bool = field(default=False, metadata={"help": "treat every digit as 0 when comparing"})
    partitions: int = field(default=0, metadata={
        "help": "hash partitions for the grouping stages (minhash: buckets, and clusters with at most one per "
                "input shard; default: enough for ~2M keys or ~4M edges each; under MPI one per rank)"})


@dataclass(frozen=True)
class ExactOptions(DedupOptions):
    """`gpt-data dedup exact` and the recipe's ``dedup_exact`` step."""

    stage: str = _stage(exact.STAGES)


@dataclass(frozen=True)
class MinhashOptions(DedupOptions):
    """`gpt-data dedup minhash` and the recipe's ``dedup_minhash`` step."""

    stage: str = _stage(fuzzy.STAGES)
    bands: int = field(default=14, metadata={"help": "LSH bands (default %(default)s, as FineWeb)"})
    rows: int = field(default=8, metadata={
        "help": "hashes per band (default %(default)s; GPT-3's 10 hashes: --bands 10 --rows 1)"})
    ngram: int = field(default=5, metadata={"help": "words per shingle (default %(default)s)"})
    threshold: float = field(default=0.8, metadata={
        "help": "Jaccard similarity a candidate pair needs to count as duplicate (default %(default)s)"})
    no_verify: bool = field(default=False, metadata={
        "help": "trust every LSH candidate pair (faster, much lower precision)"})
    window: int = field(default=fuzzy.DEFAULT_WINDOW, metadata={
        "help": "pair each document with the next N-1 members of its bucket (default %(default)s)"})
    seed: int = field(default=1, metadata={"help": "seed of the MinHash permutations (default %(default)s)"})


def register(subparsers) -> None:
    dedup = subparsers.add_parser("dedup", help="remove exact and near-duplicate documents within and across sources",
                                  description="Remove duplicate documents, keeping one copy per cluster.")
    methods = dedup.add_subparsers(dest="method", metavar="METHOD", required=True)

    ex = methods.add_parser("exact", help="same normalised text (128-bit xxhash)", epilog=EPILOG,
                            description="Exact dedup on normalised text (lower case, punctuation and "
                                        "whitespace folded) with a 128-bit xxh3 hash.")
    add_executor_args(ex)
    add_arguments(ex, ExactOptions)
    ex.set_defaults(func=exact.run)

    mh = methods.add_parser("minhash", help="near-duplicates by MinHash LSH on word n-grams", epilog=EPILOG,
                            description="Fuzzy dedup: MinHash over word n-gram shingles, LSH bands, candidate "
                                        "pairs verified by exact Jaccard, connected components as clusters.")
    add_executor_args(mh)
    add_arguments(mh, MinhashOptions)
    mh.set_defaults(func=fuzzy.run)
