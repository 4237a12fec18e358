"""Finding 4 (post §5): do individual latents transfer? Buckets by density, on one shared sample."""

from __future__ import annotations

import math

import pytest

from saetransfer.features import DEAD_CAP, REGULAR_CAP


@pytest.mark.finding(4)
def test_finding4_feature_transfer(pair, comparable_result, metrics_snapshot):
    """Regular latents' activation correlation base vs finetune; exclusively-dead latents' activation error."""
    f = comparable_result.features
    buckets = f["buckets"]
    regular = buckets["regular"]
    assert len(regular["latent_ids"]) == min(regular["n_total"], REGULAR_CAP)
    for name in ("dead_in_base", "dead_in_finetune"):
        assert len(buckets[name]["latent_ids"]) == min(buckets[name]["n_total"], DEAD_CAP)
    corr = regular["activation_correlation"]
    assert corr["n"] == len(regular["latent_ids"])
    if not math.isnan(corr["mean"]):
        assert -1.0 <= corr["mean"] <= 1.0
    if pair.finetune == pair.base:
        assert buckets["dead_in_base"]["n_total"] == buckets["dead_in_finetune"]["n_total"] == 0
        assert corr["mean"] == pytest.approx(1.0, abs=1e-6) and corr["n_nan"] == 0
        assert f["W_U_frobenius_ratio"] == pytest.approx(1.0) and f["W_U_frobenius_distance"] == 0.0
    metrics_snapshot({
        "n_regular": regular["n_total"], "n_dead_in_base": buckets["dead_in_base"]["n_total"],
        "n_dead_in_finetune": buckets["dead_in_finetune"]["n_total"], "n_dead_in_both": f["n_dead_in_both"],
        "activation_correlation_mean": corr["mean"], "activation_correlation_median": corr["median"],
        "activation_correlation_fraction_at_least_0.8": corr["fraction_at_least_0.8"],
        "activation_correlation_n_nan": corr["n_nan"],
        "logit_correlation_mean": regular["logit_correlation"]["mean"],
        "dead_in_base_activation_error_mean": buckets["dead_in_base"].get("activation_error_mean", math.nan),
        "W_U_frobenius_ratio": f["W_U_frobenius_ratio"],
    })
