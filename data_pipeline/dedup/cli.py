"""`gpt-data dedup exact|minhash`: argument parsing only; the stages live in exact.py and fuzzy.py."""
from __future__ import annotations

import argparse

from data_pipeline.dedup import exact, fuzzy
from data_pipeline.executor import add_executor_args

EPILOG = """Stages run in order and resume after a kill (finished shards and partitions are kept).
Under mpiexec the same command runs on every rank; with a Slurm array run one --stage per job
(minhash's clusters stage as a single task: its rounds need a barrier, use --workers there)."""


def _common(parser: argparse.ArgumentParser, stages: tuple[str, ...]) -> None:
    add_executor_args(parser)
    parser.add_argument("--priority", default="",
                        help="comma-separated sources, best first: a duplicate group keeps the copy from the "
                             "first listed source (e.g. wikipedia,books,webtext,common-crawl); unlisted sources "
                             "come last, ties go to higher --quality-column, then input order")
    parser.add_argument("--quality-column", default="quality",
                        help="numeric column that breaks ties between sources (default %(default)s)")
    parser.add_argument("--fold-digits", action="store_true", help="treat every digit as 0 when comparing")
    parser.add_argument("--partitions", type=int, default=0,
                        help="hash partitions for the grouping stages (minhash: buckets, and clusters with at "
                             "most one per input shard; default: enough for ~2M keys or ~4M edges each; under "
                             "MPI one per rank)")
    parser.add_argument("--stage", choices=("all",) + stages, default="all",
                        help="run only this stage (for one Slurm job per stage; default all)")


def register(subparsers) -> None:
    dedup = subparsers.add_parser("dedup", help="remove exact and near-duplicate documents within and across sources",
                                  description="Remove duplicate documents, keeping one copy per cluster.")
    methods = dedup.add_subparsers(dest="method", metavar="METHOD", required=True)

    ex = methods.add_parser("exact", help="same normalised text (128-bit xxhash)", epilog=EPILOG,
                            description="Exact dedup on normalised text (lower case, punctuation and "
                                        "whitespace folded) with a 128-bit xxh3 hash.")
    _common(ex, exact.STAGES)
    ex.set_defaults(func=exact.run)

    mh = methods.add_parser("minhash", help="near-duplicates by MinHash LSH on word n-grams", epilog=EPILOG,
                            description="Fuzzy dedup: MinHash over word n-gram shingles, LSH bands, candidate "
                                        "pairs verified by exact Jaccard, connected components as clusters.")
    _common(mh, fuzzy.STAGES)
    mh.add_argument("--bands", type=int, default=14, help="LSH bands (default %(default)s, as FineWeb)")
    mh.add_argument("--rows", type=int, default=8,
                    help="hashes per band (default %(default)s; GPT-3's 10 hashes: --bands 10 --rows 1)")
    mh.add_argument("--ngram", type=int, default=5, help="words per shingle (default %(default)s)")
    mh.add_argument("--threshold", type=float, default=0.8,
                    help="Jaccard similarity a candidate pair needs to count as duplicate (default %(default)s)")
    mh.add_argument("--no-verify", action="store_true",
                    help="trust every LSH candidate pair (faster, much lower precision)")
    mh.add_argument("--window", type=int, default=fuzzy.DEFAULT_WINDOW,
                    help="pair each document with the next N-1 members of its bucket (default %(default)s)")
    mh.add_argument("--seed", type=int, default=1, help="seed of the MinHash permutations (default %(default)s)")
    mh.set_defaults(func=fuzzy.run)
