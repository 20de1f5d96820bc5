"""GPT-3's quality classifier (Brown et al. 2020, Appendix A).

Features: lower-cased whitespace tokens hashed into 2^18 buckets (Spark's Tokenizer +
HashingTF, as in the paper; scikit-learn's `HashingVectorizer`, L2-normalised term
counts). Model: logistic regression, curated text (WebText, Wikipedia, books...) as
positives, raw Common Crawl as negatives, classes weighted to equal total weight (so a
score of 0.5 means "as likely curated as raw" whatever the class sizes). ``train``
holds out part of the data and reports the held-out ROC AUC of the saved model.

``score`` adds a ``quality`` column (P(curated)). With the ``pareto`` keep rule a
document is kept iff ``np.random.pareto(alpha) > 1 - quality`` (alpha = 9 in GPT-3), so
mostly high-scoring documents survive but some low-scoring ones do too. The draw is
seeded per document (a uniform from ``xxh64(seed:id)`` through the inverse CDF of
numpy's Pareto II), so it does not depend on shard order, workers or re-runs.
Removed documents go to ``removed/`` with ``removed_by = quality:pareto``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from data_pipeline.document import DOCUMENT_SCHEMA, extend_schema
from common.errors import UserError
from common.files import output_directory
from common.options import add_arguments, from_arguments, options_from_config
from data_pipeline.executor import ShardTask, add_executor_args, run_shards
from data_pipeline.extract import INPUT_SUFFIXES, read_any
from data_pipeline.shards import ShardWriter, code_version, discover_shards, file_identity, read_schema
from data_pipeline.stats import Stats, count_output

N_FEATURES = 2**18
HISTOGRAM_BINS = 10
KEEP_RULES = ("pareto", "all")


def vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=N_FEATURES, lowercase=True, tokenizer=str.split, token_pattern=None,
                             alternate_sign=False, norm="l2", dtype=np.float32)


@dataclass
class QualityModel:
    """Logistic regression weights over hashed features; saved as one .npz file."""

    coef: np.ndarray  # (N_FEATURES,) float32
    intercept: float
    report: dict

    def score(self, texts: list[str]) -> np.ndarray:
        """P(curated) for each text."""
        logits = vectorizer().transform(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            np.savez_compressed(out, coef=self.coef, intercept=np.float64(self.intercept),
                                report=np.array(json.dumps(self.report)))

    @classmethod
    def load(cls, path: str | Path) -> QualityModel:
        try:
            with np.load(path) as data:
                coef = data["coef"]
                if coef.shape != (N_FEATURES,):
                    raise UserError(f"{path}: expected {N_FEATURES} weights, found {coef.shape}")
                return cls(coef, float(data["intercept"]), json.loads(str(data["report"])))
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"cannot load quality model {path}: {err}") from None


def read_texts(paths: list[str], limit: int | None, stats: Stats) -> list[str]:
    texts: list[str] = []
    for root in paths:
        for shard in discover_shards(root, INPUT_SUFFIXES):
            for doc in read_any(shard, stats):
                if limit is not None and len(texts) >= limit:
                    return texts
                texts.append(doc.text)
    return texts


def train(positive: list[str], negative: list[str], *, holdout: float = 0.2, seed: int = 0,
          max_docs: int | None = None, regularization: float = 1.0) -> QualityModel:
    """Fit on curated (`positive`) vs raw (`negative`) documents; report held-out AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    stats = Stats()
    pos, neg = read_texts(positive, max_docs, stats), read_texts(negative, max_docs, stats)
    if min(len(pos), len(neg)) < 2:
        raise UserError(f"need at least 2 positive and 2 negative documents, got {len(pos)} and {len(neg)}")
    labels = np.array([1] * len(pos) + [0] * len(neg))
    train_texts, test_texts, y_train, y_test = train_test_split(
        pos + neg, labels, test_size=holdout, random_state=seed, stratify=labels)
    features = vectorizer()
    model = LogisticRegression(C=regularization, max_iter=1000, class_weight="balanced")
    model.fit(features.transform(train_texts), y_train)
    auc = float(roc_auc_score(y_test, model.predict_proba(features.transform(test_texts))[:, 1]))
    report = {"heldout_auc": round(auc, 6), "train_documents": len(train_texts), "heldout_documents": len(test_texts),
              "positives": len(pos), "negatives": len(neg), "holdout": holdout, "seed": seed,
              "regularization": regularization, "n_features": N_FEATURES, "skipped": stats.get("skipped", default={})}
    return QualityModel(model.coef_[0].astype(np.float32), float(model.intercept_[0]), report)


def pareto_draws(ids: list[str], alpha: float, seed: int) -> np.ndarray:
    """One numpy-Pareto-II(alpha) draw per document id, reproducible from (seed, id)."""
    uniform = np.array([xxhash.xxh64_intdigest(f"{seed}:{i}".encode()) for i in ids], dtype=np.float64) / 2.0**64
    return (1.0 - uniform) ** (-1.0 / alpha) - 1.0


@dataclass(frozen=True)
class ScoreOptions:
    """`gpt-data classifier score`'s flags and the ``classifier_score`` recipe step's keys."""

    model: str = field(metadata={"help": "model from `gpt-data classifier train`"})
    keep: str = field(default="pareto", metadata={
        "choices": KEEP_RULES, "help": "pareto: GPT-3's sampling rule (default); all: only add the quality column"})
    alpha: float = field(default=9.0, metadata={"help": "Pareto shape (default %(default)s)"})
    seed: int = field(default=0, metadata={"help": "seed of the per-document Pareto draws (default %(default)s)"})
    batch_size: int = field(default=512, metadata={
        "help": "documents scored at a time; the output does not depend on it (default %(default)s)"})


def check_score(config: dict) -> ScoreOptions:
    options = options_from_config(ScoreOptions, config, "classifier_score")
    if not Path(options.model).is_file():
        raise UserError(f"classifier_score: model not found: {options.model}")
    return options


@lru_cache(maxsize=2)
def _load(path: str) -> QualityModel:
    return QualityModel.load(path)


def score_shard(task: ShardTask, stats: Stats, options: ScoreOptions) -> None:
    model = _load(options.model)
    schema = read_schema(task.path) if task.path.name.endswith(".parquet") else DOCUMENT_SCHEMA
    kept_schema = extend_schema(schema, quality=pa.float32())
    removed_schema = extend_schema(kept_schema, removed_by=pa.string())
    with ShardWriter(task.output(), kept_schema) as kept, \
            ShardWriter(task.output(subdir="removed"), removed_schema) as removed:
        batch = []
        for doc in read_any(task.path, stats):
            batch.append(doc)
            if len(batch) >= options.batch_size:
                _score_batch(batch, model, options, kept, removed, stats)
                batch = []
        _score_batch(batch, model, options, kept, removed, stats)


def _score_batch(docs, model: QualityModel, options: ScoreOptions, kept: ShardWriter, removed: ShardWriter,
                 stats: Stats) -> None:
    if not docs:
        return
    scores = model.score([d.text for d in docs])
    keep = (pareto_draws([d.id for d in docs], options.alpha, options.seed) > 1.0 - scores
            if options.keep == "pareto" else np.ones(len(docs), dtype=bool))
    bins = np.minimum((scores * HISTOGRAM_BINS).astype(int), HISTOGRAM_BINS - 1)
    for doc, score, keep_it, b in zip(docs, scores, keep, bins):
        stats.add("documents_in")
        stats.add("quality_histogram", f"{b / HISTOGRAM_BINS:.1f}-{(b + 1) / HISTOGRAM_BINS:.1f}")
        doc.metadata["quality"] = float(score)
        if keep_it:
            kept.write(doc)
            count_output(stats, doc.text)
        else:
            doc.metadata["removed_by"] = "quality:pareto"
            removed.write(doc)
            stats.add("removed", "quality:pareto")


def run_score(input: str | Path, output: str | Path, config: dict, *, workers: int = 1,
              executor: str = "auto", overwrite: bool = False) -> Stats:
    """Score (and with keep=pareto, sample) every shard under `input` (the recipe step)."""
    options = check_score(config)
    recorded = dict(asdict(options), batch_size=None, model_file=file_identity(options.model))  # batches: same output
    stats = run_shards(partial(score_shard, options=options), discover_shards(input, INPUT_SUFFIXES), output,
                       options=recorded, code=code_version(__name__), overwrite=overwrite, input_root=input,
                       workers=workers, executor=executor, stage="classifier score")
    docs_in = stats.get("documents_in")
    if docs_in:
        print(f"classifier score: keep rate {stats.get('documents_out') / docs_in:.3f} "
              f"({stats.get('documents_out')}/{docs_in}, rule {options.keep})")
    return stats


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("classifier", help="GPT-3 quality classifier: train, score",
                                   description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="classifier_command", metavar="{train,score}", required=True)

    train_parser = commands.add_parser(
        "train", help="fit logistic regression on hashed features; report held-out AUC",
        description="Positives: curated text; negatives: raw Common Crawl. Inputs are files or directories "
                    "of WARC/WET/JSONL/parquet documents.")
    train_parser.add_argument("--positive", nargs="+", required=True, help="curated documents")
    train_parser.add_argument("--negative", nargs="+", required=True, help="raw crawl documents")
    train_parser.add_argument("--output", required=True, help="model file to write (.npz)")
    train_parser.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (default %(default)s)")
    train_parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    train_parser.add_argument("--max-docs", type=int, default=None, help="cap per class")
    train_parser.add_argument("--regularization", type=float, default=1.0, help="inverse L2 strength C")
    train_parser.set_defaults(func=_train_main)

    score_parser = commands.add_parser(
        "score", help="add a quality column; keep documents by GPT-3's Pareto rule",
        description="Adds `quality` = P(curated). With --keep pareto (default) a document is kept iff "
                    "np.random.pareto(alpha) > 1 - quality, seeded per document id.")
    add_executor_args(score_parser)
    add_arguments(score_parser, ScoreOptions)
    score_parser.set_defaults(func=_score_main)


def _train_main(args: argparse.Namespace) -> int:
    output_directory(Path(args.output).parent)  # before the training, not after
    model = train(args.positive, args.negative, holdout=args.holdout, seed=args.seed, max_docs=args.max_docs,
                  regularization=args.regularization)
    model.save(args.output)
    print(json.dumps(model.report, indent=2))
    print(f"held-out AUC {model.report['heldout_auc']:.4f}; model saved to {args.output}")
    return 0


def _score_main(args: argparse.Namespace) -> int:
    config = asdict(from_arguments(ScoreOptions, args))
    run_score(args.input, args.output, config, workers=args.workers, executor=args.executor, overwrite=args.overwrite)
    return 0
