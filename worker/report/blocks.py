"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML file.

One source of truth for both formats: the tables a script greps in report.md are the tables a
person reads in report.html.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    alert: bool = False  # regressions and failures: shown first and in red


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align_right: set[int] = field(default_factory=set)


@dataclass
class Image:
    path: Path  # relative to the report folder in Markdown, embedded in HTML
    alt: str


@dataclass
class Links:
    """Pictures left out of the page (its size budget) and linked instead: files beside the
    report, a click away."""

    intro: str
    paths: list[Path]  # relative to the report folder


Block = Heading | Para | Bullets | Table | Image | Links


def to_markdown(blocks: list[Block], folder: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [f"**{b.text}**" if b.alert else b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(b.headers) + " |")
            out.append("|" + "|".join("---:" if i in b.align_right else "---"
                                      for i in range(len(b.headers))) + "|")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.alt}]({b.path.relative_to(folder) if b.path.is_absolute() else b.path})", ""]
        elif isinstance(b, Links):
            out += [b.intro, ""] + [f"- [{p.as_posix()}]({p.as_posix()})" for p in b.paths] + [""]
    return "\n".join(out)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d2330;padding:0 1rem}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}
th,td{border:1px solid #d0d5dd;padding:0.25rem 0.6rem}th{background:#f2f4f7;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
p.alert{background:#fdecea;border-left:4px solid #d92d20;padding:0.5rem 0.8rem;font-weight:600}
img{max-width:100%;border:1px solid #eaecf0;margin:0.5rem 0 1.5rem}
code{background:#f2f4f7;padding:0 0.2rem}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags (the only inline Markdown we emit)."""
    parts = html.escape(text).split("`")
    for i in range(1, len(parts), 2):
        parts[i] = f"<code>{parts[i]}</code>"
    text = "".join(parts)
    bits = text.split("**")
    for i in range(1, len(bits), 2):
        bits[i] = f"<strong>{bits[i]}</strong>"
    return "".join(bits)


def to_html(blocks: list[Block], title: str, folder: Path) -> str:
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
           f"</title><style>{STYLE}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p class=alert>{_inline(b.text)}</p>" if b.alert else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>" + "".join(f"<td class=num>{_inline(c)}</td>" if i in b.align_right
                                 else f"<td>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Image):
            path = b.path if b.path.is_absolute() else folder / b.path
            data = base64.b64encode(path.read_bytes()).decode()
            out.append(f"<img alt=\"{html.escape(b.alt)}\" src=\"data:image/png;base64,{data}\">")
        elif isinstance(b, Links):
            items = "".join(f"<li><a href=\"{html.escape(p.as_posix())}\">{html.escape(p.as_posix())}"
                            "</a></li>" for p in b.paths)
            out.append(f"<details><summary>{_inline(b.intro)}</summary><ul>{items}</ul></details>")
    out.append("</body></html>")
    return "\n".join(out)
