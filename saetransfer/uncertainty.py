"""Seeded, paired block bootstrap over the rows of the token sample.

The accumulators keep per-row sums (`metrics.RowSums`), so a replicate is the same formula on
reweighted rows: no second pass. Rows are resampled in blocks of consecutive rows, because text is
packed into rows as SAELens's ActivationsStore does (a document can run on into the next row);
pretokenized rows drawn at random are independent, and blocks of them are still exchangeable. The
block length is ceil(n_rows^(1/3)), the order Hall, Horowitz & Jing (1995, Biometrika 82:561) give
for variance and interval estimation. One weight matrix serves every model and SAE of a pair
(paired), so the identity pair's drops are exactly 0 in every replicate.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from saetransfer.results import BootstrapSpec, Estimate

N_RESAMPLES = 1000
"""Replicates: enough for stable 2.5 / 97.5 % percentiles (Efron & Tibshirani 1993, §13.3: >= 1000)."""
LEVEL = 0.95
MIN_FINITE_SHARE = 0.5
"""An interval needs at least half the replicates defined; else it is NaN (undefined, said so)."""


def block_rows(n_rows: int) -> int:
    return max(1, math.ceil(n_rows ** (1 / 3)))


def bootstrap_spec(n_rows: int, seed: int, agreement: float) -> BootstrapSpec:
    length = block_rows(n_rows)
    return BootstrapSpec(n_resamples=N_RESAMPLES, level=LEVEL, seed=seed, block_rows=length,
                         n_blocks=math.ceil(n_rows / length), agreement=agreement)


def resample_weights(spec: BootstrapSpec, n_rows: int) -> Float[Tensor, "r rows"]:
    """How often each row is drawn in each replicate (float64): blocks drawn with replacement."""
    generator = torch.Generator().manual_seed(spec.seed)
    draws = torch.randint(0, spec.n_blocks, (spec.n_resamples, spec.n_blocks), generator=generator)
    counts = torch.zeros(spec.n_resamples, spec.n_blocks, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    block_of_row = torch.arange(n_rows) // spec.block_rows
    return counts[:, block_of_row]


def estimate(value: float, replicates: Float[Tensor, " r"], level: float = LEVEL) -> Estimate:
    """The point value with the percentile interval of its replicates."""
    reps = replicates.double()
    finite = reps[torch.isfinite(reps)]
    if not math.isfinite(value) or finite.numel() < MIN_FINITE_SHARE * max(reps.numel(), 1):
        return Estimate(value, math.nan, math.nan)
    tail = (1 - level) / 2
    low, high = torch.quantile(finite, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Estimate(value, low, high)
