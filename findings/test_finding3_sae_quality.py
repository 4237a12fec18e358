"""Finding 3 (post §4): the base SAE's quality on the base and on the finetune, and the verdict.

The post's claims about it (the identity pair scores the same on both sides, the finetune is not
explained better than the base, added vocabulary rows, the verdict as expected) are decided in
`test_post_claims.py`.
"""

from __future__ import annotations

import math

import pytest

from saetransfer.claims import IDENTITY_SAE_KEYS
from saetransfer.masking import KEPT_FLOOR
from saetransfer.results import SaeMetrics

SNAPSHOT_KEYS = IDENTITY_SAE_KEYS


def _check_ranges(m: SaeMetrics) -> None:
    assert m.n_tokens > 0
    assert m.l0 >= 0 and m.mse >= 0 and m.kl_spliced >= -1e-6 and m.kl_ablation >= -1e-6
    assert 0.0 <= m.dead_fraction <= 1.0 and 0.0 <= m.dense_fraction <= 1.0
    assert m.explained_variance <= 1.0 + 1e-9 and m.r2_global <= 1.0 + 1e-9
    for key in ("ce_loss_score", "kl_div_score"):  # undefined ratios are NaN *and* flagged
        assert (not math.isnan(getattr(m, key))) or any(key in flag for flag in m.flags)


@pytest.mark.finding(3)
def test_finding3_sae_quality(pair, judged_result, metrics_snapshot):
    """L0, CE (clean/spliced/ablated), KL, explained variance, MSE, dead/dense latents, on both models."""
    r = judged_result
    sides = {"base": r.sae.base, "finetune": r.sae.finetune}
    if r.sae.native_on_finetune is not None:
        sides["native_on_finetune"] = r.sae.native_on_finetune
    for side in (*sides.values(), r.sae.norm_matched_finetune):
        if side is not None:
            _check_ranges(side)
    assert r.sae.base.n_tokens == r.sae.finetune.n_tokens == r.masking.n_kept
    # a judged pair keeps at least KEPT_FLOOR of its non-special positions, so outliers are at most the rest
    assert r.masking.kept_fraction >= KEPT_FLOOR.min_fraction and r.masking.n_kept >= KEPT_FLOOR.min_count
    assert 0.0 <= r.masking.outlier_fraction <= 1.0 - KEPT_FLOOR.min_fraction
    assert (r.sae.native_on_finetune is not None) == (pair.native_sae is not None)
    metrics_snapshot({side: {k: getattr(m, k) for k in SNAPSHOT_KEYS} for side, m in sides.items()}
                     | {"log10_density_correlation": r.density.log10_density_correlation})


@pytest.mark.finding(3)
def test_finding3_verdict(pair, result):
    """The verdict (transfers / partial / fails / not comparable / unusable / not judged) and its reasons.

    Whether it matches the registry's expectation is the claim `verdict-as-expected` (`test_post_claims.py`).
    """
    verdict = result.verdict
    assert verdict.reasons, "every verdict carries its reasons"
    assert (verdict.verdict == "not comparable") == (not result.comparable), verdict.reasons
    if result.comparable:
        assert (verdict.verdict == "not judged") == (not result.judged), verdict.reasons
