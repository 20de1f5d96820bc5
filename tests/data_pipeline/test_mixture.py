"""`gpt-data mixture`: GPT-3's Table 2.2, target epochs, warnings, blends megatron-core samples, quality buckets."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_pipeline import indexed
from data_pipeline.blend import BlendSource, load_blend, write_blend
from data_pipeline.cli import main as cli
from data_pipeline.document import DOCUMENT_SCHEMA, extend_schema
from common.errors import UserError
from data_pipeline.mixture import MixSource, parse_source, resolve
from data_pipeline.shards import ShardWriter, read_documents
from data_pipeline.tokenize import tokenize
from data_pipeline.tokenizers import load_tokenizer

DATA = Path(__file__).resolve().parents[1] / "data"
TOKENS = DATA / "tokens"
CC_TOKENS, WIKI_TOKENS = 21814, 20676  # bundled shards, EODs included

# GPT-3 paper (Brown et al. 2020), Table 2.2: tokens, weight in the training mix, epochs
# elapsed when training for 300B tokens.
TABLE_2_2 = [("Common Crawl", 410e9, 0.60, 0.44), ("WebText2", 19e9, 0.22, 2.9), ("Books1", 12e9, 0.08, 1.9),
             ("Books2", 55e9, 0.08, 0.43), ("Wikipedia", 3e9, 0.03, 3.4)]


def test_reproduces_gpt3_table_2_2():
    mixture = resolve([MixSource(name, int(tokens), weight=weight) for name, tokens, weight, _ in TABLE_2_2],
                      300_000_000_000)
    assert "weights add up to 1.01; normalised to 1" in mixture.notes
    assert sum(r.weight for r in mixture.rows) == pytest.approx(1.0)
    for (name, tokens, weight, paper_epochs), row in zip(TABLE_2_2, mixture.rows):
        assert row.weight == pytest.approx(weight / 1.01)
        assert row.budget_tokens == pytest.approx(300e9 * weight / 1.01)
        # The paper prints weights to a whole percent (sum 101%) and tokens to whole
        # billions; the epochs it can imply are uncertain by that rounding.
        tolerance = paper_epochs * (0.005 / weight + 0.5e9 / tokens + 0.01)
        if name == "WebText2":
            # The paper's own row is inconsistent: 2.9 epochs of 300B at 22% needs 22.8B
            # tokens, not 19B (3.44 epochs). Every other row agrees within its rounding.
            assert row.epochs == pytest.approx(3.44, abs=0.005)
            assert abs(row.epochs - paper_epochs) > tolerance
        else:
            assert abs(row.epochs - paper_epochs) <= tolerance, (name, row.epochs, paper_epochs)
    assert [round(r.epochs, 2) for r in mixture.rows] == [0.43, 3.44, 1.98, 0.43, 2.97]


def test_table_2_2_on_the_command_line(capsys):
    args = ["mixture", "--token-budget", "300B", "--max-epochs", "3"]
    for name, tokens, weight, _ in TABLE_2_2:
        args += ["--source", f"{name}={tokens / 1e9:g}B:{weight:.0%}"]
    assert cli(args) == 0
    out, err = capsys.readouterr()
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.startswith("│")}
    assert rows["Common Crawl"] == ["410B", "-", "59.41%", "178B", "0.435"]
    assert rows["Wikipedia"] == ["3B", "-", "2.97%", "8.91B", "2.97"]
    assert "warning: WebText2 would be repeated 3.44 epochs (> --max-epochs 3)" in err
    assert "Wikipedia" not in err


def test_target_epochs_write_a_blend_that_loads(tmp_path, capsys):
    budget = 2 * CC_TOKENS + 3 * WIKI_TOKENS  # exactly what the targets need
    blend_path = tmp_path / "blend.json"
    assert cli(["mixture", "--source", f"cc={TOKENS / 'ccnet_gpt2_text_document'}",
                "--source", f"wiki={TOKENS / 'wiki_gpt2_text_document'}", "--epochs", "cc=2", "--epochs", "wiki=3",
                "--token-budget", str(budget), "--max-epochs", "2.5", "--output", str(blend_path)]) == 0
    _, err = capsys.readouterr()
    assert "wiki would be repeated 3.00 epochs" in err and "cc would" not in err
    blend = load_blend(blend_path)
    assert [s.weight for s in blend.sources] == pytest.approx([2 * CC_TOKENS / budget, 3 * WIKI_TOKENS / budget])
    assert [s.epochs for s in blend.sources] == pytest.approx([2.0, 3.0])
    assert [(s.tokens, s.documents) for s in blend.sources] == [(CC_TOKENS, 10), (WIKI_TOKENS, 16)]
    assert blend.token_budget == budget and blend.tokenizer["eod_id"] == 50256
    raw = json.loads(blend_path.read_text())
    assert raw["sources"][0]["prefix"] == os.path.relpath(TOKENS / "ccnet_gpt2_text_document", tmp_path)


def test_epochs_and_weights_together_and_natural_proportions():
    cc, wiki = MixSource("cc", CC_TOKENS, epochs=2.0), MixSource("wiki", WIKI_TOKENS, weight=5.0)
    mixed = resolve([cc, wiki], 200_000)
    assert [r.weight for r in mixed.rows] == pytest.approx([2 * CC_TOKENS / 200_000, 1 - 2 * CC_TOKENS / 200_000])
    assert mixed.rows[0].epochs == pytest.approx(2.0)
    natural = resolve([MixSource("cc", CC_TOKENS), MixSource("wiki", WIKI_TOKENS)], None)
    assert [r.weight for r in natural.rows] == pytest.approx([CC_TOKENS / (CC_TOKENS + WIKI_TOKENS),
                                                              WIKI_TOKENS / (CC_TOKENS + WIKI_TOKENS)])
    assert all(r.epochs is None for r in natural.rows)


@pytest.mark.parametrize("sources, budget, message", [
    ([MixSource("a", 10, epochs=1.0)], None, "need --token-budget"),
    ([MixSource("a", 10, epochs=5.0), MixSource("b", 10, weight=1.0)], 40, "nothing is left"),
    ([MixSource("a", 10, weight=1.0), MixSource("b", 10)], None, "b have neither a weight"),
    ([MixSource("a", 10, weight=1.0), MixSource("a", 10, weight=1.0)], None, "unique"),
    ([MixSource("a", 10, weight=1.0, epochs=1.0)], 10, "not both"),
    ([], None, "no sources"),
])
def test_bad_mixtures_are_clear_errors(sources, budget, message):
    with pytest.raises(UserError, match=message):
        resolve(sources, budget)


def test_bad_source_arguments(tmp_path):
    assert parse_source("cc=410B:60%").tokens == 410_000_000_000
    with pytest.raises(UserError, match="NAME=PREFIX"):
        parse_source("just-a-name")
    with pytest.raises(UserError, match="token shard not found"):
        parse_source(f"cc={tmp_path / 'missing'}:0.5")
    assert cli(["mixture", "--source", "cc=410B", "--output", str(tmp_path / "b.json")]) == 2  # no shard
    assert not (tmp_path / "b.json").exists()


def test_megatron_samples_the_blend_at_its_weights(tmp_path):
    """megatron-core's BlendedMegatronDatasetBuilder over our blend draws 0.7 / 0.3 of its samples."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    class Tok:
        eod, vocab_size = 50256, 50257
        unique_identifiers = {"eod": 50256, "vocab_size": 50257}

    blend = load_blend(TOKENS / "blend2.json")
    prefixes, weights = blend.megatron_blend()
    local = []  # copies: without a process group megatron-core caches its indices next to the data
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            shutil.copy(prefix + suffix, tmp_path / (Path(prefix).name + suffix))
        local.append(str(tmp_path / Path(prefix).name))
    config = GPTDatasetConfig(random_seed=1, sequence_length=64, blend=(local, weights), split="100,0,0",
                              path_to_cache=None, tokenizer=Tok(), reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    samples = 1000
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()
    share = Counter(int(train.dataset_index[i]) for i in range(samples))
    assert abs(share[0] / samples - 0.7) < 0.01 and abs(share[1] / samples - 0.3) < 0.01
    tok = load_tokenizer(blend.tokenizer)
    cc_text = "".join(d.text for d in read_documents(DATA / "ccnet-head-0091.jsonl.gz"))
    first_cc = next(i for i in range(samples) if train.dataset_index[i] == 0)
    piece = tok.decode([t for t in train[first_cc]["tokens"].tolist() if t != tok.eod_id])
    assert piece[10:60] in cc_text  # samples hold real text of their source


@pytest.fixture()
def scored_common_crawl(tmp_path):
    """The CCNet sample tokenized with a quality score per document: CCNet's own language-model
    perplexity (168-320 in this "head" sample) mapped linearly from [150, 350] to [1, 0]."""
    records = [json.loads(line) for line in gzip.open(DATA / "ccnet-head-0091.jsonl.gz", "rt")]
    docs = list(read_documents(DATA / "ccnet-head-0091.jsonl.gz"))
    scores = [float(np.clip(1 - (r["metadata"]["perplexity"] - 150) / 200, 0, 1)) for r in records]
    schema = extend_schema(DOCUMENT_SCHEMA, quality=pa.float32())
    with ShardWriter(tmp_path / "in" / "cc.parquet", schema) as out:
        for doc, score in zip(docs, scores):
            doc.metadata["quality"] = score
            out.write(doc)
    tokenize(tmp_path / "in", tmp_path / "tokens" / "cc", "gpt2", quiet=True)
    return tmp_path / "tokens" / "cc", docs, np.array(scores, dtype=np.float32)


def test_quality_split_weights_buckets_by_the_curve(scored_common_crawl, tmp_path):
    prefix, docs, scores = scored_common_crawl
    blend_path = tmp_path / "mix" / "blend.json"
    args = ["mixture", "--source", f"cc={prefix}:0.6", "--source", f"wiki={TOKENS / 'wiki_gpt2_text_document'}:0.4",
            "--quality-split", "cc", "--quality-buckets", "0,0.3,0.6,1", "--quality-curve", "power:2",
            "--token-budget", "100000", "--output", str(blend_path)]
    assert cli(args) == 0
    blend = load_blend(blend_path)
    tok = load_tokenizer("gpt2")
    edges = [0, 0.3, 0.6, 1]
    buckets = [[d for d, s in zip(docs, scores) if lo <= s < hi or (hi == 1 and s == 1)]
               for lo, hi in zip(edges[:-1], edges[1:])]
    assert all(buckets), "each bucket holds real documents"
    cc_sources = [s for s in blend.sources if s.name.startswith("cc/")]
    assert [s.name for s in cc_sources] == ["cc/q0-0.3", "cc/q0.3-0.6", "cc/q0.6-1"]
    tokens = []
    for source, bucket in zip(cc_sources, buckets):
        stored = [np.array(x) for x in _megatron_docs(source.prefix)]
        assert [tok.decode(ids[:-1]) for ids in stored] == [d.text for d in bucket]  # order kept
        tokens.append(sum(len(ids) for ids in stored))
        assert (source.tokens, source.documents) == (tokens[-1], len(bucket))
    assert sum(tokens) == indexed.read_index(prefix).tokens
    mass = np.array(tokens) * np.array([0.15, 0.45, 0.8]) ** 2
    assert [s.weight for s in cc_sources] == pytest.approx(list(0.6 * mass / mass.sum()))
    assert blend.sources[-1].name == "wiki" and blend.sources[-1].weight == pytest.approx(0.4)
    epochs = [s.epochs for s in cc_sources]
    assert epochs[2] > epochs[1] > epochs[0]  # better text is repeated more
    # Re-running reuses the split; another curve only changes weights, and replaces the blend
    # only with --overwrite.
    mtime = Path(f"{cc_sources[0].prefix}.bin").stat().st_mtime_ns
    other_curve = args[:-6] + ["--quality-curve", "1,1,3", "--output", str(blend_path)]
    before = blend_path.read_bytes()
    assert cli(other_curve) == 2 and blend_path.read_bytes() == before
    other_edges = [a if a != "0,0.3,0.6,1" else "0,0.5,1" for a in args]
    assert cli(other_edges) == 2 and Path(f"{cc_sources[0].prefix}.bin").stat().st_mtime_ns == mtime
    assert cli(other_curve + ["--overwrite"]) == 0
    again = load_blend(blend_path)
    assert Path(f"{cc_sources[0].prefix}.bin").stat().st_mtime_ns == mtime
    mass = np.array(tokens) * np.array([1, 1, 3])
    assert [s.weight for s in again.sources[:3]] == pytest.approx(list(0.6 * mass / mass.sum()))


def test_quality_split_needs_scores(tmp_path):
    shutil.copy(TOKENS / "wiki_gpt2_text_document.bin", tmp_path / "w.bin")
    shutil.copy(TOKENS / "wiki_gpt2_text_document.idx", tmp_path / "w.idx")
    assert cli(["mixture", "--source", f"w={tmp_path / 'w'}", "--quality-split", "w",
                "--output", str(tmp_path / "b.json")]) == 2
    with pytest.raises(UserError, match="--quality-curve needs 3"):
        from data_pipeline.quality_buckets import curve_multipliers, parse_edges

        curve_multipliers("1,2", parse_edges("3"))


def test_write_blend_round_trip_and_validation(tmp_path):
    source = BlendSource("cc", str(TOKENS / "ccnet_gpt2_text_document"), 1.0, CC_TOKENS, 10, None)
    path = write_blend(tmp_path / "sub" / "b.json", load_tokenizer("gpt2").spec(), [source])
    assert load_blend(path).sources == [source]
    raw = json.loads(path.read_text())
    for change, message in [({"version": 2}, "version must be 1"),
                            ({"extra": 1}, "unknown key"),
                            ({"sources": [dict(raw["sources"][0], weight=0.5)]}, "sum to 1"),
                            ({"sources": [dict(raw["sources"][0], prefix="nope")]}, "token shard not found"),
                            ({"tokenizer": {"type": "gpt2"}}, "vocab_size must be")]:
        path.write_text(json.dumps({**raw, **change}))
        with pytest.raises(UserError, match=message):
            load_blend(path)


def _megatron_docs(prefix: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    dataset = IndexedDataset(prefix)
    return [np.array(dataset[i]) for i in range(len(dataset))]
