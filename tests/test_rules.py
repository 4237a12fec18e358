"""The verdict rule table is generated from `Thresholds`: every field has a row with its value and its sources."""

from __future__ import annotations

import re
from dataclasses import field, fields, make_dataclass, replace

import pytest

from saetransfer import verdict
from saetransfer.report import verdict_rules
from saetransfer.rules import rule_rows, rules_markdown
from saetransfer.verdict import Thresholds


def test_every_threshold_has_a_row_with_its_value_and_a_source() -> None:
    rows = {row.field: row for row in rule_rows()}
    assert list(rows) == [f.name for f in fields(Thresholds)]
    for f in fields(Thresholds):
        row = rows[f.name]
        assert row.value == getattr(Thresholds(), f.name)
        assert row.source.strip() and row.group.strip() and row.metric.strip(), f.name
        assert row.value_text in row.condition, (f.name, row.condition)  # the condition quotes the live value


def test_a_threshold_without_evidence_is_caught() -> None:
    """A field added later without its Evidence (e.g. for uncertainty) must not silently lack a row."""
    extended = make_dataclass("Extended", [("interval_width_max", float, field(default=0.1))], bases=(Thresholds,),
                              frozen=True)
    with pytest.raises(TypeError, match="interval_width_max has no Evidence"):
        rule_rows(extended())


def test_the_table_follows_the_values_in_use() -> None:
    stricter = replace(Thresholds(), ev_ratio_ok=0.8, ce_delta_excess_ok=0.2)
    rows = {row.field: row for row in rule_rows(stricter)}
    assert rows["ev_ratio_ok"].condition == "ok if >= 0.8"
    assert "+0.2 nats" in rows["ce_delta_ratio_ok"].condition  # a rule quoting another field follows it too


def test_ev_evidence_quotes_the_ratios_the_verdict_grades() -> None:
    """The published EV failures as ratios (Gemma: -10.27 / 0.97 and -14.99 / 0.776), not raw EVs."""
    source = {row.field: row for row in rule_rows()}["ev_ratio_bad"].source
    assert "-10.6" in source and "-19" in source
    assert round(-10.27 / 0.97, 1) == -10.6 and round(-14.99 / 0.776) == -19


def test_markdown_and_report_show_the_generated_table() -> None:
    text = rules_markdown()
    assert text == verdict_rules()
    lines = text.splitlines()
    assert len(lines) == 2 + len(fields(Thresholds))
    assert all(line.count(" | ") == 5 for line in lines if not line.startswith("| ---"))


def test_module_docstring_keeps_prose_not_numbers() -> None:
    """The numbers live on the fields; the docstring restating them is how the old table drifted."""
    doc = re.sub(r"(?m)^\d\. ", "", verdict.__doc__ or "")  # list numbering is not a threshold
    assert "Order of the rules" in doc and "Missing metrics" in doc
    assert "| gate |" not in doc
    for f in fields(Thresholds):
        value = f"{getattr(Thresholds(), f.name):g}"
        if value != "1":  # "EV above 1 is impossible" is a fact of the metric, not a threshold
            assert not re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", doc), (f.name, value)
