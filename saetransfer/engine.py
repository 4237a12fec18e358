"""One streaming pass per pair: every metric of findings 1-4 from the same seeded token batches.

Per batch, for each model: run up to the SAE hook once, then run the rest of the model from the hook
(`start_at_layer`): clean, with the base SAE spliced in, with the finetune-native SAE (where the pair
has one) and, on the finetune, with the base SAE norm-matched. Zero ablation makes every position's
residual identical, so its logits are one vector per model. Logits are formed a block of positions at a
time from the final residual, and every CE/KL term of a block is taken while they are in cache
(`metrics.downstream_terms`), so a 256k vocabulary never needs a `[batch, pos, vocab]` tensor. Accumulators
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

import functools
import json
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
from saetransfer.registry import Pair, group_of, swapped
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


def installed_version(name: str) -> str:
    """A distribution's installed version, or "not installed"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@functools.cache  # installed versions do not change under a running process; every result key reads them
def _installed_versions() -> tuple[tuple[str, str], ...]:
    import saetransfer

    names = ("torch", "sae-lens", "transformer-lens", "transformers")
    return (("python", platform.python_version()), ("saetransfer", saetransfer.__version__),
            *((n, installed_version(n)) for n in names))


def library_versions() -> dict[str, str]:
    """Python, saetransfer and the model libraries' versions, as a result's provenance and cache key name them."""
    return dict(_installed_versions())


def _rank_key(item: tuple[float, int, int]) -> tuple[float, int, int]:
    return -float(f"{item[0]:.{TIE_DIGITS}g}"), item[1], item[2]


class _TopK:
    """The k largest scores seen so far, with their (row, position); near-ties ordered by (row, position)."""

    def __init__(self, k: int = TOP_K) -> None:
        self.k = k
        self.items: list[tuple[float, int, int]] = []

    def update(self, scores: Float[Tensor, " n"], rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]) -> None:
        scores = scores.float()
        finite = torch.isfinite(scores)
        if not bool(finite.any()):
            return
        if len(self.items) == self.k:  # usual after the first batches: nothing here ranks above the k-th kept
            best = float(scores.where(finite, -math.inf).max())
            if _rank_key((best, 0, 0))[0] > _rank_key(self.items[-1])[0]:
                return
        if not bool(finite.all()):
            scores, rows, positions = scores[finite], rows[finite], positions[finite]
        kth = float(torch.topk(scores, min(self.k, scores.numel())).values[-1])
        # everything that rounds (TIE_DIGITS) like the k-th value or above, so the key alone orders near-ties
        take = (scores >= kth - abs(kth) * 10.0 ** (1 - TIE_DIGITS)).nonzero().squeeze(1)
        new = list(zip(scores[take].tolist(), rows[take].tolist(), positions[take].tolist()))
        self.items = sorted(self.items + new, key=_rank_key)[: self.k]


def _unembed(w_u: Tensor, b_u: Tensor, cap: float, final: Tensor) -> Tensor:
    logits = torch.addmm(b_u, final, w_u)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def _unembedding(model: Any) -> metrics.Unembed:
    """Final residuals after `ln_final` -> logits, as TransformerLens's `Unembed` (W_U, b_U) and its logit soft
    cap (Gemma-2) compute them. One matrix product per block of positions: `Unembed.forward` copies W_U
    transposed on every call, which for a block of positions costs more than the product. A partial of a
    module-level function, not a closure: the test suite's type-check hook re-decorates a nested function on
    every call of its parent."""
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    return functools.partial(_unembed, model.W_U, model.b_U, cap)


def _final_normed(model: Any, final_resid: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    return model.ln_final(final_resid.unsqueeze(0)).squeeze(0)


def _final_logits(model: Any, final_resid: Float[Tensor, "n d"]) -> Float[Tensor, "n v"]:
    return _unembedding(model)(_final_normed(model, final_resid))


@dataclass(frozen=True)
class _Splice:
    """An SAE spliced into one model. It reads `scale` x the activation; its output is divided by it."""

    name: str
    sae: Any
    scale: float = 1.0

    @property
    def key(self) -> tuple[int, float]:
        return id(self.sae), self.scale


@dataclass(frozen=True)
class _Encoded:
    feats: Float[Tensor, "n s"]
    x_hat: Float[Tensor, "n d"]

    @functools.cached_property
    def active(self) -> metrics.ActiveLatents:
        """The non-zero latents, found once however many evaluations read this encoding."""
        return metrics.ActiveLatents.of(self.feats)

    @functools.cached_property
    def finite(self) -> Bool[Tensor, " n"]:
        """Positions whose latents and reconstruction are all finite. NaN and inf are non-zero, so the
        latents' check reads only the active entries instead of the [n, d_sae] matrix."""
        bad = torch.zeros(self.feats.shape[0], dtype=torch.bool, device=self.feats.device)
        bad[self.active.position[~torch.isfinite(self.active.value)]] = True
        return ~bad & metrics.finite_rows(self.x_hat)

    def subset(self, keep: Bool[Tensor, " n"]) -> _Encoded:
        if bool(keep.all()):  # the usual case (every candidate kept): no copy of the [n, d_sae] latents
            return self
        return _Encoded(self.feats[keep], self.x_hat[keep])


def _encode(splice: _Splice, x: Float[Tensor, "n d"]) -> _Encoded:
    sae, scale = splice.sae, splice.scale
    feats = sae.encode((x * scale).to(sae.dtype) if scale != 1.0 else x.to(sae.dtype))
    x_hat = sae.decode(feats)
    x_hat = x_hat / scale if scale != 1.0 else x_hat
    return _Encoded(feats, x_hat)


class _SideSums:
    """One evaluation's accumulators on one model (the SAE's own, or the other) for each SAE spliced there."""

    def __init__(self, splices: Sequence[_Splice], d_in: int, n_rows: int, track_worst: bool = False) -> None:
        self.splices = tuple(splices)
        self.recon = {s.name: metrics.ReconstructionAccumulator(n_rows, d_in, s.sae.cfg.d_sae) for s in splices}
        self.down = {s.name: metrics.DownstreamAccumulator(n_rows) for s in splices}
        self.track_worst = track_worst
        """Keep the worst tokens of the evaluated SAE: only the other model's are reported."""
        self.worst_kl = _TopK()
        self.worst_recon = _TopK()

    @property
    def evaluated(self) -> _Splice:
        """The evaluated SAE as spliced here (its other splices are the norm-matched and native ones)."""
        return next(s for s in self.splices if s.name == "base")

    def accumulate(self, recon: dict[str, metrics.ReconstructionBatch], terms: dict[str, Float[Tensor, "n k"]],
                   rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]) -> None:
        for s in self.splices:
            self.recon[s.name].add(recon[s.name])
            self.down[s.name].update(terms[s.name], rows)
        if self.track_worst:
            t = recon["base"].terms  # the relative squared error, from the sums' own sse and ||x||² columns
            sse, sum_sq = (t[:, metrics.RECONSTRUCTION_COLUMNS.index(c)] for c in ("sse", "sum_sq"))
            self.worst_recon.update(sse / sum_sq.clamp(min=1e-12), rows, positions)
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
    """One evaluation on its own (`evaluate_group` without its siblings)."""
    return evaluate_group([pair], [config])[pair.test_id]


def evaluate_group(pairs: Sequence[Pair], configs: Sequence[RunConfig]) -> dict[str, PairResult]:
    """Evaluations of one registry entry on one dataset (`registry.group_of`), in one streaming pass.

    Per batch each model runs once, up to its deepest hook and on to its logits; each splice (an SAE at
    its hook, in either direction) is one pass from its own hook's layer. `configs[i]` is `pairs[i]`'s
    (its own token budget: an evaluation reads the first rows of the shared sample); device, dtype and
    Hub access come from the first. Returns test id -> result.
    """
    from saetransfer import loading

    config = configs[0]
    device, dtype = config.device, config.torch_dtype
    # everything knowable from configs, before any weights
    warnings = {p.test_id: loading.preflight(p, c) for p, c in zip(pairs, configs)}
    saes: dict[Any, Any] = {}

    def sae_of(source: Any) -> Any:
        if source not in saes:
            saes[source] = loading.load_sae(source, device=device, allow_hub=config.allow_hub)
        return saes[source]

    for p in pairs:
        warnings[p.test_id] += _normalisation_warnings(sae_of(p.sae))
        if p.native_sae is not None:
            sae_of(p.native_sae)
    entry = pairs[0] if pairs[0].direction == "forward" else swapped(pairs[0])  # the entry's base and finetune
    first = sae_of(pairs[0].sae)
    context = pairs[0].context_size or first.context_size
    prepend_bos = first.prepend_bos if pairs[0].prepend_bos is None else pairs[0].prepend_bos
    for p in pairs[1:]:
        own = p.context_size or sae_of(p.sae).context_size
        if own != context:
            warnings[p.test_id].append(f"evaluated at context {context}, shared with the pair's other evaluations "
                                       f"on this dataset; this SAE was trained at {own}")
    base_tok = loading.load_tokenizer(entry.base, allow_hub=config.allow_hub)
    ft_tok = loading.load_tokenizer(entry.finetune, allow_hub=config.allow_hub)
    sample = loading.sample_tokens(entry.dataset, base_tok, n_tokens=max(c.n_tokens for c in configs),
                                   context_size=context, prepend_bos=prepend_bos, seed=entry.seed,
                                   allow_hub=config.allow_hub)
    comparison = loading.compare_tokenizers(base_tok, ft_tok)
    compat = loading.check_compatible(base_tok, ft_tok, sample.tokens)
    remote = entry.base.trust_remote_code or entry.finetune.trust_remote_code

    def provenance(p: Pair, c: RunConfig) -> Provenance:
        sae = sae_of(p.sae)
        rows = sample.tokens[: math.ceil(c.n_tokens / context)]
        return Provenance(
            pair_id=p.id, test_id=p.test_id, hook=p.hook, sae=p.sae.describe(), sae_architecture=sae.architecture,
            d_sae=sae.d_sae, base=p.base.describe(), finetune=p.finetune.describe(), dataset=p.dataset.describe(),
            dataset_revision=sample.dataset_revision, token_sha256=loading.tokens_sha256(rows),
            n_tokens=int(rows.numel()), n_rows=int(rows.shape[0]), context_size=context, prepend_bos=prepend_bos,
            seed=p.seed, device=device, dtype=config.dtype, versions=library_versions(),
            metric_version=METRIC_VERSION, trust_remote_code=remote, warnings=tuple(warnings[p.test_id]),
            direction=p.direction, dataset_name=p.dataset.key, sae_trained_on=sae.trained_on)

    provenances = {p.test_id: provenance(p, c) for p, c in zip(pairs, configs)}
    if not compat.compatible:
        out = {}
        for p in pairs:
            verdict = decide(base=SaeQuality(), finetune=SaeQuality(), architecture=sae_of(p.sae).architecture,
                             comparable=False, not_comparable_reason=compat.reason)
            out[p.test_id] = PairResult(provenance=provenances[p.test_id], tokenizer=comparison,
                                        compatibility=compat, verdict=verdict)
        return out

    processings = {json.dumps(loading.processing_for(s.model_from_pretrained_kwargs), sort_keys=True)
                   for s in saes.values()}
    if len(processings) > 1:
        raise loading.SaeMismatchError(
            f"{entry.id}: its SAEs were trained on differently processed models ({sorted(processings)}); one "
            "streaming pass needs one model, so register the SAEs that differ as a pair entry of their own")
    processing = json.loads(processings.pop())
    # n_ctx = the evaluation context: Gemma's default 8192 would allocate 64 MB causal masks per layer
    load = dict(device=device, dtype=dtype, processing=processing, allow_hub=config.allow_hub, n_ctx=context)
    base = loading.load_model(entry.base, **load)
    ft = base if entry.finetune == entry.base else loading.load_model(entry.finetune, **load)
    models = {"base": base, "finetune": ft}
    members = []
    for p, c in zip(pairs, configs):
        home, away = ("base", "finetune") if p.direction == "forward" else ("finetune", "base")
        sae = sae_of(p.sae)
        native = None if p.native_sae is None else sae_of(p.native_sae)
        loading.check_sae_fits(models[home].model, sae, p.hook)
        loading.check_sae_fits(models[away].model, sae, p.hook)
        if native is not None:
            loading.check_sae_fits(models[away].model, native, p.hook)
        prov = replace(provenances[p.test_id], base_revision=models[home].revision,
                       finetune_revision=models[away].revision, base_d_vocab=models[home].d_vocab,
                       finetune_d_vocab=models[away].d_vocab)
        members.append(_Member(p, home, away, sae, native, math.ceil(c.n_tokens / context), prov))
    with torch.inference_mode():
        return _stream_group(entry, config, sample.tokens, models, members, base_tok, comparison, compat)


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


@dataclass(frozen=True)
class _HookCalibration:
    """One hook's outlier thresholds per model (the entry's roles), and the norms both models keep."""

    threshold: dict[str, float]
    kind: dict[str, str]
    mean_norm: dict[str, float]
    kept_norms: dict[str, Tensor]
    """Per model, ||x|| at the calibration positions finite and under the threshold on both models."""

    def for_member(self, home: str, away: str) -> _Calibration:
        a, b = self.kept_norms[home], self.kept_norms[away]
        scale = float(a.mean() / b.mean()) if a.numel() else math.nan
        return _Calibration(self.threshold[home], self.threshold[away], self.kind[home], self.kind[away],
                            self.mean_norm[home], self.mean_norm[away],
                            scale if math.isfinite(scale) and scale > 0 else 1.0, int(a.numel()))


def _calibrate(entry: Pair, acts: Sequence[dict[str, dict[int, Tensor]]], batches: Sequence[Tensor],
               special: Tensor, starts: Sequence[int]) -> dict[int, _HookCalibration]:
    """Each model's typical norm at each hook (its outlier threshold), from the calibration batches."""
    out = {}
    for s in starts:
        flat = {}
        for role in ("base", "finetune"):
            norms = [a[role][s].float().norm(dim=-1)[~torch.isin(b, special)] for a, b in zip(acts, batches)]
            flat[role] = torch.cat(norms).double()
        mean = {r: float(n[torch.isfinite(n)].mean()) if torch.isfinite(n).any() else math.nan for r, n in flat.items()}
        thr, kind = {}, {}
        for role in flat:
            thr[role], kind[role] = _threshold(entry, role, mean[role])
        both = torch.ones_like(flat["base"], dtype=torch.bool)
        for role, n in flat.items():
            both &= torch.isfinite(n) & (n <= thr[role])
        out[s] = _HookCalibration(thr, kind, mean, {r: n[both] for r, n in flat.items()})
    return out


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


_CAUSES = ("outlier", "nonfinite_activations", "nonfinite_sae", "nonfinite_logits")


class _Member:
    """One evaluation of the group: the SAE on its own model (`home`) and on the other (`away`)."""

    def __init__(self, pair: Pair, home: str, away: str, sae: Any, native: Any, n_rows: int,
                 provenance: Provenance) -> None:
        self.pair, self.home, self.away, self.sae, self.native = pair, home, away, sae, native
        self.n_rows, self.provenance = n_rows, provenance
        self.start = hook_start_layer(pair.hook)
        self.counts = dict.fromkeys(("positions", "special", "outlier_union", "kept", "excluded"), 0)
        for side in ("base", "finetune"):  # this evaluation's orientation: base = home
            for cause in _CAUSES:
                self.counts[f"{cause}_{side}"] = 0

    def begin(self, cal: _HookCalibration, n_ctx: int) -> None:
        """Accumulators, once the calibration has fixed the norm-matching scale."""
        self.cal = cal.for_member(self.home, self.away)
        d_in = self.sae.d_in
        self.sides = {
            self.home: _SideSums([_Splice("base", self.sae.sae)], d_in, self.n_rows),
            self.away: _SideSums([_Splice("base", self.sae.sae), _Splice("norm_matched", self.sae.sae, self.cal.scale),
                                  *([_Splice("native", self.native.sae)] if self.native is not None else [])],
                                 d_in, self.n_rows, track_worst=True)}
        self.similarity = metrics.SimilarityAccumulator(self.n_rows, n_ctx)
        self.latents = metrics.LatentPairAccumulator(self.sae.d_sae, partner_permutation(self.sae.d_sae, self.pair.seed))
        self.worst_cos, self.outliers_top = _TopK(), _TopK()


def _ablated_logits(model: Any, start: int) -> Float[Tensor, " v"]:
    """Zero ablation at block `start`: every position's residual is the same zero vector, so one position's
    logits are all positions' (one forward per model and hook, not one per token)."""
    zeros = torch.zeros(1, 1, model.cfg.d_model, device=model.cfg.device, dtype=model.cfg.dtype)
    final = model(zeros, start_at_layer=start, stop_at_layer=model.cfg.n_layers)
    return _final_logits(model, final[0]).squeeze(0).float()


def _stream(pair: Pair, config: RunConfig, tokens: Int[Tensor, "rows ctx"], base: Any, ft: Any, sae: Any, native: Any,
            tokenizer: Any, comparison: Any, compat: Any, provenance: Provenance) -> PairResult:
    """One evaluation's pass on models and SAEs already loaded (`base`/`ft`: objects with `model` and `d_vocab`)."""
    member = _Member(pair, "base", "finetune", sae, native, tokens.shape[0], provenance)
    return _stream_group(pair, config, tokens, {"base": base, "finetune": ft}, [member], tokenizer, comparison,
                         compat)[pair.test_id]


def _chain(model: Any, tokens: Int[Tensor, "b p"], starts: Sequence[int]) -> dict[int, Tensor]:
    """The residual at the input of each block in `starts` (ascending), from one pass up to the deepest."""
    out, x, at = {}, None, 0
    for s in starts:
        x = model(tokens, stop_at_layer=s) if x is None else model(x, start_at_layer=at, stop_at_layer=s)
        out[s], at = x, s
    return out


def _stream_group(entry: Pair, config: RunConfig, tokens: Int[Tensor, "rows ctx"], models: dict[str, Any],
                  members: Sequence[_Member], tokenizer: Any, comparison: Any, compat: Any) -> dict[str, PairResult]:
    device = config.device
    keep_vocab = models["base"].d_vocab
    special = _special_ids(tokenizer).to(device)
    n_rows = max(m.n_rows for m in members)
    tokens = tokens[:n_rows]
    batches = tokens.split(entry.batch_size)
    starts = sorted({m.start for m in members})
    same_model = models["finetune"].model is models["base"].model  # the identity pair: one forward serves both
    roles = ("base",) if same_model else ("base", "finetune")

    def forward(batch: Tensor) -> dict[str, dict[int, Tensor]]:
        acts = {r: _chain(models[r].model, batch, starts) for r in roles}
        return {"base": acts["base"], "finetune": acts["base" if same_model else "finetune"]}

    calibration_batches = [b.to(device) for b in batches[:CALIBRATION_BATCHES]]
    calibration_acts = [forward(b) for b in calibration_batches]
    calibration = _calibrate(entry, calibration_acts, calibration_batches, special, starts)
    for m in members:
        m.begin(calibration[m.start], tokens.shape[1])
    # the zero-ablation baseline of each model and hook: the same for every batch
    ablated_lp = {(r, s): metrics.ablation_log_probs(_ablated_logits(models[r].model, s), keep_vocab)
                  for r in ("base", "finetune") for s in starts}

    row = 0
    desc = f"{entry.id} [{entry.dataset.key}]"
    for index, batch in enumerate(tqdm(batches, desc=desc, disable=not config.progress, unit="batch")):
        batch = batch.to(device)
        if index < len(calibration_acts):
            acts = calibration_acts[index]
            calibration_acts[index] = {}  # free it
        else:
            acts = forward(batch)
        active_members = [m for m in members if m.n_rows > row]
        _batch_step(active_members, models, acts, batch, row, calibration, special, ablated_lp, keep_vocab, same_model)
        row += batch.shape[0]
    return {m.pair.test_id: _finish(m, models, tokens, tokenizer, comparison, compat) for m in members}


class _Shared:
    """One batch's SAE encodings and spliced passes, each computed once however many evaluations use it."""

    def __init__(self, models: dict[str, Any], acts: dict[str, dict[int, Tensor]], masks: dict[int, dict[str, Tensor]],
                 same_model: bool) -> None:
        self.models, self.acts, self.masks, self.same_model = models, acts, masks, same_model
        self.encodings: dict[tuple[str, int, tuple[int, float]], _Encoded] = {}
        self.kept_encodings: list[tuple[tuple[str, int, tuple[int, float]], Tensor, _Encoded]] = []
        self.reconstructions: dict[int, metrics.ReconstructionBatch] = {}
        """By index in `kept_encodings`."""
        self.finals: dict[str, list[tuple[tuple[int, tuple[int, float]], Tensor, Tensor]]] = {r: [] for r in models}

    def _model_role(self, role: str) -> str:
        return "base" if self.same_model else role

    def encoded(self, role: str, s: int, splice: _Splice) -> _Encoded:
        """`splice`'s latents and reconstruction at hook `s`'s candidate positions of `role`'s model."""
        key = (self._model_role(role), s, splice.key)
        if key not in self.encodings:
            self.encodings[key] = _encode(splice, self.acts[role][s][self.masks[s]["candidate"]])
        return self.encodings[key]

    def kept_encoding(self, role: str, s: int, splice: _Splice, kept: Bool[Tensor, "b p"]) -> tuple[int, _Encoded]:
        """`encoded` at the `kept` positions (a subset of the candidates), with its index among the subsets made:
        evaluations that keep the same positions share it, and what is computed from it."""
        key = (self._model_role(role), s, splice.key)
        for index, (k, mask, enc) in enumerate(self.kept_encodings):
            if k == key and torch.equal(mask, kept):
                return index, enc
        enc = self.encoded(role, s, splice).subset(kept[self.masks[s]["candidate"]])
        self.kept_encodings.append((key, kept, enc))
        return len(self.kept_encodings) - 1, enc

    def reconstruction(self, role: str, s: int, splice: _Splice, kept: Bool[Tensor, "b p"], x: Float[Tensor, "n d"],
                       rows: Int[Tensor, " n"]) -> metrics.ReconstructionBatch:
        """`splice`'s reconstruction sums at the `kept` positions (`x`: the activations there, at sample rows
        `rows`), once per encoding and positions however many evaluations add them."""
        index, enc = self.kept_encoding(role, s, splice, kept)
        if index not in self.reconstructions:
            self.reconstructions[index] = metrics.ReconstructionBatch.of(x, enc.x_hat, enc.feats, rows, enc.active)
        return self.reconstructions[index]

    def spliced_pass(self, role: str, s: int, splice: _Splice, at: Bool[Tensor, "b p"]) -> tuple[str, int]:
        """The key of the pass with `splice`'s reconstruction at the `at` positions: one pass per (model,
        hook, SAE, scale, positions), run on first use."""
        model_role = self._model_role(role)
        for index, (key, mask, _) in enumerate(self.finals[model_role]):
            if key == (s, splice.key) and torch.equal(mask, at):
                return model_role, index
        model = self.models[role].model
        x = self.acts[role][s].clone()
        x[at] = self.encoded(role, s, splice).x_hat[at[self.masks[s]["candidate"]]].to(x.dtype)
        final = model(x, start_at_layer=s, stop_at_layer=model.cfg.n_layers)
        self.finals[model_role].append(((s, splice.key), at, final))
        return model_role, len(self.finals[model_role]) - 1

    def passes(self) -> dict[tuple[str, int], tuple[int, Tensor]]:
        """Every pass run: key -> (its hook's start layer, its final residual)."""
        return {(r, i): (key[0], final) for r, runs in self.finals.items() for i, (key, _, final) in enumerate(runs)}


def _batch_step(members: Sequence[_Member], models: dict[str, Any], acts: dict[str, dict[int, Tensor]],
                batch: Int[Tensor, "b p"], row: int, calibration: dict[int, _HookCalibration], special: Tensor,
                ablated_lp: dict[tuple[str, int], Tensor], keep_vocab: int, same_model: bool) -> None:
    """One batch for every evaluation: masks, encodings and spliced passes shared wherever they coincide."""
    is_special = torch.isin(batch, special)
    n_layers = {r: models[r].model.cfg.n_layers for r in models}
    masks: dict[int, dict[str, Tensor]] = {}
    for s in {m.start for m in members}:
        cal = calibration[s]
        fin = {r: metrics.finite_rows(acts[r][s]) for r in models}
        norm = {r: acts[r][s].float().norm(dim=-1) for r in models}
        out = {r: fin[r] & ~is_special & (norm[r] > cal.threshold[r]) for r in models}
        masks[s] = {"candidate": ~is_special & fin["base"] & fin["finetune"] & ~out["base"] & ~out["finetune"],
                    **{f"fin_{r}": fin[r] for r in models}, **{f"out_{r}": out[r] for r in models},
                    **{f"norm_{r}": norm[r] for r in models}}
    # SAEs first: a position whose latents are non-finite on either model is not spliced for that evaluation
    work = _Shared(models, acts, masks, same_model)
    encoded = work.encoded

    plans = []
    for m in members:
        cand = masks[m.start]["candidate"]
        active = torch.zeros_like(cand)
        active[: m.n_rows - row] = True
        sae_ok = {}
        for role, side in m.sides.items():
            ok = torch.ones(int(cand.sum()), dtype=torch.bool, device=cand.device)
            for sp in side.splices:
                ok &= encoded(role, m.start, sp).finite
            sae_ok[role] = ok
        spliced_at = cand & active
        spliced_at[cand] &= sae_ok[m.home] & sae_ok[m.away]
        plans.append((m, active, sae_ok, spliced_at))

    union = torch.zeros_like(is_special)
    for _, _, _, at in plans:
        union |= at
    targets = torch.cat([batch[:, 1:], torch.full_like(batch[:, :1], -1)], dim=1)[union]
    # the clean next-token distribution once per model and chunk of positions, shared by every splice
    deepest = max(masks)
    clean_final = {r: models[r].model(acts[r][deepest], start_at_layer=deepest, stop_at_layer=n_layers[r])[union]
                   for r in (("base",) if same_model else models)}
    # each distinct spliced pass once; an evaluation names the passes it reads
    uses = [{role: {sp.name: work.spliced_pass(role, m.start, sp, at) for sp in side.splices}
             for role, side in m.sides.items()} for m, _, _, at in plans]
    model_roles = ("base",) if same_model else ("base", "finetune")
    chunk = max(1, LOGIT_CHUNK_ELEMENTS // max(models[r].model.cfg.d_vocab_out for r in models))
    # at the positions scored, after ln_final: the logits are formed a block of positions at a time from these
    clean_normed = {r: _final_normed(models[r].model, clean_final[r]) for r in model_roles}
    finals = {key: (s, _final_normed(models[key[0]].model, final[union])) for key, (s, final) in work.passes().items()}
    unembed = {r: _unembedding(models[r].model) for r in model_roles}
    pass_terms: dict[tuple[str, int], list[Tensor]] = {key: [] for key in finals}
    for lo in range(0, int(union.sum()), chunk):
        sl = slice(lo, lo + chunk)
        for r in model_roles:  # the zero-ablation baseline of each pass is its own hook's
            keys = [key for key in finals if key[0] == r]
            terms = metrics.downstream_terms(clean_normed[r][sl], [finals[k][1][sl] for k in keys],
                                             [ablated_lp[r, finals[k][0]] for k in keys], targets[sl], keep_vocab,
                                             unembed[r])
            for key, t in zip(keys, terms):
                pass_terms[key].append(t)
    empty = torch.zeros(0, len(metrics.DOWNSTREAM_COLUMNS), dtype=torch.float64, device=union.device)
    joined = {key: torch.cat(t) if t else empty for key, t in pass_terms.items()}
    terms = [{role: {name: joined[key] for name, key in by.items()} for role, by in use.items()} for use in uses]
    # one evaluation after another: the sums' large gathers and scatters already run on torch's intra-op threads,
    # and a worker thread per evaluation measured no faster on 2 cores (it only adds threads to the caller's process)
    for i, (m, active, sae_ok, spliced_at) in enumerate(plans):
        at = spliced_at[union].nonzero().squeeze(1)
        stacked = {role: {name: t.index_select(0, at) for name, t in by.items()} for role, by in terms[i].items()}
        logits_ok = {}
        for role, by in stacked.items():
            ok = torch.ones(int(spliced_at.sum()), dtype=torch.bool, device=spliced_at.device)
            for t in by.values():
                ok &= metrics.finite_rows(t).to(ok.device)
            logits_ok[role] = ok
        _accumulate(m, acts, batch, row, masks[m.start], is_special, active, sae_ok, spliced_at, logits_ok, stacked,
                    work)


def _accumulate(m: _Member, acts: dict[str, dict[int, Tensor]], batch: Tensor, row: int, mask: dict[str, Tensor],
                is_special: Tensor, active: Tensor, sae_ok: dict[str, Tensor], spliced_at: Tensor,
                logits_ok: dict[str, Tensor], terms: dict[str, dict[str, Tensor]], work: _Shared) -> None:
    """One evaluation's counts and sums for one batch (only its own rows: `active`)."""
    cand = mask["candidate"]
    keep = logits_ok[m.home] & logits_ok[m.away]
    kept = spliced_at.clone()
    kept[spliced_at] = keep
    in_budget = active & ~is_special
    for side, role in (("base", m.home), ("finetune", m.away)):
        m.counts[f"outlier_{side}"] += int((mask[f"out_{role}"] & active).sum())
        m.counts[f"nonfinite_activations_{side}"] += int((~mask[f"fin_{role}"] & in_budget).sum())
        m.counts[f"nonfinite_sae_{side}"] += int((~sae_ok[role] & active[cand]).sum())
        m.counts[f"nonfinite_logits_{side}"] += int((~logits_ok[role]).sum())
    out_union = (mask[f"out_{m.home}"] | mask[f"out_{m.away}"]) & active
    m.counts["positions"] += int(active.sum())
    m.counts["special"] += int((is_special & active).sum())
    m.counts["outlier_union"] += int(out_union.sum())
    m.counts["kept"] += int(kept.sum())
    m.counts["excluded"] += int((in_budget & ~kept).sum())

    r, p = kept.nonzero(as_tuple=True)
    rows = r + row
    x = {role: acts[role][m.start] for role in m.sides}
    x_kept = {role: a.flatten(0, 1).index_select(0, r * a.shape[1] + p) for role, a in x.items()}
    keep_at = keep.nonzero().squeeze(1)
    for role, side in m.sides.items():
        recon = {sp.name: work.reconstruction(role, m.start, sp, kept, x_kept[role], rows) for sp in side.splices}
        side.accumulate(recon, {k: v.index_select(0, keep_at) for k, v in terms[role].items()}, rows, p)
    evaluated = {role: work.kept_encoding(role, m.start, side.evaluated, kept)[1] for role, side in m.sides.items()}
    m.latents.update(evaluated[m.home].feats, evaluated[m.away].feats, rows, evaluated[m.home].active,
                     evaluated[m.away].active)
    b = int(active[:, 0].sum())  # this evaluation's rows of the batch
    fin = mask[f"fin_{m.home}"] & mask[f"fin_{m.away}"]
    m.similarity.update(x[m.home][:b], x[m.away][:b], kept[:b], fin[:b], row)
    m.worst_cos.update(-metrics.cosine(x_kept[m.home], x_kept[m.away]), rows, p)
    ro, po = out_union.nonzero(as_tuple=True)
    norms = torch.maximum(mask[f"norm_{m.home}"], mask[f"norm_{m.away}"])
    m.outliers_top.update(norms[out_union], ro + row, po)


def _finish(m: _Member, models: dict[str, Any], tokens: Tensor, tokenizer: Any, comparison: Any,
            compat: Any) -> PairResult:
    """One evaluation's result from its sums: masking, metrics, bootstrap intervals and verdicts."""
    pair, counts, cal, sae, native = m.pair, m.counts, m.cal, m.sae, m.native
    base_side, ft_side = m.sides[m.home], m.sides[m.away]
    n_rows = m.n_rows
    non_special = counts["positions"] - counts["special"]
    kept_fraction = counts["kept"] / max(non_special, 1)
    judged = kept_fraction >= KEPT_FLOOR.min_fraction and counts["kept"] >= KEPT_FLOOR.min_count
    not_judged = () if judged else tuple(_not_judged_reasons(counts, cal, counts["kept"], non_special))

    def model_masking(side: str) -> ModelMasking:
        return ModelMasking(threshold=getattr(cal, f"threshold_{side}"), threshold_kind=getattr(cal, f"kind_{side}"),
                            mean_norm=getattr(cal, f"mean_norm_{side}"),
                            **{f"n_{c}": counts[f"{c}_{side}"] for c in _CAUSES})

    masking = Masking(n_positions=counts["positions"], n_special=counts["special"], base=model_masking("base"),
                      finetune=model_masking("finetune"), n_outlier_union=counts["outlier_union"],
                      n_excluded=counts["excluded"], n_kept=counts["kept"], kept_fraction=kept_fraction,
                      outlier_fraction=counts["outlier_union"] / max(counts["positions"], 1), judged=judged,
                      reasons=not_judged)

    d_sae = sae.d_sae
    sae_eval = SaeEvaluation(base=base_side.metrics_of("base"), finetune=ft_side.metrics_of("base"),
                             native_on_finetune=ft_side.metrics_of("native") if native else None,
                             norm_matched_finetune=ft_side.metrics_of("norm_matched"))
    sim = Similarity(**m.similarity.result())

    # bootstrap: one weight matrix for every model and SAE (paired)
    t = Thresholds()
    spec = uncertainty.bootstrap_spec(n_rows, pair.seed, t.agreement)
    weights = uncertainty.resample_weights(spec, n_rows)
    sim_reps = metrics.similarity_values(m.similarity.rows.totals(weights))
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
        provenance=replace(m.provenance, bootstrap=spec), tokenizer=comparison,
        compatibility=compat, verdict=verdict, masking=masking, similarity=sim, sae=sae_eval,
        comparisons=comparisons,
        norm_matching=NormMatching(scale=cal.scale, n_positions=cal.n_scale_positions, verdict=nm_verdict,
                                   comparisons=nm_comparisons),
        density=Density(log10_density_correlation=metrics.log_density_correlation(dens_b, dens_f),
                        base=tuple(metrics.log10_density(dens_b).tolist()),
                        finetune=tuple(metrics.log10_density(dens_f).tolist())),
        features=feature_transfer(dens_b, dens_f, m.latents, sae.sae.W_dec.detach(),
                                  models[m.home].model.W_U.detach(), models[m.away].model.W_U.detach(), pair.seed),
        worst_tokens=WorstTokens(lowest_cosine=decode(m.worst_cos.items, -1.0),
                                 highest_kl=decode(ft_side.worst_kl.items),
                                 worst_reconstruction=decode(ft_side.worst_recon.items),
                                 outliers=decode(m.outliers_top.items)))


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
    """Everything that changes a result. Local sources by file fingerprint, Hub ones by revision.

    The entry's other axes and datasets are not part of it: adding one computes only the new evaluations."""
    from saetransfer.cache import cache_key, fingerprint_path

    def source(s: Any) -> Any:
        if s is None:
            return None
        return fingerprint_path(s.path) if s.is_local and s.path.exists() else s.describe()

    skip = ("description", "source_file", "expected", "axes", "datasets", "axis", "dataset_index")
    parts = {
        "pair": {k: v for k, v in pair.__dict__.items() if k not in skip},
        "sources": [source(s) for s in (pair.base, pair.finetune, pair.sae, pair.native_sae, pair.dataset)],
        "config": {"n_tokens": config.n_tokens, "device": config.device.split(":")[0], "dtype": config.dtype},
        "versions": library_versions(),
        "metric_version": METRIC_VERSION,
    }
    return cache_key(parts)


def run(pair: Pair, config: RunConfig, *, refresh: bool = False) -> PairResult:
    """The evaluation's result from the on-disk cache. When absent (or `refresh`), its whole group
    (`registry.group_of`: the entry on this dataset) is computed in one pass, once, under a lock; only
    the group's evaluations missing from the cache are computed."""
    from saetransfer.cache import cached_results
    from saetransfer.paths import cache_dir

    group = group_of(pair)
    configs = {p.test_id: config.for_member(p, of=pair) for p in group}
    keys = {p.test_id: result_key(p, configs[p.test_id]) for p in group}
    by_id = {p.test_id: p for p in group}

    def compute(test_ids: Sequence[str]) -> dict[str, PairResult]:
        return evaluate_group([by_id[t] for t in test_ids], [configs[t] for t in test_ids])

    group_keys = {pair.test_id: keys[pair.test_id]} if refresh else keys
    return cached_results(cache_dir() / "results", group_keys, compute, refresh=refresh,
                          wanted=[pair.test_id])[pair.test_id]
