"""The claims' predicates and the claims x pairs matrix, on a small real result of the zoo."""

from __future__ import annotations

import dataclasses

import pytest

from saetransfer import claims, engine
from saetransfer.registry import Expectation, get_pair, load_registry
from saetransfer.report.claims import DOES_NOT_HOLD, EVIDENCE, HOLDS, NOT_APPLICABLE, NOT_RUN, claims_matrix
from saetransfer.report.doc import Table
from saetransfer.report.records import Entry

TOKENS = 2048


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory):
    """The zoo's code pair (large shift) and its result on a small sample."""
    pair = get_pair(load_registry(), "tiny-gpt2__code")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAETRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
        return pair, engine.run(pair, engine.RunConfig(n_tokens=TOKENS, progress=False))


def _outcome(claim_id: str, result, pair) -> claims.ClaimOutcome:
    return next(c for c in claims.CLAIMS if c.id == claim_id).evaluate(result, pair)


def test_every_claim_holds_or_does_not_apply_on_the_code_pair(code):
    pair, result = code
    outcomes = claims.evaluate_claims(result, pair)
    assert [o.claim for o in outcomes] == [c.id for c in claims.CLAIMS]
    assert all(o.holds is not False for o in outcomes), [o.message for o in outcomes if o.holds is False]
    assert _outcome("identity-activations", result, pair).holds is None  # not the identity pair


def test_a_claim_that_does_not_hold_says_which_and_quotes_the_values(code):
    pair, result = code
    low_bos = dataclasses.replace(result.similarity, per_position_cosine=(0.1, *result.similarity.per_position_cosine[1:]))
    outcome = _outcome("bos-cosine-at-least-mean", dataclasses.replace(result, similarity=low_bos), pair)
    assert outcome.holds is False
    assert outcome.message == (f"BOS cosine is at least the mean (post §3): position 0 0.100 < mean "
                               f"{result.similarity.cosine_mean:.3f}")
    wrong = dataclasses.replace(pair, expected=Expectation(verdict="transfers", source="a test"))
    assert _outcome("verdict-as-expected", result, wrong).holds is False
    assert claims.gates(wrong) and not claims.gates(dataclasses.replace(pair, expected=None))


def test_not_judged_pairs_are_not_applicable(code):
    pair, result = code
    masking = dataclasses.replace(result.masking, judged=False, reasons=("outliers: 20 % of the base",))
    outcome = _outcome("finetune-not-better", dataclasses.replace(result, masking=masking), pair)
    assert outcome.holds is None and "not judged (outliers: 20 % of the base)" in outcome.message


def test_cross_pair_claims_need_enough_pairs(code):
    pair, result = code
    decision, per_pair = claims.CROSS_PAIR_CLAIMS[0].evaluate([(pair, result)])
    assert decision.holds is None and "rests on 1 ranked pairs" in decision.message
    assert per_pair[pair.test_id] == decision


def test_matrix_cells(code):
    pair, result = code
    holds = claims.ClaimOutcome("bos-cosine-at-least-mean", "post §3", True, "m")
    fails = claims.ClaimOutcome("finetune-not-better", "post §4", False, "finetune-not-better: m")
    na = claims.ClaimOutcome("identity-activations", "post §3", None, "m")
    expected = Entry("a-id", "a__x", result=result, expected={"verdict": "fails"}, claims=(holds, fails, na))
    evidence = Entry("b-id", "b__y", result=result, claims=(fails,))
    blocks = claims_matrix([expected, evidence, Entry("c-id", "c__z", skip_reason="needs --gpu")])
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.headers == ("claim", "section", "a__x", "b__y")  # pairs that did not run are listed below
    rows = {row[0]: row[2:] for row in table.rows}
    assert rows[claims.CLAIMS_BY_ID["bos-cosine-at-least-mean"].statement] == (HOLDS, NOT_RUN)
    assert rows[claims.CLAIMS_BY_ID["finetune-not-better"].statement] == (DOES_NOT_HOLD, EVIDENCE)
    assert rows[claims.CLAIMS_BY_ID["identity-activations"].statement] == (NOT_APPLICABLE, NOT_RUN)
    assert len(table.rows) == len(claims.CLAIMS_BY_ID)
    assert "c__z" in str(blocks[-1])


def test_a_norm_matched_expectation_is_compared_with_the_norm_matched_verdict(code):
    """Kissane et al.'s numbers rescale each model by its own factor: their verdicts speak of ours norm-matched."""
    pair, result = code
    nm = dataclasses.replace(result.norm_matching, verdict=dataclasses.replace(result.norm_matching.verdict,
                                                                               verdict="transfers"))
    shifted = dataclasses.replace(result, norm_matching=nm)  # fails as is, transfers after norm matching
    expect = Expectation(verdict="transfers", source="a norm-matched source", norm_matched=True)
    outcome = _outcome("verdict-as-expected", shifted, dataclasses.replace(pair, expected=expect))
    assert outcome.holds is True and "norm-matched verdict 'transfers'" in outcome.message
    plain = dataclasses.replace(expect, norm_matched=False)
    assert _outcome("verdict-as-expected", shifted, dataclasses.replace(pair, expected=plain)).holds is False
