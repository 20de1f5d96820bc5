"""The report's page: sections of a plot, a caption and the tables of the numbers it shows.

One HTML file with inline CSS and images as data URIs: it opens anywhere, offline, and
can be mailed or attached to a ticket as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
section { border-top: 1px solid #ccc; padding-top: .5em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .2em .6em; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 34em; white-space: pre-wrap; font-size: .85em; }
p.absent { color: #777; font-style: italic; }
img { max-width: 100%; }
"""


@dataclass
class Table:
    headers: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)
    caption: str = ""


@dataclass
class Section:
    """One plot and its numbers; `absent` (one line) instead when its stage did not run."""

    key: str
    title: str
    caption: str = ""
    image: str | None = None  # PNG data URI
    tables: list[Table] = field(default_factory=list)
    absent: str | None = None


def cell(value) -> str:
    """A table cell: integers with thousands separators, floats to 4 significant digits, text as is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f'<td class="text">{escape(str(value))}</td>' if value is not None else "<td></td>"
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"
    return f'<td class="number">{text}</td>'


def render_table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_section(section: Section) -> str:
    parts = [f'<section id="{escape(section.key)}"><h2>{escape(section.title)}</h2>']
    if section.absent:
        parts.append(f'<p class="absent">{escape(section.absent)}</p>')
    else:
        if section.image:
            parts.append(f'<img alt="{escape(section.title)}" src="{section.image}">')
        if section.caption:
            parts.append(f"<p>{escape(section.caption)}</p>")
        parts.extend(render_table(t) for t in section.tables)
    parts.append("</section>")
    return "\n".join(parts)


def render_page(title: str, inputs: list[str], sections: list[Section]) -> str:
    listed = "".join(f"<li><code>{escape(p)}</code></li>" for p in inputs)
    body = "\n".join(render_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>Built from the stage outputs:</p><ul>{listed}</ul>\n{body}\n</body></html>\n")
