"""How precisely a stored or shown metric is kept, and when a fresh value counts as the stored one.

Snapshots and committed records store floats rounded to `SIGNIFICANT_DIGITS` and the report shows them
at it; 4 digits are readable in a diff and far coarser than the CPU-to-CPU summation noise. Rounding
alone cannot keep committed files stable (a value next to a rounding boundary flips at any precision,
a count moves by whole units), so `snap_to_stored` keeps the stored value wherever the fresh one is
within that metric's `TOLERANCES`: a real drift still shows as a one-line diff.
"""

from __future__ import annotations

import math
import re
from typing import Any

SIGNIFICANT_DIGITS = 4

TOLERANCES: tuple[tuple[str, float, float], ...] = (
    # (key pattern, relative, absolute); first match wins
    (r"kl_|dropped_vocab", 0.05, 1e-4),                    # small positive numbers: relative noise is large
    (r"score|recovered|correlation|fraction", 0.0, 2e-3),  # bounded ratios near 1
    (r"cosine|r2|explained_variance", 0.0, 1e-3),
    # the loss delta (spliced minus clean CE, and its excess over the base's): a difference of two ~5-nat
    # means, so its rounding noise is absolute, not relative. On another CPU host (vector kernels sum the
    # vocabulary in another order) it moved by 4e-6 nats on the zoo; 1e-4 nats is 25x that and a thousandth
    # of the verdict's +0.1-nat bar. Its ratio to the base's delta carries that noise divided by the base's
    # delta: 1e-2 holds down to a 0.01-nat base delta
    (r"ce_delta_ratio", 2e-3, 1e-2),
    (r"ce_delta", 2e-3, 1e-4),
    (r".*", 2e-3, 1e-6),                                   # losses, norms, L0, MSE
)
HISTOGRAM_TOLERANCE = 0.01
"""Share of a histogram's total that may move between bins before the stored counts are replaced."""


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (0.987654 -> 0.9877, 126.54 -> 126.5); inf/NaN pass through."""
    return float(f"{value:.{digits}g}")


def tolerance(key: str) -> tuple[float, float]:
    """(relative, absolute) tolerance of the metric named `key`."""
    return next((rel, abs_) for pattern, rel, abs_ in TOLERANCES if re.search(pattern, key))


def _is_histogram(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"low", "high", "counts"}


def _same_histogram(fresh: dict[str, Any], stored: dict[str, Any]) -> bool:
    a, b = fresh["counts"], stored["counts"]
    edges = all(snap_to_stored(fresh[k], stored[k], k) == stored[k] for k in ("low", "high"))
    if not edges or len(a) != len(b):
        return False
    return sum(abs(x - y) for x, y in zip(a, b)) <= HISTOGRAM_TOLERANCE * max(sum(b), 1)


def snap_to_stored(fresh: Any, stored: Any, key: str = "") -> Any:
    """`fresh` with every float and histogram within tolerance of `stored` replaced by the stored one."""
    if _is_histogram(fresh) and _is_histogram(stored) and _same_histogram(fresh, stored):
        return stored
    if isinstance(fresh, dict) and isinstance(stored, dict):
        # an Estimate's value and bounds take the tolerance of the quantity it estimates
        inner = (lambda k: key) if set(fresh) == {"value", "low", "high"} else (lambda k: k)
        return {k: snap_to_stored(v, stored.get(k), inner(k)) for k, v in fresh.items()}
    if isinstance(fresh, list) and isinstance(stored, list) and len(fresh) == len(stored):
        return [snap_to_stored(f, s, key) for f, s in zip(fresh, stored)]
    numeric = isinstance(stored, int | float) and not isinstance(stored, bool)
    if isinstance(fresh, float) and numeric and math.isfinite(fresh) and math.isfinite(stored):
        rel, abs_ = tolerance(key)
        return float(stored) if abs(fresh - stored) <= abs_ + rel * abs(stored) else fresh
    return fresh
