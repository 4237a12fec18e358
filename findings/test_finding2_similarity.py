"""Finding 2 (post §3): residual activations of base and finetune at the SAE hook, on identical ids."""

from __future__ import annotations

import math

import pytest

IDENTITY_TOLERANCE = 1e-5
"""The identity pair runs the same weights twice: only float noise may separate the two sides."""


@pytest.mark.finding(2)
def test_finding2_activation_similarity(pair, comparable_result, metrics_snapshot):
    """Per-token cosine, distance and norm ratio; with and without BOS/position 0 (the post's code kept it)."""
    sim = comparable_result.similarity
    assert -1.0 <= sim["cosine_mean"] <= 1.0
    assert sim["distance_mean"] >= 0 and sim["norm_ratio_mean"] > 0
    assert len(sim["per_position_cosine"]) == comparable_result.provenance["context_size"]
    assert sum(sim["cosine_histogram"]["counts"]) == comparable_result.masking["n_kept"]
    if pair.finetune == pair.base:
        assert sim["cosine_mean"] == pytest.approx(1.0, abs=IDENTITY_TOLERANCE)
        assert sim["distance_mean"] == pytest.approx(0.0, abs=IDENTITY_TOLERANCE)
    elif comparable_result.provenance["prepend_bos"]:
        # position 0 is BOS, an attention sink both models treat alike: including it inflates the
        # mean (the post's curves start near 1); the headline excludes it
        assert sim["per_position_cosine"][0] >= sim["cosine_mean"] - 1e-6
    assert not math.isnan(sim["cosine_stderr"])
    metrics_snapshot({k: sim[k] for k in (
        "cosine_mean", "cosine_stderr", "cosine_mean_all_positions", "cosine_mean_excluding_position_0",
        "distance_mean", "relative_distance_mean", "norm_ratio_mean", "base_norm_mean")})
