"""Real document texts for the tokenizer tests: the bundled samples, the WARC's raw pages, odd cases."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from data_pipeline.tokenizers import EOD_TOKEN

DATA = Path(__file__).resolve().parents[1] / "data"
ODD_TEXTS = ["emoji 🎉, 日本語, tabs\tand\r\n\nblank lines  ", f"a literal {EOD_TOKEN} in a document", " ",
             "x" * 3000]


def real_texts(name: str) -> list[str]:
    """The ``text`` of every document in the bundled JSONL sample `name`."""
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def warc_pages() -> list[str]:
    """The raw HTTP payloads of the WARC sample as text: markup, scripts, odd whitespace."""
    from warcio.archiveiterator import ArchiveIterator

    with open(DATA / "cc-sample-0000.warc.gz", "rb") as f:
        return [record.content_stream().read().decode("utf-8", errors="replace")
                for record in ArchiveIterator(f) if record.rec_type == "response"]
