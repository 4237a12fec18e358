"""How far the engine is from the floor, and from the post's way of computing the same findings (JSON).

For one registry entry on one dataset (by default its first axis in both directions; `--axes all`: every
axis, the layer sweep and architectures included) and one token budget, in one process, on the same
seeded token batches, batch size and dtype, under `torch.inference_mode`, median of `--repeats` (ours and
the floor interleaved, after the first, cold call):

- `floor_s`: the least any implementation must compute (`benchmarks/floor.py`). Each model's full forward
  with logits and next-token CE; per distinct splice the engine performs (`floor_splices`: every
  evaluation's `SaeMetrics`, deduplicated by model, SAE, hook and norm-matching scale as the engine
  shares them; the count of forwards from a hook is checked against the engine's own), the SAE's
  encode/decode and one forward from the hook's layer with logits and CE. No KL, masks, sums, bootstrap
  or feature statistics.
- `ours_s`: every finding's computation, no cache: the tokenizer comparison and id check (finding 1),
  then `engine._stream_group`, the engine's pass on loaded models and tokens (findings 2-4, calibration,
  masking, bootstrap, verdicts). `load_s` is the rest of `engine.evaluate_group` on the first call
  (preflight, models, SAEs, tokens): its wall time minus the pass (wrapped to time it) minus the
  tokenizer checks (timed again on their own).
- `post_s`: an emulation, labelled as such, of the pass structure of the post's notebooks (`post_emulation`),
  one evaluation at a time: one pass per experiment, per model and per SAE, full forward passes with a
  hook replacing the activation for the substitution loss, activations materialised on the host. It
  computes the same point metrics (no bootstrap intervals, verdicts or worst-token tables, so post_s is
  a lower bound) and must reproduce ours within `saetransfer.rounding.TOLERANCES`: `post_matches_ours`
  and the number of compared metrics are recorded, and the run fails otherwise.
- `peak_n_mb`, `peak_8n_mb`: RSS high-water of `evaluate_group` at N and 8N tokens, each in a fresh process,
  median of `--repeats` such processes (`peak_runs_mb`): one process's peak varies by about 10 % here
  (the libraries and models are most of it; the allocator's growth decides the rest). Beside them, per
  process, the high-water before the pass and the pass's median and 90th-percentile RSS
  (`peak_levels_runs_mb`, `pass_p50_8n_over_n`): whether the pass's level grows with the tokens.
- `targets`: each target's value, whether it is met, and for the ratios with repeats each repeat's own
  ratio and whether all of them meet it (`with_targets`).
- `wall_split`: one more run of each side, wall seconds per part (`WALL_PARTS`: forward, unembedding, logit
  terms, SAE, and ours' own non-zero search, accumulators and finish), each part's time exclusive of the
  parts it calls, "rest" making up the wall time: what ours adds and where the floor pays more.
- `breakdown`: cProfile of one run of ours and one of the floor (process CPU time, so other load on a
  shared machine does not land in it), every function's own time charged to a group by `function_group`
  and built-ins to their callers, so it follows the code through refactors of engine.py's internals.

The timing process re-runs itself under a pinned glibc allocator (`ALLOCATOR`, recorded as `allocator`), so
that page faults of fresh mappings, which depend on what the process freed before, land on neither side.

Usage: python benchmarks/bench_floor.py [--pair tiny-gpt2__code] [--dataset prose] [--axes primary|all]
           [--tokens 131072] [--repeats 3] [--peak-tokens 16384] [--gpu] [--no-peak] [--no-post] [--no-profile]
Output: benchmarks/results/floor.json (one object per (pair, dataset, axes, tokens, device, host CPU and torch
kernel level); a rerun on the same kind of host replaces its entry)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import cProfile
import dataclasses
import functools
import inspect
import json
import math
import os
import platform
import pstats
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .` too
sys.path.insert(0, str(ROOT / "benchmarks"))  # floor.py
OUT = ROOT / "benchmarks" / "results" / "floor.json"
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
"""glibc, in the timing process: every allocation from the heap, and the heap never trimmed. Under glibc's
defaults a buffer above its dynamic mmap threshold (which follows what the process freed, up to 32 MiB: a
[batch, pos, vocab] logits tensor of the floor) is a fresh mapping that page-faults on every write, or not,
depending on what ran before: the floor's bare forwards took up to 40 % longer after a run of the engine's
blocked pass than after the older engine's. Pinned, neither side pays page faults, so the floor is timed at its
best. The peak-memory children run under the default allocator, as users do."""
TARGETS = {"ours_over_floor": ("<=", 1.15), "post_over_ours": (">=", 2.0), "peak_8n_over_n": ("<=", 1.15)}
"""ours_over_floor is meant on CPU at 131,072 tokens."""


def paired_ratios(entry: dict[str, Any]) -> dict[str, list[float]]:
    """Each repeat's own ratio, from the raw runs an entry keeps: ours / floor (wall) and the 8N / N peaks.
    A repeat measures both sides back to back, so load on a shared machine hits its pair alike; the spread of
    these is the run-to-run noise that a ratio of medians hides (on one AMD host 1.10 to 1.41 where the
    median gave 1.27)."""
    out = {}
    if "runs_wall_cpu_s" in entry:
        runs = entry["runs_wall_cpu_s"]
        out["ours_over_floor"] = [o / f for (o, _), (f, _) in zip(runs["ours"], runs["floor"])]
    if "peak_runs_mb" in entry:
        out["peak_8n_over_n"] = [b / n for n, b in zip(entry["peak_runs_mb"]["n"], entry["peak_runs_mb"]["8n"])]
    return out


def with_targets(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` with its per-repeat ratios and `targets`: each target's value (the ratio of medians), whether it
    is met, and where it has repeats their range and whether every one of them meets it. Derived from the raw
    fields alone, so entries written before a field existed get it when the file is next written."""
    runs = paired_ratios(entry)
    targets = {}
    for key, (op, bound) in TARGETS.items():
        value = entry.get(key)
        meets = (lambda v: v <= bound) if op == "<=" else (lambda v: v >= bound)
        targets[key] = {"target": f"{op} {bound}", "value": value, "met": None if value is None else meets(value)}
        if key in runs:
            targets[key].update(runs=runs[key], runs_range=[min(runs[key]), max(runs[key])],
                                met_by_every_run=all(meets(v) for v in runs[key]))
    return {**entry, **{f"{k}_runs": v for k, v in runs.items()}, "targets": targets}


# ---------------------------------------------------------------------------------------------
# the splices of one evaluation


@dataclasses.dataclass(frozen=True)
class Splice:
    """One SAE spliced into one model, as a `SaeEvaluation` field of an evaluation's result names it."""

    name: str
    model: str  # "base" | "finetune": the evaluation's orientation (base = the SAE's own model)
    sae: str  # "base" | "native"
    norm_matched: bool  # the SAE reads scale * x and x_hat is divided by it (NormMatching.scale)


_SPLICES = {  # SaeEvaluation field -> (model, SAE, norm matched)
    "base": ("base", "base", False),
    "finetune": ("finetune", "base", False),
    "norm_matched_finetune": ("finetune", "base", True),
    "native_on_finetune": ("finetune", "native", False),
}


def splices_of(result: Any) -> list[Splice]:
    """Every splice of one evaluation: one per `SaeMetrics` in `result.sae`.

    A field this table does not know raises, so a splice added to the engine is never silently left out
    of the floor or the emulation; `measure` also checks the floor's forwards against the engine's.
    """
    from saetransfer.results import SaeMetrics

    out = []
    for f in dataclasses.fields(result.sae):
        value = getattr(result.sae, f.name)
        if value is None:
            continue
        if not isinstance(value, SaeMetrics) or f.name not in _SPLICES:
            raise NotImplementedError(f"SaeEvaluation.{f.name}: teach benchmarks/bench_floor.py (_SPLICES) which "
                                      "model and SAE it splices")
        out.append(Splice(f.name, *_SPLICES[f.name]))
    return out


def floor_splices(members: list[Any], results: dict[str, Any], same_model: bool) -> dict[str, list[Any]]:
    """Per model role of the entry, the distinct (SAE, hook, scale) splices of every evaluation measured:
    the engine runs each once however many evaluations read it, and so does the floor (with one model
    for both roles, the identity pair, all on "base")."""
    from floor import Splice as FloorSplice

    from saetransfer.engine import hook_start_layer

    out: dict[str, dict[tuple[int, int, float], Any]] = {"base": {}, "finetune": {}}
    for m in members:
        result = results[m.pair.test_id]
        for s in splices_of(result):
            role = "base" if same_model else m.home if s.model == "base" else m.away
            sae = (m.sae if s.sae == "base" else m.native).sae
            layer, scale = hook_start_layer(m.pair.hook), result.norm_matching.scale if s.norm_matched else 1.0
            out[role].setdefault((id(sae), layer, scale), FloorSplice(sae, layer, scale))
    return {role: list(by_key.values()) for role, by_key in out.items()}


class _CountForwards:
    """Counts `model(..., start_at_layer=...)` calls on real batches (not the 1-position ablation probe)."""

    def __init__(self, cls: type) -> None:
        self.cls, self.count = cls, 0

    def __enter__(self) -> _CountForwards:
        original = self.original = self.cls.forward

        def forward(model: Any, input: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("start_at_layer") is not None and input.shape[:-1].numel() > 1:
                self.count += 1
            return original(model, input, *args, **kwargs)

        self.cls.forward = forward
        return self

    def __exit__(self, *exc: object) -> None:
        self.cls.forward = self.original


# ---------------------------------------------------------------------------------------------
# timing helpers


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """(wall s, process CPU s, fn's value)."""
    from floor import synchronize

    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, value


# ---------------------------------------------------------------------------------------------
# the post's pass structure (an emulation)


def post_emulation(pair: Any, inputs: dict[str, Any], splices: list[Splice]) -> dict[str, Any]:
    """The same point metrics as ours, computed the way the post's notebooks were structured. An EMULATION.

    The post: "Do Sparse Autoencoders (SAEs) transfer across base and finetuned language models?"
    (LessWrong, 2024-09-29, https://www.lesswrong.com/posts/bsXPTiAhhwt5nwBW3), code at
    https://github.com/tommasomncttn/SAE-Transferability (notebooks `pre_3_compute_activations`,
    `find_outlier_norms`, `4_sae_eval`, `5_features_transfer`). Its pass structure, followed here step by step:
    §3 activations cached per model and kept on the host; §4.1 outlier norms from a pass of their own;
    §4 one notebook run per (model, SAE) with one pass per experiment (L0, substitution loss, feature
    density, feature activations), the substitution loss as two full forwards, clean with a cache and
    `run_with_hooks` with a hook writing the reconstruction into the kept positions; §5 one pass per
    model for the chosen latents' activations, kept on the host, then per-latent correlations.

    What is ours, not the post's, so that values can be compared: our masks (special tokens, each model's
    outliers against its own threshold, non-finite values; the union on every statistic), our metric
    definitions (KL, CE recovered, explained variance, ...), fp32 throughout (the post ran fp16), the
    same tokens and batches, one token sample for densities and feature activations, and the
    zero-ablation baseline computed once per model (the post had none; this favours the post).
    """
    import numpy as np
    import torch

    from saetransfer import loading
    from saetransfer.engine import CALIBRATION_BATCHES, _special_ids, _threshold
    from saetransfer.features import DEAD_CAP, REGULAR_CAP, REGULAR_RANGE, TRANSFERRED_CORRELATION, partner_permutation
    from saetransfer.metrics import DENSE_THRESHOLD, LOG_EPS

    config = inputs["config"]
    device = config.device
    tokens = inputs["tokens"]
    batches = tokens.split(pair.batch_size)
    rows, ctx = tokens.shape
    models = {"base": inputs["base"].model, "finetune": inputs["ft"].model}
    saes = {"base": inputs["sae"].sae, "native": inputs["native"].sae if inputs["native"] is not None else None}
    keep_vocab = inputs["keep_vocab"]  # the entry's base vocabulary, as ours (the same in either direction)
    hook = pair.hook
    layer = int(hook.split(".")[1])
    out: dict[str, Any] = {}

    # finding 1, the post's `compare_tokenizers` (its pre_3 notebook): the same calls as ours
    base_tok, ft_tok = inputs["tokenizers"]  # the entry's, in its orientation (as ours compares them)
    comparison = loading.compare_tokenizers(base_tok, ft_tok)
    loading.check_compatible(base_tok, ft_tok, tokens)
    for k in ("only_in_base", "only_in_finetune", "mismatched"):
        out[f"tokenizer.{k}"] = getattr(comparison, k)

    def to_hook(model: Any, batch: Any) -> Any:
        # the post's activation cache: run_with_cache(tokens, stop_at_layer=L + 1, names_filter=[hook])
        _, cache = model.run_with_cache(batch, stop_at_layer=layer + 1, names_filter=[hook])
        return cache[hook]

    def sae_apply(sae: Any, x: Any, c: float) -> tuple[Any, Any]:
        feats = sae.encode((x * c).to(sae.dtype) if c != 1.0 else x.to(sae.dtype))
        x_hat = sae.decode(feats)
        return feats, (x_hat / c if c != 1.0 else x_hat)

    def rows_of(i: int) -> slice:
        return slice(i * pair.batch_size, i * pair.batch_size + batches[i].shape[0])

    with torch.inference_mode():
        # §3 activation similarity (pre_3 / get_similarities): one pass per model, activations on the host
        acts = {role: torch.cat([to_hook(m, b.to(device)).float().cpu() for b in batches]) for role, m in models.items()}

        # §4.1 outliers (find_outlier_norms): a pass per model over the calibration batches, each model's own mean norm
        special = _special_ids(base_tok)  # our masks, not the post's
        cal = batches[:CALIBRATION_BATCHES]
        cal_ok = ~torch.isin(torch.cat(cal), special)
        cal_norms = {role: torch.cat([to_hook(m, b.to(device)).float().norm(dim=-1).cpu() for b in cal])[cal_ok].double()
                     for role, m in models.items()}
        threshold = {role: _threshold(pair, role, float(n[torch.isfinite(n)].mean()))[0]
                     for role, n in cal_norms.items()}
        nb, nf = cal_norms["base"], cal_norms["finetune"]
        both = torch.isfinite(nb) & torch.isfinite(nf) & (nb <= threshold["base"]) & (nf <= threshold["finetune"])
        scale = float(nb[both].mean() / nf[both].mean()) if both.any() else 1.0
        scale = scale if math.isfinite(scale) and scale > 0 else 1.0
        out["norm_matching.scale"] = scale
        is_special = torch.isin(tokens, special)
        finite = {r: torch.isfinite(a).all(-1) for r, a in acts.items()}
        norms = {r: a.norm(dim=-1) for r, a in acts.items()}
        candidate = ~is_special & finite["base"] & finite["finetune"]
        for r in acts:
            candidate &= ~(norms[r] > threshold[r])
        scale_of = {s.name: scale if s.norm_matched else 1.0 for s in splices}

        # §4 L0 experiment (4_sae_eval L0_LOSS): per (model, SAE) a pass to the hook and the SAE; per-position values on the host
        per_pos: dict[str, dict[str, Any]] = {s.name: {} for s in splices}
        for s in splices:
            l0, l1, ok = [], [], []
            for b in batches:
                x = to_hook(models[s.model], b.to(device))
                feats, x_hat = sae_apply(saes[s.sae], x, scale_of[s.name])
                l0.append((feats != 0).sum(-1).double().cpu())
                l1.append(feats.float().abs().sum(-1).double().cpu())
                ok.append((torch.isfinite(feats).all(-1) & torch.isfinite(x_hat).all(-1)).cpu())
            per_pos[s.name].update(l0=torch.cat(l0), l1=torch.cat(l1), sae_ok=torch.cat(ok))
        spliced_at = candidate.clone()
        for s in splices:
            spliced_at &= per_pos[s.name]["sae_ok"]

        # §4 substitution loss (get_substitution_loss): per (model, SAE) a clean full forward with a cache, then a
        # full forward with a hook writing the SAE's reconstruction into the kept positions; reconstruction terms too
        ablated = {}
        for role, m in models.items():  # every position's residual is 0 after the hook: one position gives the logits
            zero = lambda a, hook: torch.zeros_like(a)  # noqa: E731
            ablated[role] = torch.log_softmax(m.run_with_hooks(batches[0][:1, :1].to(device), fwd_hooks=[(hook, zero)])
                                              [0, 0, :keep_vocab].float(), -1)
        for s in splices:
            model, sae, c = models[s.model], saes[s.sae], scale_of[s.name]
            cols: dict[str, list[Any]] = {k: [] for k in ("ce_clean", "ce_sae", "ce_abl", "kl_sae", "kl_abl", "dropped",
                                                          "sse", "sum_sq", "cos", "l2_ratio", "logits_ok")}
            for i, b in enumerate(batches):
                b = b.to(device)
                mask = spliced_at[rows_of(i)].to(device)
                logits_clean, cache = model.run_with_cache(b, names_filter=[hook])
                x = cache[hook][mask]
                _, x_hat = sae_apply(sae, x, c)

                def write_reconstruction(a: Any, hook: Any, mask: Any = mask, x_hat: Any = x_hat) -> Any:
                    a[mask] = x_hat.to(a.dtype)  # the post's hook: acts[keep_mask] = recon, outliers keep theirs
                    return a

                logits_sae = model.run_with_hooks(b, fwd_hooks=[(hook, write_reconstruction)])
                lp_full = torch.log_softmax(logits_clean.float(), -1)
                dropped = lp_full[..., keep_vocab:].exp().sum(-1)
                lp = torch.log_softmax(logits_clean[..., :keep_vocab].float(), -1)
                lq = torch.log_softmax(logits_sae[..., :keep_vocab].float(), -1)
                p = lp.exp()
                target = torch.cat([b[:, 1:], b[:, :1]], dim=1).unsqueeze(-1)  # the last position's is never used
                cols["ce_clean"].append(-lp.gather(-1, target)[..., 0])
                cols["ce_sae"].append(-lq.gather(-1, target)[..., 0])
                cols["ce_abl"].append(-ablated[s.model][target[..., 0]])
                cols["kl_sae"].append((p * (lp - lq)).sum(-1))
                cols["kl_abl"].append((p * (lp - ablated[s.model])).sum(-1))
                cols["dropped"].append(dropped)
                ok = torch.isfinite(torch.stack([cols[k][-1] for k in ("ce_clean", "ce_sae", "ce_abl", "kl_sae",
                                                                        "kl_abl", "dropped")])).all(0)
                cols["logits_ok"].append(ok)
                xf, xh = x.float(), x_hat.float()
                for k, v in (("sse", ((xf - xh) ** 2).sum(-1)), ("sum_sq", (xf**2).sum(-1)),
                             ("cos", torch.nn.functional.cosine_similarity(xf, xh, dim=-1, eps=1e-12)),
                             ("l2_ratio", xh.norm(dim=-1) / xf.norm(dim=-1).clamp(min=1e-12))):
                    full = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
                    full[mask] = v
                    cols[k].append(full)
            for k, v in cols.items():
                per_pos[s.name][k] = torch.cat(v).cpu().double() if k != "logits_ok" else torch.cat(v).cpu()
        kept = spliced_at.clone()
        for s in splices:
            kept &= per_pos[s.name]["logits_ok"]
        out["masking.n_kept"] = int(kept.sum())
        has_next = torch.zeros_like(kept)
        has_next[:, :-1] = True
        ce_at = kept & has_next

        # §4 feature density and feature activations (FEATURE_DENSITY, FEATURE_ACTS): one pass per experiment
        # per (model, SAE), firing counts and the log10-activation histogram over kept positions
        fired = {}
        for s in splices:
            counts = None
            for i, b in enumerate(batches):
                feats, _ = sae_apply(saes[s.sae], to_hook(models[s.model], b.to(device)), scale_of[s.name])
                c = (feats[kept[rows_of(i)].to(device)] != 0).sum(0, dtype=torch.float64).cpu()
                counts = c if counts is None else counts + c
            fired[s.name] = counts
            hist = torch.zeros(100, dtype=torch.float64)
            for i, b in enumerate(batches):
                feats, _ = sae_apply(saes[s.sae], to_hook(models[s.model], b.to(device)), scale_of[s.name])
                f = feats[kept[rows_of(i)].to(device)].float()
                v = torch.log10(f[f != 0]).double().cpu()
                hist += torch.histc(v[torch.isfinite(v)].clamp(-4.0, 3.0), bins=100, min=-4.0, max=3.0)
            out[f"sae.{s.name}.activation_log10_histogram"] = tuple(int(c) for c in hist.tolist())

    # §4 metrics over the kept positions, from the host arrays
    n = float(kept.sum())
    for s in splices:
        pp, x = per_pos[s.name], acts[s.model][kept].double()
        d_in = x.shape[-1]
        mean = lambda k, where=kept: float(pp[k][where].sum()) / max(float(where.sum()), 1.0)  # noqa: E731
        sse, sum_sq = float(pp["sse"][kept].sum()), float(pp["sum_sq"][kept].sum())
        centred = sum_sq / n - float((x.sum(0) / n).pow(2).sum())
        sst = sum_sq - float(x.sum()) ** 2 / (n * d_in)
        ce_clean, ce_sae, ce_abl = (mean(k, ce_at) for k in ("ce_clean", "ce_sae", "ce_abl"))
        kl_sae, kl_abl = mean("kl_sae"), mean("kl_abl")
        density = fired[s.name] / n
        log_d = torch.log10(density + LOG_EPS)
        values = {
            "n_tokens": n, "explained_variance": 1 - (sse / n) / centred, "r2_global": 1 - sse / sst, "mse": sse / n,
            "mse_per_element": sse / (n * d_in), "cossim": mean("cos"), "l2_ratio": mean("l2_ratio"), "l0": mean("l0"),
            "l1": mean("l1"), "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "ce_clean": ce_clean, "ce_spliced": ce_sae, "ce_ablation": ce_abl, "ce_delta": ce_sae - ce_clean,
            "ce_loss_score": (ce_abl - ce_sae) / (ce_abl - ce_clean), "kl_spliced": kl_sae, "kl_ablation": kl_abl,
            "kl_div_score": (kl_abl - kl_sae) / kl_abl, "dropped_vocab_mass_mean": mean("dropped", ce_at),
            "log10_density_histogram": tuple(int(c) for c in torch.histc(log_d.clamp(-10.0, 0.0), bins=50, min=-10.0,
                                                                         max=0.0).tolist()),
        }
        out.update({f"sae.{s.name}.{k}": v for k, v in values.items()})

    # §3 similarity metrics (get_similarities: F.normalize + einsum; torch.norm of the difference)
    a_b, a_f = acts["base"], acts["finetune"]
    cos = torch.einsum("rcd,rcd->rc", torch.nn.functional.normalize(a_b, dim=-1, eps=1e-12),
                       torch.nn.functional.normalize(a_f, dim=-1, eps=1e-12)).double()
    dist = (a_f - a_b).norm(dim=-1).double()
    nb, nf = norms["base"].double(), norms["finetune"].double()
    fin = finite["base"] & finite["finetune"]
    not0 = fin.clone()
    not0[:, 0] = False
    pos_n = fin.sum(0).double().clamp(min=1)
    out.update({
        "similarity.cosine_mean": float(cos[kept].mean()), "similarity.distance_mean": float(dist[kept].mean()),
        "similarity.relative_distance_mean": float((dist / nb.clamp(min=1e-12))[kept].mean()),
        "similarity.norm_ratio_mean": float((nf / nb.clamp(min=1e-12))[kept].mean()),
        "similarity.base_norm_mean": float(nb[kept].mean()), "similarity.finetune_norm_mean": float(nf[kept].mean()),
        "similarity.cosine_mean_all_positions": float(cos[fin].mean()),
        "similarity.cosine_mean_excluding_position_0": float(cos[not0].mean()),
        "similarity.per_position_cosine": tuple((torch.where(fin, cos, 0.0).sum(0) / pos_n).tolist()),
        "similarity.per_position_distance": tuple((torch.where(fin, dist, 0.0).sum(0) / pos_n).tolist()),
    })

    # §5 feature transfer (5_features_transfer): buckets from the densities (subsample_features), then one pass
    # per model for the chosen latents' activations on the host, then np.corrcoef per latent (show_features_similarities)
    base_name = next(s.name for s in splices if s.model == "base" and s.sae == "base" and not s.norm_matched)
    ft_name = next(s.name for s in splices if s.model == "finetune" and s.sae == "base" and not s.norm_matched)
    dens_b, dens_f = fired[base_name] / n, fired[ft_name] / n
    log_b, log_f = torch.log10(dens_b + LOG_EPS), torch.log10(dens_f + LOG_EPS)
    out["density.log10_density_correlation"] = float(np.corrcoef(log_b.numpy(), log_f.numpy())[0, 1])
    low, high = REGULAR_RANGE
    is_regular = (log_b >= low) & (log_b <= high) & (log_f >= low) & (log_f <= high)
    dead_b, dead_f = dens_b == 0, dens_f == 0
    generator = torch.Generator().manual_seed(pair.seed)  # the seeded stand-in for the post's unseeded randperm

    def sample(ids: Any, cap: int) -> list[int]:
        if ids.numel() > cap:
            ids = ids[torch.randperm(ids.numel(), generator=generator)[:cap]]
        return sorted(ids.tolist())

    chosen = {"regular": sample(torch.nonzero(is_regular).flatten(), REGULAR_CAP),
              "dead_in_base": sample(torch.nonzero(dead_b & ~dead_f).flatten(), DEAD_CAP),
              "dead_in_finetune": sample(torch.nonzero(dead_f & ~dead_b).flatten(), DEAD_CAP)}
    d_sae = dens_b.numel()
    partner = partner_permutation(d_sae, pair.seed)  # ours' seeded pairing for the chance floor (not in the post)
    paired = [i for i in chosen["regular"] if bool(is_regular[partner[i]])]
    needed = sorted(set(chosen["regular"]) | set(chosen["dead_in_base"]) | set(chosen["dead_in_finetune"])
                    | {int(partner[i]) for i in paired})
    column = {latent: j for j, latent in enumerate(needed)}
    index = torch.tensor(needed, dtype=torch.long)
    feature_acts = {}
    with torch.inference_mode():
        for role, m in models.items():  # get_feature_activations: sae.encode(cache[hook])[:, ids], stacked on the host
            parts = []
            for i, b in enumerate(batches):
                feats, _ = sae_apply(saes["base"], to_hook(m, b.to(device)), 1.0)
                parts.append(feats[kept[rows_of(i)].to(device)][:, index.to(device)].float().cpu())
            feature_acts[role] = torch.cat(parts).numpy()
    fa_b, fa_f = feature_acts["base"], feature_acts["finetune"]
    kept_rows = kept.nonzero()[:, 0].numpy()

    def corr(x: Any, y: Any) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else math.nan

    def summary(prefix: str, values: list[float]) -> None:
        v = torch.tensor(values, dtype=torch.float64)
        finite_v = v[torch.isfinite(v)]
        out[f"{prefix}_n_nan"] = int((~torch.isfinite(v)).sum())
        out[f"{prefix}_mean"] = float(finite_v.mean()) if finite_v.numel() else math.nan
        out[f"{prefix}_median"] = float(finite_v.median()) if finite_v.numel() else math.nan  # torch's lower median, as ours
        out[f"{prefix}_fraction_at_least_{TRANSFERRED_CORRELATION}"] = \
            float((finite_v >= TRANSFERRED_CORRELATION).sum()) / max(v.numel(), 1)

    reg = chosen["regular"]
    summary("features.regular.activation_correlation", [corr(fa_b[:, column[i]], fa_f[:, column[i]]) for i in reg])
    for half in (0, 1):
        sel = kept_rows % 2 == half
        summary(f"features.chance.split_half_{half}.correlation",
                [corr(fa_b[sel, column[i]], fa_f[sel, column[i]]) for i in reg])
    summary("features.chance.permuted.correlation",
            [corr(fa_b[:, column[i]], fa_f[:, column[int(partner[i])]]) for i in paired])
    W_dec = saes["base"].W_dec.detach().float().cpu()
    W_U = {r: m.W_U.detach().float().cpu() for r, m in models.items()}
    vocab = min(w.shape[1] for w in W_U.values())
    W_U_b, W_U_f = W_U["base"][:, :vocab], W_U["finetune"][:, :vocab]

    def logit_corrs(directions: Any) -> list[float]:  # logits_f = W_dec[f] @ W_U, np.corrcoef over the vocabulary
        lb, lf = (directions @ W_U_b).double().numpy(), (directions @ W_U_f).double().numpy()
        return [corr(lb[j], lf[j]) for j in range(directions.shape[0])]

    summary("features.regular.logit_correlation", logit_corrs(W_dec[reg]))
    g = torch.Generator().manual_seed(pair.seed + 2)  # ours' logit floor: random directions with W_dec's row norms
    noise = torch.randn(W_dec[reg].shape, generator=g, dtype=torch.float32)
    summary("features.chance.logit_random.correlation",
            logit_corrs(noise / noise.norm(dim=-1, keepdim=True) * W_dec[reg].norm(dim=-1, keepdim=True)))
    for name, other, other_density in (("dead_in_base", fa_f, dens_f), ("dead_in_finetune", fa_b, dens_b)):
        ids = chosen[name]
        prefix = f"features.{name}"
        out[f"{prefix}.n_total"] = int(((dead_b & ~dead_f) if name == "dead_in_base" else (dead_f & ~dead_b)).sum())
        if ids:
            cols = [column[i] for i in ids]
            err = np.abs(np.log10(np.clip(fa_b[:, cols], 0, None).astype(np.float64) + LOG_EPS)
                         - np.log10(np.clip(fa_f[:, cols], 0, None).astype(np.float64) + LOG_EPS)).mean(0)
            out[f"{prefix}.activation_error_mean"] = float(err.mean())
            out[f"{prefix}.activation_error_max"] = float(err.max())
            out[f"{prefix}.other_model_max_activation"] = float(max(other[:, cols].max(), 0.0))
            out[f"{prefix}.other_model_firing_fraction_mean"] = float(other_density[ids].mean())
        else:
            for k in ("activation_error_mean", "activation_error_max", "other_model_max_activation",
                      "other_model_firing_fraction_mean"):
                out[f"{prefix}.{k}"] = math.nan
        summary(f"{prefix}.logit_correlation", logit_corrs(W_dec[ids]) if ids else [])
    out["features.regular.n_total"] = int(is_regular.sum())
    out["features.n_dead_in_both"] = int((dead_b & dead_f).sum())
    out["features.W_U_frobenius_ratio"] = float(W_U_b.double().norm() / W_U_f.double().norm())
    out["features.W_U_frobenius_distance"] = float((W_U_b.double() - W_U_f.double()).norm())
    return out


def ours_values(result: Any, splices: list[Splice]) -> dict[str, Any]:
    """The result's values under the keys `post_emulation` uses."""
    from saetransfer.features import TRANSFERRED_CORRELATION

    out: dict[str, Any] = {f"tokenizer.{k}": getattr(result.tokenizer, k)
                           for k in ("only_in_base", "only_in_finetune", "mismatched")}
    out["norm_matching.scale"] = result.norm_matching.scale
    out["masking.n_kept"] = result.masking.n_kept
    sim = result.similarity
    for k in ("cosine_mean", "distance_mean", "relative_distance_mean", "norm_ratio_mean", "base_norm_mean",
              "finetune_norm_mean", "cosine_mean_all_positions", "cosine_mean_excluding_position_0",
              "per_position_cosine", "per_position_distance"):
        out[f"similarity.{k}"] = getattr(sim, k)
    for s in splices:
        m = getattr(result.sae, s.name)
        for k in ("n_tokens", "explained_variance", "r2_global", "mse", "mse_per_element", "cossim", "l2_ratio", "l0",
                  "l1", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_ablation", "ce_delta",
                  "ce_loss_score", "kl_spliced", "kl_ablation", "kl_div_score", "dropped_vocab_mass_mean"):
            out[f"sae.{s.name}.{k}"] = getattr(m, k)
        out[f"sae.{s.name}.activation_log10_histogram"] = m.activation_log10_histogram.counts
        out[f"sae.{s.name}.log10_density_histogram"] = m.log10_density_histogram.counts
    out["density.log10_density_correlation"] = result.density.log10_density_correlation
    f = result.features
    b = f.buckets

    def summary(prefix: str, c: Any) -> None:
        out.update({f"{prefix}_n_nan": c.n_nan, f"{prefix}_mean": c.mean, f"{prefix}_median": c.median,
                    f"{prefix}_fraction_at_least_{TRANSFERRED_CORRELATION}": c.fraction_transferred})

    summary("features.regular.activation_correlation", b.regular.activation_correlation)
    summary("features.regular.logit_correlation", b.regular.logit_correlation)
    summary("features.chance.split_half_0.correlation", f.chance.split_half[0])
    summary("features.chance.split_half_1.correlation", f.chance.split_half[1])
    summary("features.chance.permuted.correlation", f.chance.permuted)
    summary("features.chance.logit_random.correlation", f.chance.logit_random)
    for name in ("dead_in_base", "dead_in_finetune"):
        d = getattr(b, name)
        out[f"features.{name}.n_total"] = d.n_total
        for k in ("activation_error_mean", "activation_error_max", "other_model_max_activation",
                  "other_model_firing_fraction_mean"):
            out[f"features.{name}.{k}"] = getattr(d, k)
        summary(f"features.{name}.logit_correlation", d.logit_correlation)
    out["features.regular.n_total"] = b.regular.n_total
    out["features.n_dead_in_both"] = f.n_dead_in_both
    out["features.W_U_frobenius_ratio"] = f.W_U_frobenius_ratio
    out["features.W_U_frobenius_distance"] = f.W_U_frobenius_distance
    return out


def compare(ours: dict[str, Any], post: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(compared keys, mismatches), each value within `rounding.tolerance` of its leaf key (snapshot rules);
    histograms within `HISTOGRAM_TOLERANCE` of their total, vectors elementwise."""
    from saetransfer.rounding import HISTOGRAM_TOLERANCE, tolerance

    def close(key: str, a: Any, b: Any) -> bool:
        if isinstance(a, float | int) and isinstance(b, float | int):
            a, b = float(a), float(b)
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            rel, abs_ = tolerance(key.rsplit(".", 1)[-1])
            return abs(a - b) <= abs_ + rel * abs(a)
        return False

    mismatches = []
    for key, a in ours.items():
        b = post.get(key)
        if key.endswith("histogram"):
            ok = len(a) == len(b) and sum(abs(x - y) for x, y in zip(a, b)) <= HISTOGRAM_TOLERANCE * max(sum(a), 1)
        elif isinstance(a, tuple | list):
            leaf = key.rsplit(".", 1)[-1].replace("per_position_", "")
            ok = b is not None and len(a) == len(b) and all(close(leaf, x, y) for x, y in zip(a, b))
        else:
            ok = b is not None and close(key, a, b)
        if not ok:
            mismatches.append(f"{key}: ours {_short(a)}, post {_short(b)}")
    return sorted(ours), mismatches


def _short(v: Any) -> str:
    return f"{list(v)[:6]}..." if isinstance(v, tuple | list) else repr(v)


# ---------------------------------------------------------------------------------------------
# where the time goes: cProfile, grouped by function

GROUPS = {
    "forward": "model and SAE forward: TransformerLens, SAELens, torch.nn (the floor's work, CE aside)",
    "calibration": "the calibration pre-pass (thresholds, norm-matching scale)",
    "kl_ce": "next-token CE and KL terms (log-softmax, softmax, sums over the vocabulary)",
    "accumulators": "per-row sums, reconstruction terms, per-latent statistics (metrics *.update / *.add)",
    "bootstrap_verdict": "bootstrap replicates and verdicts (uncertainty, verdict, their engine callers)",
    "feature_transfer": "finding 4 after the pass (features.py and what it calls)",
    "bookkeeping": "the rest of the engine: masks, splicing, counts, worst tokens, results",
    "other": "everything else (the benchmark's own loops, unattributed)",
}


@functools.cache
def _scopes(file: str) -> tuple[tuple[int, int, str], ...]:
    """(first line incl. decorators, last line, qualified name) of every def and class in `file`."""
    try:
        tree = ast.parse(Path(file).read_text())
    except (OSError, SyntaxError):
        return ()
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((first, child.end_lineno or child.lineno, prefix + child.name))
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return tuple(out)


def qualname(file: str, line: int, name: str) -> str:
    """The innermost def/class around `line` (a lambda or comprehension belongs to its enclosing function)."""
    inside = [s for s in _scopes(file) if s[0] <= line <= s[1]]
    return max(inside, key=lambda s: s[0])[2] if inside else name


def function_group(file: str, line: int, name: str) -> str | None:
    """A profiled function's group, or None to charge its time to its callers (built-ins, helpers)."""
    if file == "~" or file.startswith("<"):
        return None
    if "/transformer_lens/" in file or "/sae_lens/" in file:
        return "forward"
    if "/torch/nn/" in file:
        return "kl_ce" if name in ("cross_entropy", "log_softmax", "softmax", "nll_loss") else "forward"
    if file == str(ROOT / "benchmarks" / "floor.py"):
        return "kl_ce" if name == "_ce" else "forward"
    if file == str(Path(__file__).resolve()):
        return "other"
    if "/saetransfer/" not in file:
        return None
    module, q = Path(file).stem, qualname(file, line, name)
    if module == "engine":
        if re.search(r"calibrat|threshold", q, re.I):
            return "calibration"
        if re.search(r"final_logits|final_normed|unembed", q):  # ln_final and W_U: inside the floor's forward
            return "forward"
        if re.search(r"qualit|direction|verdict|norm_note|bootstrap", q, re.I):
            return "bootstrap_verdict"
        return "bookkeeping"
    if module == "metrics":
        if re.search(r"downstream_terms|log_probs|kl_|_ce", q):
            return "kl_ce"
        if re.search(r"\.(update|add)$|_terms$", q) and not q.startswith("Histogram"):
            return "accumulators"
        return None  # totals, values, ratios, histograms: charged to whoever asked (bootstrap, features, results)
    if module in ("uncertainty", "verdict"):
        return "bootstrap_verdict"
    if module == "features":
        return "feature_transfer"
    return "bookkeeping"


def breakdown(profile: cProfile.Profile) -> dict[str, float]:
    """Seconds per group: own time by `group_of`; ungrouped functions split over their callers by call-edge share."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    shares: dict[Any, dict[str, float]] = {}

    def share(key: Any, seen: frozenset[Any]) -> dict[str, float]:
        group = function_group(*key)
        if group is not None:
            return {group: 1.0}
        if key in shares:
            return shares[key]
        callers = stats[key][4] if key in stats else {}
        total = sum(v[3] for v in callers.values())
        if not callers or total <= 0 or key in seen:
            return {"other": 1.0}
        out: dict[str, float] = {}
        for caller, v in callers.items():
            for g, s in share(caller, seen | {key}).items():
                out[g] = out.get(g, 0.0) + s * v[3] / total
        shares[key] = out
        return out

    acc = dict.fromkeys(GROUPS, 0.0)
    for key, (_, _, own, _, _) in stats.items():
        for g, s in share(key, frozenset()).items():
            acc[g] += own * s
    return acc


def _profiled(fn: Callable[[], Any]) -> dict[str, float]:
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        fn()
    finally:
        profile.disable()
    return breakdown(profile)


# ---------------------------------------------------------------------------------------------
# where the time goes: wall seconds, part by part, on both sides

WALL_PARTS = {
    "forward": "TransformerLens forwards and ln_final, the unembedding aside",
    "unembed": "the unembedding's products with W_U: the floor's whole [batch, pos, vocab] logits, ours per block",
    "logit_terms": "log-softmax and the sums over the vocabulary: the floor's CE; ours' CE and KL terms",
    "sae": "SAE encode and decode",
    "nonzero": "finding each encoding's non-zero latents (ours only)",
    "accumulators": "the per-row, per-latent and similarity sums of each batch (ours only)",
    "finish": "after the pass: bootstrap, verdicts, feature transfer, the results (ours only)",
    "rest": "everything else: masks, splicing, the tokenizer checks, Python between the parts",
}


def _wall_functions() -> dict[str, list[tuple[Any, str]]]:
    """The functions each part of `WALL_PARTS` times, on both sides ("rest" is what they leave)."""
    import floor
    from transformer_lens import HookedTransformer
    from transformer_lens.components import Unembed

    from saetransfer import engine, metrics

    return {"forward": [(HookedTransformer, "forward"), (engine, "_final_normed")],
            "unembed": [(Unembed, "forward"), (engine, "_unembed")],
            "logit_terms": [(metrics, "downstream_terms"), (floor, "_ce")],
            "sae": [(engine, "_encode"), (floor, "_reconstruct")],
            "nonzero": [(metrics.ActiveLatents, "of")], "accumulators": [(engine, "_accumulate")],
            "finish": [(engine, "_finish")]}


class _WallSplit:
    """Exclusive wall time of `_wall_functions` while in the block: a call's time less that of the timed calls
    inside it (the floor's unembedding runs inside its forward, ours inside the logit terms). On CUDA each
    boundary synchronises, so the split is of work done, not of work queued."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds = dict.fromkeys(WALL_PARTS, 0.0)
        self._inner: list[float] = []  # per open timed call: the time of the timed calls inside it
        self._saved: list[tuple[Any, str, Any]] = []

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        from floor import synchronize

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(self.device)
                elapsed, inner = time.perf_counter() - start, self._inner.pop()
                self.seconds[part] += elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed
        return timed

    def __enter__(self) -> _WallSplit:
        for part, functions in _wall_functions().items():
            for owner, name in functions:
                raw = vars(owner).get(name)
                self._saved.append((owner, name, raw))
                timed = self._timed(part, getattr(owner, name))  # a classmethod comes bound to its class
                setattr(owner, name, staticmethod(timed) if isinstance(raw, classmethod) else timed)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, raw in reversed(self._saved):
            if raw is None:  # it was inherited: uncover it again
                delattr(owner, name)
            else:
                setattr(owner, name, raw)


def wall_split(fn: Callable[[], Any], device: str) -> dict[str, float]:
    """Wall seconds per part of `WALL_PARTS` in one call of `fn`; "rest" makes them add up to its wall time."""
    from floor import synchronize

    with _WallSplit(device) as split:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        total = time.perf_counter() - start
    return {**split.seconds, "rest": total - sum(split.seconds.values())}  # no timed call charges "rest"


# ---------------------------------------------------------------------------------------------
# one measurement


def _evaluations(pair_id: str, dataset: str | None, axes: str, n_tokens: int, gpu: bool) -> tuple[list[Any], list[Any]]:
    """The evaluations measured, with their configs: the entry's group on `dataset` (default its first),
    restricted to its first axis in both directions (`axes="primary"`) or whole (`"all"`), every one at
    `n_tokens` (an override, as `--tokens` is)."""
    from saetransfer.config import RunConfig
    from saetransfer.registry import group_of, load_registry

    pairs = [p for p in load_registry() if p.id == pair_id]
    if not pairs:
        raise SystemExit(f"no registry entry {pair_id!r}")
    first = next((p for p in pairs if p.dataset.key == dataset), None) if dataset else pairs[0]
    if first is None:
        raise SystemExit(f"{pair_id} has no dataset {dataset!r}: {sorted({p.dataset.key for p in pairs})}")
    group = [p for p in group_of(first) if axes == "all" or p.axis == first.axis]
    config = RunConfig.for_pair(first, tokens=n_tokens, gpu=gpu, progress=False)
    return group, [config.for_member(p, of=first) for p in group]


def measure(pair_id: str, dataset: str | None, axes: str, n_tokens: int, *, gpu: bool, repeats: int, post: bool,
            profile: bool) -> dict[str, Any]:
    import torch

    from floor import measure_floor
    from saetransfer import engine, loading

    pairs, configs = _evaluations(pair_id, dataset, axes, n_tokens, gpu)
    config = configs[0]
    stream = engine._stream_group
    box: dict[str, Any] = {}

    def timed_stream(*args: Any, **kwargs: Any) -> Any:
        box["inputs"] = dict(inspect.signature(stream).bind(*args, **kwargs).arguments)
        model_type = type(box["inputs"]["models"]["base"].model)
        with _CountForwards(model_type) as counter:
            wall, _, value = _timed(lambda: stream(*args, **kwargs), config.device)
        box.update(stream_cold_s=wall, ours_forwards=counter.count)
        return value

    engine._stream_group = timed_stream
    try:
        total, _, results = _timed(lambda: engine.evaluate_group(pairs, configs), config.device)
    finally:
        engine._stream_group = stream
    inputs = box["inputs"]
    models, members, tokens = inputs["models"], list(inputs["members"]), inputs["tokens"]
    base_tok, ft_tok = inputs["tokenizer"], models["finetune"].tokenizer

    def fresh_members() -> list[Any]:  # a member's sums are filled by the pass: each run gets its own
        return [engine._Member(m.pair, m.home, m.away, m.sae, m.native, m.n_rows, m.provenance) for m in members]

    def ours() -> Any:
        loading.compare_tokenizers(base_tok, ft_tok)  # finding 1 (evaluate_group runs these before the pass)
        loading.check_compatible(base_tok, ft_tok, tokens)
        with torch.inference_mode():
            return stream(**{**inputs, "members": fresh_members()})

    tokenizer_s, _, _ = _timed(lambda: (loading.compare_tokenizers(base_tok, ft_tok),
                                        loading.check_compatible(base_tok, ft_tok, tokens)), config.device)
    load_s = total - box["stream_cold_s"] - tokenizer_s

    same_model = models["finetune"].model is models["base"].model
    splices = floor_splices(members, results, same_model)
    floor_models = [(models[r].model, splices[r]) for r in (("base",) if same_model else ("base", "finetune"))]
    n_rows = max(m.n_rows for m in members)

    def floor() -> float:
        return measure_floor(floor_models, tokens[:n_rows], pairs[0].batch_size, device=config.device, warmup=False,
                             by_part=False)["seconds"]

    with _CountForwards(type(models["base"].model)) as counter:  # also the floor's warm-up
        floor()
    if counter.count != box["ours_forwards"]:
        raise AssertionError(f"the floor ran {counter.count} forwards from a hook, the engine {box['ours_forwards']}: "
                             "floor_splices misses a splice the engine ran (or runs one it does not)")
    variants = {"ours": ours, "floor": floor}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so a burst of load on a shared machine hits both
        for k, fn in variants.items():
            runs[k].append(_timed(fn, config.device)[:2])
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}

    out: dict[str, Any] = {
        "pair": pair_id, "dataset": pairs[0].dataset.key, "axes": axes,
        "evaluations": [p.test_id for p in pairs], "tokens": int(tokens[:n_rows].numel()), "device": config.device,
        "dtype": config.dtype, "batch_size": pairs[0].batch_size, "n_batches": len(tokens[:n_rows].split(pairs[0].batch_size)),
        "torch_threads": torch.get_num_threads(), "repeats": repeats,
        "splices": {role: len(v) for role, v in splices.items()},
        "forwards_from_hook": {"ours": box["ours_forwards"], "floor": counter.count},
        "floor_s": med["floor"][0], "ours_s": med["ours"][0], "load_s": load_s, "ours_cold_s": box["stream_cold_s"],
        "floor_cpu_s": med["floor"][1], "ours_cpu_s": med["ours"][1], "runs_wall_cpu_s": runs,
    }
    out["ours_over_floor"] = out["ours_s"] / out["floor_s"]
    out["ours_over_floor_cpu"] = out["ours_cpu_s"] / out["floor_cpu_s"]

    if post:  # the post's procedure, one evaluation (one notebook run per model and SAE) at a time
        post_wall = post_cpu = 0.0
        compared, mismatches = [], []
        for m in members:
            result = results[m.pair.test_id]
            own = {"base": models[m.home], "ft": models[m.away], "sae": m.sae, "native": m.native,
                   "tokens": tokens[: m.n_rows], "config": config, "tokenizers": (base_tok, ft_tok),
                   "keep_vocab": models["base"].d_vocab}
            wall, cpu, values = _timed(lambda: post_emulation(m.pair, own, splices_of(result)), config.device)
            post_wall, post_cpu = post_wall + wall, post_cpu + cpu
            keys, bad = compare(ours_values(result, splices_of(result)), values)
            compared += [f"{m.pair.test_id}: {k}" for k in keys]
            mismatches += [f"{m.pair.test_id}: {k}" for k in bad]
        out.update(post_s=post_wall, post_cpu_s=post_cpu, post_over_ours=post_wall / out["ours_s"],
                   post_over_ours_cpu=post_cpu / out["ours_cpu_s"], post_matches_ours=not mismatches,
                   post_n_compared=len(compared), post_mismatches=mismatches)

    if profile:
        split = {k: wall_split(fn, config.device) for k, fn in variants.items()}
        out["wall_split"] = {
            "clock": "wall s of one more run of each, exclusive (a part's time excludes the timed calls inside it)",
            "ours_total": sum(split["ours"].values()), "floor_total": sum(split["floor"].values()),
            "parts": {p: {"ours": split["ours"][p], "floor": split["floor"][p],
                          "beyond_floor": split["ours"][p] - split["floor"][p], "what": what}
                      for p, what in WALL_PARTS.items()},
        }
        ours_groups = _profiled(ours)
        floor_groups = _profiled(floor)
        out["breakdown"] = {
            "clock": "process CPU s under cProfile (all threads; profiling overhead included)",
            "ours_total": sum(ours_groups.values()), "floor_total": sum(floor_groups.values()),
            "groups": {g: {"ours": ours_groups[g], "floor": floor_groups[g], "beyond_floor": ours_groups[g] - floor_groups[g],
                           "what": what} for g, what in GROUPS.items()},
        }
    return out


def _peak_rss_mb() -> float:
    """This process's RSS high-water. Linux: VmHWM of its own address space, because ru_maxrss survives
    exec and would report the parent's peak (the benchmark's own process, grown by the post emulation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PASS_LEVELS = {"pass_p50_mb": 0.5, "pass_p90_mb": 0.9}
"""Quantiles of the RSS sampled during the pass. A peak is one sample of a transient that spikes by tens of MB
from batch to batch and process to process, and the highest of 8x as many batches' spikes is higher by chance
alone; the pass's median and 90th-percentile levels tell whether memory grows with the tokens."""
RSS_SAMPLE_S = 0.005


def pass_levels(samples: list[tuple[float, float]], windows: list[tuple[float, float]]) -> dict[str, float | None]:
    """`PASS_LEVELS` (nearest rank) of the (time, MB) samples that fall in any (start, end) window; None without
    samples."""
    inside = sorted(mb for t, mb in samples if any(start <= t <= end for start, end in windows))
    return {key: inside[max(0, math.ceil(q * len(inside)) - 1)] if inside else None for key, q in PASS_LEVELS.items()}


class _RssTimeline:
    """This process's RSS every `RSS_SAMPLE_S` on a daemon thread (Linux, /proc/self/statm; nothing elsewhere),
    the windows of `engine._stream_group` (the pass), and the high-water reached before the first one
    (imports, models, SAEs, tokens)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.windows: list[tuple[float, float]] = []
        self.before_pass_mb: float | None = None
        self._stop = threading.Event()

    def _sample(self, statm: Path, page_mb: float) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.samples.append((time.perf_counter(), int(statm.read_text().split()[1]) * page_mb))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        from saetransfer import engine

        stream = engine._stream_group

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.before_pass_mb is None:
                self.before_pass_mb = _peak_rss_mb()
            start = time.perf_counter()
            try:
                return stream(*args, **kwargs)
            finally:
                self.windows.append((start, time.perf_counter()))

        statm = Path("/proc/self/statm")
        sampler = threading.Thread(target=self._sample, args=(statm, os.sysconf("SC_PAGE_SIZE") / 2**20), daemon=True)
        if statm.exists():
            sampler.start()
        engine._stream_group = timed
        try:
            yield
        finally:
            engine._stream_group = stream
            self._stop.set()
            if sampler.is_alive():
                sampler.join()


def peak_fields(runs_n: list[dict[str, Any]], runs_8n: list[dict[str, Any]]) -> dict[str, Any]:
    """An entry's peak-memory fields from the children's outputs at N and 8N tokens (one per fresh process)."""
    def median(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [r.get(key) for r in runs]
        return None if None in values else statistics.median(values)

    def each(key: str) -> dict[str, list[Any]]:
        return {"n": [r.get(key) for r in runs_n], "8n": [r.get(key) for r in runs_8n]}

    n_mb, big_mb = median(runs_n, "peak_rss_mb"), median(runs_8n, "peak_rss_mb")
    n_level, big_level = median(runs_n, "pass_p50_mb"), median(runs_8n, "pass_p50_mb")
    out = {"peak_n_tokens": runs_n[0]["n_tokens"], "peak_8n_tokens": runs_8n[0]["n_tokens"], "peak_n_mb": n_mb,
           "peak_8n_mb": big_mb, "peak_8n_over_n": big_mb / n_mb, "peak_runs_mb": each("peak_rss_mb"),
           "peak_levels_runs_mb": {key: each(key) for key in ("before_pass_mb", *PASS_LEVELS)},
           "pass_p50_8n_over_n": None if None in (n_level, big_level) else big_level / n_level}
    if "peak_cuda_mb" in runs_n[0]:
        out.update(peak_cuda_n_mb=median(runs_n, "peak_cuda_mb"), peak_cuda_8n_mb=median(runs_8n, "peak_cuda_mb"))
    return out


def _peak_child(pair_id: str, dataset: str | None, axes: str, n_tokens: int, gpu: bool) -> None:
    from saetransfer.engine import evaluate_group

    pairs, configs = _evaluations(pair_id, dataset, axes, n_tokens, gpu)
    timeline = _RssTimeline()
    with timeline.watching():
        results = evaluate_group(pairs, configs)
    out = {"n_tokens": max(r.provenance.n_tokens for r in results.values()), "peak_rss_mb": _peak_rss_mb(),
           "before_pass_mb": timeline.before_pass_mb, **pass_levels(timeline.samples, timeline.windows)}
    if gpu:
        import torch

        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def _peak(args: argparse.Namespace, n_tokens: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--pair", args.pair, "--axes", args.axes, "--child-peak", str(n_tokens)]
    cmd += (["--dataset", args.dataset] if args.dataset else []) + (["--gpu"] if args.gpu else [])
    cmd += ["--threads", str(args.threads)] if args.threads else []
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR}  # the default allocator, as users run
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pin_allocator() -> None:
    """Re-run this script under `ALLOCATOR` (glibc reads it at start-up only)."""
    if platform.system() == "Linux" and any(os.environ.get(k) != v for k, v in ALLOCATOR.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR})


def _quiet() -> None:
    import warnings

    from saetransfer.offline import set_offline_environment

    set_offline_environment()
    warnings.simplefilter("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="tiny-gpt2__code")
    parser.add_argument("--dataset", help="one of the entry's datasets (default: its first)")
    parser.add_argument("--axes", choices=("primary", "all"), default="primary",
                        help="the entry's first axis in both directions (default), or every axis")
    parser.add_argument("--tokens", type=int, default=131_072)
    parser.add_argument("--peak-tokens", type=int, default=16_384, help="N for peak memory (N and 8N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="CUDA in bf16, as --gpu in the suite")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    parser.add_argument("--no-peak", action="store_true")
    parser.add_argument("--no-post", action="store_true")
    parser.add_argument("--no-profile", action="store_true", help="skip wall_split and breakdown (one more run each)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child-peak", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child_peak:
        _pin_allocator()
    _quiet()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child_peak:
        _peak_child(args.pair, args.dataset, args.axes, args.child_peak, args.gpu)
        return
    import torch

    if not args.no_peak:  # first, each in a fresh process, N and 8N interleaved `--repeats` times
        runs = [(_peak(args, args.peak_tokens), _peak(args, 8 * args.peak_tokens)) for _ in range(args.repeats)]
    out = measure(args.pair, args.dataset, args.axes, args.tokens, gpu=args.gpu, repeats=args.repeats,
                  post=not args.no_post, profile=not args.no_profile)
    if not args.no_peak:
        out.update(peak_fields([n for n, _ in runs], [big for _, big in runs]))
    import machine

    out["machine"] = machine.describe()
    from saetransfer.offline import HUGE_PAGES

    out["allocator"] = {**{k: os.environ.get(k) for k in (*ALLOCATOR, *HUGE_PAGES)},
                        "why": "glibc allocates from the heap only, in the timing process: neither side pays page "
                               "faults of fresh mappings (ALLOCATOR in benchmarks/bench_floor.py); torch's buffers "
                               "of 2 MiB and more are advised huge pages on both sides, as for users "
                               "(HUGE_PAGES in saetransfer/offline.py)"}
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    entries = json.loads(args.out.read_text()) if args.out.exists() else []
    # one entry per measurement and host kind: hosts of one machine kind differ 2.7x in speed and in torch's
    # kernel level, and the ratios move with them, so a run elsewhere adds to the file instead of replacing it
    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        host = e.get("machine", {})
        return (*(e.get(k) for k in ("pair", "dataset", "axes", "tokens", "device")), host.get("cpu"),
                host.get("torch_cpu_capability"))

    out = with_targets(out)
    entries = [with_targets(e) for e in entries if key(e) != key(out)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entries + [out], indent=1) + "\n")
    summary = {k: out.get(k) for k in ("pair", "tokens", "floor_s", "ours_s", "load_s", "post_s", "ours_over_floor",
                                       "ours_over_floor_runs", "post_over_ours", "peak_n_mb", "peak_8n_mb",
                                       "peak_8n_over_n", "peak_8n_over_n_runs", "post_matches_ours")}
    print(json.dumps(summary, indent=1))
    if out.get("post_mismatches"):
        print("post emulation differs from ours:\n  " + "\n  ".join(out["post_mismatches"]), file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
