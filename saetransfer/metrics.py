"""Metric definitions as pure functions and streaming accumulators.

Accumulators keep float64 sums *per row* of the token sample (O(rows x columns), plus one d_in-wide
sum per row for explained variance), so memory does not grow with the context and the same sums give
the point value (all rows) and every bootstrap replicate (rows reweighted, `uncertainty.py`). Each
formula below exists once and works on a scalar total or a batch of replicate totals.

Definitions (SAELens `sae_lens/evals.py` where it has one):
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saetransfer.results import Histogram

UNDEFINED_DENOMINATOR = 1e-6
"""A ratio whose denominator is below this (nats) is undefined: the ablation baseline equals clean."""
DENSE_THRESHOLD = 0.1
"""A latent firing on more than 10 % of tokens is dense (the post, §2.2)."""
LOG_EPS = 1e-10
"""The post's epsilon for log10 densities and log activations; a dead latent sits at -10."""


def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator elementwise (a total or a batch of replicate totals), NaN where the
    denominator is below `UNDEFINED_DENOMINATOR` or either side is non-finite."""
    bad = ~torch.isfinite(numerator) | ~torch.isfinite(denominator) | (denominator.abs() < UNDEFINED_DENOMINATOR)
    return torch.where(bad, torch.full_like(numerator, math.nan), numerator / denominator.where(~bad, 1.0))


def cosine(a: Float[Tensor, "*tok d"], b: Float[Tensor, "*tok d"]) -> Float[Tensor, "*tok"]:
    """Per-token cosine similarity in fp32 (zero vectors give 0, as F.normalize does)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def finite_rows(x: Float[Tensor, "*n d"]) -> Bool[Tensor, "*n"]:
    """Whether every entry of each row (last dimension) is finite. A row's max and min are both finite exactly
    when all of it is (NaN propagates through `amax`/`amin`, ±inf is its own extreme): on the CPU about six times
    cheaper than `isfinite(x).all(-1)`, which writes a bool per entry and then reduces it."""
    return torch.isfinite(x.amax(-1)) & torch.isfinite(x.amin(-1))


def pearson_from_sums(n: float, sx: Tensor, sy: Tensor, sxx: Tensor, syy: Tensor, sxy: Tensor) -> Tensor:
    """Pearson r per column from running sums (float64); NaN where either side is constant."""
    cov = n * sxy - sx * sy
    var_x = n * sxx - sx * sx
    var_y = n * syy - sy * sy
    denom = torch.sqrt(var_x.clamp(min=0) * var_y.clamp(min=0))
    r = cov / denom
    constant = (var_x <= 1e-12 * n * n) | (var_y <= 1e-12 * n * n)
    return torch.where(constant, torch.full_like(r, math.nan), r.clamp(-1.0, 1.0))


class HistogramAccumulator:
    def __init__(self, low: float, high: float, bins: int = 100) -> None:
        self.low, self.high, self.bins = low, high, bins
        self.counts = torch.zeros(bins, dtype=torch.float64)

    def update(self, values: Float[Tensor, " n"]) -> None:
        values = values.detach().double().cpu()
        # ±inf dropped, as histc drops NaN (one `nan_to_num`: a quarter of the cost of isinf, not and where)
        values = torch.nan_to_num(values, nan=math.nan, posinf=math.nan, neginf=math.nan).clamp(self.low, self.high)
        self.counts += torch.histc(values, bins=self.bins, min=self.low, max=self.high)

    def add(self, other: HistogramAccumulator) -> None:
        """Add another histogram's counts (the same bins)."""
        if (other.low, other.high, other.bins) != (self.low, self.high, self.bins):
            raise ValueError(f"histograms with different bins: {(other.low, other.high, other.bins)} vs "
                             f"{(self.low, self.high, self.bins)}")
        self.counts += other.counts

    def result(self) -> Histogram:
        return Histogram(self.low, self.high, tuple(int(c) for c in self.counts.tolist()))


class RowSums:
    """Named float64 columns summed per row of the sample: the unit the bootstrap resamples."""

    def __init__(self, n_rows: int, columns: tuple[str, ...]) -> None:
        self.columns = columns
        self.sums = torch.zeros(n_rows, len(columns), dtype=torch.float64)

    def add(self, rows: Int[Tensor, " n"], values: Float[Tensor, "n k"]) -> None:
        self.sums.index_add_(0, rows.cpu(), values.detach().double().cpu())

    def totals(self, weights: Float[Tensor, "r rows"] | None = None) -> dict[str, Tensor]:
        """Column totals over all rows (0-d tensors), or per replicate given row weights ([r] tensors)."""
        t = self.sums.sum(0) if weights is None else weights @ self.sums
        return {name: t[..., i] for i, name in enumerate(self.columns)}


# ---------------------------------------------------------------------------------------------
# activation similarity (finding 2)

SIMILARITY_COLUMNS = ("n", "cos", "dist", "rel", "ratio", "base_norm", "ft_norm")


def similarity_values(t: dict[str, Tensor]) -> dict[str, Tensor]:
    """Means over kept positions from row totals (scalar or per replicate)."""
    n = t["n"]
    return {"cosine_mean": ratio(t["cos"], n), "distance_mean": ratio(t["dist"], n),
            "relative_distance_mean": ratio(t["rel"], n), "norm_ratio_mean": ratio(t["ratio"], n),
            "base_norm_mean": ratio(t["base_norm"], n), "finetune_norm_mean": ratio(t["ft_norm"], n)}


class SimilarityAccumulator:
    def __init__(self, n_rows: int, context_size: int) -> None:
        f64 = dict(dtype=torch.float64)
        self.rows = RowSums(n_rows, SIMILARITY_COLUMNS)
        self.n_all = self.cos_all = self.n_not0 = self.cos_not0 = 0.0
        self.pos_cos = torch.zeros(context_size, **f64)
        self.pos_dist = torch.zeros(context_size, **f64)
        self.pos_n = torch.zeros(context_size, **f64)
        self.cos_hist = HistogramAccumulator(-1.0, 1.0)
        self.rel_hist = HistogramAccumulator(0.0, 2.0)

    def update(self, base: Float[Tensor, "b p d"], ft: Float[Tensor, "b p d"], kept: Bool[Tensor, "b p"],
               finite: Bool[Tensor, "b p"], row_offset: int) -> None:
        """Kept positions feed the headline; every position finite on both models feeds the post's curves."""
        cos = cosine(base, ft).double()
        diff = (ft.float() - base.float()).norm(dim=-1).double()
        base_norm = base.float().norm(dim=-1).double()
        ft_norm = ft.float().norm(dim=-1).double()
        rel = diff / base_norm.clamp(min=1e-12)
        norm_ratio = ft_norm / base_norm.clamp(min=1e-12)
        rows, _ = kept.nonzero(as_tuple=True)
        values = torch.stack([torch.ones_like(cos), cos, diff, rel, norm_ratio, base_norm, ft_norm], dim=-1)[kept]
        self.rows.add(rows + row_offset, values)
        fin = finite.to(cos.device)
        zero = torch.zeros_like(cos)
        self.n_all += float(fin.sum())
        self.cos_all += float(torch.where(fin, cos, zero).sum())
        self.n_not0 += float(fin[:, 1:].sum())
        self.cos_not0 += float(torch.where(fin, cos, zero)[:, 1:].sum())
        self.pos_cos += torch.where(fin, cos, zero).sum(dim=0).cpu()
        self.pos_dist += torch.where(fin, diff, zero).sum(dim=0).cpu()
        self.pos_n += fin.sum(dim=0).double().cpu()
        self.cos_hist.update(values[:, 1])
        self.rel_hist.update(values[:, 3])

    def result(self) -> dict[str, object]:
        point = {k: float(v) for k, v in similarity_values(self.rows.totals()).items()}
        pos_n = self.pos_n.clamp(min=1)
        return {
            **point,
            "cosine_mean_all_positions": self.cos_all / max(self.n_all, 1.0),
            "cosine_mean_excluding_position_0": self.cos_not0 / max(self.n_not0, 1.0),
            "per_position_cosine": tuple((self.pos_cos / pos_n).tolist()),
            "per_position_distance": tuple((self.pos_dist / pos_n).tolist()),
            "cosine_histogram": self.cos_hist.result(), "relative_distance_histogram": self.rel_hist.result(),
        }


# ---------------------------------------------------------------------------------------------
# SAE reconstruction and sparsity (finding 3)

RECONSTRUCTION_COLUMNS = ("n", "sse", "sum_sq", "sum_elems", "cossim", "l2_ratio", "l0", "l1")


@dataclass(frozen=True)
class ActiveLatents:
    """The non-zero entries of a [positions, latents] matrix: SAE latents are sparse, so per-position and
    per-latent counts and sums are taken over these instead of over the whole matrix."""

    position: Int[Tensor, " k"]
    latent: Int[Tensor, " k"]
    value: Float[Tensor, " k"]
    """fp32."""
    flat: Int[Tensor, " k"]
    """position x n_latents + latent: where each entry is in the flattened matrix (`Tensor.take` reads it)."""

    @classmethod
    def of(cls, feats: Float[Tensor, "n s"]) -> ActiveLatents:
        # NaN and inf are non-zero too, so they stay visible (-0.0 is zero, as for `nonzero`): `Tensor.bool()` is
        # `!= 0`, about four times cheaper on the CPU than the comparison. The flat indices of that mask, then
        # the arithmetic: about a fifth cheaper than the 2-d `nonzero` of the float matrix, which is the largest
        # cost of the pass beyond the floor's own work
        flat = feats.bool().view(-1).nonzero().squeeze(1)
        position = torch.div(flat, feats.shape[1], rounding_mode="floor")
        return cls(position, flat - position * feats.shape[1], feats.take(flat).float(), flat)


def reconstruction_terms(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"], feats: Float[Tensor, "n s"],
                         active: ActiveLatents | None = None) -> Float[Tensor, "n k"]:
    """Per-position terms in `RECONSTRUCTION_COLUMNS` order (fp32 inputs, float64 out); `active` = `feats`'
    non-zero entries when the caller has them already."""
    active = ActiveLatents.of(feats) if active is None else active
    x, x_hat = x.float(), x_hat.float()
    n = x.shape[0]
    dense = torch.stack([
        torch.ones(n, device=x.device), ((x - x_hat) ** 2).sum(-1), (x**2).sum(-1), x.sum(-1),
        cosine(x, x_hat), x_hat.norm(dim=-1) / x.norm(dim=-1).clamp(min=1e-12),
    ], dim=-1).double()
    l0 = torch.bincount(active.position, minlength=n).double()
    l1 = torch.bincount(active.position, weights=active.value.abs().double(), minlength=n)
    return torch.cat([dense, l0.unsqueeze(-1), l1.unsqueeze(-1)], dim=-1)


def reconstruction_values(t: dict[str, Tensor], sum_x_norm_sq: Tensor, d_in: int) -> dict[str, Tensor]:
    """Explained variance, R², MSE, cos, L0, L1 from totals; ||Σx||² is passed in (a d_in-wide sum)."""
    n = t["n"]
    centred_var = ratio(t["sum_sq"], n) - ratio(sum_x_norm_sq, n * n)  # E||x||² - ||E x||²
    sst_scalar = t["sum_sq"] - ratio(t["sum_elems"] ** 2, n * d_in)  # about one scalar mean
    return {
        "explained_variance": 1.0 - ratio(ratio(t["sse"], n), centred_var.where(centred_var > 0, math.nan)),
        "r2_global": 1.0 - ratio(t["sse"], sst_scalar.where(sst_scalar > 0, math.nan)),
        "mse": ratio(t["sse"], n), "mse_per_element": ratio(t["sse"], n * d_in), "cossim": ratio(t["cossim"], n),
        "l2_ratio": ratio(t["l2_ratio"], n), "l0": ratio(t["l0"], n), "l1": ratio(t["l1"], n),
    }


ACTIVATION_LOG10_RANGE = (-4.0, 3.0)
"""The histogram of log10 non-zero activations spans these (100 bins)."""


@dataclass(frozen=True)
class ReconstructionBatch:
    """One SAE's reconstruction sums over one batch's positions, before they are added to an accumulator.
    Evaluations that splice the same encoding at the same positions add the same one."""

    rows: Int[Tensor, " n"]
    terms: Float[Tensor, "n k"]
    x: Float[Tensor, "n d"]
    """float64, on the CPU."""
    fired: Float[Tensor, " s"]
    act_hist: HistogramAccumulator

    @classmethod
    def of(cls, x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"], feats: Float[Tensor, "n s"],
           rows: Int[Tensor, " n"], active: ActiveLatents | None = None) -> ReconstructionBatch:
        """`active`: `ActiveLatents.of(feats)`, when the caller has it already (the latent-pair sums read it too)."""
        active = ActiveLatents.of(feats) if active is None else active
        hist = HistogramAccumulator(*ACTIVATION_LOG10_RANGE)
        hist.update(torch.log10(active.value))
        return cls(rows.cpu(), reconstruction_terms(x, x_hat, feats, active), x.detach().double().cpu(),
                   torch.bincount(active.latent, minlength=feats.shape[1]).double().cpu(), hist)


class ReconstructionAccumulator:
    """Per-row reconstruction sums, a d_in-wide Σx per row (explained variance), per-latent firing counts."""

    def __init__(self, n_rows: int, d_in: int, d_sae: int) -> None:
        self.d_in = d_in
        self.rows = RowSums(n_rows, RECONSTRUCTION_COLUMNS)
        self.sum_x = torch.zeros(n_rows, d_in, dtype=torch.float64)
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.act_hist = HistogramAccumulator(*ACTIVATION_LOG10_RANGE)

    def update(self, x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"], feats: Float[Tensor, "n s"],
               rows: Int[Tensor, " n"], active: ActiveLatents | None = None) -> None:
        """`active`: `ActiveLatents.of(feats)`, when the caller has it already."""
        if x.shape[0]:
            self.add(ReconstructionBatch.of(x, x_hat, feats, rows, active))

    def add(self, batch: ReconstructionBatch) -> None:
        if batch.rows.numel() == 0:
            return
        self.rows.add(batch.rows, batch.terms)
        self.sum_x.index_add_(0, batch.rows, batch.x)
        self.fired += batch.fired
        self.act_hist.add(batch.act_hist)

    @property
    def n(self) -> float:
        return float(self.rows.sums[:, 0].sum())

    def densities(self) -> Float[Tensor, " s"]:
        return self.fired / max(self.n, 1.0)

    def values(self, weights: Float[Tensor, "r rows"] | None = None) -> dict[str, Tensor]:
        sum_x = self.sum_x.sum(0) if weights is None else weights @ self.sum_x
        return reconstruction_values(self.rows.totals(weights), sum_x.pow(2).sum(-1), self.d_in)

    def result(self) -> dict[str, object]:
        density = self.densities()
        return {
            "n_tokens": int(self.n), **{k: float(v) for k, v in self.values().items()},
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "activation_log10_histogram": self.act_hist.result(),
            "log10_density_histogram": density_histogram(density),
        }


def log10_density(density: Float[Tensor, " s"]) -> Float[Tensor, " s"]:
    """log10(density + 1e-10): dead latents sit at -10, as in the post's code."""
    return torch.log10(density.double() + LOG_EPS)


def density_histogram(density: Float[Tensor, " s"], bins: int = 50) -> Histogram:
    acc = HistogramAccumulator(-10.0, 0.0, bins)
    acc.update(log10_density(density))
    return acc.result()


def log_density_correlation(base_density: Float[Tensor, " s"], ft_density: Float[Tensor, " s"]) -> float:
    """Pearson r of log10 densities base vs finetune, dead latents included at -10 (the post's linregress r)."""
    x, y = log10_density(base_density), log10_density(ft_density)
    n = float(x.numel())
    r = pearson_from_sums(n, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
    return float(r)


# ---------------------------------------------------------------------------------------------
# downstream loss: CE and KL with the SAE spliced in and with the hook zero-ablated


def token_log_probs(logits: Float[Tensor, "n v"], keep_vocab: int) -> tuple[Float[Tensor, "n kept"], Float[Tensor, " n"]]:
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


def ablation_log_probs(ablated_logits: Float[Tensor, " v"], keep_vocab: int) -> Float[Tensor, " kept"]:
    """`token_log_probs` of a zero-ablation baseline (one logits vector: every position's is the same)."""
    return token_log_probs(ablated_logits.unsqueeze(0), keep_vocab)[0].squeeze(0)


CPU_BLOCK_ELEMENTS = 2**20
"""Positions x vocabulary per block of logits on CPU (4 MiB in fp32). A block's logits, log-probabilities and
temporaries stay in the last-level cache from the unembedding to the last sum over them, and come from the
heap; a whole chunk's ([positions, vocab]: 32 MiB for 2048 positions of a 4096 vocabulary) would each be a
fresh mapping from glibc (allocations above its 32 MiB mmap ceiling always are), page-faulting on every write,
and would go through memory. Not smaller: the unembedding's matrix product loses efficiency on few rows (on an
AVX2 host, 2040 x 128 @ 128 x 4096 took 40 ms in 128-row blocks, 29 ms in 512-row ones, 25 ms whole), and at
2 MiB blocks the zoo's pass took 20.4 s where 4 MiB took 18.0 s (`benchmarks/bench_floor.py`, 32,768 tokens;
on an AMD AVX-512 host 1, 2 and 8 MiB blocks took the same time within noise; on an Intel AVX-512 host, interleaved
in one process, 2, 4, 8 and 16 MiB took 5.52, 5.54, 5.69 and 5.73 s: the product's gain on more rows is lost in
the vocabulary-wide passes out of cache). Elsewhere (CUDA) a chunk is one block."""
MIN_BLOCK_POSITIONS = 128
"""A block holds at least this many positions however wide the vocabulary. Each block's unembedding reads the
whole d_model x vocab matrix: Gemma's (2048 x 256k, 2 GiB in fp32) read for a block of 4 positions (2^20
elements) would make that product bound by memory, not arithmetic; at 128 positions the read is a small part
of the product, whose arithmetic dwarfs the vocabulary-wide CE/KL work then out of cache."""

Unembed = Callable[[Tensor], Tensor]
"""A block of final residuals [positions, d_model] -> its logits [positions, vocab]."""


def _blocks(n: int, width: int, device: torch.device) -> tuple[slice, ...]:
    step = max(MIN_BLOCK_POSITIONS, CPU_BLOCK_ELEMENTS // max(width, 1)) if device.type == "cpu" else max(n, 1)
    return tuple(slice(lo, min(lo + step, n)) for lo in range(0, n, step)) or (slice(0, 0),)


def _as_logits(x: Tensor) -> Tensor:
    return x


DOWNSTREAM_COLUMNS = ("n_ce", "n_kl", "ce_clean", "ce_sae", "ce_abl", "kl_sae", "kl_abl", "dropped")


def downstream_terms(clean: Float[Tensor, "n w"], spliced: Sequence[Float[Tensor, "n w"]],
                     ablated_log_probs: Sequence[Float[Tensor, " v"]], targets: Int[Tensor, " n"], keep_vocab: int,
                     unembed: Unembed = _as_logits) -> list[Float[Tensor, "n k"]]:
    """Per-position terms in `DOWNSTREAM_COLUMNS` order of each spliced pass `spliced[i]` against the clean one
    and its own hook's zero-ablation baseline `ablated_log_probs[i]` (`ablation_log_probs`).

    `clean` and `spliced[i]` are logits, or the final residuals `unembed` turns into logits. Block by block of
    positions (`_blocks`): a block's clean distribution is computed once and read by every spliced pass while
    it is in a core's cache, and no [positions, vocab] tensor is whole on CPU.
    As in SAELens: KL compares two distributions and needs no target, so a row's last position counts (target
    -1: no next token); CE needs the next token, so it does not. A non-finite entry marks a position whose
    logits are broken. KL(clean || q) = Σ_v p log p - Σ_v p log q; mass the spliced model puts beyond
    `keep_vocab` is never reported, the clean model's is (`dropped`, see `token_log_probs`).
    """
    t = targets.clamp(min=0).unsqueeze(-1)
    nll_clean, neg_entropy, dropped = [], [], []
    baselines = {id(a): a for a in ablated_log_probs}  # passes at one hook share its baseline
    kl_abl: dict[int, list[Tensor]] = {key: [] for key in baselines}
    kl_sae: list[list[Tensor]] = [[] for _ in spliced]
    nll_sae: list[list[Tensor]] = [[] for _ in spliced]
    for rows in _blocks(clean.shape[0], keep_vocab, clean.device):  # inlined: no type-checked call in the loop
        logits = unembed(clean[rows]).float()
        kept = logits[:, :keep_vocab]
        # exp of the log-probabilities: one pass, where softmax makes three (half the time on a Xeon for vocabularies
        # of 4096 to 50257, 1 or 2 threads)
        lp = torch.log_softmax(kept, dim=-1)
        p = lp.exp()
        nll_clean.append(-lp.gather(-1, t[rows]).squeeze(-1))
        # Σ_v p log p in lp's place, once its targets are read: the sums of `linalg.vecdot`, whose CPU kernel
        # writes the product to a fresh [positions, vocab] tensor first
        h = lp.mul_(p).sum(-1)
        neg_entropy.append(h)
        if logits.shape[-1] > keep_vocab:  # mass on the rows beyond the base vocabulary (MetaMath's PAD)
            dropped.append(torch.log_softmax(logits, dim=-1)[:, keep_vocab:].exp().sum(-1))
        for key, a in baselines.items():
            kl_abl[key].append(h - p @ a)
        for i, s in enumerate(spliced):
            log_q = torch.log_softmax(unembed(s[rows])[:, :keep_vocab].float(), dim=-1)
            nll_sae[i].append(-log_q.gather(-1, t[rows]).squeeze(-1))
            kl_sae[i].append(h - log_q.mul_(p).sum(-1))  # as h
    has_next = targets >= 0
    ones = has_next.new_ones(has_next.shape, dtype=torch.float32)
    zero = torch.zeros_like(ones)
    nll = torch.where(has_next, torch.cat(nll_clean), zero)
    lost = torch.where(has_next, torch.cat(dropped), zero) if dropped else zero
    kl_of = {key: torch.cat(v) for key, v in kl_abl.items()}
    return [torch.stack([has_next.float(), ones, nll, torch.where(has_next, torch.cat(nll_sae[i]), zero),
                         torch.where(has_next, -a[t.squeeze(-1)], zero), torch.cat(kl_sae[i]), kl_of[id(a)], lost],
                        dim=-1).double() for i, a in enumerate(ablated_log_probs)]


def downstream_values(t: dict[str, Tensor]) -> dict[str, Tensor]:
    ce_clean, ce_sae, ce_abl = (ratio(t[k], t["n_ce"]) for k in ("ce_clean", "ce_sae", "ce_abl"))
    kl_sae, kl_abl = (ratio(t[k], t["n_kl"]) for k in ("kl_sae", "kl_abl"))
    return {
        "ce_clean": ce_clean, "ce_spliced": ce_sae, "ce_ablation": ce_abl, "ce_delta": ce_sae - ce_clean,
        "ce_loss_score": ratio(ce_abl - ce_sae, ce_abl - ce_clean), "kl_spliced": kl_sae, "kl_ablation": kl_abl,
        "kl_div_score": ratio(kl_abl - kl_sae, kl_abl), "dropped_vocab_mass_mean": ratio(t["dropped"], t["n_ce"]),
    }


class DownstreamAccumulator:
    """CE (clean, spliced, zero-ablated) and KL(clean || ·), summed per row."""

    def __init__(self, n_rows: int) -> None:
        self.rows = RowSums(n_rows, DOWNSTREAM_COLUMNS)
        self.dropped_mass_max = 0.0

    def update(self, terms: Float[Tensor, "n k"], rows: Int[Tensor, " n"]) -> None:
        if terms.shape[0] == 0:
            return
        self.rows.add(rows, terms)
        self.dropped_mass_max = max(self.dropped_mass_max, float(terms[:, -1].max()))

    def values(self, weights: Float[Tensor, "r rows"] | None = None) -> dict[str, Tensor]:
        return downstream_values(self.rows.totals(weights))

    def result(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self.values().items()}, "dropped_vocab_mass_max": self.dropped_mass_max}


# ---------------------------------------------------------------------------------------------
# per-latent base vs finetune statistics for finding 4 (all latents, buckets chosen afterwards)


class LatentPairAccumulator:
    """Running sums for per-latent Pearson r of activations base vs finetune, and log-activation error.

    Sums are kept per half of the rows (even, odd) for the split-half noise band, and one extra
    cross-sum pairs each base latent with a fixed random other finetune latent (`partner`) for the
    chance floor.
    """

    def __init__(self, d_sae: int, partner: Int[Tensor, " s"]) -> None:
        self.partner = partner
        self.n = torch.zeros(2, dtype=torch.float64)
        self.sums = torch.zeros(2, 5, d_sae, dtype=torch.float64)  # per half: sx, sy, sxx, syy, sxy
        self.cross_partner = torch.zeros(d_sae, dtype=torch.float64)  # Σ base_i · ft_partner(i)
        self.log_abs_err = torch.zeros(d_sae, dtype=torch.float64)
        self.max_base = torch.zeros(d_sae, dtype=torch.float64)
        self.max_ft = torch.zeros(d_sae, dtype=torch.float64)

    def update(self, base: Float[Tensor, "n s"], ft: Float[Tensor, "n s"], rows: Int[Tensor, " n"],
               active_base: ActiveLatents | None = None, active_ft: ActiveLatents | None = None) -> None:
        """Sums over the non-zero entries only (SAE latents are sparse): an entry at 0 adds 0 to every sum, and
        an entry at 0 on both models adds 0 to the log error and nothing to the maxima (which start at 0).
        `active_*`: `ActiveLatents.of` each matrix, when the caller has them already."""
        if base.shape[0] == 0:  # a batch whose positions were all masked
            return
        d_sae, dev = base.shape[1], base.device
        half = (rows.to(dev) % 2).long()
        self.n += torch.bincount(half, minlength=2).double().cpu()
        log = lambda v: torch.log10(v.clamp(min=0) + LOG_EPS)  # noqa: E731
        sums = torch.zeros(5, 2 * d_sae, dtype=torch.float64, device=dev)  # per (half, latent): sx, sy, sxx, syy, sxy
        err = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        cross = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        zeros = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        # entries where the base latent is non-zero: its sums, the cross-sums, the log error there
        a = ActiveLatents.of(base) if active_base is None else active_base
        b, f_at_b = a.value.double(), ft.take(a.flat).double()
        key = half[a.position] * d_sae + a.latent
        sums[0].index_add_(0, key, b)
        sums[2].index_add_(0, key, b * b)
        sums[4].index_add_(0, key, b * f_at_b)
        cross.index_add_(0, a.latent, b * ft.take(a.position * d_sae + self.partner.to(dev)[a.latent]).double())
        err.index_add_(0, a.latent, (log(b) - log(f_at_b)).abs())
        max_base = zeros.scatter_reduce(0, a.latent, b, "amax")
        # entries where the finetune latent is non-zero: its sums, and the log error where the base one is 0
        a = ActiveLatents.of(ft) if active_ft is None else active_ft
        f, b_at_f = a.value.double(), base.take(a.flat)
        key = half[a.position] * d_sae + a.latent
        sums[1].index_add_(0, key, f)
        sums[3].index_add_(0, key, f * f)
        only_ft = b_at_f == 0
        err.index_add_(0, a.latent[only_ft], (log(f[only_ft]) - math.log10(LOG_EPS)).abs())
        max_ft = zeros.scatter_reduce(0, a.latent, f, "amax")
        self.sums += sums.view(5, 2, d_sae).transpose(0, 1).cpu()
        self.cross_partner += cross.cpu()
        self.log_abs_err += err.cpu()
        self.max_base = torch.maximum(self.max_base, max_base.cpu())
        self.max_ft = torch.maximum(self.max_ft, max_ft.cpu())

    def correlations(self, half: int | None = None) -> Float[Tensor, " s"]:
        """Per-latent r over all rows, or over one half of them."""
        n = float(self.n.sum() if half is None else self.n[half])
        sums = self.sums.sum(0) if half is None else self.sums[half]
        return pearson_from_sums(n, *sums)

    def partner_correlations(self) -> Float[Tensor, " s"]:
        """r(base_i, ft_partner(i)): what two unrelated latents of these models give."""
        sx, sy, sxx, syy, _ = self.sums.sum(0)
        p = self.partner
        return pearson_from_sums(float(self.n.sum()), sx, sy[p], sxx, syy[p], self.cross_partner)

    def log_activation_error(self) -> Float[Tensor, " s"]:
        """The post's 'activation error' for dead latents: mean_t |log10(x+1e-10) - log10(y+1e-10)|."""
        return self.log_abs_err / max(float(self.n.sum()), 1.0)
