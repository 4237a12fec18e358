"""Finding 4 (post §5): do individual latents transfer? Buckets by density, on one shared sample.

The post's claim about the identity pair (every regular latent transfers) is decided in `test_post_claims.py`.
"""

from __future__ import annotations

import math

import pytest

from saetransfer.features import DEAD_CAP, REGULAR_CAP


@pytest.mark.finding(4)
def test_finding4_feature_transfer(pair, judged_result, metrics_snapshot):
    """Regular latents' activation correlation base vs finetune; exclusively-dead latents' activation error."""
    f = judged_result.features
    regular, dead_base, dead_ft = f.buckets.regular, f.buckets.dead_in_base, f.buckets.dead_in_finetune
    assert len(regular.latent_ids) == min(regular.n_total, REGULAR_CAP)
    for bucket in (dead_base, dead_ft):
        assert len(bucket.latent_ids) == min(bucket.n_total, DEAD_CAP)
    corr = regular.activation_correlation
    assert corr.n == len(regular.latent_ids)
    if not math.isnan(corr.mean):
        assert -1.0 <= corr.mean <= 1.0
    assert 0.0 <= corr.fraction_transferred <= 1.0
    metrics_snapshot({
        "n_regular": regular.n_total, "n_dead_in_base": dead_base.n_total, "n_dead_in_finetune": dead_ft.n_total,
        "n_dead_in_both": f.n_dead_in_both,
        "activation_correlation_mean": corr.mean, "activation_correlation_median": corr.median,
        # the snapshot keeps its old key for `fraction_transferred` (the share with correlation >= 0.8)
        "activation_correlation_fraction_at_least_0.8": corr.fraction_transferred,
        "activation_correlation_n_nan": corr.n_nan,
        "logit_correlation_mean": regular.logit_correlation.mean,
        "dead_in_base_activation_error_mean": dead_base.activation_error_mean,
        "W_U_frobenius_ratio": f.W_U_frobenius_ratio,
    })
