"""gpt-data run RECIPE.yaml: steps chained through their output directories, checked up front."""
from __future__ import annotations

import json
from collections import Counter

import yaml

from data_pipeline.recipe import STEPS


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
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["01-extract", "02-filter", "03-classifier_score"]

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


def test_recipe_errors_are_caught_before_any_step_runs(cli, tmp_path, warc_sample):
    base = {"input": str(warc_sample), "output": str(tmp_path / "run")}
    cases = [
        ({**base, "stepz": []}, "recipe: unknown key 'stepz'"),
        ({"input": str(warc_sample), "steps": [{"extract": {}}]}, "recipe: missing key 'output'"),
        ({**base, "steps": [{"extract": {}}, {"dedupe": {}}]}, "recipe: step 2: unknown step 'dedupe'; known: "),
        ({**base, "steps": [{"extract": {}}, {"filter": {"c4": {"min_sentence": 2}}}]},
         "filter.c4: unknown option 'min_sentence'"),
        ({**base, "steps": [{"extract": {"max_record_bytes": "big"}}]},
         "extract.max_record_bytes: expected int, got 'big'"),
        ({**base, "steps": [{"extract": {}}, {"classifier_score": {"model": str(tmp_path / "none.npz")}}]},
         "classifier_score: model not found"),
        ({**base, "steps": [{"extract": {}}, {"dedup_exact": {"fold_digitz": True}}]},
         "dedup exact: unrecognized arguments: --fold-digitz"),
        ({**base, "steps": [{"extract": {}}, {"decontaminate": {}}]},
         "decontaminate: the following arguments are required: --benchmarks"),
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


def test_recipe_runs_other_stages_through_their_cli(cli, h, tmp_path, ccnet_sample, wiki_sample):
    """dedup and tokenize steps are the `gpt-data` subcommands with the step's options as flags."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "ccnet.jsonl.gz").write_bytes(ccnet_sample.read_bytes())
    (inputs / "copy.jsonl.gz").write_bytes(ccnet_sample.read_bytes())  # every document twice
    (inputs / "wiki.jsonl.gz").write_bytes(wiki_sample.read_bytes())
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "input": str(inputs), "output": str(tmp_path / "run"),
        "steps": [{"extract": {}}, {"dedup_exact": {"fold_digits": True}}, {"tokenize": {"tokenizer": "gpt2"}}],
    })
    code, _, err = cli("run", recipe)
    assert code == 0, err
    unique = h.read_rows(tmp_path / "run" / "02-dedup_exact")
    assert len(unique) == 10 + 16  # the copies are gone
    assert len({r["text"] for r in unique}) == len(unique)
    assert cli("tokenize", "--input", tmp_path / "run" / "02-dedup_exact", "--output", tmp_path / "manual",
               "--tokenizer", "gpt2")[0] == 0
    for suffix in (".bin", ".idx"):
        produced = (tmp_path / "run" / f"03-tokenize{suffix}").read_bytes()
        assert produced and produced == (tmp_path / f"manual{suffix}").read_bytes()
