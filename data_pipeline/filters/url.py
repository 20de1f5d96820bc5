"""URL blocklist: blocked domains (a host or any of its subdomains) and banned words in URLs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from data_pipeline.document import Document
from common.errors import UserError
from data_pipeline.filters.base import Filter

URL_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class UrlOptions:
    domains: tuple[str, ...] = ()
    domains_file: str | None = None  # one domain per line, '#' comments
    banned_words: tuple[str, ...] = ()  # matched against whole tokens of the URL
    banned_subwords: tuple[str, ...] = ()  # matched anywhere in the URL


class UrlBlocklist(Filter):
    name = "url"

    def __init__(self, options: UrlOptions = UrlOptions()):
        domains = {d.lower().strip(".") for d in options.domains}
        if options.domains_file:
            path = Path(options.domains_file)
            if not path.is_file():
                raise UserError(f"url filter: domains_file not found: {path}")
            domains |= {line.split("#")[0].strip().lower() for line in path.read_text().splitlines()}
        self.domains = frozenset(d for d in domains if d)
        self.banned_words = frozenset(w.lower() for w in options.banned_words)
        self.banned_subwords = tuple(w.lower() for w in options.banned_subwords)

    def check(self, doc: Document) -> str | None:
        url = doc.url.lower()
        if not url or not (self.domains or self.banned_words or self.banned_subwords):
            return None
        host = (urlsplit(url).hostname or "").removeprefix("www.")
        parts = host.split(".")
        if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
            return "blocked_domain"
        if self.banned_words and not self.banned_words.isdisjoint(URL_TOKEN.findall(url)):
            return "banned_word"
        if any(word in url for word in self.banned_subwords):
            return "banned_subword"
        return None
