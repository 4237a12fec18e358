"""SAEs trained with SAELens's own runner, and SAELens's own evals (`run_evals`) of an SAE on a model."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformer_lens.HookedTransformer import HookedTransformer

from saetransfer.zoo.config import SaeSpec
from saetransfer.zoo.lm import NO_PROCESSING

log = logging.getLogger(__name__)

# run_evals keys kept in the manifest (flattened "group/name" -> name)
EVAL_KEYS = {
    "reconstruction_quality/explained_variance": "explained_variance",
    "reconstruction_quality/mse": "mse",
    "reconstruction_quality/cossim": "cossim",
    "sparsity/l0": "l0",
    "sparsity/l1": "l1",
    "model_behavior_preservation/kl_div_score": "kl_div_score",
    "model_behavior_preservation/kl_div_with_sae": "kl_div_with_sae",
    "model_behavior_preservation/kl_div_with_ablation": "kl_div_with_ablation",
    "model_performance_preservation/ce_loss_score": "ce_loss_score",
    "model_performance_preservation/ce_loss_with_sae": "ce_loss_with_sae",
    "model_performance_preservation/ce_loss_without_sae": "ce_loss_without_sae",
    "model_performance_preservation/ce_loss_with_ablation": "ce_loss_with_ablation",
    "shrinkage/l2_ratio": "l2_ratio",
}


@contextlib.contextmanager
def _quiet_store() -> Iterator[None]:
    """SAELens's ActivationsStore sets the dataset to torch format, then calls torch.tensor() on each row,
    which warns on every pretokenized row (harmless copy; sae-lens 6.54). Its "fewer samples" warning
    compares dataset rows with tokens, so it fires on every correctly sized run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples", category=UserWarning)
        yield


def rows_dataset(rows: np.ndarray) -> Dataset:
    """A local `datasets.Dataset` with an `input_ids` column (BOS already first in each row)."""
    return Dataset.from_dict({"input_ids": rows.tolist()})


def training_sae_config(architecture: str, d_in: int, spec: SaeSpec, steps: int,
                        arch: Mapping[str, Any] | None = None) -> Any:
    """The SAELens training config of one architecture, activations normalised as for every zoo SAE.

    "standard" is ReLU + L1 with the spec's l1 settings; "topk" and "jumprelu" take their own fields from
    `arch` (k; l0_coefficient, jumprelu_init_threshold, ...), JumpReLU's L0 penalty warming up over the
    spec's l1_warm_up_frac of the steps, as the L1 penalty does.
    """
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    arch = dict(arch or {})
    common: dict[str, Any] = {"d_in": d_in, "d_sae": spec.d_sae, "normalize_activations": "expected_average_only_in"}
    warm_up = int(spec.l1_warm_up_frac * steps)
    if architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=spec.l1_coefficient, l1_warm_up_steps=warm_up,
                                         **arch)
    if architecture == "topk":
        return TopKTrainingSAEConfig(**common, **arch)
    if architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(**common, **({"l0_warm_up_steps": warm_up} | arch))
    raise ValueError(f"unknown SAE architecture {architecture!r} (standard, topk, jumprelu)")


def train_sae(model: HookedTransformer, rows: np.ndarray, spec: SaeSpec, hook_name: str, model_name: str,
              seed: int, out_dir: Path, architecture: str = "standard", arch: Mapping[str, Any] | None = None) -> Any:
    """Train an SAE (standard = ReLU + L1 by default) on `model`'s activations at `hook_name` over `rows`;
    save to out_dir. `architecture` and `arch` as in `training_sae_config`."""
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    ctx = rows.shape[1]
    steps = spec.training_tokens // spec.train_batch_size_tokens
    # the mixing buffer holds n_batches_in_buffer * ctx tokens and must exceed one training batch
    n_buffer = max(8, 2 * math.ceil(spec.train_batch_size_tokens / ctx))
    ds = rows_dataset(rows).shuffle(seed=seed).flatten_indices()
    with tempfile.TemporaryDirectory(prefix="zoo-sae-") as tmp:
        cfg = LanguageModelSAERunnerConfig(
            sae=training_sae_config(architecture, model.cfg.d_model, spec, steps, arch),
            model_name=model_name, hook_name=hook_name, dataset_path="local:" + model_name,
            is_dataset_tokenized=True, streaming=False, context_size=ctx, prepend_bos=True,
            exclude_special_tokens=True, training_tokens=spec.training_tokens,
            train_batch_size_tokens=spec.train_batch_size_tokens, store_batch_size_prompts=32,
            n_batches_in_buffer=n_buffer, lr=spec.lr, lr_warm_up_steps=max(1, steps // 20),
            lr_decay_steps=max(1, steps // 5), n_batches_for_norm_estimate=min(20, max(2, steps)),
            dead_feature_window=max(50, steps // 4), feature_sampling_window=max(100, steps // 2),
            seed=seed, device="cpu", logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None,
            n_checkpoints=0, output_path=tmp, model_from_pretrained_kwargs=dict(NO_PROCESSING), verbose=False)
        torch.manual_seed(seed)
        with _quiet_store():
            sae = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model).run()
    sae.save_model(str(out_dir))
    return sae


def load_sae(path: Path) -> Any:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device="cpu")
    sae.eval()
    return sae


def evaluate(sae: Any, model: HookedTransformer, rows: np.ndarray, n_batches: int,
             batch_prompts: int = 16) -> dict[str, float]:
    """SAELens `run_evals` of `sae` spliced into `model` on `rows` (special tokens excluded)."""
    from sae_lens import ActivationsStore
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.evals import EvalConfig, run_evals

    ctx = rows.shape[1]
    with _quiet_store():
        store = ActivationsStore.from_sae(
            model=model, sae=sae, dataset=rows_dataset(rows), context_size=ctx, streaming=False,
            store_batch_size_prompts=batch_prompts, n_batches_in_buffer=max(4, math.ceil(4096 / (batch_prompts * ctx))),
            train_batch_size_tokens=batch_prompts * ctx, total_tokens=len(rows) * ctx, device="cpu")
    eval_cfg = EvalConfig(
        batch_size_prompts=batch_prompts, n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches, compute_kl=True, compute_ce_loss=True, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=True)
    with torch.no_grad(), _quiet_store():
        metrics, feats = run_evals(sae=sae, activation_store=store, model=model, activation_scaler=ActivationScaler(),
                                   eval_config=eval_cfg, exclude_special_tokens=True)
    flat = {f"{g}/{k}": v for g, d in metrics.items() if isinstance(d, dict) for k, v in d.items()}
    missing = EVAL_KEYS.keys() - flat.keys()
    if missing:
        raise KeyError(f"run_evals did not report {sorted(missing)}")
    out = {short: float(flat[k]) for k, short in EVAL_KEYS.items()}
    density = np.asarray(feats.get("feature_density", []), dtype=np.float64)
    if density.size:
        out["dead_frac"] = float((density == 0).mean())
        out["dense_frac"] = float((density > 0.1).mean())
    out["n_tokens"] = n_batches * batch_prompts * ctx
    return out
