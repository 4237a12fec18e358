"""Stable number formatting and escaping for the report (Markdown and HTML).

Every number goes through `num` so the committed report changes only when a value changes at the
shown precision: no locale, no repr, no platform-dependent float printing.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from saetransfer.registry import DIRECTION_LABELS
from saetransfer.results import Estimate
from saetransfer.rounding import SIGNIFICANT_DIGITS

MISSING = "—"
"""A value that was not computed (a section is None, or the record predates the key)."""
UNDEFINED = "n/a"
"""NaN: a value that is undefined (e.g. a ratio whose denominator is ~0); the records count every NaN."""

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~$&#])")
_UNDERSCORES = re.compile(r"_+")
# Control characters would break a table row or hide in the text: show them as Unicode control pictures.
_CONTROL = {i: chr(0x2400 + i) for i in range(0x20)} | {0x7F: "\u2421"}


def num(value: Any, sig: int = SIGNIFICANT_DIGITS) -> str:
    """`sig` significant digits with trailing zeros kept (0.99996 -> '1.000', not '1'); NaN -> 'n/a'."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return UNDEFINED
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    text = f"{value:#.{sig}g}"
    return text[:-1] if text.endswith(".") else text


def pct(value: float | None) -> str:
    """A percentage that is already x100 (the post's code's good-token %), up to 6 digits: 99.9996, 0.00398."""
    return num(value) if value is None or not math.isfinite(value) else f"{value:.6g} %"


def arrow(a: Any, b: Any) -> str:
    """'base → finetune'; one missing side keeps its place so the direction stays readable."""
    return MISSING if a is None and b is None else f"{num(a)} → {num(b)}"


def direction(name: str) -> str:
    """'base → finetune' (forward) or 'finetune → base' (reverse): `registry.DIRECTION_LABELS`' words."""
    return DIRECTION_LABELS.get(name, name).replace("->", "→")


def plus_minus(e: Estimate | None) -> str:
    """'0.9725 ± 0.0034' (value ± half the interval's width): the headline's compact form."""
    if e is None:
        return MISSING
    return num(e.value) if not math.isfinite(e.half_width) else f"{num(e.value)} ± {num(e.half_width, 2)}"


def interval(e: Estimate | None) -> str:
    """'0.9725 [0.9692, 0.9759]': the pair sections' full form."""
    return MISSING if e is None else f"{num(e.value)} [{num(e.low)}, {num(e.high)}]"


def percent(share: float | None, sig: int = 3) -> str:
    """A share in [0, 1] as '17.2 %'."""
    return MISSING if share is None else f"{num(100 * share, sig)} %"


def visible(text: Any) -> str:
    """Decoded model text with control characters (newline, tab...) shown as ␊, ␉... so rows stay one line."""
    return str(text).translate(_CONTROL)


def md_text(text: Any) -> str:
    """Plain text for a Markdown table cell or paragraph: every inline-syntax character escaped."""
    escaped = _MD_SPECIAL.sub(r"\\\1", visible(text).replace("\u2028", " "))
    return _UNDERSCORES.sub(lambda m: m[0] if _intraword(m) else "\\_" * len(m[0]), escaped)


def _intraword(match: re.Match[str]) -> bool:
    """Underscores between letters/digits never start emphasis (CommonMark): leave ids like hook_resid_pre readable."""
    text, start, end = match.string, match.start(), match.end()
    return 0 < start and end < len(text) and text[start - 1].isalnum() and text[end].isalnum()


def md_code(text: Any) -> str:
    """Text as a Markdown code span inside a table cell (pipes escaped, fence longer than any backtick run)."""
    body = visible(text).replace("|", "\\|")
    if body == "":
        return "*(empty)*"
    runs = [len(r) for r in re.findall(r"`+", body)]
    fence = "`" * (max(runs, default=0) + 1)
    # CommonMark strips one space on each side when both ends have one; pad so the real spaces survive.
    pad = body[0] in "` " or body[-1] in "` "
    return f"{fence} {body} {fence}" if pad else f"{fence}{body}{fence}"


def html_text(text: Any) -> str:
    return html.escape(visible(text), quote=True)


def slug(text: str) -> str:
    """A file-name and anchor-safe form of a test id (registry ids are already close to this)."""
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "record"


VERDICT_COLOURS = {"transfers": "#1a7f37", "partial": "#9a6700", "fails": "#cf222e", "not judged": "#8250df",
                   "unusable": "#953800", "not comparable": "#57606a", "not run": "#8c959f"}
"""One colour per verdict (saetransfer.registry.VERDICTS, plus 'not run'): the HTML cells and the figure."""


def verdict_class(verdict: str) -> str:
    """CSS class of a verdict's colour: 'v-not-judged'."""
    return "v-" + verdict.replace(" ", "-")
