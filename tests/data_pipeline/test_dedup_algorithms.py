"""Dedup building blocks against independent references (pure-Python sets, dicts, union-find)."""
from __future__ import annotations

import re
from itertools import combinations

import dedup_corpus as dc
import numpy as np
import pytest

from data_pipeline.dedup.buckets import candidate_pairs
from data_pipeline.dedup.clusters import choose_keepers, size_histogram
from data_pipeline.dedup.components import label_components, partition_of_node, read_labels, write_edges
from data_pipeline.dedup.jaccard import jaccard
from data_pipeline.dedup.minhash import MinHasher, fold32
from data_pipeline.dedup.text import exact_hash, ngrams, normalized, shingle_sets, words


@pytest.fixture(scope="module")
def corpus() -> dc.Corpus:
    return dc.build(600, seed=11)


def test_word_spans_and_hashes_match_regex_words():
    texts = ["Hello, World! The quick-brown fox; 42 foxes.", "", "ÉCOLE école Straße", "a_b"]
    w = words(texts)
    got = [(int(d), texts[d][s:e]) for d, s, e in zip(w.doc, w.starts, w.ends)]
    want = [(i, m.group()) for i, t in enumerate(texts) for m in re.finditer(r"[^\W_]+", t)]
    assert got == want
    by_word = {}
    for (_, word), h in zip(got, w.hashes.tolist()):
        by_word.setdefault(word.lower(), set()).add(h)
    assert all(len(hs) == 1 for hs in by_word.values())  # case folded, one hash per word
    assert len({next(iter(hs)) for hs in by_word.values()}) == len(by_word)  # distinct words differ


def test_shingle_sets_match_reference_and_do_not_depend_on_the_batch(corpus):
    texts = corpus.texts[:200]
    sets = shingle_sets(texts)
    assert [len(s) for s in sets] == [len(dc.shingles(t)) for t in texts]
    alone = shingle_sets([texts[7]])[0]
    assert np.array_equal(alone, sets[7])
    short = shingle_sets(["Just three words", "just THREE words!"])
    assert len(short[0]) == 1 and np.array_equal(short[0], short[1])


def test_hashed_jaccard_equals_reference_jaccard(corpus):
    pairs = list(corpus.truth.items())[:300]
    sets = [np.unique(fold32(s)) for s in shingle_sets(corpus.texts)]
    errors = [abs(jaccard(sets[a], sets[b]) - j) for (a, b), j in pairs]
    assert max(errors) < 1e-3


def test_short_texts_option_drops_texts_shorter_than_n():
    grams = ngrams(words(["one two three", "one two three four five six"]), 5, 2, short_texts=False)
    assert np.diff(grams.offsets).tolist() == [0, 2]


def test_normalisation_and_exact_hash():
    assert normalized("  Hello,\tWORLD!!  3 cats ") == "hello world 3 cats"
    assert normalized("Room 101", fold_digits=True) == "room 000"
    assert exact_hash("Hello, world") == exact_hash("hello   WORLD!")
    assert exact_hash("hello world") != exact_hash("hello world again")
    assert exact_hash("room 101") != exact_hash("room 102")
    assert exact_hash("room 101", fold_digits=True) == exact_hash("room 102", fold_digits=True)


def test_minhash_collision_rate_estimates_jaccard(corpus):
    hasher = MinHasher(14, 8)
    grams = ngrams(words(corpus.texts), 5, len(corpus.texts))
    sig = hasher.signatures(grams.hashes, grams.offsets)
    assert sig.shape == (len(corpus.texts), 112)
    errors = np.array([(sig[a] == sig[b]).mean() - j for (a, b), j in corpus.truth.items()])
    assert abs(errors.mean()) < 0.01  # unbiased
    assert errors.std() < 0.05  # binomial spread for 112 hashes is at most 0.047
    # Batch size does not change a signature.
    part = ngrams(words(corpus.texts[5:9]), 5, 4)
    assert np.array_equal(hasher.signatures(part.hashes, part.offsets), sig[5:9])


def test_band_keys_equal_exactly_when_band_rows_equal():
    hasher = MinHasher(4, 2)
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, (50, 8), dtype=np.uint64).astype(np.uint32)
    sig[1, 2:4] = sig[0, 2:4]  # documents 0 and 1 share band 1 only
    keys = hasher.band_keys(sig)
    assert keys[0, 1] == keys[1, 1]
    assert (keys[0, [0, 2, 3]] != keys[1, [0, 2, 3]]).all()
    assert len(np.unique(keys)) == keys.size - 1  # bands never share keys across band index


def test_candidate_pairs_match_brute_force_grouping():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 40, 400).astype(np.uint64)
    ids = rng.permutation(400).astype(np.int64)
    got = {tuple(p) for p in candidate_pairs(keys, ids, window=1000).tolist()}
    buckets: dict[int, list[int]] = {}
    for k, i in zip(keys.tolist(), ids.tolist()):
        buckets.setdefault(k, []).append(i)
    want = {(min(a, b), max(a, b)) for members in buckets.values() for a, b in combinations(members, 2)}
    assert got == want
    # A window bounds the pairs per document but keeps every bucket connected.
    windowed = candidate_pairs(keys, ids, window=3)
    assert len(windowed) <= 2 * len(keys)
    cluster = reference_union_find(windowed.tolist())
    for members in buckets.values():
        if len(members) > 1:
            assert len({cluster[m] for m in members}) == 1


def reference_union_find(pairs):
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return {x: min(g) for g in groups.values() for x in g}


def components_on_disk(pairs: np.ndarray, root, partitions: int):
    """`label_components` as the clusters stage runs it (parquet rounds, a task per partition)."""
    from data_pipeline.dedup.stages import partition_inputs
    from data_pipeline.executor import run_shards

    halves = np.array_split(pairs, 2)  # seed edges from two bucket partitions, as the stage writes them
    for k, half in enumerate(halves):
        write_edges(root / "round-000" / f"part-{k:05d}.parquet", half[:, 0], half[:, 1], partitions)
    found = label_components(lambda process, count, out, stage: run_shards(
        process, partition_inputs(count), out, options={}, code="test", executor="local", stage=stage, quiet=True),
        root, partitions, "test")
    labels = {}
    for partition in range(partitions):
        nodes, roots = read_labels(found.labels, partition)
        assert (partition_of_node(nodes, partitions) == partition).all()
        labels.update(zip(nodes.tolist(), roots.tolist()))
    return labels, found


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_components_on_disk_match_reference_union_find(partitions, tmp_path):
    """Random sparse graph, a long path with shuffled ids (the most rounds), a big star, a clique,
    and every edge given twice (as a pair found by several bucket partitions): the labels are
    the reference union-find's smallest id per component, whatever the partition count."""
    rng = np.random.default_rng(5)
    ids = rng.permutation((rng.integers(0, 9, 6000) << 32) | np.arange(6000))  # shard << 32 | row
    sparse = ids[rng.integers(0, 3000, (2000, 2))]
    path = ids[3000:3400][rng.permutation(400)]
    star = np.stack([np.full(300, ids[3400]), ids[3401:3701]], axis=1)
    clique = np.array(list(combinations(ids[3701:3731].tolist(), 2)))
    pairs = np.concatenate([sparse, np.stack([path[:-1], path[1:]], axis=1), star, clique])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    labels, found = components_on_disk(np.concatenate([pairs, pairs[:, ::-1]])[rng.permutation(2 * len(pairs))],
                                       tmp_path, partitions)
    want = reference_union_find(pairs.tolist())
    assert labels == want
    assert sum(size_histogram(np.array(list(labels.values()))).values()) == len(set(want.values()))
    assert found.edges == len({(min(a, b), max(a, b)) for a, b in pairs.tolist()})
    assert 3 <= found.rounds <= 40


def test_keeper_is_best_source_then_quality_then_first():
    ids = np.array([10, 11, 12, 20, 21, 30, 31], dtype=np.int64)
    cluster = np.array([10, 10, 10, 20, 20, 30, 30], dtype=np.int64)
    priority = np.array([1, 0, 0, 1, 1, 2, 2])  # 0 = best source
    quality = np.array([0.9, 0.1, 0.5, 0.2, 0.8, np.nan, np.nan])
    chosen = choose_keepers(ids, cluster, priority, quality)
    assert chosen.keeper.tolist() == [12, 12, 12, 21, 21, 30, 30]
    assert chosen.removed.tolist() == [True, True, False, True, False, False, True]
