"""Language ID on a text's first `prefix_chars` characters agrees with whole-text language ID.

The figures asserted here are the ones docs/benchmarks.md reports, measured on every
real document bundled in tests/data (Wikipedia articles, CCNet documents, the pages
extracted from the Common Crawl WARC sample, the Lee news articles).
"""
from __future__ import annotations

import gzip
import json

import pytest

from common.errors import UserError
from data_pipeline.extract import read_any
from data_pipeline.filters.language import LanguageFilter, LanguageOptions, leading_words
from data_pipeline.stats import Stats

# (documents whose label / keep decision agree, documents) at the default prefix_chars
DOCUMENTED_LABEL_AGREEMENT = (348, 348)
DOCUMENTED_KEEP_AGREEMENT = (347, 348)


@pytest.fixture(scope="module")
def real_texts(wiki_sample, ccnet_sample, warc_sample) -> list[str]:
    texts = []
    for sample in (wiki_sample, ccnet_sample):
        with gzip.open(sample, "rt") as f:
            texts += [json.loads(line)["text"] for line in f]
    texts += [doc.text for doc in read_any(warc_sample, Stats())]
    texts += (warc_sample.parent / "lee_background.cor").read_text().splitlines()
    return texts


def decisions(lid: LanguageFilter, texts: list[str]) -> list[tuple[str, bool]]:
    """(language, kept) per text."""
    found = []
    for text in texts:
        language, score = lid.predict(text)
        found.append((language, language in lid.languages and score >= lid.min_score))
    return found


def test_prefix_agrees_with_the_whole_text_on_real_documents(real_texts):
    assert LanguageOptions().prefix_chars > 0
    whole = decisions(LanguageFilter(LanguageOptions(prefix_chars=0)), real_texts)
    prefix = decisions(LanguageFilter(), real_texts)
    assert sum(len(t) > LanguageOptions().prefix_chars for t in real_texts) > 300  # the prefix matters
    labels = sum(a[0] == b[0] for a, b in zip(whole, prefix))
    keeps = sum(a[1] == b[1] for a, b in zip(whole, prefix))
    assert len(real_texts) == DOCUMENTED_LABEL_AGREEMENT[1] == DOCUMENTED_KEEP_AGREEMENT[1]
    assert labels >= DOCUMENTED_LABEL_AGREEMENT[0] and keeps >= DOCUMENTED_KEEP_AGREEMENT[0]


def test_prefix_zero_classifies_the_whole_text(real_texts):
    lid = LanguageFilter(LanguageOptions(prefix_chars=0))
    text = max(real_texts, key=len)
    label, score = lid.model.predict(text.replace("\n", " "), k=1)
    assert lid.predict(text) == (label[0].removeprefix("__label__"), min(float(score[0]), 1.0))


def test_leading_words_cut_at_whitespace():
    text = "alpha beta\ngamma delta"
    assert leading_words(text, 0) == text and leading_words(text, 100) == text
    assert leading_words(text, 10) == "alpha beta"  # the break right after the limit is a word end
    assert leading_words(text, 13) == "alpha beta"
    assert leading_words(text, 16) == "alpha beta\ngamma"
    assert leading_words("unbroken" * 10, 5) == "unbro"  # no whitespace: a hard cut


def test_negative_prefix_is_a_user_error():
    with pytest.raises(UserError, match="prefix_chars must be >= 0"):
        LanguageFilter(LanguageOptions(prefix_chars=-1))
