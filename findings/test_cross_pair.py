"""Cross-pair findings: the post's TLDR and the verdict table, from every comparable pair's result.

The results come from the keyed cache through `engine.run` (computed here if absent), never from
other tests' side effects, so these hold under `-k` and xdist.
"""

from __future__ import annotations

import math

import pytest
from scipy.stats import spearmanr

MIN_PAIRS = 4
"""A rank correlation over fewer pairs says nothing (the post's 'highly correlated' rested on two)."""


def _available_results(registry, run_config):
    from saetransfer.config import RunConfig
    from saetransfer.engine import run
    from saetransfer.loading import availability

    out = {}
    for pair in registry:
        config = RunConfig.for_pair(pair, **run_config, progress=False)
        if pair.needs_gpu and config.device != "cuda":
            continue
        if availability(pair, allow_hub=config.allow_hub) is not None:
            continue
        out[pair] = run(pair, config)
    return out


@pytest.fixture(scope="module")
def comparable(registry, run_config):
    return {p: r for p, r in _available_results(registry, run_config).items()
            if r.comparable and r.verdict["verdict"] != "unusable"}


@pytest.mark.finding(2)
def test_similarity_orders_pairs_as_transfer_does(comparable):
    """TLDR: activation similarity is 'highly correlated' with transferability (Spearman over all pairs)."""
    rows = []
    for pair, r in comparable.items():
        base, ft = r.sae["base"], r.sae["finetune"]
        ev_ratio = ft["explained_variance"] / base["explained_variance"]
        rows.append((pair.id, r.similarity["cosine_mean"], ev_ratio, ft["kl_div_score"]))
    if len(rows) < MIN_PAIRS:
        pytest.skip(f"rests on {len(rows)} comparable pairs; asserted from {MIN_PAIRS} ({[r[0] for r in rows]})")
    cosines = [r[1] for r in rows]
    for name, column in (("explained-variance ratio", [r[2] for r in rows]), ("KL score", [r[3] for r in rows])):
        rho = spearmanr(cosines, column).statistic
        assert not math.isnan(rho) and rho >= 0.8, (
            f"activation cosine vs {name}: Spearman {rho:.2f} over {len(rows)} pairs {rows}")


@pytest.mark.finding(3)
def test_interpolation_ladder_is_monotone(comparable):
    """Control: along base -> finetune weight interpolation, cosine falls and (ReLU) L0 drifts monotonically."""
    ladders: dict[str, list] = {}
    for pair, r in comparable.items():
        end = pair.finetune.path
        if pair.finetune.interpolate_from is not None and pair.finetune.interpolate_from == pair.base.path:
            ladders.setdefault(str(end), []).append((pair.finetune.alpha, r))
    for pair, r in comparable.items():  # the endpoints: the finetune itself (alpha 1), the base (alpha 0)
        if pair.finetune.interpolate_from is None and str(pair.finetune.path) in ladders:
            ladders[str(pair.finetune.path)].append((1.0, r))
        if pair.finetune == pair.base:
            for steps in ladders.values():
                steps.append((0.0, r))
    ladders = {k: sorted(v, key=lambda t: t[0]) for k, v in ladders.items() if len(v) >= 3}
    if not ladders:
        pytest.skip("no interpolation ladder with at least 3 points among the available pairs")
    for end, steps in ladders.items():
        cosines = [r.similarity["cosine_mean"] for _, r in steps]
        assert all(a >= b - 1e-4 for a, b in zip(cosines, cosines[1:])), (end, cosines)
        if steps[0][1].provenance["sae_architecture"] != "topk":
            l0_shift = [abs(r.sae["finetune"]["l0"] - r.sae["base"]["l0"]) for _, r in steps]
            assert all(a <= b + 1e-3 for a, b in zip(l0_shift, l0_shift[1:])), (end, l0_shift)


def test_verdicts_match_expectations(registry, run_config):
    """The verdict table against the registry's expectations, over every pair that can run here."""
    results = _available_results(registry, run_config)
    if not results:
        pytest.skip("no pair can run here")
    mismatches = [(p.id, r.verdict["verdict"], p.expected.verdict) for p, r in results.items()
                  if p.expected is not None and r.verdict["verdict"] != p.expected.verdict]
    assert not mismatches, mismatches
    verdicts = {r.verdict["verdict"] for r in results.values()}
    if all(p.is_tiny for p in results):  # the zoo is designed to span the verdicts
        assert {"transfers", "fails", "not comparable"} <= verdicts, verdicts
