"""Known-answer controls: finetunes built from the zoo base whose answer is known by construction.

Each runs the whole engine (real loading path, registry parsing, masking, bootstrap, verdict) on a
2048-token sample of the zoo's prose set. What each asserts, and why that is the known answer:

- x4 rescale (`zoo.controls.rescale`): LayerNorm makes it the same function, so clean CE equals the
  base's; the residual is 4x the base's at the hook, so the norm ratio is 4 and the cosine 1; the
  norm-matched SAE reads exactly the base's activations, so its metrics equal the identity pair's.
  Tolerance: LayerNorm computes (x - mu) / sqrt(var + eps); scaling x by 4 turns eps into eps/16,
  a relative change of at most 15/16 eps / (2 var) per LayerNorm. `RESCALE_RTOL` bounds that for the
  zoo's activations (measured 1e-5 .. 1e-4) with a margin. The verdict must not be `unusable`, and a
  reason must name the norm shift.
- permuted residual basis (`permute_residual`): the same function (clean CE equal up to summation
  order) with the same norms (ratio 1), but a representation the SAE was not trained on: it `fails`,
  and norm matching (scale 1) cannot rescue it.
- blocks after the hook perturbed (`perturb_after`): activations at the hook are bit-identical, so
  cosine is 1 and every reconstruction number equals the base's exactly; only the downstream loss moves.
- float16 overflow (`overflow_embedding`): a frequent token's embedding row is 7e4 (> fp16's 65504).
  Non-finite positions must be counted by cause and never reach a statistic: every reported number is
  finite, or the pair is `not judged` naming non-finite activations.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from saetransfer.engine import RunConfig, evaluate_pair
from saetransfer.paths import ZOO
from saetransfer.registry import parse_registry_file
from saetransfer.results import PairResult
from saetransfer.zoo import controls

N_TOKENS = 2048
RESCALE_RTOL = 1e-3
"""See the module docstring: LayerNorm's eps makes a rescale exact only to ~1e-4 relative here."""
SAME_FUNCTION_RTOL = 1e-4
"""Same weights up to a permutation: only float summation order differs."""


def _evaluate(tmp_path: Path, finetune: Path, name: str, dtype: str = "float32") -> PairResult:
    toml = tmp_path / f"{name}.toml"
    toml.write_text(f'''[[pair]]
id = "tiny-gpt2__control-{name}"
base = {{ path = "{ZOO / 'models/base'}" }}
finetune = {{ path = "{finetune}" }}
sae = {{ name = "tiny-res-relu", path = "{ZOO / 'saes/base-relu'}" }}
hook = "blocks.2.hook_resid_pre"
dataset = {{ path = "{ZOO / 'data/prose-eval.parquet'}", column = "input_ids" }}
batch_size = 16
''')
    (pair,) = parse_registry_file(toml)
    return evaluate_pair(pair, RunConfig(n_tokens=N_TOKENS, dtype=dtype, progress=False))


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> PairResult:
    return _evaluate(tmp_path_factory.mktemp("identity"), ZOO / "models/base", "identity")


def test_rescaled_residual_is_a_norm_shift_not_a_broken_sae(tmp_path: Path, identity: PairResult) -> None:
    result = _evaluate(tmp_path, controls.rescale(ZOO / "models/base", tmp_path / "x4", 4.0), "x4")
    assert result.masking.judged and result.masking.kept_fraction == identity.masking.kept_fraction
    assert result.comparisons.norm_ratio.value == pytest.approx(4.0, rel=RESCALE_RTOL)
    assert result.similarity.cosine_mean == pytest.approx(1.0, abs=RESCALE_RTOL)
    assert result.sae.finetune.ce_clean == pytest.approx(identity.sae.base.ce_clean, rel=RESCALE_RTOL)
    assert result.norm_matching.scale == pytest.approx(0.25, rel=RESCALE_RTOL)
    matched, same = result.sae.norm_matched_finetune, identity.sae.finetune
    for key in ("explained_variance", "l0", "ce_spliced", "kl_div_score", "ce_loss_score", "cossim"):
        assert getattr(matched, key) == pytest.approx(getattr(same, key), rel=RESCALE_RTOL, abs=RESCALE_RTOL), key
    assert result.verdict.verdict != "unusable"
    assert any("norm shift" in r and "4" in r for r in result.verdict.reasons), result.verdict.reasons
    assert result.norm_matching.verdict.verdict == identity.verdict.verdict == "transfers"


def test_permuted_basis_keeps_the_function_but_not_the_representation(tmp_path: Path) -> None:
    result = _evaluate(tmp_path, controls.permute_residual(ZOO / "models/base", tmp_path / "perm"), "perm")
    assert result.sae.finetune.ce_clean == pytest.approx(result.sae.base.ce_clean, rel=SAME_FUNCTION_RTOL)
    assert result.comparisons.norm_ratio.value == pytest.approx(1.0, rel=SAME_FUNCTION_RTOL)
    assert result.norm_matching.scale == pytest.approx(1.0, rel=SAME_FUNCTION_RTOL)
    assert result.verdict.verdict == result.norm_matching.verdict.verdict == "fails"


def test_changes_after_the_hook_leave_its_activations_untouched(tmp_path: Path) -> None:
    result = _evaluate(tmp_path, controls.perturb_after(ZOO / "models/base", tmp_path / "late", layer=2), "late")
    base, ft = result.sae.base, result.sae.finetune
    assert result.similarity.cosine_mean == pytest.approx(1.0, abs=1e-6) and result.similarity.distance_mean == 0.0
    for key in ("explained_variance", "mse", "l0", "cossim", "dead_fraction"):
        assert getattr(ft, key) == getattr(base, key), key
    assert abs(ft.ce_clean - base.ce_clean) > 0.05  # the perturbation did change the model
    ev_line = next(line for line in result.verdict.lines if line.metric == "explained variance")
    assert ev_line.grade == "ok" and result.comparisons.ev_ratio.value == 1.0


def test_float16_overflow_is_masked_and_named_never_averaged_in(tmp_path: Path) -> None:
    from saetransfer.loading.datasources import read_column

    sample = torch.tensor(read_column(ZOO / "data/prose-eval.parquet", "input_ids")[:64])
    ids, counts = torch.unique(sample[:, 1:], return_counts=True)
    frequent = int(ids[counts.argmax()])
    broken = controls.overflow_embedding(ZOO / "models/code", tmp_path / "fp16", frequent)
    result = _evaluate(tmp_path, broken, "fp16", dtype="float16")
    ft_mask = result.masking.finetune
    assert ft_mask.n_nonfinite_activations > 0 and result.masking.base.n_nonfinite_activations == 0
    if not result.masking.judged:
        assert result.verdict.verdict == "not judged"
        assert any("non-finite activations" in r and "finetune" in r for r in result.verdict.reasons)
    numbers = [getattr(m, k) for m in (result.sae.base, result.sae.finetune)
               for k in ("explained_variance", "l0", "ce_clean", "ce_spliced", "kl_spliced")]
    assert all(math.isfinite(x) for x in numbers), numbers
    assert result.sae.finetune.l0 <= result.provenance.d_sae
    assert math.isfinite(result.similarity.cosine_mean)
