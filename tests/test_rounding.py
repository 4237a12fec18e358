"""round_significant: what snapshots store (and, at the same digits, what the report shows)."""

from __future__ import annotations

import math

from saetransfer.report.fmt import num
from saetransfer.rounding import round_significant


def test_round_significant() -> None:
    assert round_significant(0.987654) == 0.9877
    assert round_significant(126.54) == 126.5
    assert round_significant(-0.000123456) == -0.0001235
    assert round_significant(0.987654, 2) == 0.99
    assert math.isnan(round_significant(math.nan)) and round_significant(math.inf) == math.inf


def test_the_report_shows_the_stored_digits() -> None:
    assert num(0.987654) == "0.9877" == str(round_significant(0.987654))
