"""gpt-data run RECIPE.yaml: steps chained through their output directories, checked up front."""
from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from common.options import from_arguments, options_from_config
from data_pipeline import indexed
from data_pipeline.blend import load_blend
from data_pipeline.recipe import STEPS, load_recipe, plan

DATA = Path(__file__).resolve().parents[1] / "data"


def write_recipe(path, recipe: dict):
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def crawl_inputs_and_model(cli, tmp_path, warc_sample, ccnet_sample):
    """An input directory with the WARC and CCNet samples, and a quality model trained on them."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "crawl.warc.gz").write_bytes(warc_sample.read_bytes())
    (inputs / "ccnet.jsonl.gz").write_bytes(ccnet_sample.read_bytes())
    model = tmp_path / "quality.npz"
    assert cli("classifier", "train", "--positive", ccnet_sample, "--negative", warc_sample, "--output", model,
               "--holdout", "0.3")[0] == 0
    return inputs, model


def test_recipe_chains_steps_like_running_them_by_hand(cli, h, tmp_path, warc_sample, ccnet_sample):
    inputs, model = crawl_inputs_and_model(cli, tmp_path, warc_sample, ccnet_sample)
    filters = {"language": {"languages": ["en"]}, "gopher_quality": {"min_words": 20}, "c4": {"min_sentences": 2}}
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "input": str(inputs), "output": str(tmp_path / "run"),
        "steps": [{"extract": {}}, {"filter": filters}, {"classifier_score": {"model": str(model), "keep": "all"}}],
    })
    code, _, err = cli("run", recipe)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["01-extract", "02-filter", "03-classifier_score",
                                                                  "report.html"]

    # the same stages by hand
    filter_config = tmp_path / "filters.yaml"
    filter_config.write_text(yaml.safe_dump(filters, sort_keys=False))  # order matters
    assert cli("extract", "--input", inputs, "--output", tmp_path / "e")[0] == 0
    assert cli("filter", "--input", tmp_path / "e", "--output", tmp_path / "f", "--config", filter_config)[0] == 0
    assert cli("classifier", "score", "--input", tmp_path / "f", "--output", tmp_path / "s", "--model", model,
               "--keep", "all")[0] == 0
    for step, manual in (("01-extract", "e"), ("02-filter", "f"), ("03-classifier_score", "s")):
        assert h.read_rows(tmp_path / "run" / step) == h.read_rows(tmp_path / manual), step
        assert h.read_rows(tmp_path / "run" / step / "removed") == h.read_rows(tmp_path / manual / "removed") \
            if (tmp_path / manual / "removed").exists() else True
    final = h.read_rows(tmp_path / "run" / "03-classifier_score")
    assert final and all(r["language"] == "en" and 0 <= r["quality"] <= 1 for r in final)

    code, _, err = cli("run", recipe)  # a second run finds everything done
    assert code == 0 and err.count("0 this run") == 3


def test_rerun_with_changed_step_options_is_refused_until_overwrite(cli, h, tmp_path, warc_sample):
    recipe = {"input": str(warc_sample), "output": str(tmp_path / "run"),
              "steps": [{"extract": {}}, {"filter": {"gopher_quality": {"min_words": 50}}}, {"tokenize": {}}]}
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert cli("run", path)[0] == 0
    kept = h.read_rows(tmp_path / "run" / "02-filter")
    recipe["steps"][1]["filter"]["gopher_quality"]["min_words"] = 400
    write_recipe(path, recipe)
    code, _, err = cli("run", path)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "02-filter" in last and "other settings (filters.gopher_quality.min_words)" in last, err
    assert h.read_rows(tmp_path / "run" / "02-filter") == kept
    code, _, err = cli("run", path, "--overwrite")  # the tokenize step's input changed with it
    assert code == 0 and "extract: 1/1 shards done (0 this run, 1 already done)" in err, err
    now_kept = h.read_rows(tmp_path / "run" / "02-filter")
    assert 0 < len(now_kept) < len(kept)
    assert indexed.read_index(tmp_path / "run" / "03-tokenize").documents == len(now_kept)


def test_recipe_errors_are_caught_before_any_step_runs(cli, tmp_path, warc_sample):
    base = {"input": str(warc_sample), "output": str(tmp_path / "run")}
    cases = [
        ({**base, "stepz": []}, "recipe: unknown key 'stepz'"),
        ({"input": str(warc_sample), "steps": [{"extract": {}}]}, "recipe: missing key 'output'"),
        ({**base, "steps": [{"extract": {}}, {"dedupe": {}}]}, "recipe: step 2: unknown step 'dedupe'; known: "),
        ({**base, "steps": [{"extract": {}}, {"filter": {"c4": {"min_sentence": 2}}}]},
         "unknown config key 'filter.c4.min_sentence'"),
        ({**base, "steps": [{"extract": {"max_record_bytes": "big"}}]},
         "config key 'extract.max_record_bytes' must be int, got 'big'"),
        ({**base, "steps": [{"extract": {}}, {"classifier_score": {"model": str(tmp_path / "none.npz")}}]},
         "classifier_score: model not found"),
        ({**base, "steps": [{"extract": {}}, {"classifier_score": {}}]},
         "missing config key 'classifier_score.model'"),
        ({**base, "steps": [{"extract": {}}, {"classifier_score": {"model": "m.npz", "keep": "best"}}]},
         "config key 'classifier_score.keep' must be one of pareto, all, got 'best'"),
        ({**base, "steps": [{"extract": {}}, {"dedup_exact": {"fold_digitz": True}}]},
         "unknown config key 'dedup_exact.fold_digitz'"),
        ({**base, "steps": [{"extract": {}}, {"decontaminate": {}}]},
         "missing config key 'decontaminate.benchmarks'"),
        ({**base, "steps": [{"extract": {}}, {"mixture": {"wieght": 0.7}}]},
         "unknown config key 'mixture.wieght'"),
        ({**base, "output": "s3://corpus/run", "steps": [{"extract": {}}]},
         "recipe: output s3://corpus/run: gpt-data run writes local files only"),
        ({**base, "steps": [{"extract": {}}, {"mixture": {"weight": "lots"}}]},
         "mixture.weight: not a number: 'lots'"),
        ({**base, "steps": [{"extract": {}}, {"mixture": {"token_budget": "300X"}}]},
         "config key 'mixture.token_budget' must be token count, got '300X'"),
    ]
    for i, (recipe, message) in enumerate(cases):
        code, _, err = cli("run", write_recipe(tmp_path / f"r{i}.yaml", recipe))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (message, err)
    assert not (tmp_path / "run").exists()
    (tmp_path / "broken.yaml").write_text("steps: [extract: {\n")
    code, _, err = cli("run", tmp_path / "broken.yaml")
    assert code == 2 and "is not valid YAML" in err
    code, _, err = cli("run", tmp_path / "missing.yaml")
    assert code == 2 and "recipe not found" in err
    assert set(STEPS) >= {"extract", "filter", "classifier_score"}
    example = plan(load_recipe(DATA.parents[1] / "configs" / "data" / "cc_quality.yaml"))  # the shipped recipe checks
    assert [s.name for s in example][-3:] == ["decontaminate", "tokenize", "mixture"]


def test_step_options_are_the_subcommands_typed_options():
    """A step's keys are the fields its subcommand's flags are made from: scalars, bare flags, lists,
    and mappings for lists of KEY=VALUE items; the mixture step turns its input prefix into a source."""
    from data_pipeline.dedup.cli import MinhashOptions
    from data_pipeline.mixture import MixtureStep, recipe_arguments

    options = options_from_config(MinhashOptions, {"fold_digits": True, "no_verify": False, "bands": 10},
                                  "dedup_minhash")
    assert options == MinhashOptions(fold_digits=True, bands=10)
    step = options_from_config(MixtureStep, {"weight": 0.6, "source": {"wiki": "w:0.3", "books": "b:0.1"},
                                             "quality_split": ["06-tokenize"], "token_budget": "1K"}, "mixture")
    args = recipe_arguments("run/06-tokenize", "run/07-mixture", step)
    assert args["source"] == ("06-tokenize=run/06-tokenize:0.6", "wiki=w:0.3", "books=b:0.1")
    assert (args["output"], args["quality_split"], args["token_budget"], args["weight"]) == \
        ("run/07-mixture/blend.json", ("06-tokenize",), 1000, ())
    assert "name" not in args


def test_typed_steps_options_are_their_subcommands_flags():
    """Each typed step's dataclass makes its subcommand's flags: parsing no options gives its
    defaults, and the subcommand has no option the step lacks."""
    from data_pipeline.classifier import ScoreOptions
    from data_pipeline.cli import build_parser
    from data_pipeline.decontaminate import DecontaminateOptions
    from data_pipeline.extract import ExtractOptions
    from data_pipeline.dedup.cli import ExactOptions, MinhashOptions
    from data_pipeline.mixture import MixtureOptions
    from data_pipeline.tokenize import TokenizeOptions

    paths = ["--input", "in", "--output", "out"]
    cases = [(["dedup", "exact", *paths], ExactOptions()), (["dedup", "minhash", *paths], MinhashOptions()),
             (["decontaminate", *paths, "--benchmarks", "b"], DecontaminateOptions(benchmarks="b")),
             (["tokenize", *paths], TokenizeOptions()), (["mixture"], MixtureOptions()),
             (["extract", *paths], ExtractOptions()),
             (["extract", *paths, "--all-text", "--min-text-chars", "20"],
              ExtractOptions(main_content=False, min_text_chars=20)),
             (["classifier", "score", *paths, "--model", "m.npz"], ScoreOptions(model="m.npz"))]
    shared = {"command", "classifier_command", "method", "func", "input", "output", "workers", "executor",
              "overwrite", "base_url", "limit", "sample"}  # the last three: how extract reads a --input path manifest
    for argv, expected in cases:
        args = build_parser().parse_args(argv)
        assert from_arguments(type(expected), args) == expected, argv
        assert set(vars(args)) - shared <= {f.name for f in dataclasses.fields(expected)}, argv


def test_stats_summarises_a_stage_output(cli, h, tmp_path, warc_sample, ccnet_sample):
    inputs, model = crawl_inputs_and_model(cli, tmp_path, warc_sample, ccnet_sample)
    assert cli("filter", "--input", inputs, "--output", tmp_path / "f")[0] == 0
    assert cli("classifier", "score", "--input", tmp_path / "f", "--output", tmp_path / "s", "--model", model,
               "--keep", "all")[0] == 0
    code, out, err = cli("stats", "--input", tmp_path / "s")
    assert code == 0, err
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    rows = h.read_rows(tmp_path / "s")
    assert summary["documents"] == len(rows) and summary["shards"] == 2
    assert summary["bytes"] == sum(len(r["text"].encode()) for r in rows)
    assert summary["estimated_tokens"] == summary["bytes"] // 4
    assert summary["language"] == dict(Counter(r["language"] for r in rows))
    histogram = Counter(min(int(r["quality"] * 10), 9) for r in rows)
    assert summary["quality_histogram"] == {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": histogram.get(i, 0)
                                            for i in range(10)}
    assert "Quality score histogram" in out and (tmp_path / "s" / "summary.txt").read_text().strip()

    code, out, _ = cli("stats", "--input", tmp_path / "f", "--output", tmp_path / "report")
    assert code == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    removed = Counter(r["removed_by"] for r in h.read_rows(tmp_path / "f" / "removed"))
    assert summary["removed"] == dict(removed) == json.loads((tmp_path / "f" / "stats.json").read_text())["removed"]
    assert "Removed per rule" in out


def crawl_and_curated_copies(tmp_path, warc_sample, wiki_sample) -> tuple[Path, Path, list[dict], str]:
    """Inputs for every stage to act on: the WARC sample, the Wikipedia sample, an exact copy of it
    (only spacing and punctuation changed), a near copy (four words edited: word 5-gram Jaccard
    0.84-0.98) and a benchmark quoting 40 words of one article. File names put the originals
    first, so they are the copies each dedup keeps."""
    inputs, bench = tmp_path / "in", tmp_path / "bench"
    inputs.mkdir()
    bench.mkdir()
    (inputs / "a-crawl.warc.gz").write_bytes(warc_sample.read_bytes())
    wiki = [json.loads(line) for line in gzip.open(wiki_sample, "rt")]

    def near(text: str) -> str:
        words = text.split(" ")
        for k in range(0, len(words), len(words) // 4):
            words[k] = "edited"
        return " ".join(words)

    def respaced(text: str) -> str:
        return text.replace(" ", "  ").replace(",", " ;")

    for name, docs in (("b-wiki", wiki),
                       ("c-wiki-exact", [dict(d, id=d["id"] + "-exact", text=respaced(d["text"])) for d in wiki]),
                       ("d-wiki-near", [dict(d, id=d["id"] + "-near", text=near(d["text"])) for d in wiki])):
        with gzip.open(inputs / f"{name}.jsonl.gz", "wt") as out:
            out.writelines(json.dumps(d) + "\n" for d in docs)
    passage = " ".join(wiki[4]["text"].split(" ")[100:140])
    (bench / "quiz.jsonl").write_text(json.dumps({"question": passage, "answer": "yes"}) + "\n")
    return inputs, bench, wiki, passage


def test_recipe_runs_every_stage_like_running_them_by_hand(cli, h, tmp_path, warc_sample, wiki_sample):
    """extract -> filter -> dedup exact -> dedup minhash -> decontaminate -> tokenize -> mixture from
    one recipe equals the seven commands typed by hand, and each stage did its job."""
    inputs, bench, wiki, passage = crawl_and_curated_copies(tmp_path, warc_sample, wiki_sample)
    filters = {"language": {"languages": ["en"]}, "gopher_quality": {"min_words": 20}}
    ccnet_tokens = DATA / "tokens" / "ccnet_gpt2_text_document"
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "input": str(inputs), "output": str(tmp_path / "run"),
        "steps": [{"extract": {}}, {"filter": filters}, {"dedup_exact": {}},
                  {"dedup_minhash": {"bands": 14, "rows": 8}}, {"decontaminate": {"benchmarks": str(bench)}},
                  {"tokenize": {"tokenizer": "gpt2"}},
                  {"mixture": {"name": "crawl", "weight": 0.7, "source": {"ccnet": f"{ccnet_tokens}:0.3"},
                               "token_budget": "100K"}}],
    })
    code, _, err = cli("run", recipe)
    assert code == 0, err
    run = tmp_path / "run"

    (tmp_path / "filters.yaml").write_text(yaml.safe_dump(filters, sort_keys=False))
    by_hand = [
        ("extract", "--input", inputs, "--output", tmp_path / "e"),
        ("filter", "--input", tmp_path / "e", "--output", tmp_path / "f", "--config", tmp_path / "filters.yaml"),
        ("dedup", "exact", "--input", tmp_path / "f", "--output", tmp_path / "x"),
        ("dedup", "minhash", "--input", tmp_path / "x", "--output", tmp_path / "m", "--bands", 14, "--rows", 8),
        ("decontaminate", "--input", tmp_path / "m", "--output", tmp_path / "d", "--benchmarks", bench),
        ("tokenize", "--input", tmp_path / "d", "--output", tmp_path / "tokens", "--tokenizer", "gpt2"),
        ("mixture", "--source", f"crawl={tmp_path / 'tokens'}:0.7", "--source", f"ccnet={ccnet_tokens}:0.3",
         "--token-budget", "100K", "--output", tmp_path / "blend.json"),
    ]
    for argv in by_hand:
        assert cli(*argv)[0] == 0, argv
    for step, manual in (("01-extract", "e"), ("02-filter", "f"), ("03-dedup_exact", "x"),
                         ("04-dedup_minhash", "m"), ("05-decontaminate", "d")):
        for part in ("", "removed"):
            assert h.read_rows(run / step / part) == h.read_rows(tmp_path / manual / part), (step, part)
    for suffix in (".bin", ".idx"):
        assert (run / f"06-tokenize{suffix}").read_bytes() == (tmp_path / f"tokens{suffix}").read_bytes()
    recipe_blend, manual_blend = load_blend(run / "07-mixture" / "blend.json"), load_blend(tmp_path / "blend.json")
    assert [s.prefix for s in recipe_blend.sources] == [str(run / "06-tokenize"), str(ccnet_tokens)]
    assert [dataclasses.replace(s, prefix="") for s in recipe_blend.sources] == \
        [dataclasses.replace(s, prefix="") for s in manual_blend.sources]

    # What each stage did, against what the inputs were built to hold.
    ids = {step: {r["id"] for r in h.read_rows(run / step)} for step in ("02-filter", "03-dedup_exact",
                                                                          "04-dedup_minhash")}
    originals = {d["id"] for d in wiki}
    assert originals | {i + "-exact" for i in originals} | {i + "-near" for i in originals} <= ids["02-filter"]
    exact_removed = h.read_rows(run / "03-dedup_exact" / "removed")
    assert {(r["id"], r["duplicate_of"]) for r in exact_removed} == {(i + "-exact", i) for i in originals}
    near_removed = h.read_rows(run / "04-dedup_minhash" / "removed")
    assert {(r["id"], r["duplicate_of"]) for r in near_removed} == {(i + "-near", i) for i in originals}
    assert ids["04-dedup_minhash"] == ids["02-filter"] - {r["id"] for r in exact_removed + near_removed}
    clean = h.read_rows(run / "05-decontaminate")
    assert [r["id"] for r in clean] == [r["id"] for r in h.read_rows(run / "04-dedup_minhash")]
    assert passage in " ".join(d["text"] for d in wiki) and not any(passage in r["text"] for r in clean)
    assert json.loads((run / "05-decontaminate" / "stats.json").read_text())["decontaminate"] == {"cleaned": 1}
    index = indexed.read_index(run / "06-tokenize")
    assert index.documents == len(clean)
    crawl, ccnet = recipe_blend.sources
    assert (crawl.name, crawl.weight, crawl.tokens, crawl.documents) == ("crawl", 0.7, index.tokens, len(clean))
    assert (ccnet.weight, ccnet.epochs) == (0.3, pytest.approx(0.3 * 100_000 / ccnet.tokens))
    assert recipe_blend.token_budget == 100_000


def test_stages_do_not_import_the_recipe():
    """Stages depend on common.options for their typed options, not on the recipe that runs them."""
    code = ("import sys, data_pipeline.extract.stage, data_pipeline.filters, data_pipeline.classifier; "
            "print('data_pipeline.recipe' in sys.modules)")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "False"
