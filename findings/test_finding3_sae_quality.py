"""Finding 3 (post §4): the base SAE's quality on the base and on the finetune, and the verdict."""

from __future__ import annotations

import math

import pytest

SNAPSHOT_KEYS = (
    "l0", "explained_variance", "r2_global", "mse", "cossim", "ce_clean", "ce_spliced", "ce_ablation",
    "ce_delta", "ce_loss_score", "kl_spliced", "kl_div_score", "dead_fraction", "dense_fraction",
)


def _check_ranges(m: dict) -> None:
    assert m["n_tokens"] > 0
    assert m["l0"] >= 0 and m["mse"] >= 0 and m["kl_spliced"] >= -1e-6 and m["kl_ablation"] >= -1e-6
    assert 0.0 <= m["dead_fraction"] <= 1.0 and 0.0 <= m["dense_fraction"] <= 1.0
    assert m["explained_variance"] <= 1.0 + 1e-9 and m["r2_global"] <= 1.0 + 1e-9
    for key in ("ce_loss_score", "kl_div_score"):  # undefined ratios are NaN *and* flagged
        assert (not math.isnan(m[key])) or any(key in flag for flag in m["flags"])


@pytest.mark.finding(3)
def test_finding3_sae_quality(pair, comparable_result, metrics_snapshot):
    """L0, CE (clean/spliced/ablated), KL, explained variance, MSE, dead/dense latents, on both models."""
    r = comparable_result
    base, ft = r.sae["base"], r.sae["finetune"]
    for side in r.sae.values():
        _check_ranges(side)
    assert base["n_tokens"] == ft["n_tokens"] == r.masking["n_kept"]
    assert 0.0 <= r.masking["outlier_fraction"] < 0.1
    if pair.finetune == pair.base:
        for key in SNAPSHOT_KEYS:
            assert ft[key] == pytest.approx(base[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    if r.provenance["finetune_d_vocab"] > r.provenance["base_d_vocab"]:
        # dropped vocabulary rows only renormalise the softmax: CE can only move by -log(1 - mass)
        assert ft["dropped_vocab_mass_max"] < 1.0
    if pair.native_sae is not None:
        assert "native_on_finetune" in r.sae
    metrics_snapshot({side: {k: m[k] for k in SNAPSHOT_KEYS} for side, m in r.sae.items()}
                     | {"log10_density_correlation": r.density["log10_density_correlation"]})


@pytest.mark.finding(3)
def test_finding3_verdict(pair, result):
    """The verdict (transfers / partial / fails / not comparable / unusable) matches the registry's expectation."""
    verdict = result.verdict
    assert verdict["reasons"], "every verdict carries its reasons"
    if pair.expected is None:
        pytest.skip(f"no published expectation for {pair.id}; verdict {verdict['verdict']!r}")
    assert verdict["verdict"] == pair.expected.verdict, (
        f"{pair.id}: got {verdict['verdict']!r}, expected {pair.expected.verdict!r} ({pair.expected.source}); "
        f"reasons: {verdict['reasons']}")
