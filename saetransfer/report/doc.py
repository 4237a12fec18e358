"""A tiny document model rendered to both Markdown and HTML, so README.md and report.html say the same.

Blocks are built once from the records; `to_markdown` links images by relative path (readable on a
code host), `to_html` embeds them as base64 data URIs (one self-contained file that opens offline).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

from saetransfer.report.fmt import VERDICT_COLOURS, html_text, md_code, md_text, verdict_class


@dataclass(frozen=True)
class Span:
    """Inline text: optionally a link (`href`) or code (decoded model text, ids)."""

    text: str
    href: str | None = None
    code: bool = False
    css: str | None = None
    """HTML class (a verdict's colour); Markdown shows the text in bold instead."""


Inline = str | Span | tuple[str | Span, ...]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class Para:
    content: Inline


@dataclass(frozen=True)
class Bullets:
    items: tuple[Inline, ...]


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Inline, ...], ...]
    css: str | None = None
    """HTML class of the table (the headline table has its own column widths)."""


@dataclass(frozen=True)
class Image:
    rel_path: str
    """Relative to the report folder, '/'-separated."""
    alt: str
    png: bytes


@dataclass(frozen=True)
class Markdown:
    """Text that is already Markdown (the verdict rules); shown preformatted in HTML."""

    text: str


Block = Heading | Para | Bullets | Table | Image | Markdown


def _parts(content: Inline) -> tuple[str | Span, ...]:
    return content if isinstance(content, tuple) else (content,)


def md_inline(content: Inline) -> str:
    out = []
    for part in _parts(content):
        if isinstance(part, str):
            out.append(md_text(part))
        elif part.css is not None:
            out.append(f"**{md_text(part.text)}**")
        elif part.code:
            out.append(md_code(part.text) if part.href is None else f"[{md_code(part.text)}]({part.href})")
        else:
            out.append(md_text(part.text) if part.href is None else f"[{md_text(part.text)}]({part.href})")
    return "".join(out)


def html_inline(content: Inline) -> str:
    out = []
    for part in _parts(content):
        if isinstance(part, str):
            out.append(html_text(part))
            continue
        text = f"<code>{html_text(part.text)}</code>" if part.code else html_text(part.text)
        if part.css is not None:
            text = f'<span class="{html_text(part.css)}">{text}</span>'
        out.append(text if part.href is None else f'<a href="{html_text(part.href)}">{text}</a>')
    return "".join(out)


def _md_block(block: Block) -> str:
    match block:
        case Heading(level, text, anchor):
            prefix = f'<a id="{anchor}"></a>\n\n' if anchor else ""
            return f"{prefix}{'#' * level} {md_text(text)}"
        case Para(content):
            return md_inline(content)
        case Bullets(items):
            return "\n".join(f"- {md_inline(item)}" for item in items)
        case Table(headers, rows, _):
            lines = ["| " + " | ".join(md_text(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(md_inline(c) for c in row) + " |" for row in rows]
            return "\n".join(lines)
        case Image(rel_path, alt, _):
            return f"![{md_text(alt)}]({rel_path})"
        case Markdown(text):
            return text.strip()
    raise TypeError(f"unknown block {block!r}")


def to_markdown(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


def _html_block(block: Block) -> str:
    match block:
        case Heading(level, text, anchor):
            ident = f' id="{html_text(anchor)}"' if anchor else ""
            return f"<h{level}{ident}>{html_text(text)}</h{level}>"
        case Para(content):
            return f"<p>{html_inline(content)}</p>"
        case Bullets(items):
            return "<ul>\n" + "\n".join(f"<li>{html_inline(i)}</li>" for i in items) + "\n</ul>"
        case Table(headers, rows, css):
            head = "".join(f"<th>{html_text(h)}</th>" for h in headers)
            body = "\n".join("<tr>" + "".join(f"<td>{html_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            cls = f' class="{html_text(css)}"' if css else ""
            return f"<table{cls}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
        case Image(_, alt, png):
            data = base64.b64encode(png).decode("ascii")
            return f'<img alt="{html_text(alt)}" src="data:image/png;base64,{data}">'
        case Markdown(text):
            return f'<pre class="md">{html.escape(text.strip())}</pre>'  # keep the newlines: it is a block
    raise TypeError(f"unknown block {block!r}")


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1280px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.55em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
table.headline { width: 100%; table-layout: fixed; font-size: 0.85em; }
table.headline th, table.headline td { overflow-wrap: break-word; }
table.headline th:nth-child(1) { width: 13%; } table.headline th:nth-child(2) { width: 10%; }
table.headline th:nth-child(3) { width: 24%; } table.headline th:last-child { width: 10%; }
table.headline td:nth-child(n+4) { font-variant-numeric: tabular-nums; }
table.axes { width: 100%; table-layout: fixed; font-size: 0.8em; }
table.axes th, table.axes td { overflow-wrap: break-word; }
table.axes th:nth-child(1) { width: 8%; } table.axes th:nth-child(2) { width: 7%; }
table.axes th:nth-child(3) { width: 10%; } table.axes th:nth-child(4) { width: 10%; }
table.axes th:nth-child(5) { width: 10%; } table.axes th:nth-child(6) { width: 8%; }
table.axes td:nth-child(n+7) { font-variant-numeric: tabular-nums; }
span[class^="v-"] { font-weight: 600; }
""" + "".join(f"span.{verdict_class(v)} {{ color: {c}; }}\n" for v, c in VERDICT_COLOURS.items()) + """
th { background: #f6f8fa; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space: pre-wrap; }
code { background: #f6f8fa; padding: 0 0.2em; }
pre.md { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained page: inline CSS, images as data URIs, no scripts, nothing fetched."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html_text(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def to_html_fragment(blocks: Sequence[Block]) -> str:
    """The blocks' HTML without a page around it (no styles, no scripts): for Jupyter's `_repr_html_`."""
    return "\n".join(_html_block(b) for b in blocks)
