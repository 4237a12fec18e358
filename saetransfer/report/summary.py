"""One summary row per entry: the raw numbers behind the "Which pairs transfer" table and summary.csv."""

from __future__ import annotations

from typing import Any

from saetransfer.report.fmt import as_float, ratio
from saetransfer.report.records import Entry


def get(data: Any, *keys: str) -> Any:
    """data[k1][k2]...; None when any level is missing or not a dict (records may predate a key)."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def reasons(entry: Entry) -> list[str]:
    value = None if entry.result is None else entry.result.verdict.get("reasons")
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def status(entry: Entry) -> str:
    if entry.result is None:
        return "not run"
    return "evaluated" if entry.result.comparable else "not comparable"


def summary_row(entry: Entry) -> dict[str, Any]:
    """Raw values (floats, None for 'not computed'); display formatting happens in the renderers."""
    r = entry.result
    sae = r.sae if r is not None else {}
    base, ft = sae.get("base") or {}, sae.get("finetune") or {}
    regular = get(r.features if r else None, "buckets", "regular", "activation_correlation") or {}
    expected = entry.expected or {}
    return {
        "test_id": entry.test_id,
        "pair_id": entry.pair_id,
        "sae": entry.sae,
        "hook": entry.hook,
        "status": status(entry),
        "compatible": None if r is None else r.comparable,
        # `TokenizerComparison`'s names: one name per number, from the loader to summary.csv
        "good_base_pct": as_float(get(r.tokenizer if r else None, "good_base_pct")),
        "good_finetune_pct": as_float(get(r.tokenizer if r else None, "good_finetune_pct")),
        "cosine_mean": as_float(get(r.similarity if r else None, "cosine_mean")),
        "cosine_stderr": as_float(get(r.similarity if r else None, "cosine_stderr")),
        "explained_variance_base": as_float(base.get("explained_variance")),
        "explained_variance_finetune": as_float(ft.get("explained_variance")),
        "kl_div_score_base": as_float(base.get("kl_div_score")),
        "kl_div_score_finetune": as_float(ft.get("kl_div_score")),
        "ce_loss_score_base": as_float(base.get("ce_loss_score")),
        "ce_loss_score_finetune": as_float(ft.get("ce_loss_score")),
        "l0_base": as_float(base.get("l0")),
        "l0_finetune": as_float(ft.get("l0")),
        "l0_ratio": ratio(ft.get("l0"), base.get("l0")),
        "regular_correlation_mean": as_float(regular.get("mean")),
        "regular_fraction_at_least_0.8": as_float(regular.get("fraction_at_least_0.8")),
        "verdict": entry.verdict if r is not None else "not run",
        "reasons": reasons(entry),
        "expected_verdict": entry.expected_verdict,
        "expected_source": expected.get("source"),
        "expected_extrapolated": expected.get("extrapolated"),
        "matches_expected": entry.matches,
        "not_run_reason": entry.skip_reason,
    }
