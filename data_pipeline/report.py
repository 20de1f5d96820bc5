"""`gpt-data report`: one self-contained HTML page on what a pipeline run did to its data.

Built from what the stages already write: each stage directory's ``stats.json`` (documents
in and out, removals per rule, the quality histogram, dedup cluster sizes and example
pairs), a tokenize prefix's ``PREFIX.stats.json`` and a mixture's ``blend.json``; only the
languages and the texts of the dedup example pairs are read from the shards (one column
or a few rows). Each plot comes with a table of the numbers it shows; a section whose
stage is not among the inputs says so in one line. Stage outputs may be URLs (``s3://...``,
read through fsspec), except a mixture's blend file; the page is written locally.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.files import output_directory, write_text_atomically
from data_pipeline import report_plots as plots
from data_pipeline.report_html import Section, Table, render_page
from data_pipeline.remote import is_url, location, open_input
from data_pipeline.shards import DONE_DIR, discover_shards, read_batches, read_schema
from data_pipeline.summary import BYTES_PER_TOKEN, count_values

STATS_FILE = "stats.json"
BLEND_FILE = "blend.json"
PREFIX_STATS_SUFFIX = ".stats.json"
DEDUP_METHODS = ("exact", "minhash")
SHOWN_PAIRS = 3
PAIR_TEXT_CHARS = 600


@dataclass(frozen=True)
class StageOutput:
    """What one stage wrote: a shard directory, a token prefix (``kind`` tokenize) or a blend file (mixture)."""

    label: str
    path: Path
    kind: str  # stats.json's "stage" ("filter", "dedup minhash: remove", ...), "tokenize" or "mixture"
    stats: dict


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def find_stage(path: Path) -> StageOutput | None:
    """The stage output at `path`, or None when `path` is none."""
    if (path / STATS_FILE).is_file():
        stats = _read_json(path / STATS_FILE)
        return StageOutput(path.name, path, str(stats.get("stage", path.name)), stats)
    prefix = path.with_name(path.name.removesuffix(".bin").removesuffix(".idx"))
    if location(f"{prefix}{PREFIX_STATS_SUFFIX}").is_file():
        stats = _read_json(location(f"{prefix}{PREFIX_STATS_SUFFIX}")).get("stats", {})
        return StageOutput(prefix.name, prefix, "tokenize", stats)
    blend = path / BLEND_FILE if path.is_dir() else path
    if blend.suffix == ".json" and blend.is_file() and "sources" in _read_json(blend):
        return StageOutput(path.name, blend, "mixture", {})
    return None


def find_stages(paths: list[str | Path]) -> list[StageOutput]:
    """The stage outputs named by `paths`; a directory of stage outputs (a ``gpt-data run``
    output) stands for its stages in name order."""
    stages = []
    for path in map(location, paths):
        stage = find_stage(path)
        found = [stage] if stage else steps_in(path) if path.is_dir() else []
        if not found:
            raise UserError(f"{path} is not a stage output: it holds no {STATS_FILE}, "
                            f"PREFIX{PREFIX_STATS_SUFFIX} or {BLEND_FILE}")
        stages.extend(found)
    return stages


def steps_in(directory: Path) -> list[StageOutput]:
    """The stage outputs directly inside `directory`: shard directories, mixtures and token prefixes."""
    children = sorted(p.with_name(p.name.removesuffix(PREFIX_STATS_SUFFIX)) if p.name.endswith(PREFIX_STATS_SUFFIX)
                      else p for p in directory.iterdir() if p.is_dir() or p.name.endswith(PREFIX_STATS_SUFFIX))
    return [stage for child in children if (stage := find_stage(child))]


def document_stages(stages: list[StageOutput]) -> list[StageOutput]:
    return [s for s in stages if s.kind not in ("tokenize", "mixture")]


def funnel_section(stages: list[StageOutput]) -> Section:
    section = Section("funnel", "Documents and tokens through the stages")
    counted = [s for s in stages if s.kind != "mixture"]
    if not counted:
        section.absent = "No document or tokenize stage among the inputs."
        return section
    rows = []
    for stage in counted:
        exact = stage.kind == "tokenize"
        tokens = int(stage.stats.get("tokens_out", 0)) if exact else int(stage.stats.get("bytes_out", 0) / BYTES_PER_TOKEN)
        rows.append((stage.label, stage.kind, int(stage.stats.get("documents_in", 0)),
                     int(stage.stats.get("documents_out", 0)), tokens, "counted" if exact else f"bytes / {BYTES_PER_TOKEN:g}"))
    section.image = plots.funnel([r[0] for r in rows], [r[3] for r in rows], [r[4] for r in rows])
    section.caption = (f"{rows[0][2]:,} documents into {rows[0][0]}, {rows[-1][3]:,} out of {rows[-1][0]}. "
                       f"Tokens are counted by the tokenize stage and estimated as UTF-8 bytes / "
                       f"{BYTES_PER_TOKEN:g} before it.")
    section.tables = [Table(("stage", "kind", "documents in", "documents out", "tokens out", "tokens are"), rows)]
    return section


def removals_section(stages: list[StageOutput]) -> Section:
    section = Section("removals", "Documents removed, per rule and stage")
    rows = [(stage.label, rule, int(n)) for stage in document_stages(stages)
            for rule, n in sorted(stage.stats.get("removed", {}).items(), key=lambda kv: -kv[1])]
    if not rows:
        section.absent = "No stage among the inputs removed documents."
        return section
    section.image = plots.bars([f"{stage}  {rule}" for stage, rule, _ in rows], [n for *_, n in rows],
                               value_label="documents removed", horizontal=True)
    section.caption = (f"{sum(n for *_, n in rows):,} documents removed in all; each by the first rule it broke "
                       "(dedup rules name the removed copy's source). The removed documents are in each "
                       "stage's removed/ shards.")
    section.tables = [Table(("stage", "rule", "documents"), rows)]
    return section


def languages_section(stages: list[StageOutput]) -> Section:
    section = Section("languages", "Languages")
    for stage in document_stages(stages):
        kept = count_values(discover_shards(stage.path, (".parquet",)), "language") \
            if stage.stats.get("documents_out") else {}
        removed_dir = stage.path / "removed"
        removed = count_values(discover_shards(removed_dir, (".parquet",)), "language") \
            if removed_dir.is_dir() and any(removed_dir.glob("*.parquet")) else {}
        if (set(kept) | set(removed)) - {"unknown"}:
            break
    else:
        section.absent = "No stage among the inputs identified languages (the filter stage does)."
        return section
    rows = sorted(((code, kept.get(code, 0), removed.get(code, 0)) for code in set(kept) | set(removed)),
                  key=lambda row: (-row[1] - row[2], row[0]))
    section.image = plots.bars([r[0] for r in rows], [r[1] for r in rows], value_label="documents kept")
    section.caption = (f"Languages of the documents {stage.label} kept (plotted) and removed (for any rule), "
                       f"from its shards ({len(rows)} in all).")
    section.tables = [Table(("language", "kept", "removed"), rows)]
    return section


def pareto_keep_probability(score, alpha: float):
    """P(numpy pareto(alpha) > 1 - score): GPT-3's keep rule (a Lomax draw has P(X > x) = (1 + x)^-alpha)."""
    return (2.0 - score) ** -alpha


def _stage_options(stage: StageOutput) -> dict:
    """The options a stage ran with, as its first completion marker records them."""
    markers = sorted((stage.path / DONE_DIR).glob("*.json"))
    return _read_json(markers[0]).get("made_from", {}).get("options", {}) if markers else {}


def quality_section(stages: list[StageOutput]) -> Section:
    import numpy as np

    section = Section("quality", "Quality scores and the Pareto keep rule")
    scored = [s for s in stages if s.stats.get("quality_histogram")]
    if not scored:
        section.absent = "No classifier_score stage among the inputs."
        return section
    stage = scored[-1]
    histogram = sorted(stage.stats["quality_histogram"].items(), key=lambda kv: float(kv[0].split("-")[0]))
    bounds = [tuple(map(float, bucket.split("-"))) for bucket, _ in histogram]
    counts = [int(n) for _, n in histogram]
    options = _stage_options(stage)
    alpha = float(options["alpha"]) if options.get("keep", "pareto") == "pareto" and "alpha" in options else None
    curve_x = np.linspace(0.0, 1.0, 101)
    section.image = plots.quality([low for low, _ in bounds], bounds[0][1] - bounds[0][0], counts, curve_x,
                                  None if alpha is None else pareto_keep_probability(curve_x, alpha))
    kept, scored_total = int(stage.stats.get("documents_out", 0)), sum(counts)
    rule = (f"kept iff pareto({alpha:g}) > 1 - score (red: P(keep) = (2 - score)^-{alpha:g})" if alpha is not None
            else "keep: all (only scored)")
    section.caption = (f"{stage.label}: {scored_total:,} documents scored, {kept:,} kept "
                       f"({kept / max(scored_total, 1):.1%}); {rule}.")
    rows = [(bucket, n) + ((float(pareto_keep_probability((low + high) / 2, alpha)),) if alpha is not None else ())
            for (bucket, n), (low, high) in zip(histogram, bounds)]
    headers = ("score", "documents") + (("P(keep) at bucket middle",) if alpha is not None else ())
    section.tables = [Table(headers, rows)]
    return section


def texts_by_id(stage: StageOutput, ids: set[str]) -> dict[str, str]:
    """Texts of documents `ids` from a stage's kept and removed shards."""
    import pyarrow.parquet as pq

    found: dict[str, str] = {}
    removed = stage.path / "removed"
    shards = discover_shards(stage.path, (".parquet",)) + \
        (discover_shards(removed, (".parquet",)) if removed.is_dir() else [])
    for shard in shards:
        with open_input(shard) as raw:
            table = pq.read_table(raw, columns=["id", "text"], filters=[("id", "in", sorted(ids))])
        found.update(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
        if len(found) == len(ids):
            break
    return found


def example_pairs(stage: StageOutput, method: str) -> list[dict]:
    """Pairs to show: MinHash's sample in stats.json, else removed copies with the document they duplicate."""
    pairs = stage.stats[method].get("example_pairs")
    if pairs is not None:
        return pairs[:SHOWN_PAIRS]
    removed = stage.path / "removed"
    if not removed.is_dir():
        return []
    pairs = []
    for shard in discover_shards(removed, (".parquet",)):
        if "duplicate_of" in read_schema(shard).names:
            for batch in read_batches(shard, ["id", "duplicate_of"], batch_size=SHOWN_PAIRS):
                pairs += [{"a": a, "b": b, "jaccard": None} for a, b in
                          zip(batch.column("duplicate_of").to_pylist(), batch.column("id").to_pylist())]
                break
        if len(pairs) >= SHOWN_PAIRS:
            break
    return pairs[:SHOWN_PAIRS]


def dedup_section(stages: list[StageOutput]) -> Section:
    section = Section("dedup", "Duplicate clusters")
    runs = [(s, m) for s in document_stages(stages) for m in DEDUP_METHODS if isinstance(s.stats.get(m), dict)]
    if not runs:
        section.absent = "No dedup stage among the inputs."
        return section
    sizes = [(stage.label, method, size, int(n)) for stage, method in runs
             for size, n in stage.stats[method].get("cluster_size_histogram", {}).items()]
    section.image = plots.bars([f"{stage}: size {size}" for stage, _, size, _ in sizes] or ["no clusters"],
                               [n for *_, n in sizes] or [0], value_label="clusters", horizontal=True)
    totals = [f"{stage.label}: {stage.stats[m].get('clusters', 0):,} clusters holding "
              f"{stage.stats[m].get('documents_in_clusters', 0):,} documents, "
              f"{stage.stats[m].get('removed_total', 0):,} removed" for stage, m in runs]
    section.caption = "; ".join(totals) + ". Cluster sizes are grouped in powers of two (2, 3-4, 5-8, ...)."
    section.tables = [Table(("stage", "method", "cluster size", "clusters"), sizes)]
    for stage, method in runs:
        pairs = example_pairs(stage, method)
        texts = texts_by_id(stage, {p[k] for p in pairs for k in ("a", "b")}) if pairs else {}
        rows = [(p["a"], p["b"], p.get("jaccard"), texts.get(p["a"], "")[:PAIR_TEXT_CHARS],
                 texts.get(p["b"], "")[:PAIR_TEXT_CHARS]) for p in pairs]
        if rows:
            section.tables.append(Table(("document a", "document b", "jaccard", "text a", "text b"), rows,
                                        caption=f"{stage.label}: example {method} duplicate pairs"))
    return section


def mixture_section(stages: list[StageOutput]) -> Section:
    from data_pipeline.blend import load_blend

    section = Section("mixture", "Tokens and epochs per source")
    mixtures = [s for s in stages if s.kind == "mixture"]
    if not mixtures:
        section.absent = "No mixture among the inputs."
        return section
    blend = load_blend(mixtures[-1].path, check_files=False)
    rows = [(s.name, s.tokens, s.documents, s.weight, s.epochs) for s in blend.sources]
    section.image = plots.mixture([r[0] for r in rows], [r[1] for r in rows], [r[4] or 0.0 for r in rows])
    budget = f"a budget of {blend.token_budget:,} tokens" if blend.token_budget else "no token budget"
    section.caption = (f"{mixtures[-1].path}: {len(rows)} sources, {budget}; epochs = weight x budget / "
                       "source tokens (how often training repeats the source).")
    section.tables = [Table(("source", "tokens", "documents", "weight", "epochs"), rows)]
    return section


SECTIONS = (funnel_section, removals_section, languages_section, quality_section, dedup_section, mixture_section)


def build_report(paths: list[str | Path]) -> str:
    """The report page on the stage outputs at `paths`, in the order given."""
    stages = find_stages(paths)
    return render_page("Data pipeline report", [str(s.path) for s in stages], [make(stages) for make in SECTIONS])


def write_report(paths: list[str | Path], output: str | Path) -> Path:
    if is_url(output):
        raise UserError(f"--output {output}: gpt-data report writes a local file")
    output = Path(output)
    output_directory(output.parent)
    write_text_atomically(output, build_report(paths))
    return output


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="one self-contained HTML page of plots on a pipeline run",
        description="Plots and tables from the stages' stats.json (and removed/ shards, dedup stats, blend.json): "
                    "documents and tokens through every stage, removals per rule, languages, the quality "
                    "histogram with the Pareto keep probability, dedup cluster sizes and example pairs, "
                    "tokens and epochs per source. `gpt-data run` writes one at the end of a recipe.")
    parser.add_argument("--input", nargs="+", required=True, metavar="STAGE_DIR",
                        help="stage output directories, token prefixes or blend files, in pipeline order; "
                             "a `gpt-data run` output directory stands for all its steps")
    parser.add_argument("--output", required=True, help="the HTML file to write (e.g. report.html)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    print(f"wrote {write_report(args.input, args.output)}")
    return 0
