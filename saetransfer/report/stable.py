"""What a record commits, so that a findings run elsewhere (another CPU, `-n 2`) leaves the evidence unchanged.

Two rules (issue 9.5):

1. Floats to 4 significant digits (what the snapshots keep and the report shows), and the values
   that cannot be made stable are not committed (emptied, so the record still parses): per-latent
   log10 densities and the sampled latent ids (one latent at the ReLU threshold flips a firing count,
   which moves a rare latent's density by a whole count and can move it between buckets).
2. `snap_to_stored`: a fresh value within its snapshot tolerance of the committed one is written as
   the committed one; a histogram whose counts moved by at most `HISTOGRAM_TOLERANCE` of its total keeps
   the committed counts. Rounding alone cannot do this: a value next to a rounding boundary flips at any
   precision, and a count moves by whole units.

So a record changes only when a number moves beyond its snapshot tolerance, and the report, the CSV
and the plots, all drawn from the records, change only then too.
"""

from __future__ import annotations

import math
import re
from typing import Any

from saetransfer.results import PairResult

SIGNIFICANT_DIGITS = 4
"""As the snapshots (findings/conftest.py). Becomes `saetransfer.rounding` once that module is merged."""

TOLERANCES: tuple[tuple[str, float, float], ...] = (
    # (key pattern, relative, absolute), first match wins: the snapshot tolerances of findings/conftest.py
    (r"kl_|dropped_vocab", 0.05, 1e-4),
    (r"score|recovered|correlation|fraction", 0.0, 2e-3),
    (r"cosine|r2|explained_variance", 0.0, 1e-3),
    (r".*", 2e-3, 1e-6),
)
HISTOGRAM_TOLERANCE = 0.01
"""Share of a histogram's total that may move between bins before the committed counts are replaced."""


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` to `digits` significant digits (0.987654 -> 0.9877); inf and NaN pass through."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round_significant(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def committed_form(result: PairResult, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result as the records commit it, given the record committed before (`stored`, if any).

    Snapping comes before rounding: a fresh value next to a rounding boundary is compared unrounded,
    so it can never land a whole rounding step away from the committed one.
    """
    data = result.to_dict()
    if data.get("density"):
        data["density"]["base"] = data["density"]["finetune"] = []
    if data.get("features"):
        for bucket in data["features"]["buckets"].values():
            bucket["latent_ids"] = []
    return _rounded(snap_to_stored(data, stored) if stored else data)


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
    if isinstance(fresh, float) and isinstance(stored, float) and math.isfinite(fresh) and math.isfinite(stored):
        rel, abs_ = tolerance(key)
        return stored if abs(fresh - stored) <= abs_ + rel * abs(stored) else fresh
    return fresh
