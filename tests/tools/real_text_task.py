"""A small real classification task: is a sentence from a news article or from Wikipedia?

Built from the bundled real text (tests/data): the Lee news corpus and the English
Wikipedia sample. Sentences are interleaved so that both splits are balanced."""
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


def news_or_wiki(directory: Path, train: int = 256, test: int = 96) -> Path:
    """Write news_or_wiki.train.jsonl / news_or_wiki.jsonl (label 0 news, 1 Wikipedia); return the task file."""
    news = sentences((DATA / "lee_background.cor").read_text(encoding="utf-8", errors="replace").splitlines(),
                     (train + test) // 2)
    with gzip.open(DATA / "wiki-en-sample.jsonl.gz", "rt", encoding="utf-8") as lines:
        wiki = sentences((json.loads(line)["text"] for line in lines), (train + test) // 2)
    examples = [e for pair in zip(news, wiki) for e in ({"text": pair[0], "label": 0}, {"text": pair[1], "label": 1})]
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("news_or_wiki.train.jsonl", examples[:train]), ("news_or_wiki.jsonl", examples[train:])):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory / "news_or_wiki.jsonl"
