"""`gpt-data mixture`: state a data mixture, see what it means, write the trainer's blend JSON.

GPT-3 did not sample sources in proportion to their size (Table 2.2: Common Crawl 60% of
the mix at 0.44 epochs, Wikipedia 3% at 3.4 epochs). A source is given as a token shard
prefix (its counts are read from the ``.idx``) or, for planning before any data exists,
as a bare token count. Each source gets either a weight, a target number of epochs over
``--token-budget`` (weight = epochs x tokens / budget), or neither (natural proportions,
only when no source has either). Weights are normalised to sum to 1. The table shows
tokens, weight, the budget's tokens per source and the epochs that implies, and warns
when a source would be repeated more than ``--max-epochs`` times.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from data_pipeline import indexed
from data_pipeline.blend import BlendSource, write_blend
from common.errors import UserError
from common.options import add_arguments
from data_pipeline.tokenizers import load_tokenizer

# Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models"): up to ~4 epochs
# of repeated data are nearly as useful as fresh data; beyond that returns fall off fast.
DEFAULT_MAX_EPOCHS = 4.0
_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_WEIGHT_SUM_TOLERANCE = 1e-9


@dataclass
class MixSource:
    """A source as the user stated it."""

    name: str
    tokens: int
    documents: int | None = None
    prefix: str | None = None  # None: a planned source, known only by its token count
    weight: float | None = None  # as given (normalised later)
    epochs: float | None = None  # target epochs over the budget
    tokenizer: dict | None = None  # from PREFIX.stats.json, when the tokenize stage wrote one


@dataclass
class MixRow:
    """A source in the resolved mixture."""

    name: str
    tokens: int
    documents: int | None
    prefix: str | None
    weight: float
    budget_tokens: float | None
    epochs: float | None


@dataclass
class Mixture:
    rows: list[MixRow]
    token_budget: int | None
    notes: list[str] = field(default_factory=list)

    def warnings(self, max_epochs: float) -> list[str]:
        return [f"{r.name} would be repeated {r.epochs:.2f} epochs (> --max-epochs {max_epochs:g}); "
                f"more unique data or a lower weight avoids over-fitting to it"
                for r in self.rows if r.epochs is not None and r.epochs > max_epochs]


def parse_amount(text: str, what: str) -> float:
    """``300e9``, ``300B``, ``1.5T``, ``60%`` -> a number (``%`` divides by 100)."""
    raw = text.strip().replace("_", "")
    scale = 1.0
    if raw.endswith("%"):
        raw, scale = raw[:-1], 0.01
    elif raw[-1:].upper() in _SUFFIXES:
        raw, scale = raw[:-1], _SUFFIXES[raw[-1].upper()]
    try:
        value = float(raw) * scale
    except ValueError:
        raise UserError(f"{what}: not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{what}: must be a non-negative number, got {text!r}")
    return value


def token_count(text: str) -> int:
    """argparse type of --token-budget, so a bad budget fails when a recipe is checked, not after
    its other steps ran (a ValueError makes argparse name the flag and the value)."""
    try:
        return int(parse_amount(text, "--token-budget"))
    except UserError as err:
        raise ValueError(str(err)) from None


def parse_source(text: str) -> MixSource:
    """``NAME=PREFIX[:WEIGHT]`` or ``NAME=TOKENS[:WEIGHT]`` (e.g. ``cc=410B:60%``)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise UserError(f"--source must be NAME=PREFIX[:WEIGHT] or NAME=TOKENS[:WEIGHT], got {text!r}")
    spec, weight = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and re.fullmatch(r"[0-9.eE+_-]+%?", tail):
        spec, weight = head, parse_amount(tail, f"--source {name} weight")
    if re.fullmatch(r"[0-9.eE+_]+[KMBGTkmbgt]?", spec):
        return MixSource(name, int(round(parse_amount(spec, f"--source {name} tokens"))), weight=weight)
    return source_from_prefix(name, spec, weight)


def source_from_prefix(name: str, prefix: str, weight: float | None = None) -> MixSource:
    """A source from a token shard: counts from its ``.idx``, tokenizer from its stats file."""
    index = indexed.read_index(prefix)
    stats_file = Path(f"{prefix}.stats.json")
    tokenizer = json.loads(stats_file.read_text()).get("summary", {}).get("tokenizer") if stats_file.is_file() else None
    return MixSource(name, index.tokens, index.documents, str(Path(prefix).resolve()), weight, tokenizer=tokenizer)


def resolve(sources: list[MixSource], token_budget: int | None) -> Mixture:
    """Turn weights / target epochs / natural proportions into normalised weights and epochs."""
    if not sources:
        raise UserError("no sources: give --source NAME=PREFIX[:WEIGHT] (or --input DIR)")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UserError(f"source names must be unique, got {names}")
    for s in sources:
        if s.tokens <= 0:
            raise UserError(f"source {s.name} has no tokens")
        if s.weight is not None and s.epochs is not None:
            raise UserError(f"source {s.name}: give a weight or target epochs, not both")
    notes: list[str] = []
    stated = [s for s in sources if s.weight is not None or s.epochs is not None]
    if not stated:
        total = sum(s.tokens for s in sources)
        weights = [s.tokens / total for s in sources]
        notes.append("no weights given: sources are sampled in proportion to their tokens")
    else:
        missing = [s.name for s in sources if s not in stated]
        if missing:
            raise UserError(f"source(s) {', '.join(missing)} have neither a weight nor --epochs "
                            "(give every source one, or none for natural proportions)")
        weights = _weights(sources, token_budget, notes)
    rows = [MixRow(s.name, s.tokens, s.documents, s.prefix, w,
                   w * token_budget if token_budget else None,
                   w * token_budget / s.tokens if token_budget else None)
            for s, w in zip(sources, weights)]
    return Mixture(rows, token_budget, notes)


def _weights(sources: list[MixSource], budget: int | None, notes: list[str]) -> list[float]:
    by_epochs = [s for s in sources if s.epochs is not None]
    if by_epochs and not budget:
        raise UserError("target --epochs need --token-budget")
    epoch_share = {s.name: s.epochs * s.tokens / budget for s in by_epochs}
    used = sum(epoch_share.values())
    explicit = {s.name: s.weight for s in sources if s.weight is not None}
    explicit_sum = sum(explicit.values())
    if explicit and explicit_sum <= 0:
        raise UserError("the given weights add up to 0")
    if explicit and by_epochs:
        if used >= 1:
            raise UserError(f"target epochs alone need {used * budget:,.0f} tokens, not less than the "
                            f"budget {budget:,}: nothing is left for the weighted sources")
        scale_explicit, scale_epochs = (1 - used) / explicit_sum, 1.0
        notes.append(f"target epochs take {used:.1%} of the budget; the weighted sources share the rest")
    elif explicit:
        scale_explicit, scale_epochs = 1 / explicit_sum, 1.0
        if abs(explicit_sum - 1) > _WEIGHT_SUM_TOLERANCE:
            notes.append(f"weights add up to {explicit_sum:.6g}; normalised to 1")
    else:
        scale_explicit, scale_epochs = 0.0, 1 / used
        if abs(used - 1) > _WEIGHT_SUM_TOLERANCE:
            notes.append(f"target epochs add up to {used * budget:,.0f} tokens, not the budget "
                         f"{budget:,}: scaled by {1 / used:.4g} to fill it")
    return [explicit[s.name] * scale_explicit if s.name in explicit else epoch_share[s.name] * scale_epochs
            for s in sources]


def format_table(mixture: Mixture) -> str:
    """The mixture as a fixed-width text table (what the CLI prints)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data mixture" + (f" for a budget of {mixture.token_budget:,} tokens"
                                          if mixture.token_budget else ""))
    for column in ("source", "tokens", "documents", "weight", "budget tokens", "epochs"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for r in mixture.rows:
        table.add_row(r.name, _count(r.tokens), "-" if r.documents is None else f"{r.documents:,}",
                      f"{r.weight:.2%}", "-" if r.budget_tokens is None else _count(r.budget_tokens),
                      "-" if r.epochs is None else f"{r.epochs:.3g}")
    console = Console(width=120, file=io.StringIO())
    console.print(table)
    return console.file.getvalue()


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{int(round(n)):,}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mixture", help="plan a data mixture and write the trainer's blend JSON",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  gpt-data mixture --source cc=tokens/cc_text_document:0.7 --source wiki=tokens/wiki_text_document:0.3 "
               "--token-budget 300B --output blend.json\n"
               "  gpt-data mixture --source cc=410B:60% --source webtext2=19B:22% --source books1=12B:8% "
               "--source books2=55B:8% --source wikipedia=3B:3% --token-budget 300B   # GPT-3 Table 2.2")
    add_arguments(parser, MixtureOptions)
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class MixtureOptions:
    """`gpt-data mixture`'s options (its flags)."""

    source: tuple[str, ...] = field(default=(), metadata={
        "metavar": "NAME=PREFIX[:WEIGHT]",
        "help": "a source: token shard prefix (or a token count such as 410B, for planning) and optional weight "
                "(0.6 or 60%%); repeatable"})
    input: str | None = field(default=None, metadata={
        "help": "directory of token shards: every PREFIX.idx in it becomes a source named after the prefix "
                "(weights from --weight/--epochs)"})
    weight: tuple[str, ...] = field(default=(), metadata={"metavar": "NAME=W",
                                                          "help": "weight of a source given by --input"})
    epochs: tuple[str, ...] = field(default=(), metadata={
        "metavar": "NAME=E", "help": "target epochs for a source over --token-budget (instead of a weight)"})
    token_budget: int | None = field(default=None, metadata={"type": token_count,
                                                             "help": "planned training tokens, e.g. 300B"})
    max_epochs: float = field(default=DEFAULT_MAX_EPOCHS, metadata={
        "help": "warn when a source would be repeated more often (default %(default)s)"})
    quality_split: tuple[str, ...] = field(default=(), metadata={
        "metavar": "NAME", "help": "split this source by quality score into sub-shards weighted by --quality-curve"})
    quality_buckets: str = field(default="5", metadata={
        "help": "bucket count over [0, 1] or comma-separated edges (default %(default)s)"})
    quality_curve: str = field(default="power:1", metadata={
        "help": "per-bucket sampling multiplier: power:A (midpoint**A) or a list like 1,1,2,4 (default %(default)s)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer of the shards when they have no PREFIX.stats.json (default: read from the stats "
                "files, else gpt2)"})
    output: str | None = field(default=None, metadata={"help": "blend JSON to write (omit to only print the table)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing --output blend (and quality split) that differs"})


@dataclass(frozen=True)
class MixtureStep(MixtureOptions):
    """The `mixture` step of `gpt-data run`: the previous step's token prefix becomes the source
    ``name`` (default: the prefix's name without ``_text_document``) with the optional ``weight``;
    the blend goes to OUTPUT/blend.json (or OUTPUT itself if it ends in ``.json``), so quality
    buckets land next to it. The other keys are `gpt-data mixture`'s (``source: {wiki: PREFIX:0.3}``
    adds sources)."""

    name: str | None = None
    weight: str | None = None  # of the step's own source (0.7 or 60%), not --weight NAME=W

    def __post_init__(self):
        if self.weight is not None:
            parse_amount(self.weight, "mixture.weight")


def recipe_arguments(input: str | Path, output: str | Path, step: MixtureStep) -> dict:
    """`main`'s arguments for the recipe's mixture `step` (mixing takes no time: no workers)."""
    name = step.name or Path(input).name.removesuffix("_text_document")
    own = f"{name}={input}" + ("" if step.weight is None else f":{step.weight}")
    blend = Path(output) if Path(output).suffix == ".json" else Path(output) / "blend.json"
    options = {f.name: getattr(step, f.name) for f in fields(MixtureOptions)}
    return dict(options, source=(own, *step.source), weight=(), output=str(blend))


def main(args: argparse.Namespace) -> int:
    sources = [parse_source(s) for s in args.source]
    if args.input:
        sources += _sources_from_dir(Path(args.input))
    _apply_named(sources, args.weight, "weight", "--weight")
    _apply_named(sources, args.epochs, "epochs", "--epochs")
    budget = args.token_budget or None
    sources = _split_quality(sources, args, budget)
    mixture = resolve(sources, budget)
    print(format_table(mixture), end="")
    for note in mixture.notes:
        print(f"note: {note}")
    for warning in mixture.warnings(args.max_epochs):
        print(f"warning: {warning}", file=sys.stderr)
    if args.output:
        write_mixture(mixture, sources, args.output, args.tokenizer, args.overwrite)
        print(f"wrote {args.output}")
    return 0


def write_mixture(mixture: Mixture, sources: list[MixSource], output: str, tokenizer: str | None,
                  overwrite: bool = False) -> None:
    """Write the blend JSON for a mixture whose sources are all token shards (an existing
    different one only with `overwrite`)."""
    planned = [r.name for r in mixture.rows if r.prefix is None]
    if planned:
        raise UserError(f"cannot write a blend: source(s) {', '.join(planned)} are token counts, not shards")
    tokenizer_spec = _common_tokenizer(sources, tokenizer)
    blend_sources = [BlendSource(r.name, r.prefix, r.weight, r.tokens, r.documents or 0, r.epochs)
                     for r in mixture.rows if r.weight > 0]
    write_blend(output, tokenizer_spec, blend_sources, mixture.token_budget, overwrite)


def _common_tokenizer(sources: list[MixSource], override: str | None) -> dict:
    recorded = {json.dumps(s.tokenizer, sort_keys=True) for s in sources if s.tokenizer}
    if override:
        spec = load_tokenizer(override).spec()
        if recorded - {json.dumps(spec, sort_keys=True)}:
            raise UserError(f"--tokenizer {override} differs from the tokenizer recorded with the shards")
        return spec
    if len(recorded) > 1:
        raise UserError("the sources were tokenized with different tokenizers; a blend needs one")
    spec = json.loads(recorded.pop()) if recorded else load_tokenizer("gpt2").spec()
    big = [s.name for s in sources if s.prefix and spec["vocab_size"] > np.iinfo(np.uint16).max + 1
           and indexed.read_index(s.prefix).dtype == np.uint16]
    if big:
        raise UserError(f"source(s) {', '.join(big)} are uint16 but the tokenizer has {spec['vocab_size']} ids")
    return spec


def _sources_from_dir(directory: Path) -> list[MixSource]:
    if not directory.is_dir():
        raise UserError(f"--input must be a directory of token shards: {directory}")
    prefixes = sorted(p.with_suffix("") for p in directory.glob("*.idx") if p.with_suffix(".bin").exists())
    if not prefixes:
        raise UserError(f"no token shards (PREFIX.bin + PREFIX.idx) in {directory}")
    return [source_from_prefix(p.name.removesuffix("_text_document"), str(p)) for p in prefixes]


def _apply_named(sources: list[MixSource], items: list[str], attribute: str, flag: str) -> None:
    by_name = {s.name: s for s in sources}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in by_name:
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE with NAME one of {', '.join(by_name) or '(none)'}")
        setattr(by_name[name], attribute, parse_amount(value, f"{flag} {name}"))


def _split_quality(sources: list[MixSource], args: argparse.Namespace, budget: int | None) -> list[MixSource]:
    """Replace each --quality-split source by its bucket sub-shards, sharing its weight by the curve."""
    if not args.quality_split:
        return sources
    from data_pipeline.quality_buckets import bucket_weights, curve_multipliers, parse_edges, split_by_quality

    unknown = set(args.quality_split) - {s.name for s in sources}
    if unknown:
        raise UserError(f"--quality-split: unknown source(s) {', '.join(sorted(unknown))}")
    if not any(o.weight is not None or o.epochs is not None for o in sources):
        for o in sources:
            o.weight = float(o.tokens)  # natural proportions, made explicit so buckets can share them
    edges = parse_edges(args.quality_buckets)
    multipliers = curve_multipliers(args.quality_curve, edges)
    out_dir = Path(args.output).resolve().parent if args.output else Path.cwd()
    result: list[MixSource] = []
    for s in sources:
        if s.name not in args.quality_split:
            result.append(s)
            continue
        if s.prefix is None:
            raise UserError(f"--quality-split {s.name}: needs a token shard, not a token count")
        if s.weight is None:
            raise UserError(f"--quality-split {s.name}: give the source a weight, not target epochs")
        buckets = split_by_quality(s.prefix, edges, out_dir / f"{s.name}.quality", args.overwrite)
        for bucket, w in zip(buckets, bucket_weights(s.weight, buckets, multipliers)):
            if bucket.tokens:
                result.append(replace(s, name=f"{s.name}/{bucket.label}", tokens=bucket.tokens,
                                      documents=bucket.documents, prefix=bucket.prefix, weight=float(w)))
    return result
