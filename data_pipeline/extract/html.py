"""HTML bytes -> plain text with resiliparse, decoding the charset the way browsers would."""
from __future__ import annotations

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5
from resiliparse.parse.html import HTMLTree


def decode_html(body: bytes, declared: str | None) -> tuple[str, str]:
    """(text, how) where `how` names the charset source: utf-8, declared or detected.

    Strict UTF-8 wins when it decodes (it almost never does by accident, and servers
    often mislabel UTF-8 pages as ISO-8859-1); then the HTTP-declared charset mapped
    through the WHATWG table; then resiliparse's detector. Undecodable bytes are
    replaced, never raised.
    """
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    encoding = map_encoding_to_html5(declared, fallback_utf8=False) if declared else None
    how = "declared"
    if encoding is None or encoding == "utf-8":
        encoding, how = detect_encoding(body), "detected"
    return bytes_to_str(body, encoding, errors="replace"), how


def html_to_text(html: str, main_content: bool = True) -> str:
    """Visible text of an HTML page, one block per line; boilerplate dropped if `main_content`."""
    tree = HTMLTree.parse(html)
    return extract_plain_text(tree, main_content=main_content, preserve_formatting=True,
                              list_bullets=True, alt_texts=False, links=False, form_fields=False)
