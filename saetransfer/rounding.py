"""How many significant digits a stored or shown metric keeps, in one place.

Snapshots store floats rounded to this and the report shows them at it, so a committed file changes
only when a value changes at that precision. 4 digits are readable in a diff and far coarser than the
CPU-to-CPU summation noise.
"""

from __future__ import annotations

SIGNIFICANT_DIGITS = 4


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (0.987654 -> 0.9877, 126.54 -> 126.5); inf/NaN pass through."""
    return float(f"{value:.{digits}g}")
