"""Metric definitions as pure functions and streaming accumulators.

Every accumulator takes one batch at a time and keeps only fixed-size float64 sums, so memory does
not grow with the token count. Definitions (SAELens 6.45.2+ where it has one, see peers.md §2.1):

- explained variance (SAELens): 1 - E||x - x̂||² / (E||x||² - ||E x||²), over kept tokens.
- global R² (the post, torcheval on flattened tensors): 1 - Σ(x - x̂)² / Σ(x - x̄)², x̄ one scalar.
- mse: Σ_d (x - x̂)² per token, averaged (SAELens); mse_per_element divides by d_in too.
- L0: mean count of latents != 0 per token. Density: fraction of kept tokens where a latent != 0.
- CE recovered: (CE_abl - CE_sae) / (CE_abl - CE_clean); KL score: (KL_abl - KL_sae) / KL_abl.
  Both are NaN (with a flag) when the denominator is below `UNDEFINED_DENOMINATOR`, never a
  division by a tiny number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

UNDEFINED_DENOMINATOR = 1e-6
"""A ratio whose denominator is below this (nats) is undefined: the ablation baseline equals clean."""
DENSE_THRESHOLD = 0.1
"""A latent firing on more than 10 % of tokens is dense (the post, §2.2)."""
LOG_EPS = 1e-10
"""The seed's epsilon for log10 densities and log activations; a dead latent sits at -10."""


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or NaN when |denominator| < UNDEFINED_DENOMINATOR (or non-finite)."""
    if not math.isfinite(numerator) or not math.isfinite(denominator) or abs(denominator) < UNDEFINED_DENOMINATOR:
        return math.nan
    return numerator / denominator


def cosine(a: Float[Tensor, "*tok d"], b: Float[Tensor, "*tok d"]) -> Float[Tensor, "*tok"]:
    """Per-token cosine similarity in fp32 (zero vectors give 0, as F.normalize does)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def pearson_from_sums(n: float, sx: Tensor, sy: Tensor, sxx: Tensor, syy: Tensor, sxy: Tensor) -> Tensor:
    """Pearson r per column from running sums (float64); NaN where either side is constant."""
    cov = n * sxy - sx * sy
    var_x = n * sxx - sx * sx
    var_y = n * syy - sy * sy
    denom = torch.sqrt(var_x.clamp(min=0) * var_y.clamp(min=0))
    r = cov / denom
    constant = (var_x <= 1e-12 * n * n) | (var_y <= 1e-12 * n * n)
    return torch.where(constant, torch.full_like(r, math.nan), r.clamp(-1.0, 1.0))


@dataclass(frozen=True)
class Histogram:
    """Counts over fixed bins; values outside [low, high] land in the edge bins (clipped)."""

    low: float
    high: float
    counts: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "counts": list(self.counts)}


class HistogramAccumulator:
    def __init__(self, low: float, high: float, bins: int = 100) -> None:
        self.low, self.high, self.bins = low, high, bins
        self.counts = torch.zeros(bins, dtype=torch.float64)

    def update(self, values: Float[Tensor, " n"]) -> None:
        values = values.detach().double().clamp(self.low, self.high).cpu()
        self.counts += torch.histc(values, bins=self.bins, min=self.low, max=self.high)

    def result(self) -> Histogram:
        return Histogram(self.low, self.high, tuple(int(c) for c in self.counts.tolist()))


# ---------------------------------------------------------------------------------------------
# activation similarity (finding 2)


@dataclass(frozen=True)
class SimilarityResult:
    """Base vs finetune activations at the hook, on identical token ids."""

    cosine_mean: float
    """Over kept positions (no BOS/special tokens, no norm outliers): the headline number."""
    cosine_stderr: float
    """Standard error of cosine_mean from per-row means (rows are independent documents)."""
    cosine_mean_all_positions: float
    """Over every position, BOS included: what the seed and the post's table computed."""
    cosine_mean_excluding_position_0: float
    """Every position but the first (outliers included): the post's table without the BOS artefact."""
    distance_mean: float
    relative_distance_mean: float
    """||a_ft - a_base|| / ||a_base||."""
    norm_ratio_mean: float
    """||a_ft|| / ||a_base||."""
    base_norm_mean: float
    per_position_cosine: tuple[float, ...]
    per_position_distance: tuple[float, ...]
    cosine_histogram: Histogram
    relative_distance_histogram: Histogram

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, (Histogram, tuple))}
        d["per_position_cosine"] = list(self.per_position_cosine)
        d["per_position_distance"] = list(self.per_position_distance)
        d["cosine_histogram"] = self.cosine_histogram.to_dict()
        d["relative_distance_histogram"] = self.relative_distance_histogram.to_dict()
        return d


class SimilarityAccumulator:
    def __init__(self, context_size: int) -> None:
        f64 = dict(dtype=torch.float64)
        self.n = 0.0
        self.sums = torch.zeros(5, **f64)  # cos, dist, rel dist, norm ratio, base norm (kept)
        self.n_all = 0.0
        self.cos_all = 0.0
        self.n_not0 = 0.0
        self.cos_not0 = 0.0
        self.row_means: list[float] = []
        self.pos_cos = torch.zeros(context_size, **f64)
        self.pos_dist = torch.zeros(context_size, **f64)
        self.pos_n = torch.zeros(context_size, **f64)
        self.cos_hist = HistogramAccumulator(-1.0, 1.0)
        self.rel_hist = HistogramAccumulator(0.0, 2.0)

    def update(self, base: Float[Tensor, "b p d"], ft: Float[Tensor, "b p d"], kept: Bool[Tensor, "b p"]) -> None:
        cos = cosine(base, ft).double()
        diff = (ft.float() - base.float()).norm(dim=-1).double()
        base_norm = base.float().norm(dim=-1).double()
        ft_norm = ft.float().norm(dim=-1).double()
        rel = diff / base_norm.clamp(min=1e-12)
        ratio = ft_norm / base_norm.clamp(min=1e-12)
        k = kept.to(cos.device)
        self.n += float(k.sum())
        self.sums += torch.stack([x[k].sum() for x in (cos, diff, rel, ratio, base_norm)]).cpu()
        self.n_all += cos.numel()
        self.cos_all += float(cos.sum())
        self.n_not0 += cos[:, 1:].numel()
        self.cos_not0 += float(cos[:, 1:].sum())
        counts = k.sum(dim=1)
        row_sums = (cos * k).sum(dim=1)
        self.row_means += (row_sums[counts > 0] / counts[counts > 0]).tolist()
        self.pos_cos += cos.sum(dim=0).cpu()
        self.pos_dist += diff.sum(dim=0).cpu()
        self.pos_n += cos.shape[0]
        self.cos_hist.update(cos[k])
        self.rel_hist.update(rel[k])

    def result(self) -> SimilarityResult:
        mean = (self.sums / max(self.n, 1.0)).tolist() if self.n else [math.nan] * 5
        rows = torch.tensor(self.row_means, dtype=torch.float64)
        stderr = float(rows.std() / math.sqrt(len(rows))) if len(rows) > 1 else math.nan
        pos_n = self.pos_n.clamp(min=1)
        return SimilarityResult(
            cosine_mean=mean[0], cosine_stderr=stderr,
            cosine_mean_all_positions=self.cos_all / max(self.n_all, 1.0),
            cosine_mean_excluding_position_0=self.cos_not0 / max(self.n_not0, 1.0),
            distance_mean=mean[1], relative_distance_mean=mean[2], norm_ratio_mean=mean[3], base_norm_mean=mean[4],
            per_position_cosine=tuple((self.pos_cos / pos_n).tolist()),
            per_position_distance=tuple((self.pos_dist / pos_n).tolist()),
            cosine_histogram=self.cos_hist.result(), relative_distance_histogram=self.rel_hist.result(),
        )


# ---------------------------------------------------------------------------------------------
# SAE reconstruction and sparsity (finding 3)


class ReconstructionAccumulator:
    """Explained variance (SAELens), global R² (the post), MSE, cos(x, x̂), L0/L1, densities."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        f64 = dict(dtype=torch.float64)
        self.d_in = d_in
        self.n = 0.0
        self.sse = 0.0
        self.sum_x = torch.zeros(d_in, **f64)
        self.sum_sq_x = 0.0
        self.cossim = 0.0
        self.l2_ratio = 0.0
        self.l0 = 0.0
        self.l1 = 0.0
        self.fired = torch.zeros(d_sae, **f64)
        self.act_hist = HistogramAccumulator(-4.0, 3.0)  # log10 of non-zero activations

    def update(self, x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"], feats: Float[Tensor, "n s"]) -> None:
        x, x_hat, feats = x.float(), x_hat.float(), feats.float()
        self.n += x.shape[0]
        self.sse += float(((x - x_hat) ** 2).sum(dtype=torch.float64))
        self.sum_x += x.sum(dim=0, dtype=torch.float64).cpu()
        self.sum_sq_x += float((x**2).sum(dtype=torch.float64))
        self.cossim += float(cosine(x, x_hat).sum(dtype=torch.float64))
        self.l2_ratio += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp(min=1e-12)).sum(dtype=torch.float64))
        active = feats != 0
        self.l0 += float(active.sum(dtype=torch.float64))
        self.l1 += float(feats.abs().sum(dtype=torch.float64))
        self.fired += active.sum(dim=0, dtype=torch.float64).cpu()
        self.act_hist.update(torch.log10(feats[active]))

    def densities(self) -> Float[Tensor, " s"]:
        return self.fired / max(self.n, 1.0)

    def result(self) -> dict[str, float | dict]:
        n, d = max(self.n, 1.0), self.d_in
        mean_sq_norm = self.sum_sq_x / n
        centred_var = mean_sq_norm - float((self.sum_x / n).pow(2).sum())  # E||x||² - ||E x||²
        sst_scalar = self.sum_sq_x - float(self.sum_x.sum()) ** 2 / (n * d)  # scalar mean over all elements
        density = self.densities()
        return {
            "n_tokens": int(self.n),
            "explained_variance": 1.0 - safe_ratio(self.sse / n, centred_var) if centred_var > 0 else math.nan,
            "r2_global": 1.0 - safe_ratio(self.sse, sst_scalar) if sst_scalar > 0 else math.nan,
            "mse": self.sse / n,
            "mse_per_element": self.sse / (n * d),
            "cossim": self.cossim / n,
            "l2_ratio": self.l2_ratio / n,
            "l0": self.l0 / n,
            "l1": self.l1 / n,
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "activation_log10_histogram": self.act_hist.result().to_dict(),
        }


def log10_density(density: Float[Tensor, " s"]) -> Float[Tensor, " s"]:
    """log10(density + 1e-10): dead latents sit at -10, as in the seed."""
    return torch.log10(density.double() + LOG_EPS)


def density_histogram(density: Float[Tensor, " s"], bins: int = 50) -> Histogram:
    acc = HistogramAccumulator(-10.0, 0.0, bins)
    acc.update(log10_density(density))
    return acc.result()


def log_density_correlation(base_density: Float[Tensor, " s"], ft_density: Float[Tensor, " s"]) -> float:
    """Pearson r of log10 densities base vs finetune, dead latents included at -10 (the seed's linregress r)."""
    x, y = log10_density(base_density), log10_density(ft_density)
    n = float(x.numel())
    r = pearson_from_sums(n, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
    return float(r)


# ---------------------------------------------------------------------------------------------
# downstream loss: CE and KL with the SAE spliced in and with the hook zero-ablated


def token_log_probs(logits: Float[Tensor, "n v"], keep_vocab: int) -> tuple[Float[Tensor, "n v"], Float[Tensor, " n"]]:
    """log-softmax over the first `keep_vocab` ids, and the probability mass the full softmax puts beyond them.

    Dropping extra vocabulary rows (MetaMath's PAD) leaves the other logits unchanged but renormalises
    the softmax: CE_truncated = CE_full + log(1 - dropped_mass) per token.
    """
    logits = logits.float()
    if logits.shape[-1] > keep_vocab:
        full = torch.log_softmax(logits, dim=-1)
        dropped = full[..., keep_vocab:].exp().sum(dim=-1)
        logits = logits[..., :keep_vocab]
    else:
        dropped = torch.zeros(logits.shape[:-1], device=logits.device)
    return torch.log_softmax(logits, dim=-1), dropped


@dataclass(frozen=True)
class CleanDistribution:
    """The clean model's next-token distribution on a chunk of positions, computed once per chunk and
    shared by every SAE spliced into that model (and by the zero-ablation baseline)."""

    log_probs: Float[Tensor, "n v"]
    probs: Float[Tensor, "n v"]
    neg_entropy: Float[Tensor, " n"]
    """sum_v p log p: KL(clean || q) = neg_entropy - sum_v p log q."""
    dropped_mass: Float[Tensor, " n"]
    ablated_log_probs: Float[Tensor, " v"]

    @classmethod
    def from_logits(cls, logits: Float[Tensor, "n v"], ablated_logits: Float[Tensor, " v"],
                    keep_vocab: int) -> CleanDistribution:
        log_probs, dropped = token_log_probs(logits, keep_vocab)
        probs = log_probs.exp()
        ablated, _ = token_log_probs(ablated_logits.unsqueeze(0), keep_vocab)
        return cls(log_probs, probs, (probs * log_probs).sum(-1), dropped, ablated.squeeze(0))


class DownstreamAccumulator:
    """CE (clean, spliced, zero-ablated) over kept positions with a next token, KL(clean || ·) over all kept.

    As in SAELens: KL compares two distributions and needs no target, so a row's last position counts;
    CE needs the next token, so it does not.
    """

    def __init__(self) -> None:
        self.n_ce = 0.0
        self.n_kl = 0.0
        self.ce = torch.zeros(3, dtype=torch.float64)  # clean, sae, abl
        self.kl = torch.zeros(2, dtype=torch.float64)  # sae, abl
        self.dropped_mass = 0.0
        self.dropped_mass_max = 0.0

    def update(self, clean: CleanDistribution, spliced: Float[Tensor, "n v"], targets: Int[Tensor, " n"],
               keep_vocab: int) -> Float[Tensor, " n"]:
        """Add one chunk of positions (target -1: no next token); returns per-token KL(clean || spliced)."""
        lp_sae, _ = token_log_probs(spliced, keep_vocab)
        kl_sae = clean.neg_entropy - (clean.probs * lp_sae).sum(-1)
        kl_abl = clean.neg_entropy - clean.probs @ clean.ablated_log_probs  # one vector: a matrix-vector product
        has_next = targets >= 0
        t = targets[has_next].unsqueeze(-1)
        ce = torch.stack([
            -clean.log_probs[has_next].gather(-1, t).squeeze(-1), -lp_sae[has_next].gather(-1, t).squeeze(-1),
            -clean.ablated_log_probs[targets[has_next]],
        ])
        self.n_ce += float(has_next.sum())
        self.n_kl += targets.numel()
        self.ce += ce.sum(dim=1, dtype=torch.float64).cpu()
        self.kl += torch.stack([kl_sae, kl_abl]).sum(dim=1, dtype=torch.float64).cpu()
        dropped = clean.dropped_mass
        self.dropped_mass += float(dropped[has_next].sum(dtype=torch.float64))
        if dropped.numel():
            self.dropped_mass_max = max(self.dropped_mass_max, float(dropped.max()))
        return kl_sae

    def result(self) -> dict[str, float]:
        ce_clean, ce_sae, ce_abl = (self.ce / max(self.n_ce, 1.0)).tolist()
        kl_sae, kl_abl = (self.kl / max(self.n_kl, 1.0)).tolist()
        return {
            "ce_clean": ce_clean,
            "ce_spliced": ce_sae,
            "ce_ablation": ce_abl,
            "ce_delta": ce_sae - ce_clean,
            "ce_loss_score": safe_ratio(ce_abl - ce_sae, ce_abl - ce_clean),
            "kl_spliced": kl_sae,
            "kl_ablation": kl_abl,
            "kl_div_score": safe_ratio(kl_abl - kl_sae, kl_abl),
            "dropped_vocab_mass_mean": self.dropped_mass / max(self.n_ce, 1.0),
            "dropped_vocab_mass_max": self.dropped_mass_max,
        }


# ---------------------------------------------------------------------------------------------
# per-latent base vs finetune statistics for finding 4 (all latents, buckets chosen afterwards)


class LatentPairAccumulator:
    """Running sums for per-latent Pearson r of activations base vs finetune, and log-activation error."""

    def __init__(self, d_sae: int) -> None:
        self.n = 0.0
        self.sums = torch.zeros(5, d_sae, dtype=torch.float64)  # sx, sy, sxx, syy, sxy
        self.log_abs_err = torch.zeros(d_sae, dtype=torch.float64)
        self.max_base = torch.zeros(d_sae, dtype=torch.float64)
        self.max_ft = torch.zeros(d_sae, dtype=torch.float64)

    def update(self, base: Float[Tensor, "n s"], ft: Float[Tensor, "n s"]) -> None:
        if base.shape[0] == 0:  # a batch whose positions were all masked
            return
        base, ft = base.float(), ft.float()
        self.n += base.shape[0]
        self.sums += torch.stack([
            base.sum(0), ft.sum(0), (base * base).sum(0), (ft * ft).sum(0), (base * ft).sum(0),
        ]).double().cpu()
        err = (torch.log10(base.clamp(min=0) + LOG_EPS) - torch.log10(ft.clamp(min=0) + LOG_EPS)).abs()
        self.log_abs_err += err.sum(0).double().cpu()
        self.max_base = torch.maximum(self.max_base, base.max(0).values.double().cpu())
        self.max_ft = torch.maximum(self.max_ft, ft.max(0).values.double().cpu())

    def correlations(self) -> Float[Tensor, " s"]:
        return pearson_from_sums(self.n, *self.sums)

    def log_activation_error(self) -> Float[Tensor, " s"]:
        """The post's 'activation error' for dead latents: mean_t |log10(x+1e-10) - log10(y+1e-10)|."""
        return self.log_abs_err / max(self.n, 1.0)
