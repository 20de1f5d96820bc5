"""GPT-3 quality classifier: separates curated text from raw crawl text on documents it never saw,
and its Pareto keep rule is numpy's Pareto(9), seeded per document."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from scipy.stats import ks_2samp

from data_pipeline.cli import main
from data_pipeline.classifier import N_FEATURES, QualityModel, pareto_draws
from data_pipeline.extract import ExtractOptions
from data_pipeline.extract.warc import read_crawl_file
from data_pipeline.stats import Stats

CHUNK_WORDS = 80


def chunks(text: str) -> list[str]:
    """Pieces of CHUNK_WORDS words (the last, shorter piece dropped), so length says nothing."""
    ws = text.split()
    return [" ".join(ws[i:i + CHUNK_WORDS]) for i in range(0, len(ws) - CHUNK_WORDS + 1, CHUNK_WORDS)]


def write_jsonl(path, texts: list[str], prefix: str):
    path.write_text("".join(json.dumps({"id": f"{prefix}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, warc_sample, wiki_sample):
    """Curated (Lee news articles + Wikipedia) vs raw crawl (all visible text of the WARC's pages),
    split by source document: no held-out chunk comes from a document seen in training."""
    lee = (warc_sample.parent / "lee_background.cor").read_text().splitlines()
    with gzip.open(wiki_sample, "rt") as f:
        wiki = [json.loads(line)["text"] for line in f]
    pages = [d.text for d in read_crawl_file(warc_sample, Stats(), ExtractOptions(main_content=False))]
    split = {
        "train_pos": lee[:240] + wiki[:12], "test_pos": lee[240:] + wiki[12:],
        "train_neg": pages[:16], "test_neg": pages[16:],
    }
    root = tmp_path_factory.mktemp("corpora")
    return {name: write_jsonl(root / f"{name}.jsonl", [c for doc in docs for c in chunks(doc)], name)
            for name, docs in split.items()}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, corpora):
    path = tmp_path_factory.mktemp("model") / "quality.npz"
    assert main(["classifier", "train", "--positive", str(corpora["train_pos"]), "--negative",
                 str(corpora["train_neg"]), "--output", str(path)]) == 0
    return path


def scores_of(h, directory) -> np.ndarray:
    return np.array([r["quality"] for r in h.read_rows(directory)])


def test_train_reports_heldout_auc(cli, tmp_path, corpora):
    code, out, err = cli("classifier", "train", "--positive", corpora["train_pos"], "--negative",
                         corpora["train_neg"], "--output", tmp_path / "quality.npz", "--seed", "3")
    assert code == 0, err
    model = QualityModel.load(tmp_path / "quality.npz")
    assert model.coef.shape == (N_FEATURES,)
    assert model.report["heldout_auc"] > 0.95 and f"held-out AUC {model.report['heldout_auc']:.4f}" in out
    assert model.report["positives"] > 300 and model.report["negatives"] > 100


def test_classifier_separates_curated_from_crawl_on_unseen_documents(cli, h, tmp_path, corpora, model_path):
    for name in ("test_pos", "test_neg"):
        code, _, err = cli("classifier", "score", "--model", model_path, "--keep", "all",
                           "--input", corpora[name], "--output", tmp_path / name)
        assert code == 0, err
    positive, negative = scores_of(h, tmp_path / "test_pos"), scores_of(h, tmp_path / "test_neg")
    assert len(positive) > 100 and len(negative) > 30
    auc = mann_whitney_auc(positive, negative)
    print(f"unseen-document AUC {auc:.4f} ({len(positive)} curated, {len(negative)} crawl chunks)")
    assert auc > 0.93, auc
    assert positive.mean() > 0.5 > negative.mean()


def test_pareto_keep_rule_keeps_the_expected_share_reproducibly(cli, h, tmp_path, corpora, model_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("train_pos", "train_neg", "test_pos", "test_neg"):
        (inputs / f"{name}.jsonl").write_bytes(corpora[name].read_bytes())
    runs = {}
    for run, workers, seed in (("a", 1, 0), ("b", 2, 0), ("c", 1, 7)):
        code, out, err = cli("classifier", "score", "--model", model_path, "--input", inputs, "--output",
                             tmp_path / run, "--workers", workers, "--seed", seed)
        assert code == 0, err
        runs[run] = ({r["id"] for r in h.read_rows(tmp_path / run)},
                     {r["id"] for r in h.read_rows(tmp_path / run / "removed")})
    assert runs["a"] == runs["b"]  # same seed: same documents, whatever the worker count
    assert runs["a"][0] != runs["c"][0]  # another seed: another sample
    kept, removed = runs["a"]
    everything = h.read_rows(tmp_path / "a") + h.read_rows(tmp_path / "a" / "removed")
    assert len(everything) == len(kept) + len(removed) and not kept & removed
    assert all(r["removed_by"] == "quality:pareto" for r in h.read_rows(tmp_path / "a" / "removed"))
    # P(pareto(9) > 1 - q) = (2 - q) ** -9: the kept count must match its expectation
    q = np.array([r["quality"] for r in everything])
    p_keep = (2.0 - q) ** -9.0
    expected, sd = p_keep.sum(), np.sqrt((p_keep * (1 - p_keep)).sum())
    assert abs(len(kept) - expected) < 4 * sd, (len(kept), expected, sd)
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["documents_out"] == len(kept) and stats["removed"] == {"quality:pareto": len(removed)}
    assert sum(stats["quality_histogram"].values()) == len(everything)


def mann_whitney_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return (greater + 0.5 * ties) / (len(positive) * len(negative))


def test_pareto_draws_follow_numpy_pareto_and_are_reproducible():
    ids = [f"doc-{i}" for i in range(20000)]
    ours = pareto_draws(ids, 9.0, seed=0)
    reference = np.random.default_rng(0).pareto(9.0, size=20000)
    assert ks_2samp(ours, reference).pvalue > 0.01
    assert np.array_equal(ours, pareto_draws(ids, 9.0, seed=0))
    assert np.array_equal(ours[:10], pareto_draws(ids[:10], 9.0, seed=0))  # per document, not per batch
    assert not np.array_equal(ours, pareto_draws(ids, 9.0, seed=1))
