"""The post's claims as data: each one a statement with its section and a predicate over results.

A per-pair `Claim` reads one `PairResult` (and its registry `Pair`); a `CrossPairClaim` reads every
available pair at once. Each evaluation gives a `ClaimOutcome`: holds (True), does not hold (False) or
not applicable (None), with a message that names the claim and its post section and quotes the rounded
values it was decided on. The findings turn outcomes into test results; the report draws the claims x
pairs matrix from the outcomes recorded in each pair's record (`claims` key).

Whether a claim that does not hold fails the suite is a policy of the findings, not of this module:
`gates(pair)` says which pairs carry a published expectation (those fail; others are evidence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy.stats import spearmanr

from saetransfer.registry import Pair
from saetransfer.results import PairResult
from saetransfer.typed import Record

IDENTITY_TOLERANCE = 1e-5
"""The identity pair runs the same weights twice: only float noise may separate the two sides."""
BOS_SLACK = 1e-6
"""Position 0's cosine may sit this far under the mean and still count as 'at least' (float noise)."""
MIN_RANKED_PAIRS = 4
"""A rank correlation over fewer pairs says nothing (the post's 'highly correlated' rested on two)."""
MIN_SPEARMAN = 0.8
LADDER_MIN_STEPS = 3
LADDER_SLACK_COSINE = 1e-4
LADDER_SLACK_L0 = 1e-3
IDENTITY_SAE_KEYS = (
    "l0", "explained_variance", "r2_global", "mse", "cossim", "ce_clean", "ce_spliced", "ce_ablation",
    "ce_delta", "ce_loss_score", "kl_spliced", "kl_div_score", "dead_fraction", "dense_fraction",
)
"""The SAE metrics that must agree on the identity pair's two sides (finding 3's snapshot keys)."""


@dataclass(frozen=True)
class ClaimOutcome(Record):
    """One claim on one pair, as the record stores it (`claims` list of the pair's record)."""

    claim: str
    section: str
    holds: bool | None
    """None: the claim does not apply to this pair (the message says why)."""
    message: str


@dataclass(frozen=True)
class Check:
    """What a predicate returns: the outcome and the values it rests on, already rounded."""

    holds: bool | None
    detail: str


def _decided(holds: bool, detail: str) -> Check:
    return Check(bool(holds), detail)


def _not_applicable(why: str) -> Check:
    return Check(None, f"not applicable: {why}")


def _r(x: float) -> str:
    """Three decimals: the messages quote values a reader compares by eye."""
    return "nan" if math.isnan(x) else f"{x:.3f}"


@dataclass(frozen=True)
class Claim:
    """A statement of the post that one pair's result can confirm or contradict."""

    id: str
    section: str
    """Where the post makes it, e.g. 'post §3'."""
    statement: str
    predicate: Callable[[PairResult, Pair], Check]

    def evaluate(self, result: PairResult, pair: Pair) -> ClaimOutcome:
        check = self.predicate(result, pair)
        return ClaimOutcome(self.id, self.section, check.holds, f"{self.statement} ({self.section}): {check.detail}")


@dataclass(frozen=True)
class CrossPairClaim:
    """A statement about how pairs relate; decided once over every available pair, recorded on each."""

    id: str
    section: str
    statement: str
    predicate: Callable[[Sequence[tuple[Pair, PairResult]]], tuple[Check, frozenset[str]]]
    """Returns the check and the test ids it rests on (the others are recorded as not applicable)."""

    def evaluate(self, results: Sequence[tuple[Pair, PairResult]]) -> tuple[ClaimOutcome, dict[str, ClaimOutcome]]:
        """The one decision, and test id -> outcome for every pair in `results`: the decision on each pair
        it rests on, not applicable (with why) on the others."""
        check, used = self.predicate(results)
        decision = ClaimOutcome(self.id, self.section, check.holds, f"{self.statement} ({self.section}): {check.detail}")
        per_pair = {}
        for pair, result in results:
            if pair.test_id in used:
                per_pair[pair.test_id] = decision
            else:
                why = _excluded(result) or "not one of the pairs this claim compares"
                per_pair[pair.test_id] = ClaimOutcome(self.id, self.section, None,
                                                      f"{self.statement} ({self.section}): not applicable: {why}")
        return decision, per_pair


def gates(pair: Pair) -> bool:
    """A claim that does not hold fails the suite for this pair (it has a published expectation);
    for any other pair it is recorded as evidence."""
    return pair.expected is not None


def _is_identity(pair: Pair) -> bool:
    return pair.finetune == pair.base


def _excluded(result: PairResult) -> str | None:
    """Why the result has no metrics to test a claim on, or None when it has."""
    if not result.comparable:
        return f"not comparable ({result.compatibility.reason})"
    if not result.judged:
        reasons = "; ".join(result.masking.reasons) if result.masking is not None else "no masking section"
        return f"not judged ({reasons})"
    return None


# ---------------------------------------------------------------------------------------------
# per-pair predicates


def _incompatible_tokenizers_stop(r: PairResult, pair: Pair) -> Check:
    c = r.compatibility
    if c.compatible:
        return _not_applicable(f"the tokenizers agree on all {c.n_distinct_ids} evaluation ids")
    stopped = r.verdict.verdict == "not comparable" and r.similarity is None and r.sae is None
    return _decided(stopped, f"{c.n_differing} of {c.n_distinct_ids} ids differ; verdict {r.verdict.verdict!r}, "
                             f"{'nothing' if stopped else 'metrics still'} computed past the tokenizer check")


def _compatibility_as_expected(r: PairResult, pair: Pair) -> Check:
    if pair.expected is None:
        return _not_applicable("no expected verdict in the registry")
    expect = pair.expected.verdict != "not comparable"
    got = r.compatibility.compatible
    return _decided(got == expect, f"tokenizers {'compatible' if got else 'incompatible'} "
                                   f"({r.compatibility.n_differing} of {r.compatibility.n_distinct_ids} ids differ), "
                                   f"expected {'compatible' if expect else 'incompatible'} ({pair.expected.source})")


def _identity_tokenizer(r: PairResult, pair: Pair) -> Check:
    if not _is_identity(pair):
        return _not_applicable("the finetune is not the base")
    t = r.tokenizer
    return _decided(t.good_base_pct == 100.0 and r.compatibility.compatible,
                    f"good tokens {_r(t.good_base_pct)} % (100 expected), "
                    f"{'compatible' if r.compatibility.compatible else 'incompatible'}")


def _identity_activations(r: PairResult, pair: Pair) -> Check:
    if not _is_identity(pair):
        return _not_applicable("the finetune is not the base")
    if (why := _excluded(r)) is not None:
        return _not_applicable(why)
    s = r.similarity
    ok = abs(s.cosine_mean - 1.0) <= IDENTITY_TOLERANCE and abs(s.distance_mean) <= IDENTITY_TOLERANCE
    return _decided(ok, f"cosine {s.cosine_mean:.6f} (1 expected), distance {s.distance_mean:.2e} (0 expected), "
                        f"tolerance {IDENTITY_TOLERANCE:g}")


def _bos_at_least_mean(r: PairResult, pair: Pair) -> Check:
    if (why := _excluded(r)) is not None:
        return _not_applicable(why)
    if _is_identity(pair):
        return _not_applicable("identity pair: every position's cosine is 1")
    if not r.provenance.prepend_bos:
        return _not_applicable("the sample has no BOS (prepend_bos is off)")
    first, mean = r.similarity.per_position_cosine[0], r.similarity.cosine_mean
    holds = first >= mean - BOS_SLACK
    return _decided(holds, f"position 0 {_r(first)} {'>=' if holds else '<'} mean {_r(mean)}")


def _identity_sae_quality(r: PairResult, pair: Pair) -> Check:
    if not _is_identity(pair):
        return _not_applicable("the finetune is not the base")
    if (why := _excluded(r)) is not None:
        return _not_applicable(why)
    base, ft = r.sae.base, r.sae.finetune

    def same(a: float, b: float) -> bool:
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 + 1e-5 * abs(b)

    differing = [k for k in IDENTITY_SAE_KEYS if not same(getattr(ft, k), getattr(base, k))]
    if differing:
        return _decided(False, ", ".join(f"{k} {_r(getattr(base, k))} vs {_r(getattr(ft, k))}" for k in differing))
    return _decided(True, f"{len(IDENTITY_SAE_KEYS)} metrics equal (e.g. explained variance "
                          f"{_r(base.explained_variance)}, KL score {_r(base.kl_div_score)})")


def _finetune_not_better(r: PairResult, pair: Pair) -> Check:
    if (why := _excluded(r)) is not None:
        return _not_applicable(why)
    ev = r.comparisons.ev_ratio if r.comparisons is not None else None
    if ev is None or math.isnan(ev.low):
        return _not_applicable("explained-variance ratio undefined")
    holds = ev.low <= 1.0
    return _decided(holds, f"explained variance {_r(r.sae.base.explained_variance)} -> "
                           f"{_r(r.sae.finetune.explained_variance)}, ratio {_r(ev.value)} "
                           f"[{_r(ev.low)}, {_r(ev.high)}], lower end {'<=' if holds else '>'} 1")


def _dropped_vocab_bounded(r: PairResult, pair: Pair) -> Check:
    p = r.provenance
    if p.finetune_d_vocab is None or p.base_d_vocab is None or p.finetune_d_vocab <= p.base_d_vocab:
        return _not_applicable("the finetune adds no vocabulary rows")
    if (why := _excluded(r)) is not None:
        return _not_applicable(why)
    mass = r.sae.finetune.dropped_vocab_mass_max
    added = p.finetune_d_vocab - p.base_d_vocab
    return _decided(mass < 1.0, f"at most {mass:.2e} of the probability mass on the {added} added row(s) "
                                "(< 1 keeps CE finite)")


def _identity_features(r: PairResult, pair: Pair) -> Check:
    if not _is_identity(pair):
        return _not_applicable("the finetune is not the base")
    if (why := _excluded(r)) is not None:
        return _not_applicable(why)
    f = r.features
    corr = f.buckets.regular.activation_correlation
    dead = f.buckets.dead_in_base.n_total + f.buckets.dead_in_finetune.n_total
    ok = (abs(corr.mean - 1.0) <= 1e-6 and corr.n_nan == 0 and dead == 0
          and abs(f.W_U_frobenius_ratio - 1.0) <= 1e-6 and f.W_U_frobenius_distance == 0.0)
    return _decided(ok, f"regular-latent correlation {corr.mean:.6f} over {corr.n} latents ({corr.n_nan} undefined), "
                        f"{dead} latents dead on one side only, W_U ratio {f.W_U_frobenius_ratio:.6f}")


def _verdict_as_expected(r: PairResult, pair: Pair) -> Check:
    got = r.verdict.verdict
    if pair.expected is None:
        return _not_applicable(f"no expected verdict in the registry (verdict {got!r})")
    which = ""
    if pair.expected.norm_matched and r.norm_matching is not None:  # the source's numbers are norm-matched
        got, which = r.norm_matching.verdict.verdict, "norm-matched "
    headline = r.verdict.reasons[0] if r.verdict.reasons else "no reasons given"
    return _decided(got == pair.expected.verdict,
                    f"{which}verdict {got!r}, expected {pair.expected.verdict!r} ({pair.expected.source}); {headline}")


CLAIMS: tuple[Claim, ...] = (
    Claim("incompatible-tokenizers-stop", "post §2",
          "incompatible tokenizers stop the pair", _incompatible_tokenizers_stop),
    Claim("tokenizers-as-expected", "post §2",
          "tokenizer compatibility is as the registry expects", _compatibility_as_expected),
    Claim("identity-tokenizer", "post §2",
          "a model's tokenizer agrees with itself", _identity_tokenizer),
    Claim("identity-activations", "post §3",
          "the identity pair's activations are exactly similar", _identity_activations),
    Claim("bos-cosine-at-least-mean", "post §3",
          "BOS cosine is at least the mean", _bos_at_least_mean),
    Claim("identity-sae-quality", "post §4",
          "the base SAE scores the same on both sides of the identity pair", _identity_sae_quality),
    Claim("finetune-not-better", "post §4",
          "the base SAE explains no more variance on the finetune than on the base", _finetune_not_better),
    Claim("dropped-vocab-bounded", "post §4.3",
          "added vocabulary rows carry less than all the probability mass", _dropped_vocab_bounded),
    Claim("verdict-as-expected", "post §4",
          "the verdict matches the registry's expectation", _verdict_as_expected),
    Claim("identity-features-transfer", "post §5",
          "every regular latent of the identity pair transfers (correlation 1)", _identity_features),
)


# ---------------------------------------------------------------------------------------------
# cross-pair predicates


def _rankable(results: Sequence[tuple[Pair, PairResult]]) -> list[tuple[Pair, PairResult]]:
    """Pairs with metrics to rank: comparable, judged and not `unusable` (the SAE fails on the base)."""
    return [(p, r) for p, r in results if _excluded(r) is None and r.verdict.verdict != "unusable"]


def _similarity_orders_transfer(results: Sequence[tuple[Pair, PairResult]]) -> tuple[Check, frozenset[str]]:
    rows = [(p, r.similarity.cosine_mean, r.comparisons.ev_ratio.value, r.sae.finetune.kl_div_score)
            for p, r in _rankable(results) if r.comparisons is not None and r.comparisons.ev_ratio is not None]
    used = frozenset(p.test_id for p, *_ in rows)
    if len(rows) < MIN_RANKED_PAIRS:
        return _not_applicable(f"rests on {len(rows)} ranked pairs; decided from {MIN_RANKED_PAIRS}"), used
    cosines = [row[1] for row in rows]
    rhos = {name: float(spearmanr(cosines, [row[i] for row in rows]).statistic)
            for name, i in (("explained-variance ratio", 2), ("KL score", 3))}
    holds = all(not math.isnan(rho) and rho >= MIN_SPEARMAN for rho in rhos.values())
    detail = ", ".join(f"Spearman(cosine, {name}) {_r(rho)}" for name, rho in rhos.items())
    return _decided(holds, f"{detail} over {len(rows)} pairs ({'all' if holds else 'not all'} >= {MIN_SPEARMAN})"), used


def interpolation_ladders(results: Sequence[tuple[Pair, PairResult]]) -> dict[str, list[tuple[float, Pair, PairResult]]]:
    """Finetune checkpoint -> its (alpha, pair, result) steps from the base (alpha 0) to it (alpha 1), sorted."""
    rankable = _rankable(results)
    ladders: dict[str, list[tuple[float, Pair, PairResult]]] = {}
    for pair, r in rankable:
        ft = pair.finetune
        if ft.interpolate_from is not None and ft.interpolate_from == pair.base.path:
            ladders.setdefault(str(ft.path), []).append((ft.alpha, pair, r))
    for pair, r in rankable:  # the endpoints: the finetune itself (alpha 1), the base (alpha 0)
        if pair.finetune.interpolate_from is None and str(pair.finetune.path) in ladders:
            ladders[str(pair.finetune.path)].append((1.0, pair, r))
        if _is_identity(pair):
            for end, steps in ladders.items():
                if pair.base.path == steps[0][1].base.path:
                    steps.append((0.0, pair, r))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in ladders.items() if len(v) >= LADDER_MIN_STEPS}


def _ladder_monotone(results: Sequence[tuple[Pair, PairResult]]) -> tuple[Check, frozenset[str]]:
    ladders = interpolation_ladders(results)
    used = frozenset(p.test_id for steps in ladders.values() for _, p, _ in steps)
    if not ladders:
        return _not_applicable(f"no interpolation ladder with at least {LADDER_MIN_STEPS} points"), used
    details, holds = [], True
    for steps in ladders.values():
        alphas = "/".join(f"{a:g}" for a, _, _ in steps)
        cosines = [r.similarity.cosine_mean for _, _, r in steps]
        falls = all(a >= b - LADDER_SLACK_COSINE for a, b in zip(cosines, cosines[1:]))
        details.append(f"alpha {alphas}: cosine {' -> '.join(_r(c) for c in cosines)} "
                       f"({'falls' if falls else 'does not fall'} monotonically)")
        holds &= falls
        if steps[0][2].provenance.sae_architecture != "topk":  # a TopK SAE's L0 is fixed by construction
            shifts = [abs(r.sae.finetune.l0 - r.sae.base.l0) for _, _, r in steps]
            grows = all(a <= b + LADDER_SLACK_L0 for a, b in zip(shifts, shifts[1:]))
            details.append(f"L0 shift {' -> '.join(f'{s:.2f}' for s in shifts)} "
                           f"({'grows' if grows else 'does not grow'} monotonically)")
            holds &= grows
    return _decided(holds, "; ".join(details)), used


CROSS_PAIR_CLAIMS: tuple[CrossPairClaim, ...] = (
    CrossPairClaim("similarity-orders-transfer", "post TLDR",
                   "similarity orders pairs as transfer does", _similarity_orders_transfer),
    CrossPairClaim("interpolation-ladder-monotone", "control (not in the post)",
                   "along a base -> finetune interpolation, similarity falls and the L0 shift grows",
                   _ladder_monotone),
)

CLAIMS_BY_ID: dict[str, Claim | CrossPairClaim] = {c.id: c for c in (*CLAIMS, *CROSS_PAIR_CLAIMS)}
"""Every claim, in the order the matrix lists them."""


def evaluate_claims(result: PairResult, pair: Pair) -> tuple[ClaimOutcome, ...]:
    """Every per-pair claim on one pair (the notebook API shows these)."""
    return tuple(claim.evaluate(result, pair) for claim in CLAIMS)
