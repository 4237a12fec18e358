"""Cross-pair findings: the post's TLDR, the interpolation ladder and the verdict table, over every pair.

The results come from the keyed cache through `engine.run` (computed here if absent), never from
other tests' side effects, so these hold under `-k` and xdist. The claims (`claims.CROSS_PAIR_CLAIMS`)
rank only comparable, judged, usable pairs; `not comparable`, `not judged` and `unusable` pairs are
recorded as not applicable. A claim that does not hold fails when any pair it rests on has a
published expectation (the zoo's do), else it is recorded as evidence.
"""

from __future__ import annotations

import pytest

from saetransfer.claims import CROSS_PAIR_CLAIMS, gates


def _available_results(registry, run_config):
    from saetransfer.config import RunConfig
    from saetransfer.engine import run
    from saetransfer.loading import availability

    out = {}
    for pair in registry:
        if not pair.primary:  # the cross-pair claims read each entry's own (hook, dataset, base -> finetune)
            continue
        config = RunConfig.for_pair(pair, **run_config, progress=False)
        if pair.needs_gpu and config.device != "cuda":
            continue
        if availability(pair, allow_hub=config.allow_hub) is not None:
            continue
        out[pair] = run(pair, config)
    return out


@pytest.fixture(scope="module")
def available(registry, run_config):
    return list(_available_results(registry, run_config).items())


@pytest.mark.parametrize("claim", CROSS_PAIR_CLAIMS, ids=lambda c: c.id)
def test_cross_pair_claim(claim, available, record_claim):
    """Similarity orders pairs as transfer does (Spearman over >= 4 pairs); the interpolation ladder is monotone."""
    decision, per_pair = claim.evaluate(available)
    for pair, _ in available:
        record_claim(pair, per_pair[pair.test_id])
    if decision.holds is None:
        pytest.skip(decision.message)
    if not decision.holds:
        rests_on = [p for p, _ in available if per_pair[p.test_id].holds is not None]
        if not any(gates(p) for p in rests_on):
            pytest.xfail(f"evidence (no pair it rests on has an expected verdict): {decision.message}")
        pytest.fail(f"{decision.message}; pairs: {[p.id for p in rests_on]}", pytrace=False)


def test_zoo_spans_the_verdicts(registry, run_config):
    """The zoo is designed to span the verdicts (whether each matches its expectation: `test_post_claims.py`)."""
    results = _available_results(registry, run_config)
    if not results or not all(p.is_tiny for p in results):
        pytest.skip("only asserted on the tiny zoo alone (real pairs are present or none can run)")
    verdicts = {r.verdict.verdict for r in results.values()}
    assert {"transfers", "fails", "not comparable"} <= verdicts, verdicts
