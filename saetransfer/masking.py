"""Which positions are measured, and when too few are left to judge a pair.

Every exclusion cause (special tokens, norm outliers per model, non-finite values per model) removes
positions from every statistic on both models (the union mask). `KEPT_FLOOR` is the one rule that
says when what is left is too little or too selective to judge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeptFloor:
    """The least a pair must keep to be judged; below either number its verdict is `not judged`."""

    min_fraction: float = 0.9
    """Kept / non-special positions. Outlier rules exclude the rare extreme positions (Kissane et al.
    drop under 1 %); when more than a tenth goes, the statistics describe a selected subset of the
    data, not the model, so no verdict is given."""
    min_count: int = 1024
    """Kept positions. A few hundred tokens give bootstrap intervals wider than the verdict bands."""


KEPT_FLOOR = KeptFloor()
