"""Properties of the metric functions (hypothesis): exact cases, invariances, streaming = one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from saetransfer import metrics

FLOATS = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32)
NONZERO = st.floats(0.0625, 100, width=32) | st.floats(-100, -0.0625, width=32)
"""Entries away from 0, so no row is a (near-)zero vector, where cosine is 0 by convention."""


def matrices(rows: tuple[int, int] = (2, 24), cols: tuple[int, int] = (2, 8), elements=FLOATS):
    """Small float32 matrices with bounded entries, e.g. `@given(matrices())`."""
    shape = st.tuples(st.integers(*rows), st.integers(*cols))
    return shape.flatmap(lambda s: arrays(np.float32, s, elements=elements)).map(torch.from_numpy)


def recon(x: torch.Tensor, x_hat: torch.Tensor, feats: torch.Tensor, split: int | None = None) -> dict:
    acc = metrics.ReconstructionAccumulator(x.shape[0], x.shape[1], feats.shape[1])
    rows = torch.arange(x.shape[0])  # one position per row: every row is its own resampling unit
    for part in (slice(None),) if split is None else (slice(None, split), slice(split, None)):
        acc.update(x[part], x_hat[part], feats[part], rows[part])
    return acc.result()


def downstream(clean: torch.Tensor, ablated: torch.Tensor, spliced: torch.Tensor, targets: torch.Tensor,
               keep_vocab: int) -> dict:
    acc = metrics.DownstreamAccumulator(n_rows=1)
    baseline = metrics.ablation_log_probs(ablated, keep_vocab)
    terms, = metrics.downstream_terms(clean, [spliced], [baseline], targets, keep_vocab)
    acc.update(terms, torch.zeros(terms.shape[0], dtype=torch.long))
    return acc.result()


@given(matrices(elements=NONZERO))
def test_exact_reconstruction_explains_everything(x):
    centred = x - x.mean(0)
    if float((centred**2).sum()) < 1e-3 or float(((x - x.mean()) ** 2).sum()) < 1e-3:
        return  # no variance to explain: the ratio is undefined (NaN), tested below
    out = recon(x, x.clone(), torch.relu(x))
    assert out["explained_variance"] == pytest.approx(1.0) and out["r2_global"] == pytest.approx(1.0)
    assert out["mse"] == 0.0 and out["cossim"] == pytest.approx(1.0, abs=1e-5)


def test_constant_activations_give_undefined_explained_variance():
    x = torch.ones(8, 4)
    assert math.isnan(recon(x, x * 0.5, torch.ones(8, 3))["explained_variance"])


SPARSE = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]) | FLOATS
"""Latent values: mostly zero, with the signed zero and the non-finite values `ActiveLatents` must tell apart."""


@given(matrices(rows=(0, 24), elements=SPARSE))
def test_active_latents_are_the_nonzero_entries_in_row_major_order(feats):
    active = metrics.ActiveLatents.of(feats)
    position, latent = feats.nonzero(as_tuple=True)  # the reference: non-finite is non-zero, -0.0 is zero
    assert torch.equal(active.position, position) and torch.equal(active.latent, latent)
    assert torch.equal(active.value.isnan(), feats[position, latent].isnan())
    assert torch.equal(active.value.nan_to_num(), feats[position, latent].nan_to_num())
    assert torch.equal(feats.take(active.flat).nan_to_num(), active.value.nan_to_num())


@given(matrices(rows=(0, 24), cols=(1, 8), elements=SPARSE),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_finite_rows_is_every_entry_finite(x, dtype):
    x = x.to(dtype)  # fp16 also overflows large FLOATS to inf: more rows to tell apart
    assert torch.equal(metrics.finite_rows(x), torch.isfinite(x).all(-1))


@given(matrices(), st.randoms(use_true_random=False))
def test_permuting_latents_changes_nothing(feats, rnd):
    x = torch.randn(feats.shape[0], 3, generator=torch.Generator().manual_seed(0))
    perm = list(range(feats.shape[1]))
    rnd.shuffle(perm)
    a, b = recon(x, x * 0.9, feats), recon(x, x * 0.9, feats[:, perm])
    for key in ("l0", "l1", "dead_fraction", "dense_fraction", "explained_variance"):
        assert a[key] == pytest.approx(b[key], nan_ok=True)


@given(matrices(), st.integers(1, 23))
def test_streaming_equals_one_shot(x, split):
    split = min(split, x.shape[0] - 1)
    x_hat = x * 0.7 + 0.1
    feats = torch.relu(x)
    one, two = recon(x, x_hat, feats), recon(x, x_hat, feats, split)
    for key in ("explained_variance", "r2_global", "mse", "l0", "dead_fraction", "cossim"):
        assert one[key] == pytest.approx(two[key], rel=1e-6, abs=1e-6, nan_ok=True), key


@given(matrices(elements=NONZERO), st.floats(0.01, 100))
def test_cosine_is_invariant_to_positive_scaling_and_flips_under_negation(x, scale):
    y = torch.roll(x, 1, 0)
    torch.testing.assert_close(metrics.cosine(x * scale, y), metrics.cosine(x, y), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(metrics.cosine(-x, y), -metrics.cosine(x, y), atol=1e-6, rtol=1e-5)


@given(matrices(rows=(3, 30), cols=(1, 6)))
def test_pearson_from_sums_matches_numpy(x):
    y = x.flip(0) * 2 + 1
    x64, y64 = x.double(), y.double()
    r = metrics.pearson_from_sums(float(x.shape[0]), x64.sum(0), y64.sum(0), (x64**2).sum(0), (y64**2).sum(0),
                                  (x64 * y64).sum(0))
    for j in range(x.shape[1]):
        if float(x64[:, j].std()) < 1e-3 or float(y64[:, j].std()) < 1e-3:
            continue  # near-constant columns: NaN by design, tested separately
        expected = np.corrcoef(x64[:, j].numpy(), y64[:, j].numpy())[0, 1]
        assert float(r[j]) == pytest.approx(expected, abs=1e-6)


def test_pearson_of_a_constant_column_is_nan_not_dropped():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    r = metrics.pearson_from_sums(3.0, x.sum(0), x.sum(0), (x**2).sum(0), (x**2).sum(0), (x * x).sum(0))
    assert float(r[0]) == pytest.approx(1.0) and math.isnan(float(r[1]))


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1))
def test_identical_logits_give_zero_kl_and_full_recovery(seed):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randn(20, 11, generator=gen) * 4
    ablated = torch.randn(11, generator=gen)
    targets = torch.randint(0, 11, (20,), generator=gen)
    out = downstream(clean, ablated, clean.clone(), targets, keep_vocab=11)
    assert out["kl_spliced"] == pytest.approx(0.0, abs=1e-6) and out["ce_delta"] == pytest.approx(0.0, abs=1e-6)
    if not math.isnan(out["ce_loss_score"]):
        assert out["ce_loss_score"] == pytest.approx(1.0)
    assert out["kl_div_score"] == pytest.approx(1.0)


def test_ablation_equal_to_clean_makes_the_ratios_nan():
    """CE recovered and KL score with a zero denominator are NaN, never a division by a tiny number."""
    clean = torch.zeros(5, 7)
    out = downstream(clean, torch.zeros(7), clean + torch.randn(5, 7), torch.arange(5), keep_vocab=7)
    assert math.isnan(out["ce_loss_score"]) and math.isnan(out["kl_div_score"])


@given(st.floats(-1e3, 1e3), st.floats(-1e-7, 1e-7))
def test_ratio_refuses_tiny_denominators(num, den):
    assert math.isnan(float(metrics.ratio(torch.tensor(num, dtype=torch.float64), torch.tensor(den, dtype=torch.float64))))


def test_log_density_correlation_counts_dead_latents_at_minus_ten():
    base = torch.tensor([0.0, 1e-3, 1e-2, 0.1])
    assert metrics.log_density_correlation(base, base) == pytest.approx(1.0)
    assert metrics.log10_density(torch.tensor([0.0]))[0] == pytest.approx(-10.0)


@settings(max_examples=25)
@given(matrices(rows=(4, 24)), st.integers(0, 2**31 - 1))
def test_row_weights_of_one_reproduce_the_point_value(x, seed):
    """A bootstrap replicate that draws every row once is the point estimate: one formula for both."""
    gen = torch.Generator().manual_seed(seed)
    x_hat = x * 0.8 + 0.05 * torch.randn(x.shape, generator=gen)
    acc = metrics.ReconstructionAccumulator(x.shape[0], x.shape[1], x.shape[1])
    acc.update(x, x_hat, torch.relu(x), torch.arange(x.shape[0]))
    point, reps = acc.values(), acc.values(torch.ones(2, x.shape[0], dtype=torch.float64))
    for key, value in point.items():
        torch.testing.assert_close(reps[key], value.expand(2), equal_nan=True, rtol=1e-9, atol=1e-9)


def test_non_finite_inputs_never_count_as_active_or_reach_a_histogram():
    """NaN values are dropped by the histograms; the engine keeps such positions out of every sum."""
    hist = metrics.HistogramAccumulator(-1.0, 1.0, bins=4)
    hist.update(torch.tensor([0.5, float("nan"), float("inf"), -0.5]))
    assert sum(hist.result().counts) == 2


def _sparse_latents(gen: torch.Generator, n: int, s: int) -> torch.Tensor:
    """Mostly-zero latents with dead columns and a few negative entries (not every architecture is ReLU)."""
    feats = torch.relu(torch.randn(n, s, generator=gen) - 1.2) * 3
    feats[:, 0] = 0.0
    feats[: n // 3, 1] = -0.5
    return feats


@settings(max_examples=20)
@given(st.integers(0, 2**31 - 1), st.integers(2, 40))
def test_latent_pair_sums_over_non_zero_entries_equal_the_dense_computation(seed, n):
    """The sparse update (non-zero entries only) against the definitions over every entry, in two batches."""
    gen = torch.Generator().manual_seed(seed)
    s = 7
    base, ft = _sparse_latents(gen, n, s), _sparse_latents(gen, n, s)
    ft[:, 2] = 0.0  # dead on the finetune only
    rows = torch.arange(n) // 3 + 5
    partner = torch.randperm(s, generator=gen)
    acc = metrics.LatentPairAccumulator(s, partner)
    acc.update(base[: n // 2], ft[: n // 2], rows[: n // 2])
    acc.update(base[n // 2 :], ft[n // 2 :], rows[n // 2 :])
    b, f = base.double(), ft.double()
    for half in (0, 1):
        sel = rows % 2 == half
        x, y = b[sel], f[sel]
        expected = torch.stack([x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0)])
        torch.testing.assert_close(acc.sums[half], expected, rtol=1e-12, atol=1e-12)
        assert float(acc.n[half]) == float(sel.sum())
    torch.testing.assert_close(acc.cross_partner, (b * f[:, partner]).sum(0), rtol=1e-12, atol=1e-12)
    log = lambda v: torch.log10(v.clamp(min=0) + metrics.LOG_EPS)  # noqa: E731
    torch.testing.assert_close(acc.log_abs_err, (log(b) - log(f)).abs().sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.max_base, b.max(0).values.clamp(min=0), rtol=0, atol=0)
    torch.testing.assert_close(acc.max_ft, f.max(0).values.clamp(min=0), rtol=0, atol=0)


@settings(max_examples=20)
@given(st.integers(0, 2**31 - 1))
def test_l0_l1_and_densities_count_exactly_the_non_zero_latents(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 4, generator=gen)
    feats = _sparse_latents(gen, 30, 9)
    out = recon(x, x * 0.5, feats)
    assert out["l0"] == pytest.approx(float((feats != 0).sum(-1).double().mean()))
    assert out["l1"] == pytest.approx(float(feats.abs().sum(-1).double().mean()))
    assert out["dead_fraction"] == pytest.approx(float(((feats != 0).sum(0) == 0).double().mean()))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 60), st.sampled_from([0, 2]), st.booleans())
def test_downstream_terms_in_blocks_match_the_direct_log_softmax(seed, n, extra_vocab, from_residual):
    """CE, KL and the dropped mass per position, computed blockwise (blocks of a few positions here, from logits
    or from final residuals through an unembedding) against one log-softmax over everything."""
    gen = torch.Generator().manual_seed(seed)
    keep, width, d = 11, 11 + extra_vocab, 5
    w_u = torch.randn(d, width, generator=gen)
    clean_in = torch.randn(n, d if from_residual else width, generator=gen) * (1 if from_residual else 4)
    spliced_in = clean_in + torch.randn(clean_in.shape, generator=gen) * 0.3
    unembed = (lambda x: x @ w_u) if from_residual else (lambda x: x)  # noqa: E731
    clean, spliced = unembed(clean_in), unembed(spliced_in)
    ablated = torch.randn(width, generator=gen)
    targets = torch.randint(0, keep, (n,), generator=gen)
    targets[-1] = -1  # a row's last position: KL, no CE
    blocks = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "CPU_BLOCK_ELEMENTS", 4 * width)  # blocks of 4 positions
        patch.setattr(metrics, "MIN_BLOCK_POSITIONS", 1)
        recorded = lambda x: blocks.append(x.shape[0]) or unembed(x)  # noqa: E731
        baseline = metrics.ablation_log_probs(ablated, keep)
        terms, = metrics.downstream_terms(clean_in, [spliced_in], [baseline], targets, keep, recorded)
    assert max(blocks) == min(n, 4)
    lp, lq = torch.log_softmax(clean[:, :keep].double(), -1), torch.log_softmax(spliced[:, :keep].double(), -1)
    la = torch.log_softmax(ablated[:keep].double(), -1)
    has = targets >= 0
    t = targets.clamp(min=0)
    nll = lambda lp_: torch.where(has, -lp_.gather(-1, t[:, None])[:, 0], 0.0)  # noqa: E731
    dropped = torch.log_softmax(clean.double(), -1)[:, keep:].exp().sum(-1)
    expected = torch.stack([has.double(), torch.ones(n, dtype=torch.float64), nll(lp), nll(lq),
                            torch.where(has, -la[t], 0.0), (lp.exp() * (lp - lq)).sum(-1), (lp.exp() * (lp - la)).sum(-1),
                            torch.where(has, dropped, 0.0)], dim=-1)
    torch.testing.assert_close(terms, expected, rtol=1e-4, atol=2e-5)


def test_a_wide_vocabulary_still_gets_blocks_of_several_positions():
    """2^19 elements would be two positions of Gemma's 256k vocabulary: the unembedding would then read the
    whole W_U once per position."""
    blocks = metrics._blocks(1000, 256_000, torch.device("cpu"))
    assert {b.stop - b.start for b in blocks[:-1]} == {metrics.MIN_BLOCK_POSITIONS}
    assert metrics._blocks(1000, 4096, torch.device("cpu"))[0].stop == metrics.CPU_BLOCK_ELEMENTS // 4096


@given(st.integers(0, 2**31 - 1), st.integers(1, 30))
def test_each_spliced_pass_is_scored_against_its_own_hooks_ablation_baseline(seed, n):
    """One clean distribution serves splices at several hooks in one call, each against its own hook's zero
    ablation: every term equals that of a call with that pass alone (a KL carried over from the first hook's
    baseline gave the layer-3 splices of the zoo's code pair a KL score of 0.80 instead of 0.91)."""
    gen = torch.Generator().manual_seed(seed)
    keep = 13
    clean = torch.randn(n, keep, generator=gen) * 3
    spliced = [torch.randn(n, keep, generator=gen) for _ in range(3)]
    first, other = (metrics.ablation_log_probs(torch.randn(keep, generator=gen) * 2, keep) for _ in range(2))
    targets = torch.randint(0, keep, (n,), generator=gen)
    together = metrics.downstream_terms(clean, spliced, [first, other, first], targets, keep)
    for s, a, t in zip(spliced, [first, other, first], together):
        alone, = metrics.downstream_terms(clean, [s], [a], targets, keep)
        torch.testing.assert_close(t, alone, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(together[0][:, 6], together[1][:, 6])  # kl_abl follows the baseline


