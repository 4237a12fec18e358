"""Language models: a HookedSAETransformer from a local HF checkpoint dir, or from the HF cache.

TransformerLens's `from_pretrained*` only accepts official names and fetches the official Hub config,
so the model is assembled from TL's parts instead: the config mapping in `tl_configs`, TL's weight
converter for the architecture, `load_and_process_state_dict`. Weights are processed in fp32, then
cast, as TL advises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saetransfer.loading.errors import (
    DeviceUnavailableError, MissingPathError, ProcessingFlagError, UnsupportedArchitectureError,
)
from saetransfer.loading.hub import (
    MODEL_FILES, PICKLE_WEIGHTS, TOKENIZER_FILES, TOP_LEVEL_ONLY, commit_of, describe_path, has_files, snapshot,
)
from saetransfer.loading.tl_configs import converter, tl_config
from saetransfer.registry import ModelSource

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformers import PreTrainedTokenizerBase

N_DEVICES_ENV = "SAETRANSFER_N_DEVICES"
"""GPUs to split each model over (TransformerLens `n_devices`), for a model larger than one GPU; default 1."""

# TransformerLens `from_pretrained` defaults: the basis most SAEs were trained in.
TL_PROCESSING_DEFAULTS: dict[str, bool] = {
    "fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True,
}
# Accepted too, off unless asked: it changes W_Q/W_K/W_V/W_O but not the residual stream.
_OPTIONAL_FLAGS: dict[str, bool] = {"refactor_factored_attn_matrices": False}
# `model_from_pretrained_kwargs` keys that do not change the activations' basis.
_NON_BASIS_KWARGS = frozenset({
    "device", "n_devices", "dtype", "torch_dtype", "move_to_device", "first_n_layers", "n_ctx",
    "default_prepend_bos", "default_padding_side", "trust_remote_code", "revision",
})


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for hooks and SAEs, with where it came from."""

    model: HookedSAETransformer
    tokenizer: PreTrainedTokenizerBase
    """Loaded from the checkpoint dir (pristine; `model.tokenizer` is TL's BOS-adding copy)."""
    source: ModelSource
    revision: str | None
    """The resolved Hub commit; None for a local directory."""
    architecture: str
    """HF `architectures[0]`, e.g. `GPT2LMHeadModel`."""
    d_vocab: int
    """Rows of the checkpoint's unembedding: a finetune with added tokens keeps them."""


def processing_for(model_from_pretrained_kwargs: Mapping[str, Any]) -> dict[str, bool]:
    """TL weight-processing flags matching an SAE's training setup.

    `from_pretrained` defaults (all True) updated by the SAE's `model_from_pretrained_kwargs`, so
    the SAE reads activations in the basis it was trained on (e.g. `center_writing_weights=False`).

    Raises:
        ProcessingFlagError: a key that is neither a processing flag nor a basis-neutral setting,
            or a flag that is not a bool.
    """
    flags = dict(TL_PROCESSING_DEFAULTS)
    for key, value in model_from_pretrained_kwargs.items():
        if key in _NON_BASIS_KWARGS:
            continue
        if key not in TL_PROCESSING_DEFAULTS and key not in _OPTIONAL_FLAGS:
            raise ProcessingFlagError(
                f"SAE model_from_pretrained_kwargs has {key!r}, which is not a TransformerLens "
                f"processing flag {sorted({*TL_PROCESSING_DEFAULTS, *_OPTIONAL_FLAGS})} nor a setting "
                f"known not to change activations {sorted(_NON_BASIS_KWARGS)}")
        flags[key] = _flag(key, value)
    return flags


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ProcessingFlagError(f"processing flag {key!r} must be a bool, got {value!r}")
    return value


def _resolve_processing(processing: Mapping[str, bool] | None) -> dict[str, bool]:
    flags = {**TL_PROCESSING_DEFAULTS, **_OPTIONAL_FLAGS}
    for key, value in (processing or {}).items():
        if key not in flags:
            raise ProcessingFlagError(f"unknown processing flag {key!r}; known: {sorted(flags)}")
        flags[key] = _flag(key, value)
    return flags


def model_devices(n_devices: int | None = None) -> int:
    """How many GPUs a model is split over: `n_devices`, else `SAETRANSFER_N_DEVICES`, else 1.

    Raises:
        DeviceUnavailableError: not a positive integer, or more devices than CUDA sees.
    """
    label = N_DEVICES_ENV if n_devices is None else "n_devices"
    raw: object = n_devices if n_devices is not None else os.environ.get(N_DEVICES_ENV, "1")
    try:
        count = int(str(raw).strip())
    except ValueError:
        count = 0
    if count < 1:
        raise DeviceUnavailableError(f"{label}={raw!r}: the number of GPUs to split a model over must be a "
                                     "positive integer")
    if count > 1 and torch.cuda.device_count() < count:
        raise DeviceUnavailableError(
            f"{label}={count} splits each model over {count} GPUs, but CUDA sees "
            f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}; an "
            "xdist worker under --gpu sees one GPU, so run without -n); lower it or make the GPUs visible")
    return count


# ---------------------------------------------------------------------------------------------


def checkpoint_dir(source: ModelSource, *, allow_hub: bool = False) -> tuple[Path, str | None]:
    """The local dir holding `source`'s checkpoint, and the Hub commit it was resolved to.

    Raises:
        MissingPathError: a local dir that does not exist or has no config.json.
        HubUnavailableError: a Hub repo that is not cached (offline) or cannot be downloaded.
    """
    if source.path is not None:
        path = Path(source.path)
        if not (path / "config.json").is_file():
            reason = describe_path(path) if not path.exists() else f"{path} has no config.json"
            raise MissingPathError(f"model: {reason}")
        return path, None
    if source.hub is None:
        raise MissingPathError("model source names neither a Hub repo nor a local path")
    folder = snapshot(source.hub, revision=source.revision, allow_hub=allow_hub,
                      allow_patterns=MODEL_FILES, ignore_patterns=TOP_LEVEL_ONLY, what="model")
    if not has_files(folder, ("*.safetensors",)):
        # old repos ship only pickled weights
        folder = snapshot(source.hub, revision=commit_of(folder) or source.revision, allow_hub=allow_hub,
                          allow_patterns=PICKLE_WEIGHTS, ignore_patterns=TOP_LEVEL_ONLY, what="model weights")
    if not (folder / "config.json").is_file() or not has_files(folder, ("*.safetensors", "pytorch_model*.bin")):
        raise MissingPathError(f"model: the cached snapshot {folder} of {source.hub} lacks config.json or weights "
                               "(pass --hub to complete it)")
    return folder, commit_of(folder)


def load_tokenizer(source: ModelSource, *, allow_hub: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a local checkpoint dir or a Hub repo (tokenizer files only, no weights).

    Raises:
        MissingPathError: a local dir that does not exist or holds no tokenizer files.
        HubUnavailableError: a Hub repo whose tokenizer is not cached (offline) or cannot be downloaded.
    """
    if source.path is not None:
        folder = Path(source.path)
        if not folder.exists():
            raise MissingPathError(f"tokenizer: {describe_path(folder)}")
    elif source.hub is not None:
        folder = snapshot(source.hub, revision=source.revision, allow_hub=allow_hub,
                          allow_patterns=TOKENIZER_FILES, ignore_patterns=TOP_LEVEL_ONLY, what="tokenizer")
    else:
        raise MissingPathError("model source names neither a Hub repo nor a local path")
    if not has_files(folder, ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise MissingPathError(f"tokenizer: {folder} holds no tokenizer files (tokenizer.json, tokenizer_config.json, "
                               "tokenizer.model or vocab.json)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=source.trust_remote_code)


def _interpolate(hf_model: Any, source: ModelSource, remote: bool) -> None:
    """In place: weights = start + alpha * (weights - start), a finetune-strength axis for controls."""
    from transformers import AutoModelForCausalLM

    start_dir, _ = checkpoint_dir(ModelSource(path=source.interpolate_from))
    start = AutoModelForCausalLM.from_pretrained(start_dir, dtype=torch.float32, trust_remote_code=remote)
    start_params = dict(start.named_parameters())
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            other = start_params.get(name)
            if other is None or other.shape != param.shape:
                raise UnsupportedArchitectureError(
                    f"cannot interpolate {source.describe()}: parameter {name} differs in shape or is missing")
            param.copy_(other + source.alpha * (param - other))


def load_model(source: ModelSource, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
               processing: Mapping[str, bool] | None = None, allow_hub: bool = False,
               n_ctx: int | None = None, n_devices: int | None = None) -> LoadedModel:
    """A `HookedSAETransformer` for a local checkpoint dir or a Hub repo, without Hub calls offline.

    Args:
        source: a local HF checkpoint dir, or a Hub repo (resolved through the HF cache; downloaded
            only with `allow_hub`).
        device: where the model ends up (processing happens on the CPU in fp32).
        dtype: the model's dtype after processing.
        processing: TL weight-processing flags (`processing_for(sae.model_from_pretrained_kwargs)`);
            missing flags take TL's `from_pretrained` defaults (all True).
        allow_hub: allow downloads.
        n_ctx: longest sequence needed (saves the n_ctx^2 causal masks); default in `tl_config`.
        n_devices: GPUs to split the model over (TransformerLens `n_devices`: TL places its modules on
            them); default `SAETRANSFER_N_DEVICES`, else 1 (`model_devices`).

    Raises:
        MissingPathError, HubUnavailableError, UnsupportedArchitectureError, ProcessingFlagError,
        DeviceUnavailableError.
    """
    flags = _resolve_processing(processing)
    devices = model_devices(n_devices)
    folder, revision = checkpoint_dir(source, allow_hub=allow_hub)  # fails fast, before the heavy imports
    from sae_lens import HookedSAETransformer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    remote = source.trust_remote_code  # never on unless the registry entry says so
    hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
    cfg = tl_config(hf_config, name=source.tl_name or source.hub or folder.name, n_ctx=n_ctx, n_devices=devices)
    if getattr(cfg, "output_logits_soft_cap", -1.0) > 0:
        # as TL's from_pretrained does: a logit soft-cap is not shift-invariant, so centring W_U would
        # change the log-probs (the residual stream, the SAE's basis, is the same either way)
        flags["center_unembed"] = False
    hf_model = AutoModelForCausalLM.from_pretrained(folder, config=hf_config, dtype=torch.float32,
                                                    trust_remote_code=remote)
    if source.interpolate_from is not None:
        _interpolate(hf_model, source, remote)
    with torch.no_grad():
        state_dict = converter(cfg.original_architecture)(hf_model, cfg)
    rows = hf_model.get_output_embeddings().weight.shape[0]
    # TL re-loads the tokenizer from its name_or_path with add_bos_token=True: it must come from disk
    model = HookedSAETransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(folder, trust_remote_code=remote),
                                 move_to_device=False)
    model.load_and_process_state_dict(state_dict, **flags)
    del hf_model, state_dict
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    if devices > 1:  # TransformerLens places the modules over cfg.n_devices GPUs; .to() would gather them
        model.cfg.device = device
        model.move_model_modules_to_device()
    else:
        model.to(device, print_details=False)
    model.eval()
    if model.cfg.d_vocab != rows:
        raise UnsupportedArchitectureError(
            f"{source.describe()}: config vocab_size {model.cfg.d_vocab} != {rows} unembedding rows")
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder, trust_remote_code=remote),
                       source=source, revision=revision, architecture=cfg.original_architecture,
                       d_vocab=model.cfg.d_vocab)
