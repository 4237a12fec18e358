"""The verdict rule table, generated from `verdict.Thresholds` so it cannot drift from the code.

One row per threshold: the rule it belongs to, what it compares, the field, its current value and the
published numbers behind it (each field's `Evidence`). The report's "How to read" renders these rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from saetransfer.verdict import Evidence, Thresholds

HEADERS = ("rule", "metric", "condition", "field", "value", "published evidence")


@dataclass(frozen=True)
class RuleRow:
    group: str
    metric: str
    field: str
    value: int | float
    condition: str
    """The rule with the current values filled in (`ok if >= 0.75`)."""
    source: str

    @property
    def value_text(self) -> str:
        return _number(self.value)

    @property
    def markdown_cells(self) -> tuple[str, ...]:
        """The row under `HEADERS` as Markdown cell text."""
        return self.group, self.metric, self.condition, f"`{self.field}`", self.value_text, self.source


def _number(value: int | float) -> str:
    return f"{value:g}"


def rule_rows(thresholds: Thresholds = Thresholds()) -> tuple[RuleRow, ...]:
    """Every field of `thresholds` with its evidence; a field without `Evidence` is an error, not a gap."""
    values = {f.name: _number(getattr(thresholds, f.name)) for f in fields(thresholds)}
    rows = []
    for f in fields(thresholds):
        evidence = f.metadata.get("evidence")
        if not isinstance(evidence, Evidence):
            raise TypeError(f"Thresholds.{f.name} has no Evidence: declare it with verdict._threshold(...)")
        condition = evidence.rule.format(x=values[f.name], **values)
        rows.append(RuleRow(evidence.group, evidence.metric, f.name, getattr(thresholds, f.name), condition,
                            evidence.source))
    return tuple(rows)


def rules_markdown(thresholds: Thresholds = Thresholds()) -> str:
    """The rule table as a Markdown table (pipes in cells escaped)."""
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rows = [line(HEADERS), line(tuple("---" for _ in HEADERS)), *(line(r.markdown_cells) for r in rule_rows(thresholds))]
    return "\n".join(rows)
