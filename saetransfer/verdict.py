"""Per-pair transfer verdicts: documented thresholds turn SAE metrics into a verdict with reasons.

`decide` compares the base SAE on the finetune (`finetune`) with the same SAE on its own model
(`base`) and, when given, with an SAE trained on the finetune (`native`, Kissane et al.'s reference).
Every number is a field of `Thresholds`, which carries the published evidence behind it;
`saetransfer.rules` tabulates them (the report's "How to read" shows that table).

Order of the rules:

1. `not comparable`: the tokenizers differ (`comparable=False`); nothing else is read.
2. `unusable` (sanity gate, on the base only): the SAE fails an absolute floor on its own model, so it
   is broken (wrong hook, weight processing or normalisation) and "equally broken on both models"
   must not read as "transfers". A NaN or impossible base value (EV or KL score above 1, L0 outside
   [0, d_sae]) fails the gate too: the measurement itself is broken.
3. Each line of evidence on the finetune gets a grade, ok / weak / bad, relative to the base: the EV
   ratio, the KL score and CE recovered (drop from the base, gap to the native SAE), the loss delta and,
   for free-L0 SAEs (ReLU, JumpReLU, gated), the L0 ratio. A TopK SAE's L0 is fixed at k, so its ratio
   is reported but not graded; SAELens saves a trained BatchTopK SAE as `jumprelu`, judged as JumpReLU.
4. Any bad line -> `fails`; else any weak line -> `partial`; else `transfers` if there are at least
   `min_lines_of_evidence` graded lines and one of them is explained variance or KL score; otherwise
   `partial` (insufficient evidence: here `partial` means "transfer not established", never "half
   works"). CE recovered and the loss delta can be fooled (the splice can pull a finetune toward the
   base) and EV can flatter, so none of them alone says `transfers`.

Missing metrics (None) are skipped and listed in the reasons. NaN or impossible values on the finetune
are treated as missing with a flag (never as passing); on the base they fail the gate. When the base
value of a metric is missing, the finetune value is only checked against the gate's floor: below it is
bad (the SAE does not work on the finetune whatever it does on the base), above it is not counted.
A native value is used only if it passes the base floors itself.

Monotonicity: lowering the finetune's EV or KL score, or raising a ReLU SAE's L0 blow-up, never
improves the verdict. CE recovered and the loss delta are deliberately not monotone: values that look
*better* than clean (CE recovered above `max_ce_loss_score`, loss delta below `min_ce_delta`) are flagged weak.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from saetransfer.results import Comparisons, Estimate, Line, VerdictResult

Grade = Literal["ok", "weak", "bad"]
_RANK: dict[Grade, int] = {"ok": 0, "weak": 1, "bad": 2}
_EV, _KL, _CE, _DELTA, _L0 = "explained variance", "KL score", "CE recovered", "loss delta", "L0"
_NAMES = {"explained_variance": _EV, "kl_div_score": _KL, "ce_loss_score": _CE, "ce_delta": _DELTA, "l0": _L0}
_FREE_L0 = frozenset({"standard", "relu", "gated", "jumprelu"})
_ROUNDING = 1e-3  # published tables round to 3 decimals: an EV of 1.0004 is 1, not impossible


@dataclass(frozen=True)
class SaeQuality:
    """One SAE on one model: the numbers the verdict reads. None = not measured (published tables lack KL)."""

    explained_variance: float | None = None
    l0: float | None = None
    ce_loss_score: float | None = None
    """CE loss recovered, (CE_abl - CE_sae) / (CE_abl - CE_clean)."""
    kl_div_score: float | None = None
    """(KL_abl - KL_sae) / KL_abl."""
    ce_delta: float | None = None
    """CE with the SAE spliced in - clean CE, nats."""
    d_sae: int | None = None


_METRICS = tuple(f.name for f in fields(SaeQuality) if f.name != "d_sae")
"""The metrics an `SaeQuality` holds (its d_sae is the SAE's width)."""


@dataclass(frozen=True)
class Evidence:
    """Why a threshold has its value: the rule it sets and the published numbers behind it."""

    group: str
    """The rule it belongs to: `gate` (the SAE on its own model) or the line of evidence it grades."""
    metric: str
    """What is compared."""
    rule: str
    """How the value is used: a format string, `{x}` the value, `{field_name}` another threshold's."""
    source: str
    """The published numbers (paper, post, library) that put the value there."""


def _threshold(default: int | float, group: str, metric: str, rule: str, source: str) -> Any:
    """A `Thresholds` field whose evidence travels with it (dataclass metadata), so the table cannot drift."""
    return field(default=default, metadata={"evidence": Evidence(group, metric, rule, source)})


@dataclass(frozen=True)
class Thresholds:
    """Every number the verdict uses, each with its `Evidence` (`saetransfer.rules` tabulates them).

    "The post" is Kutsyk et al. 2024 (§4.3 tables); "Kissane et al." is their 2024 report and the
    `results/*.json` of github.com/ckkissane/sae-transfer; "the early CPU run" is this project's
    unpublished feasibility run (a TopK SAE, k=32, on a 4-layer GPT-2 and its code finetune).
    """

    # -- sanity gate: the SAE on its own (base) model --
    base_min_explained_variance: float = _threshold(
        0.3, "gate", "EV on the base", "unusable if < {x}",
        "published base SAEs 0.67 (the post, Mistral, global R²) .. 0.97 (the post, Gemma); Kissane et al. "
        "0.682 / 0.745 / 0.776; their SAEs on chat data 0.50-0.74. Below 0.3 the SAE misses most of its own "
        "model's variance")
    base_min_ce_loss_score: float = _threshold(
        0.7, "gate", "CE recovered on the base", "unusable if < {x}",
        "Kissane et al.'s base SAEs recover 0.956-0.987; mismatched SAEs give 0.25 (base SAE on Gemma-it) "
        "and -8.3 (Gemma-it SAE on gemma-2b)")
    base_min_kl_div_score: float = _threshold(
        0.7, "gate", "KL score on the base", "unusable if < {x}",
        "no published KL score for these pairs; the same normalisation as CE recovered (fraction of the "
        "zero-ablation damage undone), so the same floor")
    base_max_ce_delta: float = _threshold(
        1.5, "gate", "loss delta on the base (nats)", "unusable if > {x}",
        "published base loss deltas 0.11-0.51 nats (the post 0.15 / 0.51; Kissane et al. 0.11 / 0.36 / 0.45)")
    base_min_l0: float = _threshold(
        1.0, "gate", "L0 on the base", "unusable if < {x}",
        "fewer than one active latent per token cannot reconstruct anything")
    base_max_l0_fraction: float = _threshold(
        0.25, "gate", "L0 / d_sae on the base", "unusable if > {x}",
        "the post expects L0/d_sae < 0.01; published SAEs sit below 0.004 (the early CPU run's TopK 0.03); "
        "Kissane et al.'s mismatched SAE 0.21. A quarter is not sparse")

    # -- both sides: values that look better than clean --
    max_ce_loss_score: float = _threshold(
        1.05, "CE recovered", "CE recovered (finetune; base: gate)", "weak if > {x}; on the base unusable",
        "above 1 the splice lowers the model's own loss, which a faithful reconstruction cannot: on a finetune "
        "it pulls the model back toward the base (the early CPU run's code finetune: 1.17); Kissane et al.'s "
        "bases 0.956-0.987")
    min_ce_delta: float = _threshold(
        -0.05, "loss delta", "loss delta (nats; base: gate)", "weak if < {x}; on the base unusable",
        "the loss-delta form of the same check; noise on the tiny zoo is about 0.01 nats")

    # -- finetune relative to base --
    ev_ratio_ok: float = _threshold(
        0.75, "EV", "EV finetune / base", "ok if >= {x}",
        "published transfers 0.86 (the post, Mistral), 0.89 (Kissane et al., Mistral), 0.80 (Qwen), 0.76 / "
        "0.92 (chat SAEs on the bases). A ratio, not a difference: base EVs range 0.5-0.98 and the post's "
        "global R² and SAELens's per-dimension EV are normalised differently")
    ev_ratio_bad: float = _threshold(
        0.5, "EV", "EV finetune / base", "bad if < {x}",
        "less than half the base's explained variance; published failures are negative: ratio -10.6 (the "
        "post, Gemma python-codes) and -19 (Kissane et al., Gemma-it). The gate keeps the base positive, so a "
        "negative finetune EV gives a negative ratio")
    score_drop_ok: float = _threshold(
        0.03, "CE recovered, KL score", "drop base - finetune", "ok if <= {x}",
        "published transfers -0.010 .. +0.022 (Kissane et al., both directions); the KL score shares CE "
        "recovered's normalisation and cannot be faked by pulling toward the base")
    score_drop_bad: float = _threshold(
        0.10, "CE recovered, KL score", "drop base - finetune", "bad if > {x}",
        "a tenth of the zero-ablation damage no longer undone; the published failure (Gemma-it) drops 0.70")
    native_gap_ok: float = _threshold(
        0.02, "CE recovered, KL score", "gap native SAE - base SAE on the finetune", "ok if <= {x}",
        "Kissane et al.: transfer = within 0.01-0.02 of the finetune's own SAE (Mistral 0.989 vs 0.990; "
        "Qwen 0.976 vs 0.958)")
    native_gap_bad: float = _threshold(
        0.10, "CE recovered, KL score", "gap native SAE - base SAE on the finetune", "bad if > {x}",
        "as the drop; Gemma-it is 0.74 below its native SAE (Kissane et al.)")
    l0_ratio_ok: float = _threshold(
        2.0, "L0 (ReLU, JumpReLU, gated)", "L0 finetune / base", "ok within [1/{x}, {x}]",
        "published transfers 0.71-1.58 (Kissane et al., both directions; the post, Mistral, 1.08); the lower "
        "side mirrors the upper one in log scale (no published case)")
    l0_ratio_bad: float = _threshold(
        4.0, "L0 (ReLU, JumpReLU, gated)", "L0 finetune / base", "bad outside [1/{x}, {x}]",
        "the smallest published failure is x5.6 (gemma-2b SAE on Gemma-it; the reverse is x115, Kissane et al.)")
    ce_delta_ratio_ok: float = _threshold(
        2.0, "loss delta", "loss delta finetune / base", "weak if > {x}x the base's and > +{ce_delta_excess_ok} nats over it",
        "published transfers 0.66-1.07x (the post, Mistral 0.15 -> 0.16; Kissane et al. 0.114 -> 0.098, "
        "0.363 -> 0.239); Kissane et al.'s Mistral chat SAE on the base (3.3x, +0.195 nats) lands in between: "
        "partial")
    ce_delta_ratio_bad: float = _threshold(
        5.0, "loss delta", "loss delta finetune / base", "bad if > {x}x the base's and > +{ce_delta_excess_bad} nats over it",
        "published failures 8.3x (the post, Gemma) and 15.6x (Kissane et al., Gemma)")
    ce_delta_excess_ok: float = _threshold(
        0.1, "loss delta", "loss delta finetune - base (nats)", "never weak if <= +{x} nats",
        "keeps noise on a tiny base delta from counting as a blow-up")
    ce_delta_excess_bad: float = _threshold(
        0.5, "loss delta", "loss delta finetune - base (nats)", "never bad if <= +{x} nats",
        "published failures +3.7 (the post, Gemma) and +6.5 nats (Kissane et al., Gemma)")
    min_lines_of_evidence: int = _threshold(
        2, "evidence", "graded lines, one of them EV or KL score", "transfers needs >= {x}",
        "CE recovered and the loss delta can be fooled (above 1 when the splice pulls a finetune toward the "
        "base) and EV can flatter (normalised by the evaluated model's own variance), so none of them alone "
        "says transfers")

    # -- uncertainty --
    agreement: float = _threshold(
        0.975, "uncertainty", "share of bootstrap replicates giving the line's grade",
        "ok or bad only if >= {x}, else weak (uncertain)",
        "the one-sided 97.5 % of a two-sided 95 % interval: a line is decided only when its whole interval "
        "lies on one side of the threshold (percentile bootstrap, Efron & Tibshirani 1993)")

    def __post_init__(self) -> None:
        # ratios divide by the base value, so the gate must keep it positive
        if self.base_min_explained_variance <= 0 or self.base_min_l0 <= 0:
            raise ValueError("base_min_explained_variance and base_min_l0 must be positive")
        pairs = [(self.ev_ratio_bad, self.ev_ratio_ok), (self.score_drop_ok, self.score_drop_bad),
                 (self.native_gap_ok, self.native_gap_bad), (1.0, self.l0_ratio_ok), (self.l0_ratio_ok, self.l0_ratio_bad),
                 (self.ce_delta_ratio_ok, self.ce_delta_ratio_bad), (self.ce_delta_excess_ok, self.ce_delta_excess_bad)]
        if any(low > high for low, high in pairs):
            raise ValueError(f"each ok threshold must be milder than its bad threshold: {self}")


def _n(x: float) -> str:
    """Three significant digits, but whole L0s and blown-up values stay readable (126.1, not 126; 2662, not 2.66e+03)."""
    if math.isfinite(x) and abs(x) >= 100:
        return f"{x:.1f}".removesuffix(".0")
    return f"{x:.3g}"


def _unsaid(x: float) -> str:
    """`decide(explain=False)`'s number format: none (a bootstrap replicate's reasons are never read)."""
    return ""


Say = Callable[[float], str]
"""How a line's reason writes its numbers: `_n`, or `_unsaid` where only the grades are read."""


def _higher(value: float, ok: float, bad: float, n: Say = _n) -> tuple[Grade, str]:
    """Grade a higher-is-better number, with the comparison that decided it."""
    if value >= ok:
        return "ok", f"{n(value)} >= {n(ok)}"
    if value >= bad:
        return "weak", f"{n(value)} in [{n(bad)}, {n(ok)})"
    return "bad", f"{n(value)} < {n(bad)}"


def _lower(value: float, ok: float, bad: float, n: Say = _n) -> tuple[Grade, str]:
    """Grade a lower-is-better number."""
    if value <= ok:
        return "ok", f"{n(value)} <= {n(ok)}"
    if value <= bad:
        return "weak", f"{n(value)} in ({n(ok)}, {n(bad)}]"
    return "bad", f"{n(value)} > {n(bad)}"


def _worst(grades: list[Grade]) -> Grade:
    return max(grades, key=_RANK.__getitem__)


def _problem(name: str, value: float, d_sae: int | None) -> str | None:
    """Why a value is undefined or impossible, or None when it is usable."""
    if math.isnan(value):
        return "NaN (undefined)"
    if name in ("explained_variance", "kl_div_score") and value > 1 + _ROUNDING:
        return f"{_n(value)}, impossible (at most 1)"
    if name == "l0" and not (0 <= value < math.inf and (d_sae is None or value <= d_sae)):
        return f"{_n(value)}, impossible (outside [0, d_sae={d_sae}])"
    return None


def _clean(q: SaeQuality, side: str, d_sae: int | None) -> tuple[dict[str, float | None], list[str]]:
    """The usable metric values of `q` (NaN/impossible -> None) and one flag per dropped value."""
    values: dict[str, float | None] = {}
    flags = []
    for name in _METRICS:
        value = getattr(q, name)
        problem = None if value is None else _problem(name, float(value), d_sae)
        if problem:
            flags.append(f"{_NAMES[name]} on the {side} is {problem}: treated as not measured")
        values[name] = None if value is None or problem else float(value)
    return values, flags


def _d_sae(base: SaeQuality, finetune: SaeQuality) -> tuple[int | None, list[str]]:
    """The SAE's width (one SAE on both sides, so the base's wins) and notes on odd values."""
    given = {side: q.d_sae for side, q in (("base", base), ("finetune", finetune)) if q.d_sae is not None}
    notes = [f"d_sae {d} on the {side} is not positive: ignored" for side, d in given.items() if d <= 0]
    valid = [d for d in given.values() if d > 0]
    if len(set(valid)) > 1:
        notes.append(f"d_sae differs ({given['base']} base, {given['finetune']} finetune): using the base's")
    return (valid[0] if valid else None), notes


def _gate(b: dict[str, float | None], d_sae: int | None, t: Thresholds) -> list[str]:
    """Absolute floors the SAE must meet on its own model; each failure is one reason."""
    out = []
    ev, ce, kl, delta, l0 = (b[k] for k in ("explained_variance", "ce_loss_score", "kl_div_score", "ce_delta", "l0"))
    if ev is not None and ev < t.base_min_explained_variance:
        out.append(f"{_EV} {_n(ev)} on the base itself < {_n(t.base_min_explained_variance)}")
    if ce is not None and not t.base_min_ce_loss_score <= ce <= t.max_ce_loss_score:
        out.append(f"{_CE} {_n(ce)} on the base itself outside [{_n(t.base_min_ce_loss_score)}, {_n(t.max_ce_loss_score)}]")
    if kl is not None and kl < t.base_min_kl_div_score:
        out.append(f"{_KL} {_n(kl)} on the base itself < {_n(t.base_min_kl_div_score)}")
    if delta is not None and not t.min_ce_delta <= delta <= t.base_max_ce_delta:
        out.append(f"{_DELTA} {_n(delta)} nats on the base itself outside [{_n(t.min_ce_delta)}, {_n(t.base_max_ce_delta)}]")
    if l0 is not None and l0 < t.base_min_l0:
        out.append(f"{_L0} {_n(l0)} on the base itself < {_n(t.base_min_l0)}")
    if l0 is not None and d_sae is not None and l0 / d_sae > t.base_max_l0_fraction:
        out.append(f"{_L0} {_n(l0)} on the base itself is {_n(l0 / d_sae)} of d_sae={d_sae} > {_n(t.base_max_l0_fraction)}")
    return out


def _floor_only(metric: str, f: float, below: bool, floor: float, unit: str = "", n: Say = _n) -> Line:
    """Base value missing: only a finetune value that fails the base's own floor says anything (bad)."""
    if below:
        return Line(metric, "bad", f"{metric} {n(f)}{unit} on the finetune fails the floor a base SAE must meet "
                                    f"({n(floor)}{unit}; no base value to compare) (bad)")
    return Line(metric, None, f"{metric} {n(f)}{unit} on the finetune: no base value to compare, not counted")


def _ev_line(b: float | None, f: float | None, t: Thresholds, n: Say = _n) -> Line | None:
    if f is None:
        return None
    if b is None:
        return _floor_only(_EV, f, f < t.base_min_explained_variance, t.base_min_explained_variance, n=n)
    grade, why = _higher(f / b, t.ev_ratio_ok, t.ev_ratio_bad, n)  # the gate keeps b > 0
    return Line(_EV, grade, f"{_EV} {n(f)} vs {n(b)} on the base (ratio {why}) ({grade})")


def _score_line(metric: str, b: float | None, f: float | None, native: float | None, floor: float,
                t: Thresholds, ceiling: float | None = None, n: Say = _n) -> Line | None:
    """CE recovered or KL score: drop from the base, gap to the native SAE, and (CE) the >1 trap."""
    if f is None:
        return None
    grades: list[Grade] = []
    parts: list[str] = []
    if ceiling is not None and f > ceiling:
        grades.append("weak")
        parts.append(f"is above {n(ceiling)}: the splice lowers the finetune's loss, pulling it back toward the base "
                     "(not faithful)")
    if b is not None:
        grade, why = _lower(b - f, t.score_drop_ok, t.score_drop_bad, n)
        grades.append(grade)
        parts.append(f"vs {n(b)} on the base (drop {why})")
    if native is not None:
        grade, why = _lower(native - f, t.native_gap_ok, t.native_gap_bad, n)
        grades.append(grade)
        parts.append(f"vs {n(native)} for the native SAE (gap {why})")
    if not grades:
        return _floor_only(metric, f, f < floor, floor, n=n)
    if b is None and native is None:  # only the >1 trap fired
        parts.append("no base value to compare")
    grade = _worst(grades)
    return Line(metric, grade, f"{metric} {n(f)} " + "; ".join(parts) + f" ({grade})")


def _delta_line(b: float | None, f: float | None, t: Thresholds, n: Say = _n) -> Line | None:
    if f is None:
        return None
    if f < t.min_ce_delta:
        return Line(_DELTA, "weak", f"{_DELTA} {n(f)} nats < {n(t.min_ce_delta)} on the finetune: the splice lowers "
                                     "its loss, pulling it back toward the base, which is not faithful (weak)")
    if b is None:
        return _floor_only(_DELTA, f, f > t.base_max_ce_delta, t.base_max_ce_delta, " nats", n)
    excess, ref = f - b, max(b, 0.0)  # a base delta <= 0 makes any positive finetune delta a growth
    ratio = f"{n(f / b)}x the base's" if b > 0 else "base delta <= 0"
    if excess > t.ce_delta_excess_bad and f > t.ce_delta_ratio_bad * ref:
        grade, why = "bad", f"> {n(t.ce_delta_ratio_bad)}x and > +{n(t.ce_delta_excess_bad)} nats"
    elif excess > t.ce_delta_excess_ok and f > t.ce_delta_ratio_ok * ref:
        grade, why = "weak", f"> {n(t.ce_delta_ratio_ok)}x and > +{n(t.ce_delta_excess_ok)} nats"
    else:
        grade, why = "ok", f"<= {n(t.ce_delta_ratio_ok)}x or <= +{n(t.ce_delta_excess_ok)} nats"
    return Line(_DELTA, grade, f"{_DELTA} {n(f)} vs {n(b)} nats on the base ({ratio}, {excess:+.3g} nats; {why}) ({grade})")


def _l0_line(b: float | None, f: float | None, d_sae: int | None, fixed: bool, t: Thresholds,
             n: Say = _n) -> Line | None:
    if fixed:
        seen = f" ({n(f)} vs {n(b)} on the base, ratio {n(f / b)})" if f is not None and b else ""
        return Line(_L0, None, f"{_L0} ratio ignored{seen}: a TopK SAE fixes L0 at k, so it carries no signal")
    if f is None:
        return None
    if b is None:
        if d_sae is None:
            return Line(_L0, None, f"{_L0} {n(f)} on the finetune: no base value or d_sae to compare, not counted")
        frac = f / d_sae
        return _floor_only(_L0 + "/d_sae", frac, frac > t.base_max_l0_fraction, t.base_max_l0_fraction, n=n)
    ratio = f / b  # the gate keeps b >= base_min_l0 > 0
    if 1 / t.l0_ratio_ok <= ratio <= t.l0_ratio_ok:
        grade, band = "ok", f"within [{n(1 / t.l0_ratio_ok)}, {n(t.l0_ratio_ok)}]"
    elif 1 / t.l0_ratio_bad <= ratio <= t.l0_ratio_bad:
        grade, band = "weak", f"outside [{n(1 / t.l0_ratio_ok)}, {n(t.l0_ratio_ok)}]"
    else:
        grade, band = "bad", f"outside [{n(1 / t.l0_ratio_bad)}, {n(t.l0_ratio_bad)}]"
    return Line(_L0, grade, f"{_L0} {n(f)} vs {n(b)} on the base (ratio {n(ratio)} {band}) ({grade})")


def _native_scores(native: SaeQuality | None, t: Thresholds) -> tuple[float | None, float | None, list[str]]:
    """The native SAE's CE recovered and KL score, each only if it is defined and passes the base floors."""
    out: dict[str, float | None] = {"ce_loss_score": None, "kl_div_score": None}
    flags: list[str] = []
    # the gate's floors; _problem already refuses a KL score above 1
    floors = {"ce_loss_score": (t.base_min_ce_loss_score, t.max_ce_loss_score), "kl_div_score": (t.base_min_kl_div_score, math.inf)}
    for key, (low, high) in floors.items():
        value = None if native is None else getattr(native, key)
        if value is None:
            continue
        problem = _problem(key, float(value), None)
        if problem or not low <= value <= high:
            flags.append(f"native SAE's {_NAMES[key]} {problem or _n(value)} fails the base floors: not used")
        else:
            out[key] = float(value)
    return out["ce_loss_score"], out["kl_div_score"], flags




_COMPARED: dict[str, tuple[tuple[str, str], ...]] = {
    _EV: (("ev_ratio", "ratio"),),
    _KL: (("kl_score_drop", "drop"), ("kl_native_gap", "native gap")),
    _CE: (("ce_score_drop", "drop"), ("ce_native_gap", "native gap")),
    _DELTA: (("ce_delta_ratio", "ratio"), ("ce_delta_excess", "excess")),
    _L0: (("l0_ratio", "ratio"),),
}
"""The `Comparisons` each line of evidence compares with its thresholds (their intervals go in its reason)."""


def _value(q: SaeQuality | None, key: str) -> float:
    value = None if q is None else getattr(q, key)
    return math.nan if value is None else float(value)


def _div(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan


def compared_values(base: SaeQuality, finetune: SaeQuality, native: SaeQuality | None) -> dict[str, float]:
    """The quantities the rules compare with thresholds (`Comparisons` fields), NaN where undefined.

    Module-level helpers, not closures: this runs once per bootstrap replicate, and the test suite's
    runtime type-check hook re-decorates a nested function on every call.
    """
    b = {k: _value(base, k) for k in ("explained_variance", "kl_div_score", "ce_loss_score", "ce_delta", "l0")}
    f = {k: _value(finetune, k) for k in b}
    return {
        "ev_ratio": _div(f["explained_variance"], b["explained_variance"]),
        "kl_score_drop": b["kl_div_score"] - f["kl_div_score"],
        "ce_score_drop": b["ce_loss_score"] - f["ce_loss_score"],
        "kl_native_gap": _value(native, "kl_div_score") - f["kl_div_score"],
        "ce_native_gap": _value(native, "ce_loss_score") - f["ce_loss_score"],
        "ce_delta_ratio": _div(f["ce_delta"], b["ce_delta"]),
        "ce_delta_excess": f["ce_delta"] - b["ce_delta"],
        "l0_ratio": _div(f["l0"], b["l0"]),
    }


def _conclude(lines: list[Line], notes: list[str], t: Thresholds) -> VerdictResult:
    """Any bad line -> fails; any weak -> partial; enough ok lines (one EV or KL) -> transfers."""
    graded = [line for line in lines if line.grade is not None]
    by_grade: dict[str, list[str]] = {"bad": [], "weak": [], "ok": []}
    for line in graded:
        by_grade[line.grade].append(line.metric)
    details = tuple(line.reason for line in lines) + tuple(notes)
    if by_grade["bad"]:
        return VerdictResult("fails", (f"fails: bad on {', '.join(by_grade['bad'])}", *details), tuple(lines))
    if by_grade["weak"]:
        uncertain = {line.metric for line in graded if line.uncertain}
        named = ", ".join(f"{m} (uncertain)" if m in uncertain else f"{m} (in band)" for m in by_grade["weak"])
        return VerdictResult("partial", (f"partial: weak on {named}", *details), tuple(lines))
    primary = [m for m in by_grade["ok"] if m in (_EV, _KL)]
    if not primary or len(graded) < t.min_lines_of_evidence:
        have = ", ".join(by_grade["ok"]) or "nothing"
        return VerdictResult("partial", (
            f"partial: insufficient evidence (ok: {have}); transfers needs {t.min_lines_of_evidence} graded lines, "
            f"one of them {_EV} or {_KL}, because CE-based scores alone can be fooled", *details), tuple(lines))
    return VerdictResult("transfers", (f"transfers: ok on {', '.join(by_grade['ok'])}", *details), tuple(lines))


def decide(*, base: SaeQuality, finetune: SaeQuality, architecture: str, native: SaeQuality | None = None,
           comparable: bool = True, not_comparable_reason: str = "", not_judged_reasons: Sequence[str] = (),
           thresholds: Thresholds = Thresholds(), explain: bool = True) -> VerdictResult:
    """The verdict for the base SAE on a finetune; see the module docstring for the rules.

    `not_judged_reasons` (from the masking floor, `masking.KEPT_FLOOR`) make the verdict `not judged`
    before any metric is read: the SAE is not blamed for what the mask removed.
    `explain=False`: the same verdict and grades, with the numbers left out of the lines' reasons (a
    bootstrap replicate's grades are all `decide_with_uncertainty` reads; formatting was half its cost).
    """
    t = thresholds
    if not comparable:
        return VerdictResult("not comparable", (
            not_comparable_reason or "the tokenizers differ: the evaluation ids do not mean the same in both models",))
    if not_judged_reasons:
        return VerdictResult("not judged", ("not judged: too few positions left after masking", *not_judged_reasons))

    d_sae, d_notes = _d_sae(base, finetune)
    b, base_flags = _clean(base, "base", d_sae)
    f, ft_flags = _clean(finetune, "finetune", d_sae)

    broken = base_flags + _gate(b, d_sae, t)
    if broken:
        return VerdictResult("unusable", (
            "unusable: the SAE fails on the base model itself (wrong hook, weight processing or normalisation, or an SAE trained on another model?)",
            *broken))

    arch = architecture.strip().lower()
    fixed = "topk" in arch
    native_ce, native_kl, native_flags = _native_scores(native, t)
    n = _n if explain else _unsaid
    lines = [line for line in (
        _ev_line(b["explained_variance"], f["explained_variance"], t, n),
        _score_line(_KL, b["kl_div_score"], f["kl_div_score"], native_kl, t.base_min_kl_div_score, t, n=n),
        _score_line(_CE, b["ce_loss_score"], f["ce_loss_score"], native_ce, t.base_min_ce_loss_score, t,
                    ceiling=t.max_ce_loss_score, n=n),
        _delta_line(b["ce_delta"], f["ce_delta"], t, n),
        _l0_line(b["l0"], f["l0"], d_sae, fixed, t, n),
    ) if line is not None]

    notes = [*d_notes, *ft_flags, *native_flags]
    if not fixed and arch not in _FREE_L0:
        notes.append(f"architecture {architecture!r} is not known: its L0 is judged as free (like ReLU)")
    if all(b[k] is None for k in ("explained_variance", "kl_div_score", "ce_loss_score", "ce_delta")):
        notes.append("nothing measured on the base: the sanity gate could not run")
    missing = {k: (b[k] is None, f[k] is None) for k in _NAMES if not (fixed and k == "l0")}
    for where, sides in (("either model", (True, True)), ("the base", (True, False)), ("the finetune", (False, True))):
        names = [_NAMES[k] for k, m in missing.items() if m == sides]
        if names:
            notes.append(f"not measured on {where}: {', '.join(names)}")
    return _conclude(lines, notes, t)


@dataclass(frozen=True)
class VerdictInputs:
    """What `decide` reads for one direction: the SAE on its own model, on the other, and the native SAE."""

    base: SaeQuality
    finetune: SaeQuality
    native: SaeQuality | None = None


def _interval_text(comparisons: Comparisons, metric: str) -> str:
    parts = []
    for key, label in _COMPARED.get(metric, ()):
        estimate: Estimate | None = getattr(comparisons, key)
        if estimate is not None and math.isfinite(estimate.low) and math.isfinite(estimate.high):
            parts.append(f"{label} {_n(estimate.value)} [{_n(estimate.low)}, {_n(estimate.high)}]")
    return "; ".join(parts)


def decide_with_uncertainty(point: VerdictInputs, replicates: Sequence[VerdictInputs], comparisons: Comparisons, *,
                            architecture: str, level: float, thresholds: Thresholds = Thresholds()) -> VerdictResult:
    """`decide` on the point values, each ok/bad line kept only where `thresholds.agreement` of the
    bootstrap replicates (graded by the same rules) agree; otherwise that line is `weak (uncertain)`.

    The reason of every graded line quotes the interval of what it compared; the gate reads point values.
    """
    t = thresholds
    result = decide(base=point.base, finetune=point.finetune, native=point.native, architecture=architecture,
                    thresholds=t)
    if result.verdict not in ("transfers", "partial", "fails") or not replicates:
        return result
    grades: dict[str, list[str | None]] = {}
    for rep in replicates:
        rep_result = decide(base=rep.base, finetune=rep.finetune, native=rep.native, architecture=architecture,
                            thresholds=t, explain=False)
        by_metric = {line.metric: line.grade for line in rep_result.lines}
        for line in result.lines:
            grades.setdefault(line.metric, []).append(by_metric.get(line.metric))
    lines = []
    for line in result.lines:
        if line.grade is None:
            lines.append(line)
            continue
        agree = sum(g == line.grade for g in grades[line.metric]) / len(replicates)
        interval = _interval_text(comparisons, line.metric)
        quoted = f" [{level:.0%} interval: {interval}]" if interval else ""
        if line.grade in ("ok", "bad") and agree < t.agreement:
            lines.append(replace(line, grade="weak", uncertain=True, agreement=agree, reason=(
                f"{line.reason}{quoted}; uncertain: only {agree:.0%} of {len(replicates)} resamples give "
                f"{line.grade} (needs {t.agreement:.1%}) -> weak (uncertain)")))
        else:
            lines.append(replace(line, agreement=agree, reason=f"{line.reason}{quoted}"))
    notes = list(result.reasons[1 + len(result.lines):])
    return _conclude(lines, notes, t)
