"""Feature transfer by density bucket (the post §5), computed after the streaming pass.

Densities and per-latent activation statistics come from the same token sample (the post's code used two
different samples, so 'dead' features fired on the second one). Buckets:
- regular: log10 density in [-5, -1] in both models (inclusive, as the post's code);
- dead in base only / dead in finetune only: never fired on the sample in exactly one model;
- dead in both.
Regular and exclusively-dead buckets are subsampled with a seeded generator (caps 1000 / 100) and the
chosen latent ids are kept in the result.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saetransfer.metrics import HistogramAccumulator, LatentPairAccumulator, log10_density
from saetransfer.results import (
    ChanceBaseline, CorrelationSummary, DeadBucket, FeatureBuckets, FeatureTransfer, RegularBucket,
)

REGULAR_RANGE = (-5.0, -1.0)
REGULAR_CAP = 1000
DEAD_CAP = 100
TRANSFERRED_CORRELATION = 0.8
"""A latent 'transfers' at the feature level when its activation correlation is >= 0.8 (the post: ~10 % for Gemma)."""


def _sample(ids: Tensor, cap: int, generator: torch.Generator) -> list[int]:
    if ids.numel() > cap:
        ids = ids[torch.randperm(ids.numel(), generator=generator)[:cap]]
    return sorted(ids.tolist())


def summarise(values: Tensor) -> CorrelationSummary:
    finite = values[torch.isfinite(values)]
    hist = HistogramAccumulator(-1.0, 1.0, 40)
    hist.update(finite)
    return CorrelationSummary(
        n=int(values.numel()), n_nan=int((~torch.isfinite(values)).sum()),
        mean=float(finite.mean()) if finite.numel() else math.nan,
        median=float(finite.median()) if finite.numel() else math.nan,
        fraction_transferred=float((finite >= TRANSFERRED_CORRELATION).double().sum() / max(values.numel(), 1)),
        histogram=hist.result())


def partner_permutation(d_sae: int, seed: int) -> Int[Tensor, " s"]:
    """A seeded pairing of every latent with a different one (a random cyclic shift of a random order).

    Fixed before the pass, so the chance floor costs one extra sum vector; afterwards it is read on the
    regular latents whose partner is regular too, i.e. a random pairing within the regular bucket.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(d_sae, generator=generator)
    partner = torch.empty(d_sae, dtype=torch.long)
    partner[order] = order.roll(1) if d_sae > 1 else order
    return partner


def _row_correlation(a: Float[Tensor, "f v"], b: Float[Tensor, "f v"]) -> Float[Tensor, " f"]:
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def logit_similarity(
    W_dec: Float[Tensor, "f d"], W_U_base: Float[Tensor, "d v"], W_U_ft: Float[Tensor, "d v"], chunk: int = 256
) -> Float[Tensor, " f"]:
    """corr(W_dec[f] @ W_U_base, W_dec[f] @ W_U_ft) over the shared vocabulary, chunked over latents.

    With one shared W_dec this mostly measures how much W_U changed (the post's own caveat, §5.2).
    """
    out = []
    W_U_base, W_U_ft = W_U_base.float(), W_U_ft.float()  # once, not per chunk (a bf16 256k W_U is 1 GB)
    for start in range(0, W_dec.shape[0], chunk):
        w = W_dec[start:start + chunk].float()
        out.append(_row_correlation(w @ W_U_base, w @ W_U_ft).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def frobenius(a: Float[Tensor, "d v"], b: Float[Tensor, "d v"] | None = None, columns: int = 4096) -> float:
    """||a|| (or ||a - b||) in float64, a block of columns at a time.

    A float64 copy of Gemma's 2048 x 256k W_U is 4 GB, and `a.double() - b.double()` holds three of them.
    """
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, a.shape[1], columns):
        block = a[:, start:start + columns].double()
        if b is not None:
            block = block - b[:, start:start + columns].double()
        total += (block * block).sum().cpu()
    return float(total.sqrt())


def _random_directions(W_dec: Float[Tensor, "f d"], seed: int) -> Float[Tensor, "f d"]:
    generator = torch.Generator().manual_seed(seed + 2)
    noise = torch.randn(W_dec.shape, generator=generator, dtype=torch.float32)
    return noise / noise.norm(dim=-1, keepdim=True) * W_dec.float().cpu().norm(dim=-1, keepdim=True)


def feature_transfer(
    base_density: Float[Tensor, " s"],
    ft_density: Float[Tensor, " s"],
    latents: LatentPairAccumulator,
    W_dec: Float[Tensor, "s d"],
    W_U_base: Float[Tensor, "d v"],
    W_U_ft: Float[Tensor, "d v_ft"],
    seed: int,
) -> FeatureTransfer:
    """Bucket the latents, sample them (seeded), summarise activation and logit similarity per bucket,
    and the chance baselines beside them."""
    log_b, log_f = log10_density(base_density), log10_density(ft_density)
    low, high = REGULAR_RANGE
    is_regular = (log_b >= low) & (log_b <= high) & (log_f >= low) & (log_f <= high)
    regular = torch.nonzero(is_regular).flatten()
    dead_b, dead_f = base_density == 0, ft_density == 0
    only_base = torch.nonzero(dead_b & ~dead_f).flatten()
    only_ft = torch.nonzero(dead_f & ~dead_b).flatten()
    generator = torch.Generator().manual_seed(seed)
    chosen = {
        "regular": _sample(regular, REGULAR_CAP, generator),
        "dead_in_base": _sample(only_base, DEAD_CAP, generator),
        "dead_in_finetune": _sample(only_ft, DEAD_CAP, generator),
    }
    vocab = min(W_U_base.shape[1], W_U_ft.shape[1])
    W_U_b, W_U_f = W_U_base[:, :vocab].cpu(), W_U_ft[:, :vocab].cpu()
    W_dec = W_dec.cpu()
    log_error = latents.log_activation_error()

    def logits_of(ids: list[int]) -> CorrelationSummary:
        return summarise(logit_similarity(W_dec[torch.tensor(ids, dtype=torch.long)], W_U_b, W_U_f))

    def dead(name: str, total: Tensor, other_max: Tensor, other_density: Tensor) -> DeadBucket:
        ids = chosen[name]
        index = torch.tensor(ids, dtype=torch.long)
        pick = lambda v, f: float(f(v[index])) if ids else math.nan  # noqa: E731
        return DeadBucket(
            n_total=total.numel(), latent_ids=tuple(ids), activation_error_mean=pick(log_error, torch.mean),
            activation_error_max=pick(log_error, torch.max), other_model_max_activation=pick(other_max, torch.max),
            other_model_firing_fraction_mean=pick(other_density.double(), torch.mean), logit_correlation=logits_of(ids))

    regular_index = torch.tensor(chosen["regular"], dtype=torch.long)
    paired = regular_index[is_regular[latents.partner[regular_index]]] if regular_index.numel() else regular_index
    random_dirs = _random_directions(W_dec[regular_index], seed) if regular_index.numel() else W_dec[:0].float()
    chance = ChanceBaseline(
        permuted=summarise(latents.partner_correlations()[paired]),
        split_half=(summarise(latents.correlations(0)[regular_index]), summarise(latents.correlations(1)[regular_index])),
        logit_random=summarise(logit_similarity(random_dirs, W_U_b, W_U_f)))
    buckets = FeatureBuckets(
        regular=RegularBucket(n_total=regular.numel(), latent_ids=tuple(chosen["regular"]),
                              activation_correlation=summarise(latents.correlations()[regular_index]),
                              logit_correlation=logits_of(chosen["regular"])),
        dead_in_base=dead("dead_in_base", only_base, latents.max_ft, ft_density),
        dead_in_finetune=dead("dead_in_finetune", only_ft, latents.max_base, base_density))
    norm_b, norm_f = frobenius(W_U_b), frobenius(W_U_f)
    return FeatureTransfer(
        buckets=buckets, n_dead_in_both=int((dead_b & dead_f).sum()),
        W_U_frobenius_ratio=norm_b / norm_f if norm_f else math.nan,
        W_U_frobenius_distance=frobenius(W_U_b, W_U_f), chance=chance)
