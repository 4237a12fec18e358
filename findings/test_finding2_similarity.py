"""Finding 2 (post §3): residual activations of base and finetune at the SAE hook, on identical ids.

The post's claims about it (BOS cosine at least the mean, the identity pair exactly similar) are
decided in `test_post_claims.py`.
"""

from __future__ import annotations

import math

import pytest


@pytest.mark.finding(2)
def test_finding2_activation_similarity(pair, judged_result, metrics_snapshot):
    """Per-token cosine, distance and norm ratio; with and without BOS/position 0 (the post's code kept it)."""
    r = judged_result
    sim = r.similarity
    assert -1.0 <= sim.cosine_mean <= 1.0
    assert sim.distance_mean >= 0 and sim.norm_ratio_mean > 0
    assert len(sim.per_position_cosine) == r.provenance.context_size
    assert sum(sim.cosine_histogram.counts) == r.masking.n_kept
    cosine = r.comparisons.cosine  # the headline's bootstrap interval (replaces the old cosine_stderr)
    assert not math.isnan(cosine.value) and cosine.value == pytest.approx(sim.cosine_mean)
    assert cosine.low <= cosine.value <= cosine.high
    metrics_snapshot({"cosine_mean": sim.cosine_mean, "cosine_mean_all_positions": sim.cosine_mean_all_positions,
                      "cosine_mean_excluding_position_0": sim.cosine_mean_excluding_position_0,
                      "distance_mean": sim.distance_mean, "relative_distance_mean": sim.relative_distance_mean,
                      "norm_ratio_mean": sim.norm_ratio_mean, "base_norm_mean": sim.base_norm_mean})
