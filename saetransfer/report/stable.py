"""What a record commits, so that a findings run elsewhere (another CPU, `-n 2`) leaves the evidence unchanged.

Two rules (issue 9.5):

1. Floats to 4 significant digits (what the snapshots keep and the report shows), and the values
   that cannot be made stable are not committed (emptied, so the record still parses): per-latent
   log10 densities and the sampled latent ids (one latent at the ReLU threshold flips a firing count,
   which moves a rare latent's density by a whole count and can move it between buckets).
2. `snap_to_stored`: a fresh value within its snapshot tolerance of the committed one is written as
   the committed one; a histogram whose counts moved by at most `HISTOGRAM_TOLERANCE` of its total keeps
   the committed counts (`saetransfer.rounding`). Rounding alone cannot do this: a value next to a rounding boundary flips at any
   precision, and a count moves by whole units.

So a record changes only when a number moves beyond its snapshot tolerance, and the report, the CSV
and the plots, all drawn from the records, change only then too.
"""

from __future__ import annotations

from typing import Any

from saetransfer.results import PairResult
from saetransfer.rounding import round_significant, snap_to_stored


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
