"""One streaming pass per pair: every metric of findings 1-4 from the same seeded token batches.

Per batch, for each model: run up to the SAE hook once, then run the rest of the model twice from
the hook (`start_at_layer`): clean and with the SAE spliced in (plus the finetune-native SAE where the
pair has one). Zero ablation makes every position's residual identical, so its logits are one vector
per model, computed once. Logits are formed in chunks of positions from the final residual, so a
256k vocabulary never needs a `[batch, pos, vocab]` tensor. Accumulators keep fixed-size float64
sums: memory does not grow with the token count.

Masking: BOS/special-token positions and norm outliers (the union over base and finetune; threshold
fitted on the base in a calibration pre-pass) keep their clean activation in the spliced pass and are
left out of every statistic, the CE positions included.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetransfer import metrics
from saetransfer.config import RunConfig  # noqa: F401 (its old home; `engine.RunConfig` still works)
from saetransfer.features import feature_transfer
from saetransfer.registry import Pair
from saetransfer.results import METRIC_VERSION, PairResult

CALIBRATION_BATCHES = 4
TOP_K = 16
LOGIT_CHUNK_ELEMENTS = 2**26
"""Positions x vocab per logits chunk (256 MiB in fp32): 256 positions for Gemma's 256k vocabulary."""


def hook_start_layer(hook: str) -> int:
    """The block whose input is the hook's residual: resid_pre L -> L, resid_post L -> L + 1."""
    _, layer, name = hook.split(".", 2)
    if name == "hook_resid_pre":
        return int(layer)
    if name == "hook_resid_post":
        return int(layer) + 1
    raise NotImplementedError(f"hook {hook!r}: only residual-stream SAEs (hook_resid_pre/hook_resid_post) "
                              "are supported; the spliced pass starts at the hook's layer")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import saetransfer

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    names = ("torch", "sae-lens", "transformer-lens", "transformers")
    return {"python": platform.python_version(), "saetransfer": saetransfer.__version__,
            **{n: installed(n) for n in names}}


class _TopK:
    """The k largest scores seen so far, with their (row, position)."""

    def __init__(self, k: int = TOP_K) -> None:
        self.k = k
        self.items: list[tuple[float, int, int]] = []

    def update(self, scores: Float[Tensor, " n"], rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]) -> None:
        if scores.numel() == 0:
            return
        top = torch.topk(scores.float(), min(self.k, scores.numel()))
        new = [(float(s), int(rows[i]), int(positions[i])) for s, i in zip(top.values.tolist(), top.indices.tolist())]
        self.items = sorted(self.items + new, key=lambda t: -t[0])[: self.k]


def _final_logits(model: Any, final_resid: Float[Tensor, "n d"]) -> Float[Tensor, "n v"]:
    logits = model.unembed(model.ln_final(final_resid.unsqueeze(0))).squeeze(0)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:  # Gemma-2 style soft-capping, applied by TransformerLens after the unembed
        logits = cap * torch.tanh(logits / cap)
    return logits


class _ModelSide:
    """Accumulators for one model (base or finetune) and one or more SAEs spliced into it."""

    def __init__(self, model: Any, start: int, saes: dict[str, Any], d_in: int, keep_vocab: int) -> None:
        self.model, self.start, self.saes, self.keep_vocab = model, start, saes, keep_vocab
        self.recon = {name: metrics.ReconstructionAccumulator(d_in, sae.cfg.d_sae) for name, sae in saes.items()}
        self.down = {name: metrics.DownstreamAccumulator() for name in saes}
        self.worst_kl = _TopK()
        self.worst_recon = _TopK()
        n_layers = model.cfg.n_layers
        zeros = torch.zeros(1, 1, model.cfg.d_model, device=model.cfg.device, dtype=model.cfg.dtype)
        final = model(zeros, start_at_layer=start, stop_at_layer=n_layers)
        self.ablated_logits = _final_logits(model, final[0]).squeeze(0).float()

    def acts(self, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "b p d"]:
        return self.model(tokens, stop_at_layer=self.start)

    def update(self, acts: Float[Tensor, "b p d"], tokens: Int[Tensor, "b p"], kept: Bool[Tensor, "b p"],
               row_offset: int) -> dict[str, Float[Tensor, "n s"]]:
        """Splice every SAE in, update the accumulators, return each SAE's latents on the kept positions."""
        n_layers = self.model.cfg.n_layers
        final_clean = self.model(acts, start_at_layer=self.start, stop_at_layer=n_layers)[kept]
        rows, positions = kept.nonzero(as_tuple=True)
        # the next token where there is one (-1 at a row's last position: KL counts it, CE cannot)
        targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -1)], dim=1)[kept]
        latents, finals = {}, {}
        x = acts[kept]
        for name, sae in self.saes.items():
            feats = sae.encode(x.to(sae.dtype))
            x_hat = sae.decode(feats)
            self.recon[name].update(x, x_hat, feats)
            latents[name] = feats
            spliced = acts.clone()
            spliced[kept] = x_hat.to(acts.dtype)
            finals[name] = self.model(spliced, start_at_layer=self.start, stop_at_layer=n_layers)[kept]
            if name == "base":
                err = ((x.float() - x_hat.float()) ** 2).sum(-1) / (x.float() ** 2).sum(-1).clamp(min=1e-12)
                self.worst_recon.update(err, rows + row_offset, positions)
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // self.model.cfg.d_vocab_out)
        for lo in range(0, targets.numel(), chunk):
            sl = slice(lo, lo + chunk)
            clean = metrics.CleanDistribution.from_logits(_final_logits(self.model, final_clean[sl]),
                                                          self.ablated_logits, self.keep_vocab)
            for name, final in finals.items():
                kl = self.down[name].update(clean, _final_logits(self.model, final[sl]), targets[sl], self.keep_vocab)
                if name == "base":
                    self.worst_kl.update(kl, rows[sl] + row_offset, positions[sl])
        return latents

    def sae_result(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {**self.recon[name].result(), **self.down[name].result()}
        out["flags"] = [f"{k} undefined (ablation baseline equals clean)"
                        for k in ("ce_loss_score", "kl_div_score") if math.isnan(out[k])]
        out["log10_density_histogram"] = metrics.density_histogram(self.recon[name].densities()).to_dict()
        return out


def _special_ids(tokenizer: Any) -> Tensor:
    ids = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    ids |= set(getattr(tokenizer, "all_special_ids", []) or [])
    return torch.tensor(sorted(ids), dtype=torch.long)


def _decode_context(tokenizer: Any, tokens: Tensor, row: int, pos: int, width: int = 12) -> dict[str, Any]:
    lo = max(0, pos - width)
    return {"row": row, "position": pos, "token": tokenizer.decode(tokens[row, pos : pos + 1]),
            "context": tokenizer.decode(tokens[row, lo:pos]), "next": tokenizer.decode(tokens[row, pos + 1 : pos + 2])}


def evaluate_pair(pair: Pair, config: RunConfig) -> PairResult:
    """Run every finding's computation for `pair` in one streaming pass."""
    from saetransfer import loading
    from saetransfer.verdict import SaeQuality, decide

    device, dtype = config.device, config.torch_dtype
    hook_start_layer(pair.hook)  # an unsupported hook fails here, before anything is loaded
    sae = loading.load_sae(pair.sae, device=device, allow_hub=config.allow_hub)
    context = pair.context_size or sae.context_size
    prepend_bos = sae.prepend_bos if pair.prepend_bos is None else pair.prepend_bos
    base_tok = loading.load_tokenizer(pair.base, allow_hub=config.allow_hub)
    ft_tok = loading.load_tokenizer(pair.finetune, allow_hub=config.allow_hub)
    sample = loading.sample_tokens(pair.dataset, base_tok, n_tokens=config.n_tokens, context_size=context,
                                   prepend_bos=prepend_bos, seed=pair.seed, allow_hub=config.allow_hub)
    comparison = loading.compare_tokenizers(base_tok, ft_tok)
    compat = loading.check_compatible(base_tok, ft_tok, sample.tokens)
    provenance = {
        "pair_id": pair.id, "test_id": pair.test_id, "hook": pair.hook, "sae": pair.sae.describe(),
        "sae_architecture": sae.architecture, "d_sae": sae.d_sae, "base": pair.base.describe(),
        "finetune": pair.finetune.describe(), "dataset": pair.dataset.describe(),
        "dataset_revision": sample.dataset_revision, "token_sha256": sample.sha256,
        "n_tokens": int(sample.tokens.numel()), "n_rows": int(sample.tokens.shape[0]), "context_size": context,
        "prepend_bos": prepend_bos, "seed": pair.seed, "device": device, "dtype": config.dtype,
        "versions": library_versions(), "metric_version": METRIC_VERSION,
    }
    if not compat.compatible:
        verdict = decide(base=SaeQuality(), finetune=SaeQuality(), architecture=sae.architecture,
                         comparable=False, not_comparable_reason=compat.reason)
        return PairResult(provenance=provenance, tokenizer=comparison.to_dict(), compatibility=compat.to_dict(),
                          verdict=verdict.to_dict())

    processing = loading.processing_for(sae.model_from_pretrained_kwargs)
    # n_ctx = the evaluation context: Gemma's default 8192 would allocate 64 MB causal masks per layer
    load = dict(device=device, dtype=dtype, processing=processing, allow_hub=config.allow_hub, n_ctx=context)
    base = loading.load_model(pair.base, **load)
    ft = base if pair.finetune == pair.base else loading.load_model(pair.finetune, **load)
    loading.check_sae_fits(base.model, sae, pair.hook)
    loading.check_sae_fits(ft.model, sae, pair.hook)
    native = None if pair.native_sae is None else loading.load_sae(pair.native_sae, device=device,
                                                                     allow_hub=config.allow_hub)
    if native is not None:
        loading.check_sae_fits(ft.model, native, pair.hook)
    provenance.update(base_revision=base.revision, finetune_revision=ft.revision,
                      base_d_vocab=base.d_vocab, finetune_d_vocab=ft.d_vocab)

    with torch.inference_mode():
        result = _stream(pair, config, sample.tokens, base, ft, sae, native, base_tok)
    verdict = decide(
        base=_quality(result["sae"]["base"], sae.d_sae), finetune=_quality(result["sae"]["finetune"], sae.d_sae),
        native=_quality(result["sae"]["native_on_finetune"], native.d_sae) if native else None,
        architecture=sae.architecture)
    return PairResult(provenance=provenance, tokenizer=comparison.to_dict(), compatibility=compat.to_dict(),
                      verdict=verdict.to_dict(), **result)


def _quality(sae_metrics: dict[str, Any], d_sae: int) -> Any:
    from saetransfer.verdict import SaeQuality

    return SaeQuality(explained_variance=sae_metrics["explained_variance"], l0=sae_metrics["l0"],
                      ce_loss_score=sae_metrics["ce_loss_score"], kl_div_score=sae_metrics["kl_div_score"],
                      ce_delta=sae_metrics["ce_delta"], d_sae=d_sae)


def _stream(pair: Pair, config: RunConfig, tokens: Int[Tensor, "rows ctx"], base: Any, ft: Any, sae: Any,
            native: Any, tokenizer: Any) -> dict[str, Any]:
    device = config.device
    start = hook_start_layer(pair.hook)
    keep_vocab = base.d_vocab
    special = _special_ids(tokenizer).to(device)
    batches = tokens.split(pair.batch_size)
    base_side = _ModelSide(base.model, start, {"base": sae.sae}, sae.d_in, keep_vocab)
    ft_saes = {"base": sae.sae} | ({"native": native.sae} if native else {})
    ft_side = _ModelSide(ft.model, start, ft_saes, sae.d_in, keep_vocab)

    # calibration: the base's typical activation norm on non-special positions fixes the outlier threshold
    norms = []
    for batch in batches[:CALIBRATION_BATCHES]:
        batch = batch.to(device)
        acts = base_side.acts(batch)
        norms.append(acts.float().norm(dim=-1)[~torch.isin(batch, special)])
    mean_norm = float(torch.cat(norms).double().mean())
    threshold = pair.outliers.absolute if pair.outliers.absolute is not None else pair.outliers.relative * mean_norm

    similarity = metrics.SimilarityAccumulator(tokens.shape[1])
    latents = metrics.LatentPairAccumulator(sae.d_sae)
    worst_cos, outliers_top = _TopK(), _TopK()
    counts = dict.fromkeys(("positions", "special", "outlier_base", "outlier_finetune", "outlier_union", "kept"), 0)
    row = 0
    for batch in tqdm(batches, desc=f"{pair.id}", disable=not config.progress, unit="batch"):
        batch = batch.to(device)
        acts_b, acts_f = base_side.acts(batch), ft_side.acts(batch)
        is_special = torch.isin(batch, special)
        norm_b, norm_f = acts_b.float().norm(dim=-1), acts_f.float().norm(dim=-1)
        out_b, out_f = (norm_b > threshold) & ~is_special, (norm_f > threshold) & ~is_special
        kept = ~is_special & ~out_b & ~out_f
        for key, mask in (("special", is_special), ("outlier_base", out_b), ("outlier_finetune", out_f),
                          ("outlier_union", out_b | out_f), ("kept", kept)):
            counts[key] += int(mask.sum())
        counts["positions"] += batch.numel()
        similarity.update(acts_b, acts_f, kept)
        r, p = kept.nonzero(as_tuple=True)
        worst_cos.update(-metrics.cosine(acts_b[kept], acts_f[kept]), r + row, p)
        r, p = (out_b | out_f).nonzero(as_tuple=True)
        outliers_top.update(torch.maximum(norm_b, norm_f)[out_b | out_f], r + row, p)
        lat_b = base_side.update(acts_b, batch, kept, row)["base"]
        lat_f = ft_side.update(acts_f, batch, kept, row)["base"]
        latents.update(lat_b, lat_f)
        row += batch.shape[0]

    dens_b = base_side.recon["base"].densities()
    dens_f = ft_side.recon["base"].densities()
    sae_results = {"base": base_side.sae_result("base"), "finetune": ft_side.sae_result("base")}
    if native:
        sae_results["native_on_finetune"] = ft_side.sae_result("native")
    decode = lambda items, sign=1.0: [{"score": sign * s, **_decode_context(tokenizer, tokens, r, p)}  # noqa: E731
                                      for s, r, p in items]
    return {
        "masking": {**{f"n_{k}": v for k, v in counts.items()}, "threshold": threshold,
                    "threshold_kind": "absolute" if pair.outliers.absolute is not None else
                    f"relative ({pair.outliers.relative} x base mean norm)",
                    "base_mean_norm": mean_norm,
                    "outlier_fraction": counts["outlier_union"] / max(counts["positions"], 1)},
        "similarity": similarity.result().to_dict(),
        "sae": sae_results,
        "density": {"log10_density_correlation": metrics.log_density_correlation(dens_b, dens_f),
                    "base": metrics.log10_density(dens_b).tolist(), "finetune": metrics.log10_density(dens_f).tolist()},
        "features": feature_transfer(dens_b, dens_f, latents, sae.sae.W_dec.detach(), base.model.W_U.detach(),
                                     ft.model.W_U.detach(), pair.seed),
        "worst_tokens": {"lowest_cosine": decode(worst_cos.items, -1.0),
                         "highest_kl": decode(ft_side.worst_kl.items),
                         "worst_reconstruction": decode(ft_side.worst_recon.items),
                         "outliers": decode(outliers_top.items)},
    }


def result_key(pair: Pair, config: RunConfig) -> str:
    """Everything that changes a result. Local sources by file fingerprint, Hub ones by revision."""
    from saetransfer.cache import cache_key, fingerprint_path

    def source(s: Any) -> Any:
        if s is None:
            return None
        return fingerprint_path(s.path) if s.is_local and s.path.exists() else s.describe()

    parts = {
        "pair": {k: v for k, v in pair.__dict__.items() if k not in ("description", "source_file", "expected")},
        "sources": [source(s) for s in (pair.base, pair.finetune, pair.sae, pair.native_sae, pair.dataset)],
        "config": {"n_tokens": config.n_tokens, "device": config.device.split(":")[0], "dtype": config.dtype},
        "versions": library_versions(),
        "metric_version": METRIC_VERSION,
    }
    return cache_key(parts)


def run(pair: Pair, config: RunConfig, *, refresh: bool = False) -> PairResult:
    """The pair's result from the on-disk cache, computing it (once, under a lock) when absent or `refresh`."""
    from saetransfer.cache import cached_result
    from saetransfer.paths import cache_dir

    return cached_result(cache_dir() / "results", result_key(pair, config),
                         lambda: evaluate_pair(pair, config), refresh=refresh)
