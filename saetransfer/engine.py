"""One streaming pass per pair: every metric of findings 1-4 from the same seeded token batches.

Per batch, for each model: run up to the SAE hook once, then run the rest of the model from the hook
(`start_at_layer`): clean, with the base SAE spliced in, with the finetune-native SAE (where the pair
has one) and, on the finetune, with the base SAE norm-matched. Zero ablation makes every position's
residual identical, so its logits are one vector per model. Logits are formed in chunks of positions
from the final residual, so a 256k vocabulary never needs a `[batch, pos, vocab]` tensor. Accumulators
keep fixed-size float64 sums per row (`metrics.RowSums`), which also give the bootstrap intervals.

Masking (the union over both models; masked positions keep their clean activation in every spliced
pass and are left out of every statistic, the CE positions included):
- special tokens (BOS/EOS/PAD...);
- norm outliers, each model against its own threshold, fitted on its own typical norm in a
  calibration pre-pass (a finetune may legitimately change the residual scale);
- non-finite values per model: activations at the hook, SAE latents or reconstructions, logits.
Below `masking.KEPT_FLOOR` the pair is `not judged`, with the masked share per cause and model.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetransfer import metrics, uncertainty
from saetransfer.config import RunConfig
from saetransfer.features import feature_transfer, partner_permutation
from saetransfer.masking import KEPT_FLOOR
from saetransfer.registry import Pair
from saetransfer.results import (
    METRIC_VERSION, Comparisons, Density, Masking, ModelMasking, NormMatching, PairResult, Provenance, SaeEvaluation,
    SaeMetrics, Similarity, TokenContext, WorstTokens,
)
from saetransfer.verdict import VerdictInputs, SaeQuality, Thresholds, compared_values, decide, decide_with_uncertainty

CALIBRATION_BATCHES = 4
TOP_K = 16
LOGIT_CHUNK_ELEMENTS = 2**26
"""Positions x vocab per logits chunk (256 MiB in fp32): 256 positions for Gemma's 256k vocabulary."""
TIE_DIGITS = 5
"""Worst-token scores equal to this many significant digits are ordered by (row, position), so the
committed tables do not reorder on another machine's last-digit noise."""


def hook_start_layer(hook: str) -> int:
    """The block whose input is the hook's residual: resid_pre L -> L, resid_post L -> L + 1."""
    from saetransfer.loading.errors import UnsupportedHookError

    _, layer, name = hook.split(".", 2)
    if name == "hook_resid_pre":
        return int(layer)
    if name == "hook_resid_post":
        return int(layer) + 1
    raise UnsupportedHookError(f"hook {hook!r}: only residual-stream SAEs (hook_resid_pre/hook_resid_post) "
                               "are supported; the spliced pass starts at the hook's layer")


def _normalisation_warnings(sae: Any) -> list[str]:
    """How the SAE's activation normalisation meets a finetune, as SAELens 6 runs it (`sae_lens/saes/sae.py`).

    - `none`: raw activations. A release trained with `expected_average_only_in` has its training
      model's norm factor folded into the weights by `SAE.from_pretrained`: a fixed rescale, never
      re-estimated on the model it is evaluated on (SAELens's own evals pass an identity
      `ActivationScaler`). The primary verdict does the same; the norm-matched one rescales on top.
    - `constant_norm_rescale` / `layer_norm`: `encode`/`decode` rescale every token by its own norm, so
      a norm shift is absorbed per token and norm matching changes nothing.
    - `expected_average_only_in` still in the cfg (no factor folded): SAELens feeds raw activations, and
      so do we; said in the provenance, because the SAE was trained on rescaled ones.
    """
    mode = getattr(sae.sae.cfg, "normalize_activations", "none")
    if mode == "expected_average_only_in":
        return [f"SAE {sae.source.describe()}: normalize_activations='expected_average_only_in' with no norm factor "
                "folded in; SAELens then feeds raw activations, and so does this run"]
    return []


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
    """The k largest scores seen so far, with their (row, position); near-ties ordered by (row, position)."""

    def __init__(self, k: int = TOP_K) -> None:
        self.k = k
        self.items: list[tuple[float, int, int]] = []

    def update(self, scores: Float[Tensor, " n"], rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]) -> None:
        scores = scores.float()
        finite = torch.isfinite(scores)
        scores, rows, positions = scores[finite], rows[finite], positions[finite]
        if scores.numel() == 0:
            return
        k = min(self.k, scores.numel())
        kth = torch.topk(scores, k).values[-1]
        take = scores >= kth  # every tie of the k-th value, so the choice among ties is ours
        new = list(zip(scores[take].tolist(), rows[take].tolist(), positions[take].tolist()))
        key = lambda t: (-float(f"{t[0]:.{TIE_DIGITS}g}"), t[1], t[2])  # noqa: E731
        self.items = sorted(self.items + new, key=key)[: self.k]


def _final_logits(model: Any, final_resid: Float[Tensor, "n d"]) -> Float[Tensor, "n v"]:
    logits = model.unembed(model.ln_final(final_resid.unsqueeze(0))).squeeze(0)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:  # Gemma-2 style soft-capping, applied by TransformerLens after the unembed
        logits = cap * torch.tanh(logits / cap)
    return logits


@dataclass(frozen=True)
class _Splice:
    """An SAE spliced into one model. It reads `scale` x the activation; its output is divided by it."""

    name: str
    sae: Any
    scale: float = 1.0


@dataclass(frozen=True)
class _Encoded:
    feats: Float[Tensor, "n s"]
    x_hat: Float[Tensor, "n d"]

    def subset(self, keep: Bool[Tensor, " n"]) -> _Encoded:
        return _Encoded(self.feats[keep], self.x_hat[keep])


class _ModelSide:
    """Accumulators for one model (base or finetune) and the SAEs spliced into it."""

    def __init__(self, model: Any, start: int, splices: Sequence[_Splice], d_in: int, keep_vocab: int,
                 n_rows: int, track_worst: bool = False) -> None:
        self.model, self.start, self.splices, self.keep_vocab = model, start, tuple(splices), keep_vocab
        self.recon = {s.name: metrics.ReconstructionAccumulator(n_rows, d_in, s.sae.cfg.d_sae) for s in splices}
        self.down = {s.name: metrics.DownstreamAccumulator(n_rows) for s in splices}
        self.track_worst = track_worst
        """Keep the worst tokens of the base SAE: only the finetune's are reported."""
        self.worst_kl = _TopK()
        self.worst_recon = _TopK()
        zeros = torch.zeros(1, 1, model.cfg.d_model, device=model.cfg.device, dtype=model.cfg.dtype)
        final = model(zeros, start_at_layer=start, stop_at_layer=model.cfg.n_layers)
        self.ablated_logits = _final_logits(model, final[0]).squeeze(0).float()

    def acts(self, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "b p d"]:
        return self.model(tokens, stop_at_layer=self.start)

    def encode(self, x: Float[Tensor, "n d"]) -> tuple[dict[str, _Encoded], Bool[Tensor, " n"]]:
        """Every SAE's latents and reconstruction of `x`, and which positions are finite in all of them."""
        out, finite = {}, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for s in self.splices:
            feats = s.sae.encode((x * s.scale).to(s.sae.dtype) if s.scale != 1.0 else x.to(s.sae.dtype))
            x_hat = s.sae.decode(feats)
            x_hat = x_hat / s.scale if s.scale != 1.0 else x_hat
            finite &= torch.isfinite(feats).all(-1) & torch.isfinite(x_hat).all(-1)
            out[s.name] = _Encoded(feats, x_hat)
        return out, finite

    def downstream(self, acts: Float[Tensor, "b p d"], tokens: Int[Tensor, "b p"], spliced_at: Bool[Tensor, "b p"],
                   encoded: dict[str, _Encoded]) -> tuple[dict[str, Float[Tensor, "n k"]], Bool[Tensor, " n"]]:
        """Per-position CE/KL terms of every splice at the `spliced_at` positions, and where all are finite."""
        n_layers = self.model.cfg.n_layers
        final_clean = self.model(acts, start_at_layer=self.start, stop_at_layer=n_layers)[spliced_at]
        # the next token where there is one (-1 at a row's last position: KL counts it, CE cannot)
        targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -1)], dim=1)[spliced_at]
        finals = {}
        for s in self.splices:
            spliced = acts.clone()
            spliced[spliced_at] = encoded[s.name].x_hat.to(acts.dtype)
            finals[s.name] = self.model(spliced, start_at_layer=self.start, stop_at_layer=n_layers)[spliced_at]
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // self.model.cfg.d_vocab_out)
        terms: dict[str, list[Tensor]] = {s.name: [] for s in self.splices}
        for lo in range(0, targets.numel(), chunk):
            sl = slice(lo, lo + chunk)
            clean = metrics.CleanDistribution.from_logits(_final_logits(self.model, final_clean[sl]),
                                                          self.ablated_logits, self.keep_vocab)
            for name, final in finals.items():
                terms[name].append(metrics.downstream_terms(clean, _final_logits(self.model, final[sl]), targets[sl],
                                                            self.keep_vocab))
        width = len(metrics.DOWNSTREAM_COLUMNS)
        stacked = {name: torch.cat(t) if t else torch.zeros(0, width, dtype=torch.float64) for name, t in terms.items()}
        finite = torch.ones(targets.numel(), dtype=torch.bool, device=targets.device)
        for t in stacked.values():
            finite &= torch.isfinite(t).all(-1).to(finite.device)
        return stacked, finite

    def accumulate(self, x: Float[Tensor, "n d"], encoded: dict[str, _Encoded], terms: dict[str, Float[Tensor, "n k"]],
                   rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]) -> None:
        for s in self.splices:
            enc = encoded[s.name]
            self.recon[s.name].update(x, enc.x_hat, enc.feats, rows)
            self.down[s.name].update(terms[s.name], rows)
        if not self.track_worst:
            return
        base = encoded["base"]
        err = ((x.float() - base.x_hat.float()) ** 2).sum(-1) / (x.float() ** 2).sum(-1).clamp(min=1e-12)
        self.worst_recon.update(err, rows, positions)
        self.worst_kl.update(terms["base"][:, 5], rows, positions)

    def metrics_of(self, name: str) -> SaeMetrics:
        out: dict[str, Any] = {**self.recon[name].result(), **self.down[name].result()}
        out["flags"] = tuple(f"{k} undefined ({_undefined_because(out, k)})"
                             for k in ("ce_loss_score", "kl_div_score") if math.isnan(out[k]))
        return SaeMetrics(**out)

    def qualities(self, name: str, d_sae: int, weights: Float[Tensor, "r rows"]) -> list[SaeQuality]:
        """The verdict's inputs for `name` in every bootstrap replicate."""
        rec, down = self.recon[name].values(weights), self.down[name].values(weights)
        cols = [rec["explained_variance"], rec["l0"], down["ce_loss_score"], down["kl_div_score"], down["ce_delta"]]
        return [SaeQuality(explained_variance=ev, l0=l0, ce_loss_score=ce, kl_div_score=kl, ce_delta=delta, d_sae=d_sae)
                for ev, l0, ce, kl, delta in zip(*(c.tolist() for c in cols))]


def _undefined_because(out: dict[str, Any], key: str) -> str:
    """The real cause of an undefined CE-recovered or KL score (non-finite positions never reach the sums)."""
    if out["n_tokens"] == 0:
        return "no kept positions"
    baseline = out["ce_ablation"] - out["ce_clean"] if key == "ce_loss_score" else out["kl_ablation"]
    if math.isfinite(baseline) and abs(baseline) < metrics.UNDEFINED_DENOMINATOR:
        return "ablation baseline equals clean"
    return "a term of the ratio is undefined"


def _quality(m: SaeMetrics, d_sae: int) -> SaeQuality:
    return SaeQuality(explained_variance=m.explained_variance, l0=m.l0, ce_loss_score=m.ce_loss_score,
                      kl_div_score=m.kl_div_score, ce_delta=m.ce_delta, d_sae=d_sae)


def _special_ids(tokenizer: Any) -> Tensor:
    ids = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    ids |= set(getattr(tokenizer, "all_special_ids", []) or [])
    return torch.tensor(sorted(ids), dtype=torch.long)


def _decode_context(tokenizer: Any, tokens: Tensor, score: float, row: int, pos: int, width: int = 12) -> TokenContext:
    lo = max(0, pos - width)
    return TokenContext(score=score, row=row, position=pos, token=tokenizer.decode(tokens[row, pos : pos + 1]),
                        context=tokenizer.decode(tokens[row, lo:pos]), next=tokenizer.decode(tokens[row, pos + 1 : pos + 2]))


def evaluate_pair(pair: Pair, config: RunConfig) -> PairResult:
    """Run every finding's computation for `pair` in one streaming pass."""
    from saetransfer import loading

    warnings = loading.preflight(pair, config)  # everything knowable from configs, before any weights
    device, dtype = config.device, config.torch_dtype
    sae = loading.load_sae(pair.sae, device=device, allow_hub=config.allow_hub)
    warnings += _normalisation_warnings(sae)
    context = pair.context_size or sae.context_size
    prepend_bos = sae.prepend_bos if pair.prepend_bos is None else pair.prepend_bos
    base_tok = loading.load_tokenizer(pair.base, allow_hub=config.allow_hub)
    ft_tok = loading.load_tokenizer(pair.finetune, allow_hub=config.allow_hub)
    sample = loading.sample_tokens(pair.dataset, base_tok, n_tokens=config.n_tokens, context_size=context,
                                   prepend_bos=prepend_bos, seed=pair.seed, allow_hub=config.allow_hub)
    comparison = loading.compare_tokenizers(base_tok, ft_tok)
    compat = loading.check_compatible(base_tok, ft_tok, sample.tokens)
    remote = pair.base.trust_remote_code or pair.finetune.trust_remote_code
    provenance = Provenance(
        pair_id=pair.id, test_id=pair.test_id, hook=pair.hook, sae=pair.sae.describe(),
        sae_architecture=sae.architecture, d_sae=sae.d_sae, base=pair.base.describe(),
        finetune=pair.finetune.describe(), dataset=pair.dataset.describe(), dataset_revision=sample.dataset_revision,
        token_sha256=sample.sha256, n_tokens=int(sample.tokens.numel()), n_rows=int(sample.tokens.shape[0]),
        context_size=context, prepend_bos=prepend_bos, seed=pair.seed, device=device, dtype=config.dtype,
        versions=library_versions(), metric_version=METRIC_VERSION, trust_remote_code=remote,
        warnings=tuple(warnings))
    if not compat.compatible:
        verdict = decide(base=SaeQuality(), finetune=SaeQuality(), architecture=sae.architecture,
                         comparable=False, not_comparable_reason=compat.reason)
        return PairResult(provenance=provenance, tokenizer=comparison, compatibility=compat, verdict=verdict)

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
    provenance = replace(provenance, base_revision=base.revision, finetune_revision=ft.revision,
                         base_d_vocab=base.d_vocab, finetune_d_vocab=ft.d_vocab)
    with torch.inference_mode():
        return _stream(pair, config, sample.tokens, base, ft, sae, native, base_tok, comparison, compat, provenance)


@dataclass(frozen=True)
class _Calibration:
    threshold_base: float
    threshold_finetune: float
    kind_base: str
    kind_finetune: str
    mean_norm_base: float
    mean_norm_finetune: float
    scale: float
    """Norm matching: mean ||x_base|| / mean ||x_ft|| over positions kept on both models."""
    n_scale_positions: int


def _threshold(pair: Pair, side: str, mean_norm: float) -> tuple[float, str]:
    policy = pair.outliers
    absolute = policy.absolute_finetune if side == "finetune" and policy.absolute_finetune is not None \
        else policy.absolute
    if absolute is not None:
        return absolute, "absolute (registry)"
    return policy.relative * mean_norm, f"relative ({policy.relative:g} x this model's mean norm)"


def _calibrate(pair: Pair, batches: Sequence[Tensor], to_hook: tuple[Any, Any], special: Tensor,
               device: str) -> tuple[_Calibration, list[tuple[Tensor, Tensor]]]:
    """Each model's typical norm (its outlier threshold), then the norm-matching scale on the positions both keep.

    Also returns the calibration batches' activations, which the main pass reuses instead of recomputing.
    """
    norms: list[list[Tensor]] = [[], []]
    kept_acts = []
    for batch in batches[:CALIBRATION_BATCHES]:
        batch = batch.to(device)
        ok = ~torch.isin(batch, special)
        acts = tuple(to(batch) for to in to_hook)
        kept_acts.append(acts)
        for i, a in enumerate(acts):
            norms[i].append(a.float().norm(dim=-1)[ok])
    flat = [torch.cat(n).double() for n in norms]
    mean = [float(n[torch.isfinite(n)].mean()) if torch.isfinite(n).any() else math.nan for n in flat]
    thr_b, kind_b = _threshold(pair, "base", mean[0])
    thr_f, kind_f = _threshold(pair, "finetune", mean[1])
    both = torch.isfinite(flat[0]) & torch.isfinite(flat[1]) & (flat[0] <= thr_b) & (flat[1] <= thr_f)
    scale = float(flat[0][both].mean() / flat[1][both].mean()) if both.any() else math.nan
    return _Calibration(thr_b, thr_f, kind_b, kind_f, mean[0], mean[1],
                        scale if math.isfinite(scale) and scale > 0 else 1.0, int(both.sum())), kept_acts


def _not_judged_reasons(counts: dict[str, int], cal: _Calibration, n_kept: int, non_special: int) -> list[str]:
    """Below the floor: the masked share per cause and model, and why."""
    share = lambda n: f"{n / max(non_special, 1):.1%}"  # noqa: E731
    out = [f"kept {n_kept} of {non_special} non-special positions ({share(n_kept)}); a verdict needs at least "
           f"{KEPT_FLOOR.min_fraction:.0%} and {KEPT_FLOOR.min_count} positions (masking.KEPT_FLOOR)"]
    norm_ratio = cal.mean_norm_finetune / cal.mean_norm_base if cal.mean_norm_base else math.nan
    for side, thr, own in (("base", cal.threshold_base, cal.mean_norm_base),
                           ("finetune", cal.threshold_finetune, cal.mean_norm_finetune)):
        if counts[f"outlier_{side}"]:
            why = f"threshold {thr:.4g} vs its mean norm {own:.4g}"
            if side == "finetune" and math.isfinite(norm_ratio) and abs(math.log(norm_ratio)) > math.log(1.25):
                why = f"finetune norms are {norm_ratio:.2f}x the base's; {why}"
            out.append(f"norm outliers on the {side}: {share(counts[f'outlier_{side}'])} of its positions ({why})")
        for cause, label in (("nonfinite_activations", "non-finite activations at the hook"),
                             ("nonfinite_sae", "non-finite SAE latents or reconstructions"),
                             ("nonfinite_logits", "non-finite logits (overflow in this dtype?)")):
            if counts[f"{cause}_{side}"]:
                out.append(f"{label} on the {side}: {share(counts[f'{cause}_{side}'])} of its positions")
    return out


def _stream(pair: Pair, config: RunConfig, tokens: Int[Tensor, "rows ctx"], base: Any, ft: Any, sae: Any,
            native: Any, tokenizer: Any, comparison: Any, compat: Any, provenance: Provenance) -> PairResult:
    device = config.device
    start = hook_start_layer(pair.hook)
    keep_vocab = base.d_vocab
    n_rows = tokens.shape[0]
    special = _special_ids(tokenizer).to(device)
    batches = tokens.split(pair.batch_size)
    base_side = _ModelSide(base.model, start, [_Splice("base", sae.sae)], sae.d_in, keep_vocab, n_rows)
    same_model = ft.model is base.model  # the identity pair: one forward serves both sides
    to_ft = base_side.acts if same_model else (lambda t: ft.model(t, stop_at_layer=start))
    cal, calibration_acts = _calibrate(pair, batches, (base_side.acts, to_ft), special, device)
    ft_splices = [_Splice("base", sae.sae), _Splice("norm_matched", sae.sae, cal.scale)]
    if native is not None:
        ft_splices.append(_Splice("native", native.sae))
    ft_side = _ModelSide(ft.model, start, ft_splices, sae.d_in, keep_vocab, n_rows, track_worst=True)

    similarity = metrics.SimilarityAccumulator(n_rows, tokens.shape[1])
    latents = metrics.LatentPairAccumulator(sae.d_sae, partner_permutation(sae.d_sae, pair.seed))
    worst_cos, outliers_top = _TopK(), _TopK()
    counts = dict.fromkeys(("positions", "special", "outlier_union", "kept", "excluded"), 0)
    for side in ("base", "finetune"):
        for cause in ("outlier", "nonfinite_activations", "nonfinite_sae", "nonfinite_logits"):
            counts[f"{cause}_{side}"] = 0
    row = 0
    for index, batch in enumerate(tqdm(batches, desc=f"{pair.id}", disable=not config.progress, unit="batch")):
        batch = batch.to(device)
        if index < len(calibration_acts):
            acts_b, acts_f = calibration_acts[index]
            calibration_acts[index] = ()  # free it
        else:
            acts_b = base_side.acts(batch)
            acts_f = acts_b if same_model else ft_side.acts(batch)
        is_special = torch.isin(batch, special)
        fin_b, fin_f = torch.isfinite(acts_b).all(-1), torch.isfinite(acts_f).all(-1)
        norm_b, norm_f = acts_b.float().norm(dim=-1), acts_f.float().norm(dim=-1)
        out_b = fin_b & ~is_special & (norm_b > cal.threshold_base)
        out_f = fin_f & ~is_special & (norm_f > cal.threshold_finetune)
        candidate = ~is_special & fin_b & fin_f & ~out_b & ~out_f
        # SAEs first: a position whose latents are non-finite on either model is not spliced anywhere
        enc_b, ok_b = base_side.encode(acts_b[candidate])
        enc_f, ok_f = ft_side.encode(acts_f[candidate])
        spliced_at = candidate.clone()
        spliced_at[candidate] = ok_b & ok_f
        ok = ok_b & ok_f
        enc_b = {k: v.subset(ok) for k, v in enc_b.items()}
        enc_f = {k: v.subset(ok) for k, v in enc_f.items()}
        terms_b, logits_ok_b = base_side.downstream(acts_b, batch, spliced_at, enc_b)
        terms_f, logits_ok_f = ft_side.downstream(acts_f, batch, spliced_at, enc_f)
        keep = logits_ok_b & logits_ok_f
        kept = spliced_at.clone()
        kept[spliced_at] = keep
        for side, nonfinite, outliers, sae_ok, logits_ok in (("base", ~fin_b, out_b, ok_b, logits_ok_b),
                                                              ("finetune", ~fin_f, out_f, ok_f, logits_ok_f)):
            counts[f"outlier_{side}"] += int(outliers.sum())
            counts[f"nonfinite_activations_{side}"] += int((nonfinite & ~is_special).sum())
            counts[f"nonfinite_sae_{side}"] += int((~sae_ok).sum())
            counts[f"nonfinite_logits_{side}"] += int((~logits_ok).sum())
        counts["positions"] += batch.numel()
        counts["special"] += int(is_special.sum())
        counts["outlier_union"] += int((out_b | out_f).sum())
        counts["kept"] += int(kept.sum())
        counts["excluded"] += int((~is_special & ~kept).sum())

        r, p = kept.nonzero(as_tuple=True)
        rows = r + row
        base_side.accumulate(acts_b[kept], {k: v.subset(keep) for k, v in enc_b.items()},
                             {k: v[keep] for k, v in terms_b.items()}, rows, p)
        ft_side.accumulate(acts_f[kept], {k: v.subset(keep) for k, v in enc_f.items()},
                           {k: v[keep] for k, v in terms_f.items()}, rows, p)
        latents.update(enc_b["base"].feats[keep], enc_f["base"].feats[keep], rows)
        similarity.update(acts_b, acts_f, kept, fin_b & fin_f, row)
        worst_cos.update(-metrics.cosine(acts_b[kept], acts_f[kept]), rows, p)
        ro, po = (out_b | out_f).nonzero(as_tuple=True)
        outliers_top.update(torch.maximum(norm_b, norm_f)[out_b | out_f], ro + row, po)
        row += batch.shape[0]

    non_special = counts["positions"] - counts["special"]
    kept_fraction = counts["kept"] / max(non_special, 1)
    judged = kept_fraction >= KEPT_FLOOR.min_fraction and counts["kept"] >= KEPT_FLOOR.min_count
    not_judged = () if judged else tuple(_not_judged_reasons(counts, cal, counts["kept"], non_special))

    def model_masking(side: str) -> ModelMasking:
        return ModelMasking(threshold=getattr(cal, f"threshold_{side}"), threshold_kind=getattr(cal, f"kind_{side}"),
                            mean_norm=getattr(cal, f"mean_norm_{side}"),
                            **{f"n_{c}": counts[f"{c}_{side}"] for c in
                               ("outlier", "nonfinite_activations", "nonfinite_sae", "nonfinite_logits")})

    masking = Masking(n_positions=counts["positions"], n_special=counts["special"], base=model_masking("base"),
                      finetune=model_masking("finetune"), n_outlier_union=counts["outlier_union"],
                      n_excluded=counts["excluded"], n_kept=counts["kept"], kept_fraction=kept_fraction,
                      outlier_fraction=counts["outlier_union"] / max(counts["positions"], 1), judged=judged,
                      reasons=not_judged)

    d_sae = sae.d_sae
    sae_eval = SaeEvaluation(base=base_side.metrics_of("base"), finetune=ft_side.metrics_of("base"),
                             native_on_finetune=ft_side.metrics_of("native") if native else None,
                             norm_matched_finetune=ft_side.metrics_of("norm_matched"))
    sim = Similarity(**similarity.result())

    # bootstrap: one weight matrix for every model and SAE (paired)
    t = Thresholds()
    spec = uncertainty.bootstrap_spec(n_rows, pair.seed, t.agreement)
    weights = uncertainty.resample_weights(spec, n_rows)
    sim_reps = metrics.similarity_values(similarity.rows.totals(weights))
    base_reps = base_side.qualities("base", d_sae, weights)
    native_reps = ft_side.qualities("native", native.d_sae, weights) if native else [None] * spec.n_resamples
    point_base = _quality(sae_eval.base, d_sae)
    point_native = _quality(sae_eval.native_on_finetune, native.d_sae) if native else None

    def direction(ft_name: str, ft_metrics: SaeMetrics) -> tuple[Any, Comparisons]:
        point = VerdictInputs(point_base, _quality(ft_metrics, d_sae), point_native)
        reps = [VerdictInputs(b, f, n) for b, f, n in zip(base_reps, ft_side.qualities(ft_name, d_sae, weights), native_reps)]
        point_values = compared_values(point.base, point.finetune, point.native)
        rep_values = [compared_values(r.base, r.finetune, r.native) for r in reps]
        comparisons = Comparisons(
            **{k: uncertainty.estimate(v, torch.tensor([rv[k] for rv in rep_values], dtype=torch.float64))
               for k, v in point_values.items() if not (native is None and "native" in k)},
            norm_ratio=uncertainty.estimate(sim.norm_ratio_mean, sim_reps["norm_ratio_mean"]),
            cosine=uncertainty.estimate(sim.cosine_mean, sim_reps["cosine_mean"]))
        if not judged:
            verdict = decide(base=point.base, finetune=point.finetune, architecture=sae.architecture,
                             not_judged_reasons=not_judged)
        else:
            verdict = decide_with_uncertainty(point, reps, comparisons, architecture=sae.architecture, level=spec.level)
        return verdict, comparisons

    verdict, comparisons = direction("base", sae_eval.finetune)
    nm_verdict, nm_comparisons = direction("norm_matched", sae_eval.norm_matched_finetune)
    verdict = _with_norm_note(verdict, nm_verdict, comparisons)

    dens_b = base_side.recon["base"].densities()
    dens_f = ft_side.recon["base"].densities()
    decode = lambda items, sign=1.0: tuple(_decode_context(tokenizer, tokens, sign * s, r, p)  # noqa: E731
                                           for s, r, p in items)
    return PairResult(
        provenance=replace(provenance, bootstrap=spec), tokenizer=comparison,
        compatibility=compat, verdict=verdict, masking=masking, similarity=sim, sae=sae_eval,
        comparisons=comparisons,
        norm_matching=NormMatching(scale=cal.scale, n_positions=cal.n_scale_positions, verdict=nm_verdict,
                                   comparisons=nm_comparisons),
        density=Density(log10_density_correlation=metrics.log_density_correlation(dens_b, dens_f),
                        base=tuple(metrics.log10_density(dens_b).tolist()),
                        finetune=tuple(metrics.log10_density(dens_f).tolist())),
        features=feature_transfer(dens_b, dens_f, latents, sae.sae.W_dec.detach(), base.model.W_U.detach(),
                                  ft.model.W_U.detach(), pair.seed),
        worst_tokens=WorstTokens(lowest_cosine=decode(worst_cos.items, -1.0), highest_kl=decode(ft_side.worst_kl.items),
                                 worst_reconstruction=decode(ft_side.worst_recon.items),
                                 outliers=decode(outliers_top.items)))


def _with_norm_note(verdict: Any, norm_matched: Any, comparisons: Comparisons) -> Any:
    """Name the norm shift in the primary verdict's reasons, and the norm-matched verdict beside it."""
    if verdict.verdict in ("not comparable", "not judged"):
        return verdict
    r = comparisons.norm_ratio
    shift = f"{r.value:.3g}x the base's" if r is not None and math.isfinite(r.value) else "unknown"
    if r is not None and math.isfinite(r.low):
        shift += f" [{r.low:.3g}, {r.high:.3g}]"
    if norm_matched.verdict != verdict.verdict:
        note = (f"norm shift: finetune activation norms are {shift}; {verdict.verdict} as is, "
                f"{norm_matched.verdict} after norm matching (the SAE reads the finetune rescaled to the base's norm)")
    else:
        note = f"norm shift: finetune activation norms are {shift}; norm matching gives the same verdict"
    return replace(verdict, reasons=(*verdict.reasons, note))


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
