"""gpt-data report: the page `gpt-data run` writes shows every plot with the run's own numbers, offline."""
from __future__ import annotations

import base64
import contextlib
import io
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from scipy.stats import lomax
from test_recipe import DATA, crawl_and_curated_copies, write_recipe

from data_pipeline import indexed
from data_pipeline.cli import main

SECTIONS = ("funnel", "removals", "languages", "quality", "dedup", "mixture")
ALPHA = 3.0  # a gentler Pareto rule than GPT-3's 9, so the sample keeps documents of every score


class ReportPage(HTMLParser):
    """Each section's images, tables (rows of cell texts) and absence line; every src/href on the page."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.links: list[str] = []
        self._section = self._row = self._cell = None
        self._absent = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "section":
            self._section = self.sections.setdefault(attrs["id"], {"images": [], "tables": [], "absent": ""})
        elif tag == "img":
            self._section["images"].append(attrs["src"])
        elif tag == "table":
            self._section["tables"].append([])
        elif tag == "tr":
            self._row = []
            self._section["tables"][-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "p" and attrs.get("class") == "absent":
            self._absent = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "p":
            self._absent = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._absent:
            self._section["absent"] += data

    def rows(self, section: str, table: int = 0) -> list[list[str]]:
        """A table's body rows (its header row left out)."""
        return self.sections[section]["tables"][table][1:]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def read_stats(stage: Path) -> dict:
    return json.loads((stage / "stats.json").read_text())


def removal_rule(stage: str, row: dict) -> str:
    """A removed document's rule: `removed_by`, or for dedup (whose rows name the copy kept) `<method>:<source>`."""
    return row["removed_by"] if "removed_by" in row else f"{stage.rpartition('_')[2]}:{row['source']}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, warc_sample, wiki_sample):
    """A real eight-step recipe run (exact and near copies to dedup, a Pareto sample), its stdout and report."""
    tmp = tmp_path_factory.mktemp("report")
    inputs, bench, _, _ = crawl_and_curated_copies(tmp, warc_sample, wiki_sample)
    model = tmp / "quality.npz"
    ccnet_tokens = DATA / "tokens" / "ccnet_gpt2_text_document"
    recipe = write_recipe(tmp / "recipe.yaml", {
        "input": str(inputs), "output": str(tmp / "run"),
        "steps": [{"extract": {}}, {"filter": {"language": {"languages": ["en"]}, "gopher_quality": {"min_words": 20}}},
                  {"dedup_exact": {}}, {"dedup_minhash": {"bands": 14, "rows": 8}},
                  {"classifier_score": {"model": str(model), "alpha": ALPHA}},
                  {"decontaminate": {"benchmarks": str(bench)}}, {"tokenize": {"tokenizer": "gpt2"}},
                  {"mixture": {"name": "crawl", "weight": 0.7, "source": {"ccnet": f"{ccnet_tokens}:0.3"},
                               "token_budget": "100K"}}],
    })
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(["classifier", "train", "--positive", str(wiki_sample), "--negative", str(warc_sample),
                     "--output", str(model), "--holdout", "0.3"]) == 0
        assert main(["run", str(recipe)]) == 0
    run = tmp / "run"
    return run, stdout.getvalue(), (run / "report.html").read_text()


def test_run_writes_a_report_with_every_plot_and_no_network_reference(pipeline):
    run, stdout, html = pipeline
    page = ReportPage(html)
    assert f"report: {run / 'report.html'}" in stdout.splitlines()
    assert sorted(page.sections) == sorted(SECTIONS)
    for key in SECTIONS:
        section = page.sections[key]
        assert len(section["images"]) == 1 and not section["absent"], key
        png = base64.b64decode(section["images"][0].removeprefix("data:image/png;base64,"))
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, key
    assert page.links and not [link for link in page.links if link.startswith(("http:", "https:", "//"))]
    assert "url(" not in html and "@import" not in html and "<script" not in html  # nor in the CSS


def test_funnel_and_removals_are_the_stages_counts(pipeline, h):
    run, _, html = pipeline
    page = ReportPage(html)
    stages = ["01-extract", "02-filter", "03-dedup_exact", "04-dedup_minhash", "05-classifier_score",
              "06-decontaminate"]
    funnel = {row[0]: row for row in page.rows("funnel")}
    assert list(funnel) == [*stages, "07-tokenize"]
    for stage in stages:
        stats = read_stats(run / stage)
        assert [number(c) for c in funnel[stage][2:5]] == \
            [stats["documents_in"], stats["documents_out"], stats["bytes_out"] // 4], stage
        assert number(funnel[stage][3]) == len(h.read_rows(run / stage)), stage
    index = indexed.read_index(run / "07-tokenize")
    assert [number(c) for c in funnel["07-tokenize"][3:5]] == [index.documents, index.tokens]

    removals = [(stage, rule, number(n)) for stage, rule, n in page.rows("removals")]
    from_shards = [(stage, rule, n) for stage in stages if (run / stage / "removed").is_dir()
                   for rule, n in Counter(removal_rule(stage, r) for r in h.read_rows(run / stage / "removed")).items()]
    assert sorted(removals) == sorted(from_shards)
    assert sorted(removals) == sorted((stage, rule, n) for stage in stages
                                      for rule, n in read_stats(run / stage).get("removed", {}).items())
    assert {rule for _, rule, _ in removals} >= {"exact:wikipedia", "minhash:wikipedia", "quality:pareto"}


def test_languages_quality_dedup_and_mixture_tables(pipeline, h):
    run, _, html = pipeline
    page = ReportPage(html)
    filtered = run / "02-filter"
    kept = Counter(r["language"] for r in h.read_rows(filtered))
    removed = Counter(r["language"] for r in h.read_rows(filtered / "removed"))
    assert {row[0]: (number(row[1]), number(row[2])) for row in page.rows("languages")} == \
        {code: (kept[code], removed[code]) for code in kept | removed}

    histogram = read_stats(run / "05-classifier_score")["quality_histogram"]
    quality = page.rows("quality")
    assert {row[0]: number(row[1]) for row in quality} == histogram
    for bucket, _, keep in quality:  # GPT-3's rule: kept iff numpy's pareto(alpha) (a Lomax draw) > 1 - score
        low, high = map(float, bucket.split("-"))
        assert number(keep) == pytest.approx(lomax(ALPHA).sf(1 - (low + high) / 2), rel=1e-3)

    for stage, method in (("03-dedup_exact", "exact"), ("04-dedup_minhash", "minhash")):
        stats = read_stats(run / stage)[method]
        assert [(s, int(number(n))) for st, m, s, n in page.rows("dedup") if st == stage] == \
            list(stats["cluster_size_histogram"].items())
    texts = {r["id"]: r["text"] for stage in ("02-filter", "03-dedup_exact") for r in h.read_rows(run / stage)}
    exact_removed = {r["id"]: r["duplicate_of"] for r in h.read_rows(run / "03-dedup_exact" / "removed")}
    exact_pairs, minhash_pairs = page.rows("dedup", 1), page.rows("dedup", 2)
    assert len(exact_pairs) == 3 and all(exact_removed[b] == a for a, b, *_ in exact_pairs)
    expected = read_stats(run / "04-dedup_minhash")["minhash"]["example_pairs"][:3]
    assert [(a, b, number(j)) for a, b, j, *_ in minhash_pairs] == [(p["a"], p["b"], p["jaccard"]) for p in expected]
    for a, b, _, text_a, text_b in exact_pairs + minhash_pairs:
        assert (text_a, text_b) == (texts[a][:600], texts[b][:600])

    blend = json.loads((run / "08-mixture" / "blend.json").read_text())
    assert [(row[0], number(row[1]), number(row[2])) for row in page.rows("mixture")] == \
        [(s["name"], s["tokens"], s["documents"]) for s in blend["sources"]]
    assert [number(row[4]) for row in page.rows("mixture")] == \
        pytest.approx([s["epochs"] for s in blend["sources"]], rel=1e-3)


def test_report_on_a_run_directory_or_some_stages(pipeline, cli, tmp_path):
    """A `gpt-data run` output directory stands for its steps; sections of stages not given say so."""
    run, _, html = pipeline
    code, _, err = cli("report", "--input", run, "--output", tmp_path / "all.html")
    assert code == 0, err
    assert ReportPage((tmp_path / "all.html").read_text()).sections == ReportPage(html).sections
    output = tmp_path / "nested" / "report.html"
    code, out, err = cli("report", "--input", run / "01-extract", run / "02-filter", "--output", output)
    assert code == 0 and out.strip() == f"wrote {output}", err
    page = ReportPage(output.read_text())
    assert [row[0] for row in page.rows("funnel")] == ["01-extract", "02-filter"]
    for key, line in (("quality", "No classifier_score stage"), ("dedup", "No dedup stage"),
                      ("mixture", "No mixture")):
        assert page.sections[key]["absent"].startswith(line) and not page.sections[key]["images"], key


def test_a_path_that_is_no_stage_output_is_one_line(cli, tmp_path, warc_sample):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", warc_sample, tmp_path / "missing"):
        code, _, err = cli("report", "--input", path, "--output", tmp_path / "r.html")
        assert code == 2 and err.strip() == f"gpt-data report: error: {path} is not a stage output: it holds no " \
            "stats.json, PREFIX.stats.json or blend.json", err
    assert not (tmp_path / "r.html").exists()
