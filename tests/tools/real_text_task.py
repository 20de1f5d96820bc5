"""Small real tasks built from the bundled real text (tests/data): the Lee news corpus and the English
Wikipedia sample.

- `news_or_wiki` (classification): is a sentence from a news article or from Wikipedia?
- `same_source` (similarity): are two sentences from the same source?
- `true_ending` (multiple choice): which of two endings completes the first half of a sentence?

Examples alternate so that both splits are balanced."""
import gzip
import json
import random
import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"


def sentences(texts, limit: int) -> list[str]:
    found = []
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")):
            if 60 <= len(sentence) <= 200 and sentence[0].isupper():
                found.append(sentence.strip())
    random.Random(0).shuffle(found)
    return found[:limit]


def news_and_wiki(count: int) -> tuple[list[str], list[str]]:
    """`count` sentences of each source."""
    news = sentences((DATA / "lee_background.cor").read_text(encoding="utf-8", errors="replace").splitlines(), count)
    with gzip.open(DATA / "wiki-en-sample.jsonl.gz", "rt", encoding="utf-8") as lines:
        wiki = sentences((json.loads(line)["text"] for line in lines), count)
    return news, wiki


def write_splits(directory: Path, name: str, examples: list[dict], train: int) -> Path:
    """`<name>.train.jsonl` (the first `train` examples) and `<name>.jsonl` (the rest); returns the task file."""
    directory.mkdir(parents=True, exist_ok=True)
    for file, rows in ((f"{name}.train.jsonl", examples[:train]), (f"{name}.jsonl", examples[train:])):
        (directory / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory / f"{name}.jsonl"


def news_or_wiki(directory: Path, train: int = 256, test: int = 96) -> Path:
    """Label 0 news, 1 Wikipedia."""
    news, wiki = news_and_wiki((train + test) // 2)
    examples = [e for pair in zip(news, wiki) for e in ({"text": pair[0], "label": 0}, {"text": pair[1], "label": 1})]
    return write_splits(directory, "news_or_wiki", examples, train)


def same_source(directory: Path, train: int = 32, test: int = 16) -> Path:
    """Label 1 if both sentences come from the same source. Pairs share `text_b`, so neither sentence
    alone decides the label."""
    news, wiki = news_and_wiki(train + test)
    examples = []
    for i in range(0, train + test, 2):
        first, second = (news, wiki) if i % 4 == 0 else (wiki, news)
        examples += [{"text_a": first[i], "text_b": first[i + 1], "label": 1},
                     {"text_a": second[i], "text_b": first[i + 1], "label": 0}]
    return write_splits(directory, "same_source", examples, train)


def true_ending(directory: Path, train: int = 32, test: int = 16) -> Path:
    """The first half of a sentence (by words); its own second half and another sentence's, in alternating order."""
    news, wiki = news_and_wiki((train + test) // 2 + 1)
    pool = [s for pair in zip(news, wiki) for s in pair]
    halves = [(" ".join(w[: len(w) // 2]), " ".join(w[len(w) // 2:])) for w in (s.split() for s in pool)]
    examples = []
    for i in range(train + test):
        (context, ending), (_, other) = halves[i], halves[i + 1]
        label = i % 2
        examples.append({"context": context, "choices": [other, ending] if label else [ending, other], "label": label})
    return write_splits(directory, "true_ending", examples, train)
