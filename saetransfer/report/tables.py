"""Generic tables of typed results: a dataclass's fields with their values and one-line descriptions."""

from __future__ import annotations

import dataclasses
from typing import Any

from saetransfer.report.doc import Span, Table
from saetransfer.report.fmt import MISSING, num
from saetransfer.results import Estimate, Histogram
from saetransfer.typed import Record

LIST_SHOWN = 8
"""Items of a list value shown before '… (N more)'."""


def value_text(value: Any) -> str:
    """Any result value as one line: numbers via `num`, records and dicts as 'k: v; …', long lists shortened."""
    if isinstance(value, Histogram):
        return f"{len(value.counts)} bins over [{num(value.low)}, {num(value.high)}], {sum(value.counts)} counted"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return "; ".join(f"{k}: {value_text(v)}" for k, v in sorted(value.items())) or MISSING
    if isinstance(value, (list, tuple)):
        shown = ", ".join(value_text(v) for v in value[:LIST_SHOWN])
        more = len(value) - LIST_SHOWN
        return f"[{shown}{f', … ({more} more)' if more > 0 else ''}]"
    return num(value)


def describe(obj: Any, name: str) -> str:
    """The field's one-line description: `Record.describe`, else empty (e.g. the tokenizer dataclasses)."""
    return type(obj).describe(name) if isinstance(obj, Record) else ""


def is_scalar(value: Any) -> bool:
    """Shown in a key/value table: numbers, text, flags, and short tuples of text."""
    if isinstance(value, (Histogram, Estimate)) or dataclasses.is_dataclass(value):
        return False
    return not (isinstance(value, (list, tuple)) and value and isinstance(value[0], float))


def field_table(obj: Any, skip: tuple[str, ...] = (), scalars_only: bool = True) -> Table:
    """One row per dataclass field of `obj` (in declaration order), with its description when it has one."""
    names = [f.name for f in dataclasses.fields(obj) if f.name not in skip]
    if scalars_only:
        names = [n for n in names if is_scalar(getattr(obj, n))]
    rows = [(Span(n, code=True), value_text(getattr(obj, n)), describe(obj, n)) for n in names]
    if not any(row[2] for row in rows):
        return Table(("field", "value"), tuple(row[:2] for row in rows))
    return Table(("field", "value", "what it is"), tuple(rows))


def side_by_side(objects: dict[str, Any], skip: tuple[str, ...] = ()) -> Table:
    """Objects of one dataclass type as columns (base | finetune …), one row per scalar field."""
    first = next(iter(objects.values()))
    names = [f.name for f in dataclasses.fields(first)
             if f.name not in skip and isinstance(getattr(first, f.name), (int, float, str, bool))]
    rows = tuple((Span(n, code=True), *(num(getattr(o, n)) for o in objects.values()), describe(first, n))
                 for n in names)
    return Table(("field", *objects, "what it is"), rows)
