"""The result of evaluating one pair: frozen, documented dataclasses all the way down, JSON-ready.

`PairResult` is what the findings, the verdict table, the report and the notebook API read, by
attribute. Sections are None when they were not computed (nothing past the tokenizer check for a pair
whose tokenizers differ). Every threshold-compared quantity carries a bootstrap interval
(`Estimate`); metrics carry a one-line description (`Record.describe`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from saetransfer.loading.tokenizers import Compatibility, TokenizerComparison
from saetransfer.registry import Verdict
from saetransfer.typed import Record, metric

METRIC_VERSION = 5
"""Bump when any metric's definition or the engine's masking changes: cached results are keyed on it.
3: per-model outlier thresholds, non-finite masking, the kept-position floor (`not judged`),
norm-matched evaluation, bootstrap intervals, chance baselines for the feature-level numbers.
4: a result is one evaluation of an entry (axis, dataset, direction): the reverse direction puts the
finetune in `base`, the SAE's own model; masking is per evaluation (its SAEs' non-finite positions).
5: worst-token tables rank a batch's near-ties of the k-th score (equal to `engine.TIE_DIGITS` digits) by
(row, position) too; before, a near-tie just below the k-th exact score was dropped."""

Grade = Literal["ok", "weak", "bad"]


@dataclass(frozen=True)
class Histogram(Record):
    """Counts over fixed bins; values outside [low, high] land in the edge bins (clipped)."""

    low: float
    high: float
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Estimate(Record):
    """A point value with its bootstrap interval (see `BootstrapSpec` for how it was drawn)."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class BootstrapSpec(Record):
    """How the intervals were drawn: a seeded, paired block bootstrap over the sample's rows."""

    n_resamples: int = metric("replicates drawn")
    level: float = metric("two-sided coverage of each interval (percentile method)")
    seed: int = metric("seed of the resampling generator")
    block_rows: int = metric("consecutive rows resampled together (packed rows can share a document)")
    n_blocks: int = metric("blocks in the sample")
    agreement: float = metric("share of replicates that must give a line's grade for it to stand")


@dataclass(frozen=True)
class Provenance(Record):
    """What was evaluated, on what, with which code: enough to reproduce the result."""

    pair_id: str
    test_id: str
    hook: str
    sae: str
    sae_architecture: str
    d_sae: int
    base: str
    finetune: str
    dataset: str
    dataset_revision: str | None
    token_sha256: str
    n_tokens: int
    n_rows: int
    context_size: int
    prepend_bos: bool
    seed: int
    device: str
    dtype: str
    versions: dict[str, str]
    metric_version: int
    trust_remote_code: bool = False
    warnings: tuple[str, ...] = ()
    """Things the user should know about this run (a tiny token budget, remote code)."""
    base_revision: str | None = None
    finetune_revision: str | None = None
    base_d_vocab: int | None = None
    finetune_d_vocab: int | None = None
    bootstrap: BootstrapSpec | None = None
    direction: str = "forward"
    """`forward`: the base SAE on the finetune; `reverse`: the finetune-native SAE on the base (then `base`
    names the finetune, the SAE's own model)."""
    dataset_name: str | None = None
    sae_trained_on: str | None = None
    """The SAE's training data (registry `trained_on`, else its cfg's `dataset_path`)."""


@dataclass(frozen=True)
class ModelMasking(Record):
    """Exclusions on one model. Each cause is counted over non-special positions."""

    threshold: float = metric("outlier threshold on ||x|| at the hook, in this model's own units")
    threshold_kind: str = metric("how the threshold was set")
    mean_norm: float = metric("mean ||x|| over the calibration batches' finite non-special positions")
    n_outlier: int = metric("positions with ||x|| above the threshold")
    n_nonfinite_activations: int = metric("positions whose hook activation has a NaN/inf")
    n_nonfinite_sae: int = metric("positions where an SAE's latents or reconstruction have a NaN/inf")
    n_nonfinite_logits: int = metric("positions whose clean or spliced logits have a NaN/inf")


@dataclass(frozen=True)
class Masking(Record):
    """Which positions every statistic is computed on (the union over both models), and whether enough remain."""

    n_positions: int = metric("positions in the sample")
    n_special: int = metric("BOS/EOS/PAD and other special-token positions")
    base: ModelMasking = metric("exclusions on the base model")
    finetune: ModelMasking = metric("exclusions on the finetune")
    n_outlier_union: int = metric("positions that are outliers on either model")
    n_excluded: int = metric("non-special positions excluded for any cause on either model")
    n_kept: int = metric("positions every statistic is computed on")
    kept_fraction: float = metric("kept / non-special positions")
    outlier_fraction: float = metric("outliers on either model / all positions")
    judged: bool = metric("enough positions kept to give a verdict (masking.KEPT_FLOOR)")
    reasons: tuple[str, ...] = metric("why not, per cause and model, when not judged")


@dataclass(frozen=True)
class Similarity(Record):
    """Base vs finetune activations at the hook, on identical token ids (finding 2)."""

    cosine_mean: float = metric("per-token cosine, mean over kept positions: the headline")
    cosine_mean_all_positions: float = metric("mean over every finite position, BOS included (the post's table)")
    cosine_mean_excluding_position_0: float = metric("every finite position but the first")
    distance_mean: float = metric("||a_ft - a_base||, mean over kept positions")
    relative_distance_mean: float = metric("||a_ft - a_base|| / ||a_base||, mean over kept positions")
    norm_ratio_mean: float = metric("||a_ft|| / ||a_base||, mean over kept positions")
    base_norm_mean: float = metric("||a_base||, mean over kept positions")
    finetune_norm_mean: float = metric("||a_ft||, mean over kept positions")
    per_position_cosine: tuple[float, ...] = metric("mean cosine per position (finite positions)")
    per_position_distance: tuple[float, ...] = metric("mean distance per position (finite positions)")
    cosine_histogram: Histogram = metric("kept positions' cosines")
    relative_distance_histogram: Histogram = metric("kept positions' relative distances")


@dataclass(frozen=True)
class SaeMetrics(Record):
    """One SAE spliced into one model, over the kept positions (SAELens definitions where it has one)."""

    n_tokens: int = metric("kept positions scored")
    explained_variance: float = metric("1 - E||x - x̂||² / (E||x||² - ||E x||²) (SAELens)")
    r2_global: float = metric("1 - Σ(x - x̂)² / Σ(x - x̄)², x̄ one scalar (the post's torcheval R²)")
    mse: float = metric("Σ_d (x - x̂)² per token, averaged (SAELens)")
    mse_per_element: float = metric("mse / d_in")
    cossim: float = metric("cos(x, x̂), mean per token")
    l2_ratio: float = metric("||x̂|| / ||x||, mean per token")
    l0: float = metric("active latents per token")
    l1: float = metric("Σ |latent| per token")
    dead_fraction: float = metric("latents that never fired on the sample")
    dense_fraction: float = metric("latents firing on more than 10 % of tokens")
    ce_clean: float = metric("next-token CE of the clean model, nats")
    ce_spliced: float = metric("CE with the SAE's reconstruction spliced in")
    ce_ablation: float = metric("CE with the hook zero-ablated")
    ce_delta: float = metric("CE spliced - clean (the loss delta), nats")
    ce_loss_score: float = metric("CE recovered: (CE_abl - CE_sae) / (CE_abl - CE_clean)")
    kl_spliced: float = metric("KL(clean || spliced), nats per position")
    kl_ablation: float = metric("KL(clean || zero-ablated)")
    kl_div_score: float = metric("KL score: (KL_abl - KL_sae) / KL_abl")
    dropped_vocab_mass_mean: float = metric("probability mass on vocabulary rows beyond the base's, mean")
    dropped_vocab_mass_max: float = metric("the same, max")
    flags: tuple[str, ...] = metric("why a metric is undefined")
    log10_density_histogram: Histogram = metric("log10 firing density per latent")
    activation_log10_histogram: Histogram = metric("log10 of non-zero latent activations")


@dataclass(frozen=True)
class SaeEvaluation(Record):
    """The base SAE on each model, and the references beside it."""

    base: SaeMetrics = metric("the base SAE on the base model (the sanity gate reads it)")
    finetune: SaeMetrics = metric("the base SAE on the finetune, exactly as its config prescribes")
    native_on_finetune: SaeMetrics | None = metric("an SAE trained on the finetune, on the finetune", default=None)
    norm_matched_finetune: SaeMetrics | None = metric(
        "the base SAE on the finetune's activations rescaled by NormMatching.scale (x̂ unscaled)", default=None)


@dataclass(frozen=True)
class Comparisons(Record):
    """Every quantity the verdict compares with a threshold, with its paired bootstrap interval."""

    ev_ratio: Estimate | None = metric("explained variance finetune / base", default=None)
    kl_score_drop: Estimate | None = metric("KL score base - finetune", default=None)
    ce_score_drop: Estimate | None = metric("CE recovered base - finetune", default=None)
    kl_native_gap: Estimate | None = metric("KL score native SAE - base SAE, on the finetune", default=None)
    ce_native_gap: Estimate | None = metric("CE recovered native SAE - base SAE, on the finetune", default=None)
    ce_delta_ratio: Estimate | None = metric("loss delta finetune / base", default=None)
    ce_delta_excess: Estimate | None = metric("loss delta finetune - base, nats", default=None)
    l0_ratio: Estimate | None = metric("L0 finetune / base", default=None)
    norm_ratio: Estimate | None = metric("||a_ft|| / ||a_base|| per token, mean", default=None)
    cosine: Estimate | None = metric("activation cosine, mean", default=None)


@dataclass(frozen=True)
class Line(Record):
    """One line of evidence of a verdict."""

    metric: str
    grade: Grade | None
    """None: reported, not counted."""
    reason: str
    uncertain: bool = False
    """The point grade was ok or bad but fewer than `agreement` of the replicates gave it: graded weak."""
    agreement: float | None = None
    """Share of bootstrap replicates that gave the point value's grade."""


@dataclass(frozen=True)
class VerdictResult(Record):
    verdict: Verdict
    reasons: tuple[str, ...]
    """The headline first, then one line per graded metric, then notes."""
    lines: tuple[Line, ...] = ()


@dataclass(frozen=True)
class NormMatching(Record):
    """The base SAE on the finetune after matching its activation norm to the base's (Kissane et al.)."""

    scale: float = metric("c = mean||x_base|| / mean||x_ft|| over the calibration batches' kept positions")
    n_positions: int = metric("calibration positions c was fitted on")
    verdict: VerdictResult = metric("the verdict with the norm-matched SAE metrics; reported beside, never instead")
    comparisons: Comparisons = metric("the norm-matched comparisons with their intervals")


@dataclass(frozen=True)
class Density(Record):
    log10_density_correlation: float = metric("Pearson r of log10 densities base vs finetune, dead at -10")
    base: tuple[float, ...] = metric("log10(density + 1e-10) per latent on the base")
    finetune: tuple[float, ...] = metric("the same on the finetune")


@dataclass(frozen=True)
class CorrelationSummary(Record):
    n: int = metric("latents summarised")
    n_nan: int = metric("latents whose correlation is undefined (constant on one side)")
    mean: float = metric("mean over defined correlations")
    median: float = metric("median over defined correlations")
    fraction_transferred: float = metric("share of all n with correlation >= 0.8 (undefined counts as not)")
    histogram: Histogram = metric("defined correlations")


@dataclass(frozen=True)
class ChanceBaseline(Record):
    """What the same statistic gives by chance or with sampling noise alone."""

    permuted: CorrelationSummary = metric(
        "regular latents against a different, randomly paired finetune latent (the floor)")
    split_half: tuple[CorrelationSummary, CorrelationSummary] = metric(
        "the base-vs-finetune statistic on the even and on the odd rows (sampling noise)")
    logit_random: CorrelationSummary = metric(
        "logit similarity of random directions with W_dec's row norms (the logit floor)")


@dataclass(frozen=True)
class RegularBucket(Record):
    n_total: int = metric("latents with log10 density in [-5, -1] on both models")
    latent_ids: tuple[int, ...] = metric("the seeded sample (at most 1000)")
    activation_correlation: CorrelationSummary = metric("per-latent Pearson r of activations base vs finetune")
    logit_correlation: CorrelationSummary = metric("corr(W_dec W_U_base, W_dec W_U_ft) per latent")


@dataclass(frozen=True)
class DeadBucket(Record):
    n_total: int = metric("latents dead on one model only")
    latent_ids: tuple[int, ...] = metric("the seeded sample (at most 100)")
    activation_error_mean: float = metric("mean |log10(x+1e-10) - log10(y+1e-10)| (the post's activation error)")
    activation_error_max: float = metric("the largest of those")
    other_model_max_activation: float = metric("largest activation on the model where it fires")
    other_model_firing_fraction_mean: float = metric("mean firing density there")
    logit_correlation: CorrelationSummary = metric("as for regular latents")


@dataclass(frozen=True)
class FeatureBuckets(Record):
    regular: RegularBucket
    dead_in_base: DeadBucket
    dead_in_finetune: DeadBucket


@dataclass(frozen=True)
class FeatureTransfer(Record):
    """Feature transfer by density bucket (finding 4), with chance baselines."""

    buckets: FeatureBuckets
    n_dead_in_both: int = metric("latents that never fired on either model")
    W_U_frobenius_ratio: float = metric("||W_U base|| / ||W_U ft|| over the shared vocabulary")
    W_U_frobenius_distance: float = metric("||W_U base - W_U ft||")
    chance: ChanceBaseline | None = metric("floors and noise for the numbers above", default=None)
    caveat: str = ("Logit similarity shares one W_dec, so it mostly measures the change of W_U (the post, §5.2); "
                   "activation correlation follows the encoder direction only.")


@dataclass(frozen=True)
class TokenContext(Record):
    score: float
    row: int
    position: int
    token: str
    context: str
    next: str


@dataclass(frozen=True)
class WorstTokens(Record):
    lowest_cosine: tuple[TokenContext, ...] = metric("lowest activation cosine")
    highest_kl: tuple[TokenContext, ...] = metric("highest KL(clean || spliced) on the finetune")
    worst_reconstruction: tuple[TokenContext, ...] = metric("worst ||x - x̂||² / ||x||² on the finetune")
    outliers: tuple[TokenContext, ...] = metric("largest norm outliers (excluded from every metric)")


@dataclass(frozen=True)
class PairResult(Record):
    """Everything the findings and the report read about one registry entry."""

    provenance: Provenance
    tokenizer: TokenizerComparison
    """The post's vocabulary comparison (sizes, keys only in one side, mismatched ids, good-token %)."""
    compatibility: Compatibility
    """Whether the evaluation sample's ids mean the same in both tokenizers, and why."""
    verdict: VerdictResult
    masking: Masking | None = None
    similarity: Similarity | None = None
    sae: SaeEvaluation | None = None
    comparisons: Comparisons | None = None
    norm_matching: NormMatching | None = None
    density: Density | None = None
    features: FeatureTransfer | None = None
    worst_tokens: WorstTokens | None = None

    @property
    def comparable(self) -> bool:
        return self.compatibility.compatible

    @property
    def judged(self) -> bool:
        return self.masking is not None and self.masking.judged

    def to_json(self) -> str:
        # NaN/Infinity are written as Python's json writes them (JS literals): undefined metrics stay
        # floats on the way back, and a decoded token that reads "nan" stays a string.
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PairResult:
        return cls.from_dict(json.loads(text))
