"""The floor of a pair's pass: the model work any evaluation of the pair must do, timed bare.

For each model (base, finetune): one forward over every token with next-token cross-entropy, split at the
hooks so that each hook's activations come out of the same forward (`stop_at_layer`, then `start_at_layer`:
the same blocks, run once). Per splice (an SAE spliced into one model at one hook): the SAE's encode + decode
of those activations (in the SAE's dtype, as the engine runs it) and one forward from the hook's layer with
cross-entropy.
No masking, no metrics beyond CE, no accumulators: what is left of the engine's pass when everything it
adds is taken away. Full `[batch, pos, vocab]` logits are formed, as a bare forward does.

`measure_floor` takes models already loaded (TransformerLens `HookedTransformer`s) and SAEs (SAELens),
so that a benchmark times the floor and the engine on the same objects. Used by benchmarks/gpu/run_gpu.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Splice:
    """An SAE spliced into one model at the input of block `layer`; `scale` multiplies its input and divides
    its output (norm matching)."""

    sae: Any
    layer: int
    scale: float = 1.0


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Summed next-token CE of a batch: per-token CE in the logits' own dtype, as a bare forward with loss
    computes it, summed in fp32 (a bf16 sum of thousands of tokens would round to hundreds of nats)."""
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(),
                                                  reduction="none")
    return per_token.float().sum()


def _reconstruct(splice: Splice, acts: Tensor) -> Tensor:
    sae = splice.sae
    x = acts.to(sae.dtype) * splice.scale if splice.scale != 1.0 else acts.to(sae.dtype)
    x_hat = sae.decode(sae.encode(x))
    return (x_hat / splice.scale if splice.scale != 1.0 else x_hat).to(acts.dtype)


def floor_batch(model: Any, tokens: Tensor, splices: Sequence[Splice],
                times: dict[str, float] | None = None) -> dict[str, Tensor]:
    """One model's floor on one batch: CE of the forward and of every splice (nats, summed, on the device:
    reading them would synchronise).

    With `times`, each part's wall time is added to it (synchronising the device between parts).
    """
    device = tokens.device

    def tick(key: str, start: float) -> float:
        if times is not None:
            synchronize(device)
            now = time.perf_counter()
            times[key] = times.get(key, 0.0) + now - start
            return now
        return start

    start = time.perf_counter()
    acts: dict[int, Tensor] = {}
    x, at = tokens, None  # at: the block x is the input of (None: x is still the tokens)
    for layer in sorted({s.layer for s in splices}):  # one forward, stopped at each hook on the way
        x = model(x, stop_at_layer=layer) if at is None else model(x, start_at_layer=at, stop_at_layer=layer)
        acts[layer], at = x, layer
    out = {"clean": _ce(model(x) if at is None else model(x, start_at_layer=at), tokens)}
    start = tick("forward_seconds", start)
    for i, splice in enumerate(splices):
        x_hat = _reconstruct(splice, acts[splice.layer])
        start = tick("sae_seconds", start)
        out[f"splice_{i}"] = _ce(model(x_hat, start_at_layer=splice.layer), tokens)
        start = tick("splice_forward_seconds", start)
    return out


def measure_floor(models: Sequence[tuple[Any, Sequence[Splice]]], tokens: Tensor, batch_size: int,
                  *, device: str, warmup: bool = True, by_part: bool = True) -> dict[str, Any]:
    """Wall time of the floor over `tokens` ([rows, ctx]) for each (model, its splices), batch by batch.

    Returns seconds in all and per part (forward with CE, SAE encode/decode, from-hook forwards with CE),
    summed over the models, the number of tokens, and the mean CE of each model's clean forward (a check
    that the work was done). The per-part times synchronise the device between parts; the total is timed
    in a second pass without those synchronisations (`by_part=False`: that pass alone).
    """
    batches = [b.to(device) for b in tokens.split(batch_size)]
    with torch.inference_mode():
        if warmup:  # kernels, cuBLAS handles, allocator: not the floor's cost
            for model, splices in models:
                floor_batch(model, batches[0], splices)
            synchronize(device)
        parts: dict[str, float] = {}
        ce = [math.nan] * len(models)
        if by_part:
            ce = [0.0] * len(models)
            for batch in batches:
                for i, (model, splices) in enumerate(models):
                    ce[i] += float(floor_batch(model, batch, splices, parts)["clean"])
            synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            for model, splices in models:
                floor_batch(model, batch, splices)
        synchronize(device)
        total = time.perf_counter() - start
    n_tokens = int(tokens.numel())
    targets = n_tokens - tokens.shape[0]
    return {"seconds": total, **{k: v for k, v in sorted(parts.items())}, "n_tokens": n_tokens,
            "n_models": len(models), "n_splices": sum(len(s) for _, s in models),
            "clean_ce_mean": [c / targets for c in ce]}
