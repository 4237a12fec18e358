"""The streaming engine on tiny random models: cross-checked against SAELens `run_evals`, exact cases.

These build models in memory (no zoo, no loading), so they pin the engine's arithmetic alone.
"""

from __future__ import annotations

import math
from dataclasses import astuple
from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from saetransfer import engine, metrics
from saetransfer.loading.tokenizers import check_compatible, compare_vocabs
from saetransfer.registry import DatasetSource, ModelSource, OutlierPolicy, Pair, SaeSource
from saetransfer.results import PairResult, Provenance

D_MODEL, D_VOCAB, CTX, BOS = 32, 97, 16, 0


def tiny_model(seed: int = 0, d_vocab: int = D_VOCAB):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=D_MODEL, d_head=8, n_heads=4, d_mlp=64, d_vocab=d_vocab,
                                  n_ctx=CTX, act_fn="gelu", normalization_type="LN", seed=seed, device="cpu")
    model = HookedSAETransformer(cfg)
    model.eval()
    return model


def standard_sae(seed: int = 0, d_sae: int = 64, identity: bool = False):
    from sae_lens import SAE

    sae = SAE.from_dict({"architecture": "standard", "d_in": D_MODEL, "d_sae": d_sae, "dtype": "float32",
                         "device": "cpu", "apply_b_dec_to_input": False,
                         "metadata": {"hook_name": "blocks.1.hook_resid_pre", "context_size": CTX,
                                      "prepend_bos": True, "model_name": "tiny"}})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if identity:  # relu(x) - relu(-x) = x: exact reconstruction
            eye = torch.eye(D_MODEL)
            sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
            sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        else:
            sae.W_enc.copy_(torch.randn(D_MODEL, d_sae, generator=gen) / D_MODEL**0.5)
            sae.W_dec.copy_(sae.W_enc.T.clone())
            sae.b_enc.copy_(-0.1 * torch.rand(d_sae, generator=gen))
    return sae


def loaded(model, d_vocab: int = D_VOCAB):
    return SimpleNamespace(model=model, d_vocab=d_vocab, revision=None)


def loaded_sae(sae):
    return SimpleNamespace(sae=sae, d_in=D_MODEL, d_sae=sae.cfg.d_sae, architecture="standard")


TOKENIZER = SimpleNamespace(bos_token_id=BOS, eos_token_id=None, pad_token_id=None, all_special_ids=[BOS],
                            decode=lambda ids: " ".join(str(int(i)) for i in ids))


def tokens(rows: int = 24, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, D_VOCAB, (rows, CTX), generator=gen)
    t[:, 0] = BOS
    return t


def pair(batch_size: int = 8, relative: float = 100.0) -> Pair:
    src = ModelSource(path=None, hub="x/y")
    return Pair(id="t__t", base=src, finetune=src, sae=SaeSource(name="s", path=None, release="r", sae_id="i"),
                hook="blocks.1.hook_resid_pre", dataset=DatasetSource(hub="d"), batch_size=batch_size,
                outliers=OutlierPolicy(relative=relative))


def stream(base, ft, sae, toks, native=None, **kw) -> PairResult:
    """The engine's pass on in-memory models; the header sections are placeholders."""
    config = engine.RunConfig(n_tokens=toks.numel(), progress=False)
    p = pair(**kw)
    vocab = {str(i): i for i in range(D_VOCAB)}
    provenance = Provenance(
        pair_id=p.id, test_id=p.test_id, hook=p.hook, sae="s", sae_architecture="standard", d_sae=sae.d_sae,
        base="b", finetune="f", dataset="d", dataset_revision=None, token_sha256="", n_tokens=toks.numel(),
        n_rows=toks.shape[0], context_size=CTX, prepend_bos=True, seed=0, device="cpu", dtype="float32",
        versions={}, metric_version=0)
    with torch.inference_mode():
        return engine._stream(p, config, toks, base, ft, sae, native, TOKENIZER, compare_vocabs(vocab, vocab),
                              check_compatible(SimpleNamespace(get_vocab=lambda: vocab),
                                               SimpleNamespace(get_vocab=lambda: vocab), toks), provenance)


@pytest.fixture(scope="module")
def models():
    base = tiny_model(0)
    ft = tiny_model(0)  # a fresh model, not copy.deepcopy: TL 3.9 copies misbehave after in-place edits
    state = {k: v.clone() for k, v in base.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for name, value in state.items():
        if name.startswith("blocks.0.") and value.is_floating_point() and value.isfinite().all():
            value.add_(0.05 * torch.randn(value.shape, generator=gen))
    ft.load_state_dict(state)
    return base, ft


def test_run_evals_agrees_on_the_same_tokens(models):
    """L0, explained variance, MSE, CE with/without SAE and KL match sae_lens.evals.run_evals."""
    from datasets import Dataset
    from sae_lens import ActivationsStore
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    _, ft = models
    sae = standard_sae()
    toks = tokens(rows=16)
    ours = stream(loaded(ft), loaded(ft), loaded_sae(sae), toks).sae.base
    store = ActivationsStore.from_sae(model=ft, sae=sae, dataset=Dataset.from_dict({"input_ids": toks.tolist()}),
                                      context_size=CTX, streaming=False, store_batch_size_prompts=16,
                                      n_batches_in_buffer=4, train_batch_size_tokens=64, device="cpu")
    theirs, _ = run_evals(sae=sae, activation_store=store, model=ft, activation_scaler=ActivationScaler(),
                          eval_config=EvalConfig(batch_size_prompts=16, n_eval_reconstruction_batches=1,
                                                 n_eval_sparsity_variance_batches=1, compute_kl=True,
                                                 compute_ce_loss=True, compute_sparsity_metrics=True,
                                                 compute_variance_metrics=True), exclude_special_tokens=[BOS])
    checks = {
        "l0": theirs["sparsity"]["l0"], "explained_variance": theirs["reconstruction_quality"]["explained_variance"],
        "mse": theirs["reconstruction_quality"]["mse"],
        "ce_clean": theirs["model_performance_preservation"]["ce_loss_without_sae"],
        "ce_spliced": theirs["model_performance_preservation"]["ce_loss_with_sae"],
        "ce_ablation": theirs["model_performance_preservation"]["ce_loss_with_ablation"],
        "kl_spliced": theirs["model_behavior_preservation"]["kl_div_with_sae"],
    }
    for key, expected in checks.items():
        assert getattr(ours, key) == pytest.approx(expected, rel=2e-3, abs=1e-4), key


def test_identity_pair_and_exact_sae(models):
    """Same model twice with a lossless SAE: cosine 1, EV 1, KL 0, CE recovered 1, equal sides."""
    base, _ = models
    out = stream(loaded(base), loaded(base), loaded_sae(standard_sae(identity=True, d_sae=2 * D_MODEL)), tokens())
    sim, b, f = out.similarity, out.sae.base, out.sae.finetune
    assert sim.cosine_mean == pytest.approx(1.0, abs=1e-6) and sim.distance_mean == pytest.approx(0, abs=1e-5)
    assert b.explained_variance == pytest.approx(1.0, abs=1e-6) and b.kl_spliced == pytest.approx(0, abs=1e-6)
    assert b.ce_loss_score == pytest.approx(1.0, abs=1e-5)
    assert b == f == out.sae.norm_matched_finetune
    corr = out.features.buckets.regular.activation_correlation
    assert corr.n_nan == 0 and (corr.n == 0 or corr.mean == pytest.approx(1.0))
    # paired bootstrap: the identity pair's drops are exactly 0, with a zero-width interval
    for drop in (out.comparisons.kl_score_drop, out.comparisons.ce_score_drop):
        assert drop.value == drop.low == drop.high == 0.0


def test_streaming_does_not_depend_on_batch_size(models):
    """Accumulating over batches equals the one-shot computation (one batch holding every row)."""
    base, ft = models
    sae = loaded_sae(standard_sae())
    toks = tokens()
    small = stream(loaded(base), loaded(ft), sae, toks, batch_size=4)
    whole = stream(loaded(base), loaded(ft), sae, toks, batch_size=toks.shape[0])
    for key in ("l0", "explained_variance", "ce_spliced", "kl_spliced", "r2_global", "mse"):
        assert getattr(small.sae.finetune, key) == pytest.approx(getattr(whole.sae.finetune, key), rel=1e-5), key
    assert small.similarity.cosine_mean == pytest.approx(whole.similarity.cosine_mean, rel=1e-6)
    for a, b in zip(astuple(small.comparisons.ev_ratio), astuple(whole.comparisons.ev_ratio)):
        assert a == pytest.approx(b, rel=1e-5)


def test_zero_ablation_is_one_vector_per_model(models):
    """With the residual zeroed at every position all positions are identical: one forward suffices."""
    base, _ = models
    zeros = torch.zeros(3, CTX, D_MODEL)
    with torch.inference_mode():
        full = base(zeros, start_at_layer=1)
        one = engine._ablated_logits(base, 1)
    torch.testing.assert_close(full, one.expand_as(full), rtol=1e-5, atol=1e-5)


def test_outliers_keep_clean_activations_and_leave_statistics(models):
    """A low threshold marks positions as outliers: counted, excluded from the kept statistics."""
    base, ft = models
    out = stream(loaded(base), loaded(ft), loaded_sae(standard_sae()), tokens(), relative=1.02)
    m = out.masking
    assert 0 < m.n_outlier_union < m.n_positions - m.n_special
    assert m.n_kept == m.n_positions - m.n_special - m.n_outlier_union
    assert out.sae.finetune.n_tokens == m.n_kept


def test_extra_vocabulary_rows_change_ce_only_through_the_dropped_mass():
    """MetaMath-style extra rows: CE over the base vocabulary = full CE + log(1 - dropped mass) per token."""
    from saetransfer.metrics import token_log_probs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, D_VOCAB + 1, generator=gen) * 3
    targets = torch.randint(0, D_VOCAB, (50,), generator=gen)
    truncated, dropped = token_log_probs(logits, D_VOCAB)
    full = torch.log_softmax(logits, dim=-1)
    ce_trunc = -truncated.gather(1, targets[:, None]).squeeze(1)
    ce_full = -full.gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(ce_full - ce_trunc, -torch.log1p(-dropped), rtol=1e-5, atol=1e-6)
    assert bool((ce_trunc <= ce_full + 1e-6).all())


def test_native_sae_is_reported_beside_the_base_sae(models):
    base, ft = models
    out = stream(loaded(base), loaded(ft), loaded_sae(standard_sae(0)), tokens(), native=loaded_sae(standard_sae(1)))
    assert out.sae.native_on_finetune is not None
    assert not math.isnan(out.sae.native_on_finetune.explained_variance)
    assert out.comparisons.kl_native_gap is not None


def _rescaled(model, factor: float):
    """The same function with the residual stream x `factor` (LayerNorm absorbs it, up to its eps)."""
    scaled = tiny_model(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in state:
        if name in ("embed.W_E", "pos_embed.W_pos") or name.endswith(("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")):
            state[name] *= factor
    scaled.load_state_dict(state)
    return scaled


def test_an_sae_that_rescales_each_token_is_run_as_saelens_runs_it(models):
    """normalize_activations='constant_norm_rescale': SAELens's encode/decode rescale every token by its own
    norm, so a x4 residual is absorbed per token and norm matching changes nothing; a plain SAE is not."""
    base, _ = models
    ft = _rescaled(base, 4.0)
    per_token = standard_sae()
    per_token.cfg.normalize_activations = "constant_norm_rescale"
    per_token._setup_activation_normalization()
    out = stream(loaded(base), loaded(ft), loaded_sae(per_token), tokens())
    assert out.norm_matching.scale == pytest.approx(0.25, rel=1e-3)
    for key in ("explained_variance", "l0", "ce_spliced", "kl_spliced"):
        primary, matched = getattr(out.sae.finetune, key), getattr(out.sae.norm_matched_finetune, key)
        assert primary == pytest.approx(matched, rel=1e-3, abs=1e-4), key
    plain = stream(loaded(base), loaded(ft), loaded_sae(standard_sae()), tokens())
    matched = plain.sae.norm_matched_finetune  # reads x4 activations / 4: the base's, up to LayerNorm's eps
    assert matched.explained_variance == pytest.approx(plain.sae.base.explained_variance, rel=1e-3)
    assert abs(plain.sae.finetune.explained_variance - matched.explained_variance) > 0.01  # as is, it is not


@pytest.mark.parametrize(("out", "cause"), [
    ({"n_tokens": 0, "ce_ablation": math.nan, "ce_clean": math.nan, "kl_ablation": math.nan}, "no kept positions"),
    ({"n_tokens": 9, "ce_ablation": 2.0, "ce_clean": 2.0, "kl_ablation": 0.0}, "ablation baseline equals clean"),
    ({"n_tokens": 9, "ce_ablation": math.inf, "ce_clean": 2.0, "kl_ablation": 1.0}, "a term of the ratio is undefined"),
])
def test_an_undefined_score_names_its_real_cause(out, cause):
    assert engine._undefined_because(out, "ce_loss_score") == cause


def test_logits_are_formed_a_chunk_of_positions_at_a_time(models, monkeypatch):
    """With LOGIT_CHUNK_ELEMENTS = 5 positions' worth, the unembedding never sees more than 5 positions at
    once (no [batch, pos, vocab] tensor), and CE/KL equal those of a pass whose one chunk holds every position."""
    base, ft = models
    sae = loaded_sae(standard_sae())
    seen: list[int] = []
    unembedding = engine._unembedding

    def recording(model):  # noqa: ANN001, ANN202
        unembed = unembedding(model)
        return lambda final: seen.append(final.shape[0]) or unembed(final)

    monkeypatch.setattr(engine, "_unembedding", recording)
    monkeypatch.setattr(engine, "LOGIT_CHUNK_ELEMENTS", 5 * D_VOCAB)
    chunked = stream(loaded(base), loaded(ft), sae, tokens(rows=4), batch_size=4)
    chunked_max, seen[:] = max(seen), []
    monkeypatch.setattr(engine, "LOGIT_CHUNK_ELEMENTS", 10**9)
    monkeypatch.setattr(metrics, "MIN_BLOCK_POSITIONS", 10**9)  # one block per chunk, as on CUDA
    whole = stream(loaded(base), loaded(ft), sae, tokens(rows=4), batch_size=4)
    assert chunked_max == 5
    assert max(seen) == 4 * (CTX - 1)  # unchunked: every kept position of a batch (BOS is masked) at once
    raw_rel = 1e-6  # fp32 rounding of other block boundaries in the unembedding's product and the sums
    for side in ("base", "finetune", "norm_matched_finetune"):
        a, b = getattr(chunked.sae, side), getattr(whole.sae, side)
        for key in ("ce_clean", "ce_spliced", "ce_ablation", "kl_spliced", "kl_ablation"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=raw_rel, abs=1e-9), (side, key)
        # the scores are ratios of differences of those terms, so they carry the terms' rounding over the
        # denominator: (A - S) / (A - C) and 1 - K_s / K_a, each term off by at most raw_rel of itself
        # (0.15 nats of CE between ablation and clean turn 1.7e-8 nats into 1.5e-7 of the CE score)
        ce_a, ce_s, ce_c = abs(b.ce_ablation), abs(b.ce_spliced), abs(b.ce_clean)
        ce_tol = raw_rel * (ce_a + ce_s + abs(b.ce_loss_score) * (ce_a + ce_c)) / abs(b.ce_ablation - b.ce_clean)
        kl_tol = 2 * raw_rel * b.kl_spliced / b.kl_ablation
        assert a.ce_loss_score == pytest.approx(b.ce_loss_score, abs=ce_tol), side
        assert a.kl_div_score == pytest.approx(b.kl_div_score, abs=kl_tol), side


@pytest.mark.parametrize("soft_cap", [-1.0, 2.0])
def test_the_unembedding_gives_transformer_lens_logits(models, monkeypatch, soft_cap):
    """The engine's own unembedding (one matrix product per block, no per-call copy of W_U) against the
    logits of TransformerLens's forward, Gemma-2's logit soft cap included."""
    base, _ = models
    monkeypatch.setattr(base.cfg, "output_logits_soft_cap", soft_cap)
    toks = tokens(rows=2)
    with torch.inference_mode():
        expected = base(toks)
        final = base(toks, stop_at_layer=base.cfg.n_layers)
        got = torch.stack([engine._final_logits(base, f) for f in final])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_non_finite_latents_or_reconstructions_mark_their_positions() -> None:
    feats = torch.zeros(5, 8)
    feats[0, 3], feats[1, 2], feats[2, 7], feats[4, 0] = 1.5, math.nan, math.inf, -math.inf
    x_hat = torch.ones(5, 4)
    x_hat[3, 1] = math.nan
    encoded = engine._Encoded(feats, x_hat)
    assert encoded.finite.tolist() == [True, False, False, False, False]
    assert encoded.subset(torch.tensor([True, False, False, True, True])).finite.tolist() == [True, False, False]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.5, 1.0, 1.000001, 2.0, -1.0, 3.25, math.nan, math.inf]) | st.floats(-4, 4),
                         max_size=12), min_size=1, max_size=6), st.integers(1, 5))
@example([[1.0, 1.000001]], 1)  # a near-tie below the exact k-th value, on an earlier position
@example([[3.25, 2.0], [math.nan, 2.0, 1.0]], 2)  # the second batch cannot rank: the early return
def test_worst_tokens_streamed_by_batch_equal_one_ranking_of_everything(batches, k):
    """Batch by batch (later batches on later rows) the kept items equal the first k of all finite items
    ranked by the key: score to TIE_DIGITS significant digits, then (row, position); near-ties included."""
    top, everything = engine._TopK(k), []
    for b, scores in enumerate(batches):
        rows, positions = torch.full((len(scores),), b), torch.arange(len(scores))
        top.update(torch.tensor(scores, dtype=torch.float64), rows, positions)
        everything += [(float(torch.tensor(s).float()), b, p) for p, s in enumerate(scores) if math.isfinite(s)]
    assert top.items == sorted(everything, key=engine._rank_key)[:k]
