"""Each filter rule, tripped by a document built to break it and passed by one built not to.

Base text is real prose (English Wikipedia articles from tests/data). Thresholds are
the Gopher / C4 defaults, and the documents sit on both sides of each threshold.
"""
from __future__ import annotations

import gzip
import itertools
import json
import random
import re
from collections import Counter

import pytest

from data_pipeline.document import Document
from common.errors import UserError
from data_pipeline.extract import read_any
from data_pipeline.filters import build_filters
from data_pipeline.filters import stage as filter_stage
from data_pipeline.filters.c4 import C4Filter, C4Options
from data_pipeline.filters.gopher import (GopherQuality, GopherQualityOptions, GopherRepetition, ngram_keys,
                                          repeated_ngram_chars, top_ngram_chars, word_pass)
from data_pipeline.filters.language import LanguageFilter, LanguageOptions
from data_pipeline.filters.text import HAS_LETTER, lines, paragraphs, words
from data_pipeline.filters.url import UrlBlocklist, UrlOptions
from data_pipeline.stats import Stats

GERMAN = ("Die Stadt liegt am Ufer eines großen Flusses und ist seit dem Mittelalter ein wichtiger Handelsplatz. "
          "Im Sommer kommen viele Besucher, um die alte Brücke, den Dom und die engen Gassen der Altstadt zu sehen. "
          "Die Universität wurde im vierzehnten Jahrhundert gegründet und gehört zu den ältesten des Landes.")


@pytest.fixture(scope="module")
def articles(wiki_sample) -> dict[str, str]:
    with gzip.open(wiki_sample, "rt") as f:
        return {d["title"]: d["text"] for d in map(json.loads, f)}


@pytest.fixture(scope="module")
def prose(articles) -> str:
    """Several paragraphs of real, clean English prose that passes every default filter."""
    paragraphs = [p for p in articles["International Atomic Time"].split("\n") if len(p) > 200 and p.endswith(".")]
    return "\n\n".join(paragraphs[:4])


@pytest.fixture(scope="module")
def prose_words(prose) -> list[str]:
    """The prose's alphabetic words, in order."""
    return re.findall(r"[A-Za-z]+", prose)


@pytest.fixture(scope="module")
def vocabulary(articles) -> list[str]:
    """Distinct real words (alphabetic, 4+ letters), in a fixed shuffled order."""
    found = sorted({w for text in articles.values() for w in re.findall(r"[A-Za-z]{4,}", text)})
    random.Random(0).shuffle(found)
    return found


def doc(text: str, url: str = "") -> Document:
    return Document(id="t", text=text, url=url)


def test_real_prose_passes_every_default_filter(prose):
    filters = build_filters(None)
    assert [f(doc(prose)) for f in filters] == [None] * len(filters)


# ---------------------------------------------------------------- Gopher quality

def sentence_of(words_: list[str]) -> str:
    return " ".join(words_) + "."


@pytest.mark.parametrize("n, expected", [(49, "gopher_quality:min_words"), (50, None)])
def test_gopher_min_words(prose_words, n, expected):
    assert GopherQuality()(doc(sentence_of(prose_words[:n]))) == expected


def test_gopher_max_words(prose_words):
    quality = GopherQuality(GopherQualityOptions(max_words=100))
    assert quality(doc(sentence_of(prose_words[:101]))) == "gopher_quality:max_words"
    assert quality(doc(sentence_of(prose_words[:100]))) is None


def test_gopher_mean_word_length():
    short = " ".join(["it is to be of an to the and it"] * 10)  # mean 2.0
    long = " ".join(["internationalization characterization of the"] * 20)  # mean 10.25
    assert GopherQuality()(doc(short)) == "gopher_quality:min_mean_word_length"
    assert GopherQuality()(doc(long)) == "gopher_quality:max_mean_word_length"


@pytest.mark.parametrize("hashes, expected", [(11, "gopher_quality:symbol_word_ratio"), (10, None)])
def test_gopher_symbol_ratio(prose_words, hashes, expected):
    text = sentence_of(prose_words[:100]) + " #" * hashes  # '#' tokens are not words
    assert len(words(text)) == 100
    assert GopherQuality()(doc(text)) == expected


@pytest.mark.parametrize("bullets, expected", [(10, "gopher_quality:bullet_lines_ratio"), (9, None)])
def test_gopher_bullet_lines(prose_words, bullets, expected):
    chunks = [prose_words[i * 10:(i + 1) * 10] for i in range(10)]
    lines = [("• " if i < bullets else "") + sentence_of(c) for i, c in enumerate(chunks)]
    assert GopherQuality()(doc("\n".join(lines))) == expected


@pytest.mark.parametrize("ellipses, expected", [(4, "gopher_quality:ellipsis_lines_ratio"), (3, None)])
def test_gopher_ellipsis_lines(prose_words, ellipses, expected):
    chunks = [prose_words[i * 20:(i + 1) * 20] for i in range(10)]
    lines = [" ".join(c) + ("..." if i < ellipses else ".") for i, c in enumerate(chunks)]
    assert GopherQuality()(doc("\n".join(lines))) == expected


@pytest.mark.parametrize("numbers, expected", [(26, "gopher_quality:alpha_words_ratio"), (25, None)])
def test_gopher_alphabetic_words(prose_words, numbers, expected):
    text = sentence_of(prose_words[:100]) + " 1984" * numbers  # 100 / 125 = 0.8 is still fine
    assert GopherQuality()(doc(text)) == expected


def test_gopher_stop_words(vocabulary):
    without = sentence_of(vocabulary[:80])
    assert GopherQuality()(doc(without)) == "gopher_quality:stop_words"
    assert GopherQuality()(doc(without + " The end of it.")) is None


# ---------------------------------------------------------------- Gopher repetition

def distinct_lines(vocabulary, count: int, size: int = 8) -> list[str]:
    return [sentence_of(vocabulary[i * size:(i + 1) * size]) for i in range(count)]


@pytest.mark.parametrize("sep, kind", [("\n", "line"), ("\n\n", "paragraph")])
def test_gopher_duplicate_line_and_paragraph_fraction(vocabulary, sep, kind):
    unique = distinct_lines(vocabulary, 10, size=20)
    short = "Share."  # duplicated but short: only the count fraction trips
    tripped = sep.join(unique + [short] * 6)  # 5 duplicates of 16 parts = 0.31
    fine = sep.join(unique + [short] * 5)  # 4 of 15 = 0.27
    assert GopherRepetition()(doc(tripped)) == f"gopher_repetition:duplicate_{kind}_fraction"
    assert GopherRepetition()(doc(fine)) is None


@pytest.mark.parametrize("sep, kind", [("\n", "line"), ("\n\n", "paragraph")])
def test_gopher_duplicate_line_and_paragraph_characters(vocabulary, sep, kind):
    unique = distinct_lines(vocabulary, 9, size=10)
    long = sentence_of(vocabulary[200:250])
    tripped = sep.join(unique + [long, long])  # 1 duplicate of 11 parts, but > 20 % of the characters
    assert len(long) / len(tripped) > 0.2
    assert GopherRepetition()(doc(tripped)) == f"gopher_repetition:duplicate_{kind}_char_fraction"
    assert GopherRepetition()(doc(sep.join(unique + [long]))) is None


def test_gopher_top_ngram(vocabulary):
    filler = vocabulary[:300]
    tripped = " ".join(w + " New York" if i % 2 == 0 else w for i, w in enumerate(filler)) + "."
    assert GopherRepetition()(doc(tripped)) == "gopher_repetition:top_2gram_char_fraction"
    sparse = " ".join(w + " New York" if i % 12 == 0 else w for i, w in enumerate(filler)) + "."
    assert GopherRepetition()(doc(sparse)) is None


@pytest.mark.parametrize("repeat_words, expected", [(90, "gopher_repetition:duplicate_5gram_char_fraction"),
                                                    (35, None)])
def test_gopher_duplicate_ngrams(vocabulary, repeat_words, expected):
    body = vocabulary[:400]
    text = " ".join(body + body[:repeat_words])  # 90 copied words: ~18 % of the characters
    assert GopherRepetition()(doc(text)) == expected


def reference_repeated_chars(ws: list[str], n: int) -> int:
    """Characters of words covered by an n-gram occurrence seen earlier: plain Python sets."""
    seen, covered = set(), set()
    for i in range(len(ws) - n + 1):
        gram = tuple(ws[i:i + n])
        if gram in seen:
            covered.update(range(i, i + n))
        seen.add(gram)
    return sum(len(ws[i]) for i in covered)


def test_repeated_ngram_characters_match_a_set_based_reference(vocabulary):
    rng = random.Random(1)
    for trial in range(30):
        ws = [rng.choice(vocabulary[:rng.choice([3, 8, 50])]) for _ in range(rng.randint(5, 300))]
        ids, lengths, _ = word_pass(" ".join(ws))  # the vocabulary's words are letters only
        got = {n: repeated_ngram_chars(keys, lengths, n) for n, keys in ngram_keys(ids, 10) if n >= 5}
        assert got == {n: reference_repeated_chars(ws, n) for n in got}, trial


def test_top_ngram_characters_match_a_counter_reference(vocabulary):
    rng = random.Random(2)
    for trial in range(200):
        ws = [rng.choice(vocabulary[:rng.randint(2, 8)]) for _ in range(rng.randint(2, 80))]
        ids, lengths, _ = word_pass(" ".join(ws))  # the vocabulary's words are letters only
        for n, keys in ngram_keys(ids, 4):
            counts = Counter(zip(*(ws[i:] for i in range(n))))
            top = max(counts.values())
            longest = max(sum(map(len, gram)) + n - 1 for gram, c in counts.items() if c == top)
            assert top_ngram_chars(keys, lengths, n) == (longest * top if top > 1 else 0), (trial, n)


def test_the_word_pass_describes_exactly_the_words(articles):
    """Keys, lengths and letter count of the vectorized pass against `words`: odd whitespace,
    punctuation inside and around words, digits, a NUL, a lone surrogate, an emoji (beyond
    the class table's plane), and real articles."""
    rng = random.Random(4)
    alphabet = list("abAB1_#\x00 \t\n\x0b\x1c\x85\xa0\u2003\u3000.,'-…’«»¿²½\u0130\ud800") + ["\U0001F600"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    for text in texts + list(articles.values()):
        ws = words(text)
        keys, lengths, with_letter = word_pass(text)
        assert lengths.tolist() == list(map(len, ws)), repr(text)
        assert with_letter == sum(bool(HAS_LETTER.search(w)) for w in ws), repr(text)
        # equal words <=> equal keys
        assert len(set(zip(ws, keys.tolist()))) == len(set(ws)) == len(set(keys.tolist())), repr(text)


def test_line_and_paragraph_splitting_match_their_regex_definitions():
    """`lines`/`paragraphs` split with str.split for speed; the rules are defined by these regexes."""
    rng = random.Random(3)
    for trial in range(20_000):
        text = "".join(rng.choice("ab \t\n\n\n") for _ in range(rng.randint(0, 14)))
        assert lines(text) == re.split(r"\n+", text), repr(text)
        assert paragraphs(text) == re.split(r"\n{2,}", text.strip()), repr(text)


def test_filter_decisions_do_not_depend_on_the_hash_seed(h, tmp_path, warc_sample):
    """Python's string hash is salted per process (sets, dicts): results must not change."""
    for seed in ("1", "2"):
        proc = h.gpt_data_process("filter", "--input", warc_sample, "--output", tmp_path / seed,
                                  env={"PYTHONHASHSEED": seed})
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    for part in ("", "removed"):
        assert h.read_rows(tmp_path / "1" / part) == h.read_rows(tmp_path / "2" / part)


# ---------------------------------------------------------------- C4

def test_c4_line_rules_rewrite_the_text(prose):
    lines = [
        "Home | About | Contact",  # no terminal punctuation
        "Read more.",  # fewer than 3 words
        "Please enable JavaScript to view the comments.",
        "By using this site you agree to our Privacy Policy and Terms of Use.",
        "Atomic clocks are compared worldwide.[1][citation needed]",
    ]
    c4 = C4Filter()
    d = doc("\n".join(lines) + "\n" + prose)
    assert c4(d) is None
    assert d.text == "\n".join(["Atomic clocks are compared worldwide."] + prose.split("\n\n"))
    assert c4.line_reasons == {"no_terminal_punctuation": 1, "too_few_words": 1, "javascript": 1, "policy": 1}


@pytest.mark.parametrize("insert, expected", [("Lorem ipsum dolor sit amet.", "c4:lorem_ipsum"),
                                              ("The set {1, 2} has two elements.", "c4:curly_braces"),
                                              ("A perfectly ordinary sentence.", None)])
def test_c4_document_rules(prose, insert, expected):
    assert C4Filter()(doc(prose + "\n" + insert)) == expected


@pytest.mark.parametrize("sentences, expected", [(4, "c4:min_sentences"), (5, None)])
def test_c4_minimum_sentences(vocabulary, sentences, expected):
    text = " ".join(sentence_of(vocabulary[i * 6:(i + 1) * 6]) for i in range(sentences))
    assert C4Filter()(doc(text)) == expected


def test_c4_page_without_usable_lines():
    assert C4Filter()(doc("Menu\nHome\nLogin")) == "c4:no_lines_left"
    assert C4Filter(C4Options(require_terminal_punctuation=False, min_sentences=0))(doc("Menu of the day\nx y z")) is None


# ---------------------------------------------------------------- URL blocklist

def test_url_blocklist(tmp_path):
    listed = tmp_path / "domains.txt"
    listed.write_text("# adult sites\nlisted.example\n")
    url = UrlBlocklist(UrlOptions(domains=("bad.example",), domains_file=str(listed), banned_words=("casino",),
                                  banned_subwords=("xxx",)))
    assert url(doc("t", "https://www.bad.example/page")) == "url:blocked_domain"
    assert url(doc("t", "http://deep.sub.bad.example/")) == "url:blocked_domain"
    assert url(doc("t", "http://listed.example/a")) == "url:blocked_domain"
    assert url(doc("t", "http://notbad.example/")) is None
    assert url(doc("t", "http://a.example/online-casino/games")) == "url:banned_word"
    assert url(doc("t", "http://a.example/casinoroyale-review")) is None  # not a whole token
    assert url(doc("t", "http://xxxvideos.example/")) == "url:banned_subword"
    with pytest.raises(UserError, match="domains_file not found"):
        UrlBlocklist(UrlOptions(domains_file=str(tmp_path / "missing.txt")))


# ---------------------------------------------------------------- language ID

def test_language_id_annotates_and_filters(prose):
    lid = LanguageFilter()
    english, german = doc(prose), doc(GERMAN)
    assert lid(english) is None and english.language == "en" and english.language_score > 0.9
    assert lid(german) == "language:other_language" and german.language == "de" and german.language_score > 0.9
    assert LanguageFilter(LanguageOptions(languages=("en", "de")))(doc(GERMAN)) is None
    assert LanguageFilter(LanguageOptions(languages=()))(doc(GERMAN)) is None  # annotate only
    mixed = doc("Hello world. Hallo Welt. Bonjour le monde.")  # fr with p = 0.40
    assert LanguageFilter(LanguageOptions(languages=(), min_score=0.65))(mixed) == "language:low_score"
    with pytest.raises(UserError, match="model not found"):
        LanguageFilter(LanguageOptions(model_path="/nonexistent/lid.176.bin"))


# ---------------------------------------------------------------- the stage

def test_filter_stage_on_real_documents_records_every_removal(cli, h, tmp_path, ccnet_sample, warc_sample):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ccnet.jsonl.gz").write_bytes(ccnet_sample.read_bytes())
    (tmp_path / "in" / "crawl.warc.gz").write_bytes(warc_sample.read_bytes())
    (tmp_path / "in" / "german.jsonl").write_text(json.dumps({"id": "de-1", "text": GERMAN}) + "\n")
    code, _, err = cli("filter", "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 0, err
    kept = h.read_rows(tmp_path / "out")
    removed = h.read_rows(tmp_path / "out" / "removed")
    assert len(kept) + len(removed) == 10 + 22 + 1
    assert {r["id"] for r in kept}.isdisjoint(r["id"] for r in removed)
    assert all(r["language"] == "en" and r["language_score"] >= 0.65 for r in kept)
    assert "de-1" in {r["id"] for r in removed if r["removed_by"] == "language:other_language"}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    by_rule = {rule: sum(1 for _ in group) for rule, group in
               itertools.groupby(sorted(r["removed_by"] for r in removed))}
    assert stats["removed"] == by_rule
    assert stats["documents_in"] == 33 and stats["documents_out"] == len(kept)
    assert set(stats["filter_cpu_seconds"]) == {"language", "gopher_repetition", "gopher_quality", "c4"}
    # C4 rewrote the kept texts: no kept line lacks terminal punctuation
    assert all(line.endswith((".", "?", "!", '"', "'", "”", "’")) for r in kept for line in r["text"].split("\n"))


def test_batched_stage_decides_as_one_document_at_a_time(monkeypatch, h, tmp_path, ccnet_sample, warc_sample,
                                                          vocabulary):
    """The stage runs each filter over a batch; small batches (boundaries everywhere, Gopher's
    word passes shared between its two filters) must give what filters applied to one
    document at a time give: the same kept texts and annotations, the same removal rules."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ccnet.jsonl.gz").write_bytes(ccnet_sample.read_bytes())
    (tmp_path / "in" / "crawl.warc.gz").write_bytes(warc_sample.read_bytes())
    repeated = " ".join(vocabulary[:12]) + ". "
    crafted = [GERMAN, repeated * 40, "\n".join(vocabulary[:30]), " ".join(vocabulary[:60]) + "."]
    (tmp_path / "in" / "crafted.jsonl").write_text(
        "".join(json.dumps({"id": f"crafted-{i}", "text": text}) + "\n" for i, text in enumerate(crafted)))
    monkeypatch.setattr(filter_stage, "BATCH_DOCS", 3)
    filter_stage.run(tmp_path / "in", tmp_path / "out", workers=1, executor="local")

    filters, kept, removed = build_filters(None), [], []
    for path in sorted((tmp_path / "in").iterdir()):
        for document in read_any(path, Stats()):
            rule = next(filter(None, (f(document) for f in filters)), None)
            if rule is None:
                kept.append((document.id, document.text, document.language, document.language_score))
            else:
                removed.append((document.id, rule))
    assert len(kept) >= 10 and len({rule for _, rule in removed}) >= 4  # both sides exercised
    assert [(r["id"], r["text"], r["language"], r["language_score"]) for r in h.read_rows(tmp_path / "out")] == kept
    assert [(r["id"], r["removed_by"]) for r in h.read_rows(tmp_path / "out" / "removed")] == removed


def test_batches_bound_documents_and_characters():
    docs = [doc("x" * size) for size in (5, 5, 20, 1, 1, 1, 1)]
    assert [[len(d.text) for d in b] for b in filter_stage.batches(docs, 3, 10)] == [[5, 5], [20], [1, 1, 1], [1]]
    assert list(filter_stage.batches([], 3, 10)) == []


def test_filter_config_errors_are_one_line(cli, tmp_path, ccnet_sample):
    cases = {
        "gopher: {}\n": "unknown filter 'gopher'",
        "c4: {min_sentence: 3}\n": "unknown config key 'filter.c4.min_sentence'",
        "language: {min_score: high}\n": "config key 'filter.language.min_score' must be float, got 'high'",
        "language: {languages: en}\n": "config key 'filter.language.languages' must be a list, got 'en'",
    }
    for i, (config, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(config)
        code, _, err = cli("filter", "--input", ccnet_sample, "--output", tmp_path / "out", "--config", path)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_rerun_with_another_config_or_code_is_refused_until_overwrite(cli, h, tmp_path, ccnet_sample):
    configs = {}
    for min_words in (50, 1000):
        configs[min_words] = tmp_path / f"min{min_words}.yaml"
        configs[min_words].write_text(f"gopher_quality: {{min_words: {min_words}}}\n")
    out = tmp_path / "out"

    def run(min_words: int, *flags: str) -> tuple[int, str]:
        code, _, err = cli("filter", "--input", ccnet_sample, "--output", out, "--config", configs[min_words], *flags)
        return code, err

    assert run(50)[0] == 0
    kept = h.read_rows(out)
    code, err = run(1000)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "do not match this run: other settings (filters.gopher_quality.min_words)" in err
    assert h.read_rows(out) == kept
    assert run(1000, "--overwrite")[0] == 0
    stats = json.loads((out / "stats.json").read_text())
    assert len(h.read_rows(out)) == stats["documents_out"] < len(kept) and stats["removed"]["gopher_quality:min_words"]
    code, err = run(1000)
    assert code == 0 and "(0 this run, 1 already done)" in err
    marker = out / ".done" / "ccnet-head-0091.json"  # as if an earlier version of the code had made it
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(record, made_from=dict(record["made_from"], code="0123456789abcdef"))))
    code, err = run(1000)
    assert code == 2 and "other data_pipeline code" in err
