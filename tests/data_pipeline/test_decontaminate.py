"""`gpt-data decontaminate`: GPT-3's n-gram rules, each case checked against character positions found with str.find,
and its per-benchmark n against numpy's percentile."""
from __future__ import annotations

import json
from pathlib import Path

import dedup_corpus as dc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.decontaminate import Rules

ARTICLES = dc.real_texts()
# Benchmark examples: real sentences of articles that are never used as training filler.
SENTENCES = [s for s in dc.sentences(ARTICLES[250:]) if len(s.split()) >= 16]


def filler(start: int, chars: int) -> str:
    """Real text of at least `chars` characters from consecutive training-side articles."""
    parts, i = [], start
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(ARTICLES[i % 250])
        i += 1
    return " ".join(parts)


def write(tmp_path: Path, docs: dict[str, str], benchmarks: dict[str, list[dict]]) -> tuple[Path, Path]:
    (tmp_path / "in").mkdir(parents=True)
    ids = sorted(docs)
    pq.write_table(pa.table({"id": ids, "source": ["common-crawl"] * len(ids), "text": [docs[i] for i in ids]}),
                   tmp_path / "in" / "train.parquet")
    (tmp_path / "bench").mkdir()
    for name, examples in benchmarks.items():
        (tmp_path / "bench" / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return tmp_path / "in", tmp_path / "bench"


def prefix(sentence: str, words: int) -> str:
    """The sentence up to the end of its `words`-th word (punctuation kept)."""
    return sentence[:list(dc.WORD.finditer(sentence))[words - 1].end()]


def run(cli, tmp_path, docs, benchmarks, *extra):
    src, bench = write(tmp_path, docs, benchmarks)
    code, out, err = cli("decontaminate", "--input", src, "--output", tmp_path / "out", "--benchmarks", bench, *extra)
    assert code == 0, err
    kept = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()}
    removed = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "removed" / "train.parquet").to_pylist()}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    return kept, removed, stats, out


def expected_pieces(text: str, overlaps: list[str], window=200, min_fragment=200) -> list[str]:
    """Reference: cut each overlap (found with str.find, from its first word's first character
    to its last word's last character) plus `window` characters each side."""
    cuts = []
    for overlap in overlaps:
        at = text.find(overlap)
        assert at >= 0
        found = list(dc.WORD.finditer(overlap))
        cuts.append((at + found[0].start(), at + found[-1].end()))
    cuts.sort()
    pieces, pos = [], 0
    for start, end in cuts:
        pieces.append(text[pos:max(pos, start - window)])
        pos = max(pos, end + window)
    pieces.append(text[pos:])
    return [p.strip() for p in pieces if len(p.strip()) >= min_fragment]


def test_overlap_is_removed_with_200_characters_each_side(cli, tmp_path):
    leak = SENTENCES[0]
    text = filler(0, 1500) + " " + leak + " " + filler(10, 1500)
    noisy = {"question": leak.upper().replace(",", " ;"), "answer": "unrelated"}  # case and punctuation differ
    kept, removed, stats, out = run(cli, tmp_path, {"a": text, "clean": filler(20, 800)},
                                    {"qa": [noisy, {"question": SENTENCES[1]}]})
    assert kept["a"]["text"] == "\n\n".join(expected_pieces(text, [leak]))
    assert kept["clean"]["text"] == filler(20, 800)
    assert not removed
    report = stats["benchmarks"]["qa"]
    assert report["examples"] == 2 and report["contaminated_examples"] == 1
    assert report["documents"] == 1 and report["documents_dropped"] == 0
    assert "qa (13-grams): 1/2 examples found" in out


def test_fragments_under_200_characters_are_dropped(cli, tmp_path):
    leak = SENTENCES[2]
    head = filler(30, 1)[:350].rsplit(" ", 1)[0]  # < 200 characters survive before the cut
    text = head + " " + leak + " " + filler(31, 900)
    kept, _, _, _ = run(cli, tmp_path, {"a": text}, {"qa": [{"q": leak}]})
    pieces = expected_pieces(text, [leak])
    assert len(pieces) == 1 and kept["a"]["text"] == pieces[0]
    assert head[:50] not in kept["a"]["text"]


@pytest.mark.parametrize("overlaps, dropped", [(9, False), (11, True)])
def test_document_split_into_more_than_10_pieces_is_dropped(cli, tmp_path, overlaps, dropped):
    leaks = SENTENCES[10:10 + overlaps]
    parts = [filler(40 + 3 * i, 700) for i in range(overlaps + 1)]
    text = parts[0] + "".join(" " + leak + " " + part for leak, part in zip(leaks, parts[1:]))
    kept, removed, stats, _ = run(cli, tmp_path, {"a": text}, {"qa": [{"q": s} for s in leaks]})
    pieces = expected_pieces(text, leaks)
    assert len(pieces) == overlaps + 1
    if dropped:
        assert "a" not in kept and removed["a"]["removed_by"] == "decontaminate:too_many_pieces"
        assert removed["a"]["contaminated_by"] == "qa" and removed["a"]["text"] == text
        assert stats["benchmarks"]["qa"]["documents_dropped"] == 1
    else:
        assert kept["a"]["text"] == "\n\n".join(pieces)


@pytest.mark.parametrize("copies, removed_from_docs", [(10, True), (11, False)])
def test_ngrams_in_more_than_10_training_documents_are_ignored(cli, tmp_path, copies, removed_from_docs):
    common = SENTENCES[30]
    docs = {f"d{i:02d}": filler(60 + 2 * i, 500) + " " + common + " " + filler(61 + 2 * i, 500)
            for i in range(copies)}
    kept, _, stats, _ = run(cli, tmp_path, docs, {"qa": [{"q": common}]})
    assert all((common in row["text"]) != removed_from_docs for row in kept.values())
    assert stats["benchmarks"]["_ignored_frequent_ngrams"] == (0 if removed_from_docs else len(dc.WORD.findall(common)) - 12)


def test_contamination_is_reported_per_benchmark(cli, tmp_path):
    docs = {"a": filler(100, 700) + " " + SENTENCES[40] + " " + SENTENCES[43] + " " + filler(101, 700),
            "b": filler(110, 700) + " " + SENTENCES[41] + " " + SENTENCES[42] + " " + filler(111, 700)}
    benchmarks = {"lambada": [{"text": SENTENCES[50]}, {"text": SENTENCES[40]}],
                  "triviaqa": [{"question": SENTENCES[51]}, {"question": SENTENCES[41], "answers": [SENTENCES[42]]},
                               {"question": SENTENCES[43]}],
                  "clean": [{"text": SENTENCES[52]}, {"text": SENTENCES[53]}]}
    _, _, stats, _ = run(cli, tmp_path, docs, benchmarks)
    report = stats["benchmarks"]
    assert report["lambada"]["contaminated_example_ids"] == [1] and report["lambada"]["documents"] == 1
    assert report["triviaqa"]["contaminated_example_ids"] == [1, 2] and report["triviaqa"]["documents"] == 2
    assert report["triviaqa"]["contaminated_examples"] == 2
    assert report["clean"]["contaminated_example_ids"] == [] and report["clean"]["contaminated_examples"] == 0
    assert {row["ngram"] for row in (report["lambada"], report["triviaqa"], report["clean"])} == {13}


def test_short_examples_get_gpt3_ngram_size(cli, tmp_path):
    """GPT-3's n = min(13, 5th percentile of the lengths in words): short examples are found with it, not with 13."""
    short = [prefix(s, 5 if i == 0 else 8 + i % 5) for i, s in enumerate(SENTENCES[70:90])]  # 5, then 8 to 12 words
    lengths = [len(dc.WORD.findall(example)) for example in short]
    n = min(13, int(np.percentile(lengths, 5)))
    assert n == 7  # 5 + 0.95 * (8 - 5) = 7.85, rounded down
    docs = {"a": filler(120, 700) + " " + SENTENCES[70 + 3] + " " + filler(121, 700),
            "b": filler(130, 700) + " " + SENTENCES[70 + 11] + " " + SENTENCES[40] + " " + filler(131, 700)}
    benchmarks = {"short": [{"text": example} for example in short],
                  "long": [{"text": SENTENCES[50]}, {"text": SENTENCES[40]}]}
    kept, _, stats, out = run(cli, tmp_path / "default", docs, benchmarks)
    report = stats["benchmarks"]
    assert report["short"]["ngram"] == n and report["short"]["contaminated_example_ids"] == [3, 11]
    assert report["long"]["ngram"] == 13 and report["long"]["contaminated_example_ids"] == [1]
    assert report["short"]["examples_shorter_than_ngram"] == 1
    assert f"short ({n}-grams): 2/20 examples found" in out
    assert kept["a"]["text"] == "\n\n".join(expected_pieces(docs["a"], [short[3]]))
    assert kept["b"]["text"] == "\n\n".join(expected_pieces(docs["b"], [short[11], SENTENCES[40]]))

    _, _, stats, _ = run(cli, tmp_path / "forced", docs, benchmarks, "--ngram", "13")
    report = stats["benchmarks"]
    assert report["short"]["ngram"] == 13 and report["short"]["contaminated_example_ids"] == []
    assert report["short"]["examples_shorter_than_ngram"] == 20
    assert report["long"]["contaminated_example_ids"] == [1]


def test_rules_merge_overlapping_windows():
    text = "x" * 1000
    assert Rules().clean(text, [(400, 450), (500, 550)]) == ("x" * 200 + "\n\n" + "x" * 250, "cleaned")
    assert Rules().clean(text, [(100, 900)]) == (None, "nothing_left")


def test_bad_benchmark_file_is_a_clear_error(cli, tmp_path):
    src, bench = write(tmp_path, {"a": filler(0, 300)}, {})
    (bench / "broken.jsonl").write_text('{"q": "fine"}\nnot json\n')
    code, _, err = cli("decontaminate", "--input", src, "--output", tmp_path / "out", "--benchmarks", bench)
    assert code == 2 and "broken.jsonl:2: not a JSON line" in err


def test_resume_with_other_benchmarks_or_rules_is_refused(cli, tmp_path):
    src, bench = write(tmp_path, {"a": filler(0, 300)}, {"qa": [{"q": SENTENCES[60]}]})
    assert cli("decontaminate", "--input", src, "--output", tmp_path / "out", "--benchmarks", bench)[0] == 0
    (bench / "qa.jsonl").write_text(json.dumps({"q": SENTENCES[61]}) + "\n")
    code, _, err = cli("decontaminate", "--input", src, "--output", tmp_path / "out", "--benchmarks", bench)
    assert code == 2 and "other settings (index)" in err
    code, _, err = cli("decontaminate", "--input", src, "--output", tmp_path / "out", "--benchmarks", bench,
                       "--ngram", "0")
    assert code == 2 and "--ngram must be at least 1" in err


def test_resume_keeps_finished_shards_and_refuses_another_ngram(cli, tmp_path):
    src, bench = write(tmp_path, {"a": filler(0, 300)}, {"qa": [{"q": SENTENCES[60]}]})
    args = ("decontaminate", "--input", src, "--output", tmp_path / "out", "--benchmarks", bench)
    assert cli(*args)[0] == 0
    marker = next((tmp_path / "out" / ".done").iterdir())
    before = marker.stat().st_mtime_ns
    code, _, _ = cli(*args, "--ngram", "13")  # the same n as GPT-3's rule gave: nothing to redo
    assert code == 0 and marker.stat().st_mtime_ns == before
    code, _, err = cli(*args, "--ngram", "8")
    assert code == 2 and "other settings (benchmarks.qa, index)" in err
