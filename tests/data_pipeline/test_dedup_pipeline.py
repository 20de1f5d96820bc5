"""`gpt-data dedup` end to end on a ground-truth corpus of real documents with injected near-duplicates."""
from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import dedup_corpus as dc
import numpy as np
import pyarrow.parquet as pq
import pytest

SOURCES = ("common-crawl", "wikipedia", "books")


@pytest.fixture(scope="module")
def corpus() -> dc.Corpus:
    return dc.build(3000, seed=7, sources=SOURCES)


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dedup_in")
    dc.write_shards(corpus, root, 4)
    return root


@pytest.fixture(scope="module")
def minhash_run(shards, tmp_path_factory):
    """One single-process run every test below compares against."""
    from data_pipeline.cli import main

    out = tmp_path_factory.mktemp("dedup_out")
    assert main(["dedup", "minhash", "--input", str(shards), "--output", str(out),
                 "--priority", "wikipedia,books"]) == 0
    return out


def load_clusters(corpus: dc.Corpus, out: Path, method: str = "minhash"):
    decisions = dc.read_decisions(out, method).to_pydict()
    index = np.array([dc.doc_index(i) for i in decisions["id"]], dtype=np.int64)
    cluster = np.full(len(corpus.texts), -1, dtype=np.int64)
    cluster[index] = decisions["cluster"]
    removed = np.zeros(len(corpus.texts), dtype=bool)
    removed[index[np.array(decisions["removed"], dtype=bool)]] = True
    return decisions, index, cluster, removed


def candidate_pairs(out: Path) -> dict[tuple[int, int], float]:
    """Every LSH candidate pair the buckets stage wrote, as corpus indices (a < b), with its Jaccard."""
    work = out / ".dedup" / "minhash"
    to_index = {}
    for shard, path in enumerate(sorted((work / "signatures").glob("*.parquet"))):
        ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
        to_index.update({(shard << 32) | row: dc.doc_index(i) for row, i in enumerate(ids)})
    pairs = {}
    for path in sorted((work / "pairs").glob("*.parquet")):
        table = pq.read_table(path).to_pydict()
        for a, b, j in zip(table["a"], table["b"], table["jaccard"]):
            pairs[tuple(sorted((to_index[a], to_index[b])))] = j
    return pairs


def verified_pairs(out: Path) -> np.ndarray:
    return np.array([p for p, j in candidate_pairs(out).items() if j >= 0.8], dtype=np.int64).reshape(-1, 2)


def test_precision_and_recall_on_injected_near_duplicates(corpus, minhash_run):
    _, _, cluster, removed = load_clusters(corpus, minhash_run)
    scores = dc.evaluate(corpus, verified_pairs(minhash_run), cluster, removed)
    assert scores.true_pairs > 500  # the corpus really holds near-duplicates above 0.8
    assert scores.precision >= 0.95 and scores.recall >= 0.95, scores
    assert scores.removed_below <= 0.005 * scores.removed, scores  # almost no removal below Jaccard 0.5
    # Every in-family pair below 0.5 stays apart unless chained in through real duplicates.
    low = [(a, b) for (a, b), j in corpus.truth.items() if j < 0.5]
    apart = sum(cluster[a] < 0 or cluster[a] != cluster[b] for a, b in low)
    assert apart >= 0.95 * len(low)


def test_output_accounts_for_every_document_once(corpus, minhash_run, h):
    kept = h.read_rows(minhash_run)
    dropped = h.read_rows(minhash_run / "removed")
    ids = [r["id"] for r in kept] + [r["id"] for r in dropped]
    assert sorted(ids) == sorted(f"doc-{i:07d}" for i in range(len(corpus.texts)))
    for row in kept + dropped:
        assert row["text"] == corpus.texts[dc.doc_index(row["id"])]
        assert row["quality"] == corpus.quality[dc.doc_index(row["id"])]  # extra columns survive
    _, _, cluster, removed = load_clusters(corpus, minhash_run)
    assert {dc.doc_index(r["id"]) for r in dropped} == set(np.flatnonzero(removed).tolist())
    kept_by_cluster = {}
    for row in kept:
        c = cluster[dc.doc_index(row["id"])]
        if c >= 0:
            assert c not in kept_by_cluster, "two documents of one cluster kept"
            kept_by_cluster[c] = row["id"]
    for row in dropped:
        assert row["duplicate_of"] == kept_by_cluster[row["dedup_cluster"]]


def test_curated_sources_win_and_cc_copies_are_removed(corpus, minhash_run):
    decisions, index, cluster, removed = load_clusters(corpus, minhash_run)
    rank = {"wikipedia": 0, "books": 1, "common-crawl": 2}
    for c in np.unique(cluster[cluster >= 0]):
        members = np.flatnonzero(cluster == c)
        keeper = members[~removed[members]]
        assert len(keeper) == 1
        best = min(rank[corpus.sources[m]] for m in members)
        assert rank[corpus.sources[keeper[0]]] == best
        same = [m for m in members if rank[corpus.sources[m]] == best]
        assert corpus.quality[keeper[0]] == max(corpus.quality[m] for m in same)
    cross = sum(1 for c in np.unique(cluster[cluster >= 0])
                if {"common-crawl", "wikipedia"} <= {corpus.sources[m] for m in np.flatnonzero(cluster == c)})
    assert cross > 20  # the corpus exercises cross-source clusters


def test_stats_report_clusters_histogram_sources_and_examples(corpus, minhash_run):
    stats = json.loads((minhash_run / "stats.json").read_text())
    summary = stats["minhash"]
    _, _, cluster, removed = load_clusters(corpus, minhash_run)
    assert summary["clusters"] == len(np.unique(cluster[cluster >= 0]))
    assert sum(summary["cluster_size_histogram"].values()) == summary["clusters"]
    per_source = {s: int(sum(removed[i] for i in range(len(removed)) if corpus.sources[i] == s)) for s in SOURCES}
    assert summary["removed_per_source"] == {s: n for s, n in per_source.items() if n}
    assert stats["documents_in"] == len(corpus.texts)
    assert stats["documents_out"] == len(corpus.texts) - removed.sum()
    for pair in summary["example_pairs"]:
        a, b = dc.doc_index(pair["a"]), dc.doc_index(pair["b"])
        assert abs(pair["jaccard"] - corpus.jaccard(a, b)) < 1e-3 and pair["jaccard"] >= 0.8


def test_without_verification_precision_drops(corpus, shards, tmp_path, cli):
    """The reason for verification: raw 14x8 LSH candidates include pairs well below 0.8."""
    code, _, _ = cli("dedup", "minhash", "--input", shards, "--output", tmp_path, "--no-verify")
    assert code == 0
    pairs = candidate_pairs(tmp_path)
    below = sum(corpus.jaccard(a, b) < 0.8 for a, b in pairs)
    assert below > 0.1 * len(pairs)


def detection_probability(jaccard: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """LSH's S-curve: a pair of similarity J shares at least one of `bands` bands of `rows` hashes
    with probability 1 - (1 - J^rows)^bands."""
    return 1 - (1 - jaccard ** rows) ** bands


def test_gpt3_ten_hash_setting_follows_its_s_curve(shards, tmp_path, cli, corpus):
    """GPT-3's 10 hashes as 10 bands of 1 row: the S-curve is 1 - (1 - J)^10, so pairs at J = 0.8
    are found with probability 1 - 0.2^10 (all of them) and pairs at J = 0.2 still 89% of the
    time. Candidate rates per similarity bin must match the curve within 4 binomial standard
    deviations; verification then keeps precision while recall on pairs >= 0.8 is the curve's."""
    code, _, _ = cli("dedup", "minhash", "--input", shards, "--output", tmp_path, "--bands", "10", "--rows", "1",
                     "--priority", "wikipedia,books")
    assert code == 0
    candidates = candidate_pairs(tmp_path)
    # The injected pairs only: `corpus.truth` also caches pairs other tests' runs reported,
    # which would bias the candidate rates upwards and depend on the test order.
    injected = {(a, b): j for (a, b), j in corpus.truth.items() if corpus.family[a] == corpus.family[b]}
    similarity = np.array(list(injected.values()))
    found = np.array([pair in candidates for pair in injected])
    expected = detection_probability(similarity, 10, 1)
    for low, high in ((0.1, 0.3), (0.3, 0.5), (0.5, 0.8), (0.8, 1.01)):
        inside = (similarity >= low) & (similarity < high)
        spread = np.sqrt((expected[inside] * (1 - expected[inside])).sum()) / inside.sum()
        assert inside.sum() > 200 and abs(found[inside].mean() - expected[inside].mean()) <= 4 * spread + 1e-9, \
            (low, high, found[inside].mean(), expected[inside].mean(), spread)

    _, _, cluster, removed = load_clusters(corpus, tmp_path)
    scores = dc.evaluate(corpus, verified_pairs(tmp_path), cluster, removed)
    above = similarity >= 0.8
    bound = expected[above].mean() - 3 * np.sqrt((expected[above] * (1 - expected[above])).sum()) / above.sum()
    assert scores.true_pairs >= above.sum() > 500  # evaluate also counts true pairs across families
    assert scores.recall >= bound > 0.9999 and scores.precision >= 0.95, (scores, bound)
    assert scores.removed_below <= 0.005 * scores.removed, scores
    assert len(candidates) > 20 * len(corpus.truth)  # the price: 1-row bands match almost any shared shingle


def kill_when(proc, condition, timeout: float = 60) -> None:
    """SIGKILL `proc` as soon as `condition()` holds; fail if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.002)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed"


def test_kill_and_resume_gives_the_same_result(corpus, minhash_run, tmp_path, h, cli):
    src = tmp_path / "in"
    dc.write_shards(corpus, src, 12)
    same_order = tmp_path / "reference"
    assert cli("dedup", "minhash", "--input", src, "--output", same_order)[0] == 0
    out = tmp_path / "out"
    markers = out / ".dedup/minhash/signatures/.done"
    kill_when(h.gpt_data_process("dedup", "minhash", "--input", src, "--output", out),
              lambda: len(list(markers.glob("*.json"))) >= 3)
    assert len(list(markers.glob("*.json"))) < 12
    # Also lose part of a later stage: a removal shard without its marker is redone.
    assert cli("dedup", "minhash", "--input", src, "--output", out)[0] == 0
    (out / ".done" / "shard-003.json").unlink()
    (out / "shard-003.parquet").write_bytes(b"garbage")
    code, _, err = cli("dedup", "minhash", "--input", src, "--output", out)
    assert code == 0 and "1 this run, 11 already done" in err
    assert dc.read_decisions(out).equals(dc.read_decisions(same_order))
    for name in [f"shard-{i:03d}.parquet" for i in range(12)]:
        assert pq.read_table(out / name).equals(pq.read_table(same_order / name))


def test_changed_settings_on_resume_are_refused(shards, tmp_path, cli):
    assert cli("dedup", "minhash", "--input", shards, "--output", tmp_path, "--stage", "signatures")[0] == 0
    code, _, err = cli("dedup", "minhash", "--input", shards, "--output", tmp_path, "--bands", "10")
    assert code == 2 and "other settings (bands)" in err


def test_changed_input_is_refused_and_overwrite_redoes_the_dedup(corpus, tmp_path, cli):
    """Every decision depends on every input shard: one changed shard means a new dedup."""
    argv = ("dedup", "exact", "--input", tmp_path / "in", "--priority", "wikipedia,books")
    dc.write_shards(corpus, tmp_path / "in", 4, docs=range(1000))
    assert cli(*argv, "--output", tmp_path / "out")[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").glob("*.parquet")}
    dc.write_shards(corpus, tmp_path / "in", 4, docs=range(500, 1500))
    code, _, err = cli(*argv, "--output", tmp_path / "out")
    assert code == 2 and "input files changed" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in (tmp_path / "out").glob("*.parquet")} == before
    assert cli(*argv, "--output", tmp_path / "out", "--overwrite")[0] == 0
    assert cli(*argv, "--output", tmp_path / "fresh")[0] == 0
    same_tree(tmp_path / "out", tmp_path / "fresh")


def test_later_stage_without_earlier_one_is_a_clear_error(shards, tmp_path, cli):
    code, _, err = cli("dedup", "minhash", "--input", shards, "--output", tmp_path, "--stage", "clusters")
    assert code == 2 and "stage signatures is not complete" in err
    code, _, err = cli("dedup", "minhash", "--input", tmp_path / "missing", "--output", tmp_path)
    assert code == 2 and "input path does not exist" in err


def reference_normal_form(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def test_exact_dedup_keeps_priority_copy_of_identical_normalised_text(corpus, tmp_path, cli, h):
    # Exact copies that differ only in case, punctuation and spacing, plus the near-duplicates.
    texts = list(corpus.texts[:400])
    sources = list(corpus.sources[:400])
    rng = np.random.default_rng(1)
    for i in rng.choice(400, 60, replace=False).tolist():
        texts.append(re.sub(r"\s+", "  ", texts[i].upper()).replace(".", " !"))
        sources.append("common-crawl" if sources[i] != "common-crawl" else "wikipedia")
    exact = dc.Corpus(texts, sources, [0.5] * len(texts), np.zeros(len(texts)))
    dc.write_shards(exact, tmp_path / "in", 3)
    code, _, _ = cli("dedup", "exact", "--input", tmp_path / "in", "--output", tmp_path / "out",
                     "--priority", "wikipedia")
    assert code == 0
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(reference_normal_form(t), []).append(i)
    rank = {"wikipedia": 0}
    # Equal quality: input order decides, i.e. shard (documents are dealt round-robin), then row.
    want_kept = {min(g, key=lambda i: (rank.get(sources[i], 1), i % 3, i // 3)) for g in groups.values()}
    kept = {dc.doc_index(r["id"]) for r in h.read_rows(tmp_path / "out")}
    assert kept == want_kept
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["exact"]["removed_total"] == len(texts) - len(want_kept)


def test_partitions_and_workers_do_not_change_the_clusters(shards, minhash_run, tmp_path, cli):
    argv = ("dedup", "minhash", "--input", shards, "--output", tmp_path, "--priority", "wikipedia,books")
    code, _, _ = cli(*argv, "--partitions", "3", "--workers", "2")
    assert code == 0
    assert len(list((tmp_path / ".dedup/minhash/pairs").glob("*.parquet"))) == 3
    assert dc.read_decisions(tmp_path).equals(dc.read_decisions(minhash_run))
    # Back to the default partitioning: refused, then with --overwrite exactly a fresh run's files
    # (none of the 3-partition run's partitions left for a reader of a partition directory).
    code, _, err = cli(*argv)
    assert code == 2 and "other settings (partitions)" in err
    assert cli(*argv, "--overwrite")[0] == 0
    same_tree(tmp_path, minhash_run)


def same_tree(a: Path, b: Path) -> None:
    """Every parquet file (outputs, removed/, intermediates under .dedup/) equal in both runs."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    for name in files:
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name


def slurm_task(cli, monkeypatch, argv, stage: str, task: int, tasks: int) -> tuple[int, str]:
    """One task of a Slurm array job that runs one stage (what an `sbatch --array` of it would run)."""
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(tasks))
    code, _, err = cli(*argv, "--stage", stage, "--executor", "slurm")
    return code, err


@pytest.mark.parametrize("method, arrays", [
    ("minhash", {"signatures": 2, "buckets": 3, "clusters": 1, "remove": 2}),
    ("exact", {"hashes": 2, "groups": 3, "remove": 2}),
])
def test_one_slurm_job_per_stage_equals_a_single_run(method, arrays, corpus, tmp_path, cli, monkeypatch):
    """Stages as dependent Slurm array jobs, tasks one after another, give the single run's files
    byte for byte (intermediates too); a stage started before the previous one finished is refused."""
    dc.write_shards(corpus, tmp_path / "in", 4, docs=range(1000))
    argv = ("dedup", method, "--input", tmp_path / "in", "--priority", "wikipedia,books", "--partitions", 3)
    assert cli(*argv, "--output", tmp_path / "single", "--executor", "local")[0] == 0
    jobs = (*argv, "--output", tmp_path / "jobs")
    (first, first_tasks), (second, second_tasks) = list(arrays.items())[:2]
    assert slurm_task(cli, monkeypatch, jobs, first, 0, first_tasks)[0] == 0
    code, err = slurm_task(cli, monkeypatch, jobs, second, 0, second_tasks)
    assert code == 2 and f"stage {first} is not complete (2 of 4 tasks missing" in err
    if method == "minhash":  # its rounds need a barrier, which an array does not have
        code, err = slurm_task(cli, monkeypatch, jobs, "clusters", 0, 2)
        assert code == 2 and "clusters stage runs its rounds with barriers" in err
    for stage, tasks in arrays.items():
        for task in range(tasks):
            code, err = slurm_task(cli, monkeypatch, jobs, stage, task, tasks)
            assert code == 0, (stage, task, err)
    same_tree(tmp_path / "single", tmp_path / "jobs")
    single, split = (json.loads((tmp_path / run / "stats.json").read_text()) for run in ("single", "jobs"))
    assert split[method] == single[method] and split[method]["removed_total"] > 20
    for key in ("documents_in", "documents_out", "removed"):
        assert split[key] == single[key], key


def test_kill_inside_buckets_and_clusters_then_resume(minhash_run, shards, tmp_path, h, cli):
    """SIGKILL while the buckets stage runs its 12 partitions; then the state a kill inside the
    clusters stage's second round leaves (round 1 done, one round-2 partition written but not
    marked, a stale tmp file, nothing later). Each resume equals the uninterrupted run."""
    argv = ("dedup", "minhash", "--input", shards, "--output", tmp_path, "--priority", "wikipedia,books",
            "--partitions", 12)
    work = tmp_path / ".dedup" / "minhash"
    assert cli(*argv, "--stage", "signatures")[0] == 0
    markers = work / "pairs" / ".done"
    kill_when(h.gpt_data_process(*argv), lambda: any(markers.glob("*.json")))
    done = len(list(markers.glob("*.json")))
    assert 1 <= done < 12 and not (work / ".done" / "clusters.json").exists()
    code, _, err = cli(*argv, "--stage", "buckets")
    assert code == 0 and f"{12 - done} this run, {done} already done" in err

    assert cli(*argv)[0] == 0
    summary = json.loads((work / ".done" / "clusters.json").read_text())["stats"]
    assert summary["cluster_partitions"] == 4 and summary["component_rounds"] >= 3  # one per input shard
    rounds = sorted((work / "components").glob("round-*"))
    for later in rounds[3:] + [work / "members", work / "clusters"]:
        shutil.rmtree(later)
    (work / ".done" / "clusters.json").unlink()
    marker = sorted((rounds[2] / ".done").glob("*.json"))[1]
    marker.unlink()
    (rounds[2] / f"{marker.stem}.parquet").write_bytes(b"PAR1 cut off")
    (rounds[2] / f"{marker.stem}.parquet.tmp-99999").write_bytes(b"PAR1 cut off by a kill")
    first_round = {path: path.stat().st_mtime_ns for path in rounds[1].glob("*.parquet")}
    assert cli(*argv)[0] == 0
    assert {path: path.stat().st_mtime_ns for path in rounds[1].glob("*.parquet")} == first_round  # not redone
    assert not list(work.rglob("*.tmp-*"))
    assert dc.read_decisions(tmp_path).equals(dc.read_decisions(minhash_run))
    assert json.loads((work / ".done" / "clusters.json").read_text())["stats"] == summary
    for name in [f"shard-{i:03d}.parquet" for i in range(4)]:
        for part in (name, f"removed/{name}"):
            assert pq.read_table(tmp_path / part).equals(pq.read_table(minhash_run / part)), part


def with_numbers(text: str, rng: np.random.Generator) -> str:
    """The text with a 4-digit number after every 4th word, so every word 5-gram holds a digit."""
    words = text.split(" ")
    return " ".join(w + (f" {rng.integers(1000, 10000)}" if i % 4 == 3 else "") for i, w in enumerate(words))


@pytest.mark.parametrize("method", ["minhash", "exact"])
def test_fold_digits_makes_documents_that_differ_only_in_digits_duplicates(method, tmp_path, cli):
    """Two copies of a real article with different numbers in the same places: Jaccard 0 as they
    are (every 5-gram holds a number), identical once every digit is 0 (checked with a regex).
    Only --fold-digits makes them one cluster."""
    articles = dc.real_texts()[:12]
    rng = np.random.default_rng(0)
    a, b = with_numbers(articles[0], rng), with_numbers(articles[0], rng)
    assert a != b and re.sub(r"\d", "0", a) == re.sub(r"\d", "0", b) and dc.true_jaccard(a, b) < 0.05
    texts = [a, *articles[1:], b]
    dc.write_shards(dc.Corpus(texts, ["common-crawl"] * len(texts), [0.5] * len(texts), np.arange(len(texts))),
                    tmp_path / "in", 2)
    for fold, expected in ((False, set()), (True, {(f"doc-{len(texts) - 1:07d}", "doc-0000000")})):
        out = tmp_path / f"fold-{fold}"
        code, _, err = cli("dedup", method, "--input", tmp_path / "in", "--output", out, *["--fold-digits"] * fold)
        assert code == 0, err
        removed = [r for part in sorted((out / "removed").glob("*.parquet")) for r in pq.read_table(part).to_pylist()]
        assert {(r["id"], r["duplicate_of"]) for r in removed} == expected, fold
