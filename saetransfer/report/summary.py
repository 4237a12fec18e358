"""One row of raw numbers per evaluation: summary.csv (the headline table formats the same attributes; filter
on `primary` for its rows)."""

from __future__ import annotations

import dataclasses
from typing import Any

from saetransfer.report.records import Entry
from saetransfer.results import Comparisons, Estimate, PairResult

COMPARISONS = tuple(f.name for f in dataclasses.fields(Comparisons))
NOT_RUN = "not run"


def status(entry: Entry) -> str:
    if entry.result is None:
        return NOT_RUN
    return "evaluated" if entry.result.comparable else "not comparable"


def reasons(entry: Entry) -> tuple[str, ...]:
    return () if entry.result is None else entry.result.verdict.reasons


def _estimates(prefix: str, comparisons: Comparisons | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in COMPARISONS:
        e: Estimate | None = None if comparisons is None else getattr(comparisons, name)
        for part in ("value", "low", "high"):
            out[f"{prefix}{name}{'' if part == 'value' else '_' + part}"] = None if e is None else getattr(e, part)
    return out


def _sae(r: PairResult | None) -> dict[str, float | None]:
    sae = None if r is None else r.sae
    return {f"{metric}_{side}": None if sae is None else getattr(getattr(sae, side), metric)
            for metric in ("explained_variance", "kl_div_score", "ce_loss_score", "l0") for side in ("base", "finetune")}


def _features(r: PairResult | None) -> dict[str, float | None]:
    f = None if r is None else r.features
    regular = None if f is None else f.buckets.regular.activation_correlation
    chance = None if f is None else f.chance
    return {"regular_correlation_mean": None if regular is None else regular.mean,
            "regular_fraction_transferred": None if regular is None else regular.fraction_transferred,
            "chance_fraction_transferred": None if chance is None else chance.permuted.fraction_transferred}


def summary_row(entry: Entry) -> dict[str, Any]:
    """Raw values (floats, None for 'not computed'); display formatting happens in the renderers."""
    r, expected = entry.result, entry.expected or {}
    nm = None if r is None else r.norm_matching
    return {
        "test_id": entry.test_id, "pair_id": entry.pair_id, "primary": entry.primary,
        "direction": entry.direction, "dataset": entry.dataset, "sae_name": entry.sae_name, "sae": entry.sae,
        "sae_architecture": entry.sae_architecture, "sae_trained_on": entry.sae_trained_on, "hook": entry.hook,
        "layer": entry.layer,
        "status": status(entry),
        "verdict": entry.verdict or NOT_RUN,
        "norm_matched_verdict": entry.norm_matched_verdict,
        "expected_verdict": entry.expected_verdict,
        "matches_expected": entry.matches,
        "compatible": None if r is None else r.comparable,
        "judged": None if r is None or r.masking is None else r.masking.judged,
        "kept_fraction": None if r is None or r.masking is None else r.masking.kept_fraction,
        "good_tokens_base_pct": None if r is None else r.tokenizer.good_base_pct,
        "good_tokens_finetune_pct": None if r is None else r.tokenizer.good_finetune_pct,
        **_estimates("", None if r is None else r.comparisons),
        **_sae(r),
        "norm_matching_scale": None if nm is None else nm.scale,
        **_estimates("norm_matched_", None if nm is None else nm.comparisons),
        **_features(r),
        "reasons": "; ".join(reasons(entry)),
        "expected_source": expected.get("source"),
        "expected_extrapolated": expected.get("extrapolated"),
        "not_run_reason": entry.skip_reason,
    }
