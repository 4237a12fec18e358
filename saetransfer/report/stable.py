"""What a record commits, so that a findings run elsewhere (another CPU, `-n 2`) leaves the evidence unchanged.

Three rules (issue 9.5; the third for another CPU host's texts):

1. Floats to 4 significant digits (what the snapshots keep and the report shows), and the values
   that cannot be made stable are not committed (emptied, so the record still parses): per-latent
   log10 densities and the sampled latent ids (one latent at the ReLU threshold flips a firing count,
   which moves a rare latent's density by a whole count and can move it between buckets).
2. `snap_to_stored`: a fresh value within its snapshot tolerance of the committed one is written as
   the committed one; a histogram whose counts moved by at most `HISTOGRAM_TOLERANCE` of its total keeps
   the committed counts (`saetransfer.rounding`). Rounding alone cannot do this: a value next to a rounding boundary flips at any
   precision, and a count moves by whole units.

3. The text that quotes those numbers (verdict reasons, their intervals: `verdict._n`'s 3 digits) follows
   them: when every number and label of the snapped record is the committed one, and its texts differ
   from the committed texts only in the numbers they quote, the committed record stands as it is. A value
   within tolerance can still print differently (0.701 vs 0.702 at a rounding boundary; 0.00016 vs
   0.000164 where a small value carries a wide absolute tolerance), and every number a text quotes has a
   field of its own in the record, which does move when the value really does.

So a record changes only when a number moves beyond its snapshot tolerance, and the report, the CSV
and the plots, all drawn from the records, change only then too.
"""

from __future__ import annotations

import json
import re
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


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)


def _skeleton(value: Any) -> Any:
    """`value` with every number inside its texts replaced by '#' (numbers outside texts are kept)."""
    if isinstance(value, str):
        return _NUMBER.sub("#", value)
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_skeleton(v) for v in value]
    return value


def _as_text(value: Any) -> str:
    """A comparable form in which NaN equals NaN (a record keeps undefined values as NaN)."""
    return json.dumps(value, sort_keys=True)


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
    if not stored:
        return _rounded(data)
    snapped = _rounded(snap_to_stored(data, stored))
    return stored if _as_text(_skeleton(snapped)) == _as_text(_skeleton(stored)) else snapped
