"""A task's metrics from its per-example scores; text metrics of generated answers.

Multiple choice picks an answer by log-likelihood: summed (acc), per token (acc_norm, GPT-3),
per character (acc_norm_chars, lm-evaluation-harness's acc_norm) or relative to the answer's
likelihood after a bare answer context (acc_unconditional, GPT-3 section 2.4).

Exact match and F1 follow SQuAD v1.1's official script: both strings are normalised (lower case,
punctuation and the articles a/an/the removed, whitespace collapsed), F1 is over the normalised
words, and an answer scores its best over the gold answers. BLEU is sacrebleu's corpus BLEU
(13a tokenisation, 0-100) with every example's references.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest

PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised reference."""
    return float(any(normalize_answer(prediction) == normalize_answer(ref) for ref in references))


def word_f1(prediction: str, reference: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, references: Sequence[str]) -> float:
    """The best word-overlap F1 of the prediction against any reference."""
    return max(word_f1(prediction, ref) for ref in references)


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU; examples may have different numbers of references."""
    import sacrebleu

    streams = [list(stream) for stream in zip_longest(*references, fillvalue=None)]
    return sacrebleu.corpus_bleu(list(predictions), streams).score


# --------------------------------------------------------------------------- a task's metrics from its scores


@dataclass
class Answer:
    """One scored continuation `" " + answer`: its log-likelihood after the prompt, its lengths, whether
    greedy decoding (or beam search) reproduces it, and its log-likelihood after the answer context."""

    logprob: float
    tokens: int
    chars: int  # of the answer without its leading space, as lm-evaluation-harness counts
    reproduced: bool = False
    unconditional: float = 0.0


@dataclass
class ExampleScores:
    answers: list[Answer]  # every choice (multiple choice), the first target (completion)
    label: int = 0
    references: list[str] = field(default_factory=list)
    generated: str = ""  # the generated answer, for exact_match, f1 and bleu


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def picked_accuracy(key: Callable[[Answer], float]) -> Callable[[list[ExampleScores]], float]:
    """The fraction of examples whose best answer by `key` is the labelled one (ties: the first)."""
    def accuracy(examples: list[ExampleScores]) -> float:
        return mean(max(range(len(e.answers)), key=lambda i: key(e.answers[i])) == e.label for e in examples)
    return accuracy


def target_perplexity(examples: list[ExampleScores]) -> float:
    return math.exp(-sum(e.answers[0].logprob for e in examples) / sum(e.answers[0].tokens for e in examples))


METRIC_FUNCTIONS: dict[tuple[str, str], Callable[[list[ExampleScores]], float]] = {
    ("multiple_choice", "acc"): picked_accuracy(lambda a: a.logprob),
    ("multiple_choice", "acc_norm"): picked_accuracy(lambda a: a.logprob / a.tokens),
    ("multiple_choice", "acc_norm_chars"): picked_accuracy(lambda a: a.logprob / a.chars),
    ("multiple_choice", "acc_unconditional"): picked_accuracy(lambda a: a.logprob - a.unconditional),
    ("completion", "acc"): lambda examples: mean(e.answers[0].reproduced for e in examples),
    ("completion", "target_ppl"): target_perplexity,
    ("completion", "exact_match"): lambda examples: mean(exact_match(e.generated, e.references) for e in examples),
    ("completion", "f1"): lambda examples: mean(f1(e.generated, e.references) for e in examples),
    ("completion", "bleu"): lambda examples: bleu([e.generated for e in examples], [e.references for e in examples]),
}
METRIC_DEFINITIONS = {  # written into gpt-eval's JSON, so that each number says what it is
    "acc": "multiple choice: the answer of highest log-likelihood (a fine-tuned head: its predicted label); "
           "completion: greedy decoding (or beam search) reproduces the first target",
    "acc_norm": "the answer of highest log-likelihood per token (GPT-3's length normalisation)",
    "acc_norm_chars": "the answer of highest log-likelihood per character (lm-evaluation-harness's acc_norm)",
    "acc_unconditional": "the answer of highest log p(answer | context) - log p(answer | answer context) "
                         "(GPT-3's normalisation for ARC, OpenBookQA, RACE)",
    "target_ppl": "perplexity of the first target's tokens",
    "exact_match": "SQuAD exact match of the generated answer (0-1)",
    "f1": "SQuAD word F1 of the generated answer (0-1)",
    "bleu": "sacrebleu corpus BLEU of the generated answers (0-100)",
}


def task_metrics(kind: str, metrics: Sequence[str], examples: list[ExampleScores]) -> dict[str, float]:
    """The task's declared metrics over `examples` (a subset gives its clean or dirty scores)."""
    return {name: METRIC_FUNCTIONS[kind, name](examples) for name in metrics} if examples else {}
