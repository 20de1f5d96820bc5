"""Ground-truth corpus for dedup: real documents plus injected near-duplicates.

Base documents are real text: whole news articles of the Lee corpus (shipped in
gensim's test data, see tests/data/README.md), and, to reach any corpus size,
documents composed of random real sentences from a pool (so two base documents
share almost no word 5-grams). Each family is a base document plus mutated copies
made by word edits, paragraph reordering, added boilerplate or truncation, with a
strength drawn at random, so the copies spread over the whole Jaccard range.

The truth is computed by a reference independent of the code under test: Python
sets of word 5-gram tuples (regex words, lower case), exact Jaccard for every pair
inside a family. Pairs across families are not enumerated; `evaluate` computes the
exact Jaccard of any such pair a tool reports, so they are judged too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
LEE = DATA / "lee_background.cor"
WORD = re.compile(r"[^\W_]+")
BOILERPLATE = [
    "Subscribe to our newsletter for the latest updates.",
    "This website uses cookies to improve your experience.",
    "All rights reserved. Reproduction without permission is prohibited.",
    "Click here to share this story on social media.",
    "Related articles: more news from around the world.",
    "Sign in or register to leave a comment below.",
    "Advertisement. Continue reading the main story.",
    "Follow us for breaking news and analysis every day.",
]
MUTATIONS = ("word_edits", "reorder", "boilerplate", "truncate")


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Reference shingles: word n-gram tuples (a text shorter than n is one shingle)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def real_texts(paths: list[Path] | None = None) -> list[str]:
    """One real document per non-empty line (the Lee corpus by default)."""
    texts = []
    for path in paths or [LEE]:
        texts.extend(line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                     if len(line.split()) >= 30)
    return texts


def sentences(texts: list[str]) -> list[str]:
    pool = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t)]
    return [s for s in pool if len(s.split()) >= 6]


def paragraphs_of(sents: list[str], rng: np.random.Generator) -> str:
    paras, i = [], 0
    while i < len(sents):
        k = int(rng.integers(2, 5))
        paras.append(" ".join(sents[i:i + k]))
        i += k
    return "\n\n".join(paras)


def mutate(text: str, kind: str, strength: float, rng: np.random.Generator) -> str:
    """A near-duplicate of `text`; strength in (0, 1] scales how much changes."""
    if kind == "word_edits":
        words = text.split(" ")
        n = max(1, int(len(words) * 0.25 * strength))
        for pos in rng.choice(len(words), size=min(n, len(words)), replace=False):
            op = rng.integers(3)
            if op == 0:
                words[pos] = "edited" + str(rng.integers(1000))
            elif op == 1:
                words[pos] = ""
            else:
                words[pos] = words[pos] + " inserted" + str(rng.integers(1000))
        return " ".join(w for w in words if w)
    if kind == "reorder":
        paras = text.split("\n\n")
        swaps = max(1, int(len(paras) * strength))
        for _ in range(swaps):
            i, j = rng.integers(len(paras), size=2)
            paras[i], paras[j] = paras[j], paras[i]
        return "\n\n".join(paras)
    if kind == "boilerplate":
        n_words = len(text.split())
        extra, lines = 0, []
        while extra < n_words * 0.6 * strength:
            line = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
            lines.append(line)
            extra += len(line.split())
        cut = int(rng.integers(len(lines) + 1))
        return "\n".join(lines[:cut] + [text] + lines[cut:])
    if kind == "truncate":
        words = text.split(" ")
        keep = max(5, int(len(words) * (1 - 0.6 * strength)))
        return " ".join(words[:keep])
    raise ValueError(kind)


@dataclass
class Corpus:
    texts: list[str]
    sources: list[str]
    quality: list[float]
    family: np.ndarray  # family index per document
    truth: dict[tuple[int, int], float] = field(default_factory=dict)  # in-family pairs -> Jaccard

    def true_pairs(self, threshold: float = 0.8) -> set[tuple[int, int]]:
        return {p for p, j in self.truth.items() if j >= threshold}

    def jaccard(self, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self.truth:
            self.truth[key] = true_jaccard(self.texts[a], self.texts[b])
        return self.truth[key]


def build(n_docs: int, seed: int = 0, dup_fraction: float = 0.3, max_copies: int = 3,
          sources: tuple[str, ...] = ("common-crawl",), texts: list[str] | None = None) -> Corpus:
    """About `n_docs` documents; ~`dup_fraction` of the families get 1..max_copies mutated copies."""
    rng = np.random.default_rng(seed)
    real = texts if texts is not None else real_texts()
    pool = sentences(real)
    docs: list[str] = []
    fam: list[int] = []
    srcs: list[str] = []
    members: list[list[int]] = []
    base_index = 0
    while len(docs) < n_docs:
        if base_index < len(real):
            base = paragraphs_of(re.split(r"(?<=[.!?])\s+", real[base_index]), rng)
        else:
            k = int(rng.integers(5, 20))
            base = paragraphs_of([pool[i] for i in rng.integers(len(pool), size=k)], rng)
        base_index += 1
        family_docs = [base]
        if rng.random() < dup_fraction:
            for _ in range(int(rng.integers(1, max_copies + 1))):
                kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
                family_docs.append(mutate(base, kind, float(rng.uniform(0.02, 1.0)), rng))
        ids = []
        for text in family_docs:
            ids.append(len(docs))
            docs.append(text)
            fam.append(len(members))
            srcs.append(sources[int(rng.integers(len(sources)))])
        members.append(ids)
    quality = rng.random(len(docs)).round(4).tolist()
    corpus = Corpus(docs, srcs, quality, np.array(fam))
    for ids in members:
        if len(ids) > 1:
            refs = {i: shingles(docs[i]) for i in ids}
            for a, b in combinations(ids, 2):
                union = len(refs[a] | refs[b])
                corpus.truth[(a, b)] = len(refs[a] & refs[b]) / union if union else 1.0
    return corpus


@dataclass
class Scores:
    precision: float  # duplicate pairs the tool reported with true Jaccard >= threshold
    recall: float  # true pairs (>= threshold) that ended in one cluster
    cluster_pair_precision: float  # all pairs inside reported clusters with Jaccard >= threshold
    removed_below: int  # removed documents whose Jaccard to their cluster's keeper < low
    removed: int
    reported_pairs: int
    true_pairs: int


def evaluate(corpus: Corpus, pairs: np.ndarray, cluster: np.ndarray, removed: np.ndarray,
             threshold: float = 0.8, low: float = 0.5) -> Scores:
    """Score a tool: `pairs` it called duplicates, `cluster` label per doc (-1: none),
    `removed` boolean per doc. Removed documents are judged against the kept one of
    their cluster."""
    reported = {(int(min(a, b)), int(max(a, b))) for a, b in pairs}
    good = sum(corpus.jaccard(a, b) >= threshold for a, b in reported)
    truth = corpus.true_pairs(threshold)
    found = sum(cluster[a] >= 0 and cluster[a] == cluster[b] for a, b in truth)
    inside = good_inside = removed_below = 0
    labels, members = np.unique(cluster[cluster >= 0], return_inverse=True)
    docs_with_cluster = np.flatnonzero(cluster >= 0)
    by_cluster: dict[int, list[int]] = {}
    for doc, label in zip(docs_with_cluster.tolist(), members.tolist()):
        by_cluster.setdefault(label, []).append(doc)
    for docs in by_cluster.values():
        for a, b in combinations(docs, 2):
            inside += 1
            good_inside += corpus.jaccard(a, b) >= threshold
        kept = [d for d in docs if not removed[d]]
        for d in docs:
            if removed[d] and kept and corpus.jaccard(d, kept[0]) < low:
                removed_below += 1
    return Scores(
        precision=good / len(reported) if reported else 1.0,
        recall=found / len(truth) if truth else 1.0,
        cluster_pair_precision=good_inside / inside if inside else 1.0,
        removed_below=removed_below, removed=int(removed.sum()),
        reported_pairs=len(reported), true_pairs=len(truth),
    )


def write_shards(corpus: Corpus, directory: Path, n_shards: int, docs: range | None = None) -> list[Path]:
    """The corpus as parquet shards (documents dealt round-robin), ids ``doc-<index>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = docs if docs is not None else range(len(corpus.texts))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        mine = list(docs)[s::n_shards]
        table = pa.table({
            "id": [f"doc-{i:07d}" for i in mine], "url": [""] * len(mine), "crawl_date": [""] * len(mine),
            "source": [corpus.sources[i] for i in mine], "text": [corpus.texts[i] for i in mine],
            "language": ["en"] * len(mine), "language_score": pa.array([1.0] * len(mine), pa.float32()),
            "quality": [corpus.quality[i] for i in mine],
        })
        paths.append(directory / f"shard-{s:03d}.parquet")
        pq.write_table(table, paths[-1])
    return paths


def doc_index(doc_id: str) -> int:
    return int(doc_id.split("-")[1])


def read_decisions(out: Path, method: str = "minhash"):
    """Every keep/remove decision of a `gpt-data dedup` run (one file per partition), by document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = out / ".dedup" / method / ("clusters" if method == "minhash" else "groups")
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("part-*.parquet"))]).sort_by("doc")
