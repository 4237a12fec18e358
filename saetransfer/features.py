"""Feature transfer by density bucket (the post §5), computed after the streaming pass.

Densities and per-latent activation statistics come from the same token sample (the seed used two
different samples, so 'dead' features fired on the second one). Buckets:
- regular: log10 density in [-5, -1] in both models (inclusive, as the seed);
- dead in base only / dead in finetune only: never fired on the sample in exactly one model;
- dead in both.
Regular and exclusively-dead buckets are subsampled with a seeded generator (caps 1000 / 100) and the
chosen latent ids are kept in the result.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from saetransfer.metrics import HistogramAccumulator, LatentPairAccumulator, log10_density

REGULAR_RANGE = (-5.0, -1.0)
REGULAR_CAP = 1000
DEAD_CAP = 100
TRANSFERRED_CORRELATION = 0.8
"""A latent 'transfers' at the feature level when its activation correlation is >= 0.8 (the post: ~10 % for Gemma)."""


def _sample(ids: Tensor, cap: int, generator: torch.Generator) -> list[int]:
    if ids.numel() > cap:
        ids = ids[torch.randperm(ids.numel(), generator=generator)[:cap]]
    return sorted(ids.tolist())


def _summary(values: Tensor) -> dict:
    finite = values[torch.isfinite(values)]
    hist = HistogramAccumulator(-1.0, 1.0, 40)
    hist.update(finite)
    return {
        "n": int(values.numel()),
        "n_nan": int((~torch.isfinite(values)).sum()),
        "mean": float(finite.mean()) if finite.numel() else math.nan,
        "median": float(finite.median()) if finite.numel() else math.nan,
        "fraction_at_least_0.8": float((finite >= TRANSFERRED_CORRELATION).double().sum() / max(values.numel(), 1)),
        "histogram": hist.result().to_dict(),
    }


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
    for start in range(0, W_dec.shape[0], chunk):
        w = W_dec[start:start + chunk].float()
        out.append(_row_correlation(w @ W_U_base.float(), w @ W_U_ft.float()).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def feature_transfer(
    base_density: Float[Tensor, " s"],
    ft_density: Float[Tensor, " s"],
    latents: LatentPairAccumulator,
    W_dec: Float[Tensor, "s d"],
    W_U_base: Float[Tensor, "d v"],
    W_U_ft: Float[Tensor, "d v"],
    seed: int,
) -> dict:
    """Bucket the latents, sample them (seeded) and summarise activation and logit similarity per bucket."""
    log_b, log_f = log10_density(base_density), log10_density(ft_density)
    low, high = REGULAR_RANGE
    regular = torch.nonzero((log_b >= low) & (log_b <= high) & (log_f >= low) & (log_f <= high)).flatten()
    dead_b, dead_f = base_density == 0, ft_density == 0
    only_base = torch.nonzero(dead_b & ~dead_f).flatten()
    only_ft = torch.nonzero(dead_f & ~dead_b).flatten()
    generator = torch.Generator().manual_seed(seed)
    chosen = {
        "regular": _sample(regular, REGULAR_CAP, generator),
        "dead_in_base": _sample(only_base, DEAD_CAP, generator),
        "dead_in_finetune": _sample(only_ft, DEAD_CAP, generator),
    }
    correlations = latents.correlations()
    log_error = latents.log_activation_error()
    vocab = min(W_U_base.shape[1], W_U_ft.shape[1])
    W_U_b, W_U_f = W_U_base[:, :vocab], W_U_ft[:, :vocab]
    buckets: dict[str, dict] = {}
    for name, ids in chosen.items():
        index = torch.tensor(ids, dtype=torch.long)
        entry: dict = {"n_total": {"regular": regular, "dead_in_base": only_base, "dead_in_finetune": only_ft}[name].numel(),
                       "latent_ids": ids}
        if name == "regular":
            entry["activation_correlation"] = _summary(correlations[index])
        else:
            errors = log_error[index]
            other_max = (latents.max_ft if name == "dead_in_base" else latents.max_base)[index]
            other_density = (ft_density if name == "dead_in_base" else base_density)[index]
            entry["activation_error_mean"] = float(errors.mean()) if ids else math.nan
            entry["activation_error_max"] = float(errors.max()) if ids else math.nan
            entry["other_model_max_activation"] = float(other_max.max()) if ids else math.nan
            entry["other_model_firing_fraction_mean"] = float(other_density.double().mean()) if ids else math.nan
        entry["logit_correlation"] = _summary(logit_similarity(W_dec[index].cpu(), W_U_b.cpu(), W_U_f.cpu()))
        buckets[name] = entry
    norm_b, norm_f = float(W_U_b.double().norm()), float(W_U_f.double().norm())
    return {
        "buckets": buckets,
        "n_dead_in_both": int((dead_b & dead_f).sum()),
        "W_U_frobenius_ratio": norm_b / norm_f if norm_f else math.nan,
        "W_U_frobenius_distance": float((W_U_b.double() - W_U_f.double()).norm()),
        "caveat": "Logit similarity shares one W_dec, so it mostly measures the change of W_U (post §5.2); "
                  "activation correlation follows the encoder direction only.",
    }
