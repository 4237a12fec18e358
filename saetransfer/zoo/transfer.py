"""Transfer evidence beyond run_evals: activation similarity at the hook on identical token ids."""

from __future__ import annotations

import numpy as np
import torch
from transformer_lens.HookedTransformer import HookedTransformer


@torch.no_grad()
def hook_acts(model: HookedTransformer, rows: np.ndarray, hook: str, layer: int, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(rows), batch):
        _, cache = model.run_with_cache(torch.from_numpy(rows[i:i + batch]), names_filter=[hook],
                                        stop_at_layer=layer + 1)
        out.append(cache[hook].float())
    return torch.cat(out)


@torch.no_grad()
def activation_similarity(base: torch.Tensor, ft: torch.Tensor) -> dict[str, float]:
    """Per-token cosine, relative distance and norm ratio, BOS position (0) excluded; float64 means."""
    b, f = base[:, 1:].double(), ft[:, 1:].double()
    cos = torch.nn.functional.cosine_similarity(b, f, dim=-1)
    nb, nf = b.norm(dim=-1), f.norm(dim=-1)
    return {"cosine_mean": float(cos.mean()), "cosine_p10": float(cos.quantile(0.1)),
            "rel_distance_mean": float(((f - b).norm(dim=-1) / nb).mean()),
            "norm_ratio_mean": float((nf / nb).mean()), "n_tokens": int(cos.numel())}
