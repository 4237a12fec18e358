"""Verdict rules, grounded in published numbers (the post's §4.3 and Kissane et al.'s tables).

Sources: post = Kutsyk et al. 2024, "Do Sparse Autoencoders (SAEs) transfer across base and finetuned
language models?" (LessWrong, bsXPTiAhhwt5nwBW3), §4.3-§5 tables; Kissane = Kissane et al. 2024, "SAEs
(usually) transfer between base and chat models" (Alignment Forum), numbers from
`results/sae_transfer_results_post.json` and `alpaca_sae_transfer_results.json` of
github.com/ckkissane/sae-transfer. In a Kissane row, `base` is the SAE on the model it was trained
on, `finetune` the same SAE on the other model, `native` the other model's own SAE.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saetransfer import verdict as verdict_module
from saetransfer.results import Comparisons, Estimate
from saetransfer.verdict import VerdictInputs, SaeQuality, Thresholds, VerdictResult, decide, decide_with_uncertainty

Q = SaeQuality
RANK = {"fails": 0, "partial": 1, "transfers": 2}

# Kissane et al., pile-style data, outliers filtered (their results table): SAE on model.
MISTRAL_BASE_ON_BASE = Q(explained_variance=0.682, l0=95.2, ce_loss_score=0.987, ce_delta=0.114, d_sae=131072)
MISTRAL_BASE_ON_CHAT = Q(explained_variance=0.610, l0=126.1, ce_loss_score=0.989, ce_delta=0.098)
MISTRAL_CHAT_ON_CHAT = Q(explained_variance=0.692, l0=101.7, ce_loss_score=0.990, ce_delta=0.085, d_sae=131072)
MISTRAL_CHAT_ON_BASE = Q(explained_variance=0.527, l0=72.2, ce_loss_score=0.968, ce_delta=0.280)
QWEN_BASE_ON_BASE = Q(explained_variance=0.745, l0=22.2, ce_loss_score=0.966, ce_delta=0.363, d_sae=32768)
QWEN_BASE_ON_CHAT = Q(explained_variance=0.593, l0=18.5, ce_loss_score=0.976, ce_delta=0.239)
QWEN_CHAT_ON_CHAT = Q(explained_variance=0.761, l0=27.9, ce_loss_score=0.958, ce_delta=0.421, d_sae=32768)
QWEN_CHAT_ON_BASE = Q(explained_variance=0.700, l0=44.1, ce_loss_score=0.965, ce_delta=0.374)
GEMMA_BASE_ON_BASE = Q(explained_variance=0.776, l0=39.3, ce_loss_score=0.956, ce_delta=0.446, d_sae=32768)
GEMMA_BASE_ON_IT = Q(explained_variance=-14.99, l0=219.1, ce_loss_score=0.253, ce_delta=6.98)
GEMMA_IT_ON_IT = Q(explained_variance=0.791, l0=60.1, ce_loss_score=0.994, ce_delta=0.059, d_sae=32768)
GEMMA_IT_ON_BASE = Q(explained_variance=-2662.0, l0=6928.7, ce_loss_score=-8.32, ce_delta=96.2, d_sae=32768)
# The post §4.3 (global R² as explained variance; loss delta = reconstruction CE - clean CE).
POST_MISTRAL_BASE = Q(explained_variance=0.67, l0=83.37, ce_delta=0.15, d_sae=65536)
POST_MISTRAL_METAMATH = Q(explained_variance=0.58, l0=90.22, ce_delta=0.16)
POST_GEMMA_BASE = Q(explained_variance=0.97, l0=53.59, ce_delta=0.51, d_sae=16384)
POST_GEMMA_PYTHON = Q(explained_variance=-10.27, l0=84.74, ce_delta=4.21)
# Other base SAEs that work: GPT-2 small in the post's code (github.com/tommasomncttn/SAE-Transferability,
# notebooks/4_sae_eval.ipynb outputs) and this project's early CPU feasibility run (TopK, k=32, d_sae 1024;
# unpublished, numbers as measured).
GPT2_SMALL_BASE = Q(explained_variance=0.933, l0=49.5, ce_delta=0.15, d_sae=24576)
PROTOTYPE_TOPK_BASE = Q(explained_variance=0.982, l0=32.0, ce_loss_score=0.998, ce_delta=0.005, d_sae=1024)


PUBLISHED = [
    pytest.param(POST_MISTRAL_BASE, POST_MISTRAL_METAMATH, None, "transfers",
                 ["ratio 0.866 >= 0.75", "1.07x the base's", "not measured on either model: KL score, CE recovered"],
                 id="post-mistral-7b__metamath"),
    pytest.param(MISTRAL_BASE_ON_BASE, MISTRAL_BASE_ON_CHAT, MISTRAL_CHAT_ON_CHAT, "transfers",
                 ["gap 0.001 <= 0.02", "ratio 1.32 within [0.5, 2]", "ratio 0.894 >= 0.75"],
                 id="kissane-mistral-7b__instruct"),
    pytest.param(QWEN_BASE_ON_BASE, QWEN_BASE_ON_CHAT, QWEN_CHAT_ON_CHAT, "transfers",
                 ["gap -0.018 <= 0.02", "ratio 0.796 >= 0.75"],
                 id="kissane-qwen1.5-0.5b__chat"),
    pytest.param(QWEN_CHAT_ON_CHAT, QWEN_CHAT_ON_BASE, QWEN_BASE_ON_BASE, "transfers",
                 ["ratio 1.58 within [0.5, 2]"],
                 id="kissane-qwen-chat-sae__on-base"),
    # Judgement call: Kissane report the reverse direction transfers too, but the chat SAE's loss cost
    # on the base model is 3.3x its cost on its own model (+0.195 nats), EV ratio 0.76 is at the edge
    # and CE recovered is 0.019 below the native SAE, at the far end of Kissane's 0.01-0.02 band.
    pytest.param(MISTRAL_CHAT_ON_CHAT, MISTRAL_CHAT_ON_BASE, MISTRAL_BASE_ON_BASE, "partial",
                 ["partial: weak on loss delta", "3.29x the base's, +0.195 nats", "gap 0.019 <= 0.02"],
                 id="kissane-mistral-chat-sae__on-base"),
    pytest.param(POST_GEMMA_BASE, POST_GEMMA_PYTHON, None, "fails",
                 ["fails: bad on explained variance, loss delta", "ratio -10.6 < 0.5", "8.25x the base's"],
                 id="post-gemma-2b__python-codes"),
    pytest.param(GEMMA_BASE_ON_BASE, GEMMA_BASE_ON_IT, GEMMA_IT_ON_IT, "fails",
                 ["fails: bad on explained variance, CE recovered, loss delta, L0", "ratio 5.58 outside [0.25, 4]",
                  "drop 0.703 > 0.1"],
                 id="kissane-gemma-2b__it"),
    # Chat-data evaluation (rollout tokens): nothing measured for the base SAE on the base model there.
    pytest.param(Q(), Q(explained_variance=-45.2, l0=371.0, ce_loss_score=-0.541, d_sae=32768),
                 Q(explained_variance=0.708, l0=80.0, ce_loss_score=0.967), "fails",
                 ["no base value to compare", "gap 1.51 > 0.1", "nothing measured on the base"],
                 id="kissane-gemma-2b__it-rollouts-no-base"),
    pytest.param(Q(), Q(explained_variance=0.498, l0=190.0, ce_loss_score=0.974, d_sae=131072),
                 Q(explained_variance=0.545, l0=169.0, ce_loss_score=0.977), "partial",
                 ["partial: insufficient evidence (ok: CE recovered)", "explained variance 0.498 on the finetune: "
                  "no base value to compare, not counted"],
                 id="kissane-mistral-7b__instruct-rollouts-no-base"),
]


@pytest.mark.parametrize(("base", "finetune", "native", "expected", "fragments"), PUBLISHED)
def test_published_pairs(base: SaeQuality, finetune: SaeQuality, native: SaeQuality | None, expected: str,
                         fragments: list[str]) -> None:
    result = decide(base=base, finetune=finetune, native=native, architecture="standard")
    text = "\n".join(result.reasons)
    assert result.verdict == expected, text
    for fragment in fragments:
        assert fragment in text


@pytest.mark.parametrize("quality", [
    pytest.param(POST_MISTRAL_BASE, id="post-mistral-7b"),
    pytest.param(POST_GEMMA_BASE, id="post-gemma-2b"),
    pytest.param(MISTRAL_BASE_ON_BASE, id="kissane-mistral-7b"),
    pytest.param(MISTRAL_CHAT_ON_CHAT, id="kissane-mistral-7b-instruct"),
    pytest.param(QWEN_BASE_ON_BASE, id="kissane-qwen1.5-0.5b"),
    pytest.param(QWEN_CHAT_ON_CHAT, id="kissane-qwen1.5-0.5b-chat"),
    pytest.param(GEMMA_BASE_ON_BASE, id="kissane-gemma-2b"),
    pytest.param(GEMMA_IT_ON_IT, id="kissane-gemma-2b-it"),
    pytest.param(GPT2_SMALL_BASE, id="repo-gpt2-small"),
    pytest.param(PROTOTYPE_TOPK_BASE, id="cpu-prototype-topk"),
])
def test_published_base_saes_pass_the_gate_and_identity_transfers(quality: SaeQuality) -> None:
    result = decide(base=quality, finetune=quality, native=quality, architecture="standard")
    assert result.verdict == "transfers", result.reasons


@pytest.mark.parametrize(("base", "fragment"), [
    pytest.param(Q(explained_variance=-0.5, l0=40.0, kl_div_score=0.9, d_sae=4096), "explained variance -0.5 on the base itself < 0.3",
                 id="negative-ev"),
    # Kissane's gemma-it SAE read on gemma-2b: what an SAE at the wrong model (or hook) looks like.
    pytest.param(GEMMA_IT_ON_BASE, "CE recovered -8.32 on the base itself outside [0.7, 1.05]", id="wrong-model-sae"),
    pytest.param(Q(explained_variance=0.8, ce_loss_score=1.2), "CE recovered 1.2 on the base itself", id="ce-recovered-above-1"),
    pytest.param(Q(explained_variance=0.8, kl_div_score=0.3), "KL score 0.3 on the base itself < 0.7", id="low-kl-score"),
    pytest.param(Q(explained_variance=0.8, ce_delta=3.0), "loss delta 3 nats on the base itself", id="loss-delta-3-nats"),
    pytest.param(Q(explained_variance=0.8, l0=9000.0, d_sae=16384), "0.549 of d_sae=16384 > 0.25", id="dense-l0"),
    pytest.param(Q(explained_variance=0.8, l0=0.0, d_sae=16384), "L0 0 on the base itself < 1", id="all-dead"),
    pytest.param(Q(explained_variance=math.nan, l0=40.0), "explained variance on the base is NaN", id="nan-ev"),
    pytest.param(Q(explained_variance=1.3), "1.3, impossible (at most 1)", id="ev-above-1"),
    pytest.param(Q(explained_variance=0.8, l0=5000.0, d_sae=4096), "impossible (outside [0, d_sae=4096])", id="l0-above-d-sae"),
])
def test_broken_base_sae_is_unusable_even_when_equally_broken_on_the_finetune(base: SaeQuality, fragment: str) -> None:
    result = decide(base=base, finetune=base, architecture="standard")
    assert result.verdict == "unusable"
    assert any(fragment in reason for reason in result.reasons), result.reasons


GOOD = Q(explained_variance=0.9, l0=32.0, kl_div_score=0.95, ce_loss_score=0.97, ce_delta=0.1, d_sae=1024)


def test_topk_ignores_an_l0_ratio_of_one_and_fails_on_ev_collapse() -> None:
    finetune = Q(explained_variance=0.2, l0=32.0, kl_div_score=0.94, ce_loss_score=0.97, ce_delta=0.1)
    result = decide(base=GOOD, finetune=finetune, architecture="topk")
    assert result.verdict == "fails"
    assert "L0 ratio ignored (32 vs 32 on the base, ratio 1): a TopK SAE fixes L0 at k, so it carries no signal" in result.reasons
    assert result.reasons[0] == "fails: bad on explained variance"


@pytest.mark.parametrize(("architecture", "expected"), [
    ("topk", "transfers"), ("BatchTopK", "transfers"), ("matryoshka_batchtopk", "transfers"),
    ("standard", "fails"), ("jumprelu", "fails"), ("gated", "fails"), ("relu", "fails"),
])
def test_l0_blow_up_counts_only_for_free_l0_architectures(architecture: str, expected: str) -> None:
    finetune = Q(explained_variance=0.85, l0=160.0, kl_div_score=0.94, ce_loss_score=0.96, ce_delta=0.12)
    assert decide(base=GOOD, finetune=finetune, architecture=architecture).verdict == expected


def test_unknown_architecture_is_judged_like_relu_and_says_so() -> None:
    result = decide(base=GOOD, finetune=GOOD, architecture="matching_pursuit")
    assert result.verdict == "transfers"
    assert "architecture 'matching_pursuit' is not known: its L0 is judged as free (like ReLU)" in result.reasons


def test_identity_transfers_with_every_line_ok() -> None:
    result = decide(base=GOOD, finetune=GOOD, native=GOOD, architecture="standard")
    assert result.verdict == "transfers"
    assert result.reasons[0] == "transfers: ok on explained variance, KL score, CE recovered, loss delta, L0"


def test_ev_ratio_between_the_bands_is_partial() -> None:
    # Synthetic boundary vector: EV at 0.70 of the base's (in [0.5, 0.75)), everything else as on the base.
    result = decide(base=GOOD, finetune=replace(GOOD, explained_variance=0.63), architecture="standard")
    assert result.verdict == "partial"
    assert "explained variance 0.63 vs 0.9 on the base (ratio 0.7 in [0.5, 0.75)) (weak)" in result.reasons


def test_kl_catches_what_ev_flatters() -> None:
    # Seen while designing the zoo: on a base -> code ladder EV first rose (0.81 -> 0.86) while the model moved away.
    base = Q(explained_variance=0.81, kl_div_score=0.95, d_sae=1024)
    result = decide(base=base, finetune=Q(explained_variance=0.86, kl_div_score=0.70), architecture="topk")
    assert result.verdict == "fails"
    assert "KL score 0.7 vs 0.95 on the base (drop 0.25 > 0.1) (bad)" in result.reasons


def test_ce_recovered_above_one_is_flagged_and_never_enough_alone() -> None:
    # The early CPU feasibility run's code finetune: CE recovered 1.17 (the splice pulls it back toward the base).
    base = Q(ce_loss_score=0.998, d_sae=1024)
    pulled = decide(base=base, finetune=Q(ce_loss_score=1.17), architecture="topk")
    assert pulled.verdict == "partial"
    assert "pulling it back toward the base" in pulled.reasons[1]
    alone = decide(base=base, finetune=Q(ce_loss_score=0.995), architecture="topk")
    assert alone.verdict == "partial"
    assert alone.reasons[0].startswith("partial: insufficient evidence (ok: CE recovered)")


def test_negative_loss_delta_is_flagged() -> None:
    result = decide(base=GOOD, finetune=replace(GOOD, ce_delta=-0.35), architecture="standard")
    assert result.verdict == "partial"
    assert result.reasons[0] == "partial: weak on loss delta (in band)"


def test_ev_alone_is_insufficient() -> None:
    result = decide(base=Q(explained_variance=0.9), finetune=Q(explained_variance=0.9), architecture="topk")
    assert result.verdict == "partial"
    assert "insufficient evidence (ok: explained variance)" in result.reasons[0]


def test_infinite_loss_on_the_finetune_fails() -> None:
    # The post's Gemma finetune produced inf substitution losses in fp16 (the post's code,
    # `notebooks/task4_gemma.ipynb` at commit b7297db: substitution mean inf).
    result = decide(base=GOOD, finetune=replace(GOOD, ce_delta=math.inf), architecture="standard")
    assert result.verdict == "fails"
    assert result.reasons[0] == "fails: bad on loss delta"


def test_nan_on_the_finetune_is_missing_with_a_flag() -> None:
    finetune = replace(GOOD, explained_variance=math.nan)
    result = decide(base=GOOD, finetune=finetune, architecture="standard")
    assert result.verdict == "transfers"  # KL, CE, loss delta and L0 still decide
    assert "explained variance on the finetune is NaN (undefined): treated as not measured" in result.reasons
    only_ev = decide(base=Q(explained_variance=0.9, l0=32.0), finetune=Q(explained_variance=math.nan, l0=32.0),
                     architecture="standard")
    assert only_ev.verdict == "partial"  # NaN is never a pass


def test_all_nan_finetune_is_partial_with_every_flag() -> None:
    nan = Q(explained_variance=math.nan, l0=math.nan, ce_loss_score=math.nan, kl_div_score=math.nan, ce_delta=math.nan)
    result = decide(base=GOOD, finetune=nan, architecture="standard")
    assert result.verdict == "partial"
    assert result.reasons[0] == "partial: insufficient evidence (ok: nothing); transfers needs 2 graded lines, " \
        "one of them explained variance or KL score, because CE-based scores alone can be fooled"
    assert sum("NaN (undefined)" in r for r in result.reasons) == 5


def test_all_none_finetune_is_partial_and_lists_what_is_missing() -> None:
    result = decide(base=GOOD, finetune=Q(), architecture="standard")
    assert result.verdict == "partial"
    assert result.reasons[-1] == "not measured on the finetune: explained variance, KL score, CE recovered, loss delta, L0"


def test_nothing_measured_anywhere_does_not_crash() -> None:
    result = decide(base=Q(), finetune=Q(), native=Q(), architecture="")
    assert result.verdict == "partial"
    assert "nothing measured on the base: the sanity gate could not run" in result.reasons


def test_native_sae_that_fails_the_floors_is_not_used() -> None:
    result = decide(base=GOOD, finetune=GOOD, native=Q(ce_loss_score=0.2, kl_div_score=math.nan), architecture="topk")
    assert result.verdict == "transfers"
    assert "native SAE's CE recovered 0.2 fails the base floors: not used" in result.reasons
    assert "native SAE's KL score NaN (undefined) fails the base floors: not used" in result.reasons


@pytest.mark.parametrize(("reason", "expected"), [
    ("vocabularies differ in 12946 ids (good tokens 0.4 %)", "vocabularies differ in 12946 ids (good tokens 0.4 %)"),
    ("", "the tokenizers differ: the evaluation ids do not mean the same in both models"),
])
def test_not_comparable(reason: str, expected: str) -> None:
    result = decide(base=GOOD, finetune=GOOD, architecture="standard", comparable=False, not_comparable_reason=reason)
    assert result == VerdictResult("not comparable", (expected,))


def test_to_dict_is_builtins_only() -> None:
    result = decide(base=POST_GEMMA_BASE, finetune=POST_GEMMA_PYTHON, architecture="standard")
    data = result.to_dict()
    assert data == json.loads(json.dumps(data))
    assert data["verdict"] == "fails" and isinstance(data["reasons"], list)


def test_custom_thresholds_move_the_verdict() -> None:
    strict = Thresholds(ce_delta_ratio_ok=1.5, ce_delta_excess_ok=0.05)
    assert decide(base=POST_MISTRAL_BASE, finetune=replace(POST_MISTRAL_METAMATH, ce_delta=0.25),
                  architecture="standard", thresholds=strict).verdict == "partial"


def test_inconsistent_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="milder"):
        Thresholds(ev_ratio_ok=0.4)
    with pytest.raises(ValueError, match="positive"):
        Thresholds(base_min_explained_variance=0.0)


# --------------------------------------------------------------------------------------------------
# properties

ARCHS = st.sampled_from(["standard", "relu", "jumprelu", "gated", "topk", "batchtopk", "mystery"])
FREE_L0_ARCHS = st.sampled_from(["standard", "relu", "jumprelu", "gated"])


def opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


VALID_BASE = st.builds(
    SaeQuality, explained_variance=st.floats(0.3, 1.0), kl_div_score=st.floats(0.7, 1.0),
    l0=opt(st.floats(1.0, 256.0)), ce_loss_score=opt(st.floats(0.7, 1.05)), ce_delta=opt(st.floats(-0.05, 1.5)),
    d_sae=opt(st.integers(1024, 65536)))
ANY_BASE = VALID_BASE | st.builds(
    SaeQuality, explained_variance=opt(st.floats(-5.0, 1.0)), kl_div_score=opt(st.floats(-1.0, 1.0)),
    l0=opt(st.floats(0.0, 2000.0)), ce_loss_score=opt(st.floats(-2.0, 1.5)), ce_delta=opt(st.floats(-1.0, 5.0)),
    d_sae=opt(st.integers(1024, 65536)))
FINETUNE = st.builds(
    SaeQuality, explained_variance=opt(st.floats(-50.0, 1.0)), kl_div_score=opt(st.floats(-3.0, 1.0)),
    l0=opt(st.floats(0.0, 1000.0)), ce_loss_score=opt(st.floats(-3.0, 1.5)), ce_delta=opt(st.floats(-1.0, 10.0)))
NATIVE = opt(st.builds(SaeQuality, ce_loss_score=opt(st.floats(0.5, 1.1)), kl_div_score=opt(st.floats(0.5, 1.0))))
ANY_FLOAT = opt(st.floats(allow_nan=True, allow_infinity=True))
ANYTHING = st.builds(SaeQuality, explained_variance=ANY_FLOAT, l0=ANY_FLOAT, ce_loss_score=ANY_FLOAT,
                     kl_div_score=ANY_FLOAT, ce_delta=ANY_FLOAT, d_sae=opt(st.integers(-5, 10**6)))


# A few dozen examples per property keep the module under 5 s on a 2-core box; decide() takes ~50 us.
FAST = settings(max_examples=40)


def not_better(worse: VerdictResult, better: VerdictResult) -> bool:
    if "unusable" in (worse.verdict, better.verdict):  # the gate reads only the base, which is shared
        return worse.verdict == better.verdict
    return RANK[worse.verdict] <= RANK[better.verdict]


@FAST
@given(quality=VALID_BASE, architecture=ARCHS, with_native=st.booleans())
def test_identity_always_transfers(quality: SaeQuality, architecture: str, with_native: bool) -> None:
    native = quality if with_native else None
    result = decide(base=quality, finetune=quality, native=native, architecture=architecture)
    assert result.verdict == "transfers", result.reasons


@FAST
@given(base=ANY_BASE, finetune=FINETUNE, native=NATIVE, architecture=ARCHS,
       evs=st.tuples(st.floats(-50.0, 1.0), st.floats(-50.0, 1.0)))
def test_lower_finetune_ev_never_improves_the_verdict(base: SaeQuality, finetune: SaeQuality, native: SaeQuality | None,
                                                      architecture: str, evs: tuple[float, float]) -> None:
    low, high = sorted(evs)
    results = [decide(base=base, finetune=replace(finetune, explained_variance=ev), native=native,
                      architecture=architecture) for ev in (low, high)]
    assert not_better(*results)


@FAST
@given(base=ANY_BASE, finetune=FINETUNE, native=NATIVE, architecture=ARCHS,
       kls=st.tuples(st.floats(-3.0, 1.0), st.floats(-3.0, 1.0)))
def test_lower_finetune_kl_score_never_improves_the_verdict(base: SaeQuality, finetune: SaeQuality,
                                                            native: SaeQuality | None, architecture: str,
                                                            kls: tuple[float, float]) -> None:
    low, high = sorted(kls)
    results = [decide(base=base, finetune=replace(finetune, kl_div_score=kl), native=native,
                      architecture=architecture) for kl in (low, high)]
    assert not_better(*results)


@FAST
@given(base=ANY_BASE, finetune=FINETUNE, architecture=FREE_L0_ARCHS,
       ratios=st.tuples(st.floats(1.0, 300.0), st.floats(1.0, 300.0)))
def test_larger_l0_blow_up_never_improves_the_verdict(base: SaeQuality, finetune: SaeQuality, architecture: str,
                                                      ratios: tuple[float, float]) -> None:
    base_l0 = base.l0 if base.l0 is not None and base.l0 >= 1 else 20.0
    base = replace(base, l0=base_l0)
    small, large = sorted(ratios)
    cap = float(base.d_sae or math.inf)  # L0 above d_sae is impossible, hence dropped as a measurement error
    results = [decide(base=base, finetune=replace(finetune, l0=min(base_l0 * r, cap)), architecture=architecture)
               for r in (large, small)]
    assert not_better(*results)


@FAST
@given(base=ANY_BASE, finetune=FINETUNE, native=NATIVE, architecture=ARCHS,
       field=st.sampled_from(["explained_variance", "l0", "ce_loss_score", "kl_div_score", "ce_delta"]))
def test_nan_on_the_finetune_decides_like_missing(base: SaeQuality, finetune: SaeQuality, native: SaeQuality | None,
                                                  architecture: str, field: str) -> None:
    nan = decide(base=base, finetune=replace(finetune, **{field: math.nan}), native=native, architecture=architecture)
    none = decide(base=base, finetune=replace(finetune, **{field: None}), native=native, architecture=architecture)
    assert nan.verdict == none.verdict


@FAST
@given(base=ANYTHING, finetune=ANYTHING, native=opt(ANYTHING), architecture=st.text(max_size=12))
def test_never_crashes_and_always_explains(base: SaeQuality, finetune: SaeQuality, native: SaeQuality | None,
                                           architecture: str) -> None:
    result = decide(base=base, finetune=finetune, native=native, architecture=architecture)
    assert result.verdict in ("transfers", "partial", "fails", "unusable")
    assert result.reasons and all(isinstance(r, str) and r for r in result.reasons)
    json.dumps(result.to_dict(), allow_nan=False)


@FAST
@given(base=ANYTHING, finetune=ANYTHING, native=opt(ANYTHING), architecture=ARCHS)
def test_unexplained_verdicts_grade_alike(base: SaeQuality, finetune: SaeQuality, native: SaeQuality | None,
                                          architecture: str) -> None:
    """`explain=False` (the bootstrap replicates) leaves the numbers out of the reasons, and nothing else."""
    said, unsaid = (decide(base=base, finetune=finetune, native=native, architecture=architecture, explain=e)
                    for e in (True, False))
    assert unsaid.verdict == said.verdict
    assert [(line.metric, line.grade) for line in unsaid.lines] == [(line.metric, line.grade) for line in said.lines]


# ---------------------------------------------------------------------------------------------
# the masking floor and the bootstrap


def test_not_judged_comes_before_the_gate() -> None:
    """A pair the mask emptied is `not judged`, never `unusable`: the SAE is not blamed for the mask."""
    broken = Q(explained_variance=float("nan"), l0=0.0, ce_loss_score=float("nan"), ce_delta=float("nan"))
    result = decide(base=broken, finetune=broken, architecture="standard",
                    not_judged_reasons=("norm outliers on the finetune: 99.2% of its positions",))
    assert result.verdict == "not judged"
    assert "99.2%" in result.reasons[1]


def _evidence(ev_ft: float) -> VerdictInputs:
    return VerdictInputs(base=replace(MISTRAL_BASE_ON_BASE, explained_variance=0.8),
                    finetune=replace(MISTRAL_BASE_ON_CHAT, explained_variance=ev_ft, l0=95.2, ce_delta=0.114))


def test_a_line_whose_replicates_straddle_its_threshold_is_weak_uncertain() -> None:
    """EV ratio 0.76 >= 0.75 (ok) but a third of the replicates fall below: weak (uncertain), not ok."""
    point = _evidence(0.608)
    replicates = [_evidence(ev) for ev in [0.59] * 330 + [0.61] * 670]
    comparisons = Comparisons(ev_ratio=Estimate(0.76, 0.737, 0.7625))
    result = decide_with_uncertainty(point, replicates, comparisons, architecture="standard", level=0.95)
    ev = next(line for line in result.lines if line.metric == "explained variance")
    assert ev.grade == "weak" and ev.uncertain and ev.agreement == pytest.approx(0.67)
    assert "[95% interval: ratio 0.76 [0.737, 0.762]]" in ev.reason
    assert result.verdict == "partial" and "(uncertain)" in result.reasons[0]


def test_replicates_that_agree_keep_the_grade() -> None:
    point = _evidence(0.7)
    result = decide_with_uncertainty(point, [_evidence(0.69), _evidence(0.71)] * 50, Comparisons(),
                                     architecture="standard", level=0.95)
    assert result == replace(decide(base=point.base, finetune=point.finetune, architecture="standard"),
                             lines=result.lines, reasons=result.reasons)
    assert all(not line.uncertain and line.agreement == 1.0 for line in result.lines if line.grade)
    assert result.verdict == "transfers"


def test_a_weak_line_is_in_band_whatever_its_replicates_say() -> None:
    """`weak (in band)` is the point value between the lines; uncertainty only ever demotes ok or bad."""
    point = _evidence(0.5)  # ratio 0.625: in [0.5, 0.75)
    result = decide_with_uncertainty(point, [_evidence(0.7)] * 10, Comparisons(), architecture="standard",
                                     level=0.95)
    assert "explained variance (in band)" in result.reasons[0]
