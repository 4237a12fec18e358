"""round_significant: what snapshots store (and, at the same digits, what the report shows)."""

from __future__ import annotations

import math

from saetransfer.report.fmt import num
from saetransfer.rounding import round_significant, snap_to_stored


def test_round_significant() -> None:
    assert round_significant(0.987654) == 0.9877
    assert round_significant(126.54) == 126.5
    assert round_significant(-0.000123456) == -0.0001235
    assert round_significant(0.987654, 2) == 0.99
    assert math.isnan(round_significant(math.nan)) and round_significant(math.inf) == math.inf


def test_the_report_shows_the_stored_digits() -> None:
    assert num(0.987654) == "0.9877" == str(round_significant(0.987654))


def test_a_loss_delta_keeps_its_committed_value_across_cpu_noise_but_not_across_a_change() -> None:
    # values of the zoo's lerp50 TopK record written on two CPU hosts (a difference of two 4.803-nat CEs)
    assert snap_to_stored(0.0001636, 0.00016, "ce_delta") == 0.00016
    assert snap_to_stored(0.0102, 0.009969, "ce_delta_ratio") == 0.009969
    assert snap_to_stored(-0.0147, -0.01501, "ce_delta_ratio") == -0.01501
    assert snap_to_stored(0.0004, 0.00016, "ce_delta") == 0.0004  # +0.24 millinats is a real move
    assert snap_to_stored(0.03, 0.009969, "ce_delta_ratio") == 0.03
    assert snap_to_stored(0.0001636, 0.00016, "ce_clean") == 0.0001636  # other losses keep their tolerance
