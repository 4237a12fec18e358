"""SAEs: load one (SAELens release from the HF cache, or a local SAELens dir) and check it fits.

In SAELens v6 the training settings the suite needs (hook, context, BOS, model kwargs) live in
`sae.cfg.metadata`; they are lifted into `LoadedSAE` so callers never dig for them.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saetransfer.loading.errors import HubUnavailableError, MissingPathError, SaeConfigError, SaeMismatchError
from saetransfer.loading.hub import describe_path, hub_guard, offline_reason
from saetransfer.registry import SaeSource

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer

_METADATA_KEYS = ("hook_name", "context_size", "prepend_bos", "model_from_pretrained_kwargs")
# Hooks whose activations are d_model wide (SAELens reads them as they are).
_RESIDUAL_WIDTH = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@dataclass(frozen=True)
class LoadedSAE:
    """An SAE with the training settings that decide how it must be fed."""

    sae: SAE
    hook_name: str
    context_size: int
    prepend_bos: bool
    model_from_pretrained_kwargs: dict[str, Any] = field(hash=False)
    """Pass through `processing_for` to load models in the SAE's basis."""
    architecture: str
    """SAELens architecture: "standard", "topk", "jumprelu", ..."""
    d_in: int
    d_sae: int
    source: SaeSource
    trained_on: str | None = None
    """Its training data: the registry's `trained_on`, else the cfg's `dataset_path`."""


def release_location(release: str, sae_id: str) -> tuple[str, str]:
    """(HF repo id, folder in it) of a SAELens release entry.

    Raises:
        SaeConfigError: an unknown release or sae_id, with the closest known names.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        if "/" in release:  # SAELens also accepts a plain repo id with the folder as sae_id
            return release, sae_id
        close = difflib.get_close_matches(release, directory, n=3)
        raise SaeConfigError(f"unknown SAELens release {release!r}" + (f"; did you mean {close}?" if close else ""))
    entry = directory[release]
    if sae_id not in entry.saes_map:
        close = difflib.get_close_matches(sae_id, entry.saes_map, n=3)
        raise SaeConfigError(f"release {release!r} has no sae_id {sae_id!r}"
                             + (f"; did you mean {close}?" if close else ""))
    return entry.repo_id, entry.saes_map[sae_id]


# Where SAELens's `gemma_3` conversion (Gemma Scope 2) puts a folder's SAE: the folder kind -> the TL
# hook, as `sae_lens.loading.pretrained_sae_loaders.get_gemma_3_config_from_hf` derives it.
_GEMMA_3_HOOKS: tuple[tuple[str, str], ...] = (
    ("resid_post", "hook_resid_post"), ("attn_out", "attn.hook_z"), ("mlp_out", "hook_mlp_out"),
    ("transcoder", "hook_mlp_in"), ("clt", "hook_mlp_in"),
)


def release_hook(release: str, sae_id: str) -> str | None:
    """The hook a SAELens release entry's SAE reads, when SAELens's directory alone says it (no file read).

    From the release's `config_overrides` (`hook_name`), or for the `gemma_3` conversion (Gemma Scope 2,
    whose folders carry no hook name) from the folder path as SAELens derives it:
    `resid_post/layer_12_width_16k_l0_medium` -> `blocks.12.hook_resid_post`. None otherwise (the hook
    is then in the SAE's own config, known once it is cached).

    Raises:
        SaeConfigError: an unknown release or sae_id.
    """
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides, get_pretrained_saes_directory

    _, folder = release_location(release, sae_id)
    hook = get_config_overrides(release, sae_id).get("hook_name")
    if isinstance(hook, str):
        return hook
    entry = get_pretrained_saes_directory().get(release)
    layer = re.search(r"layer_(\d+)", folder)
    if entry is None or entry.conversion_func != "gemma_3" or layer is None:
        return None
    return next((f"blocks.{layer.group(1)}.{name}" for kind, name in _GEMMA_3_HOOKS if kind in folder), None)


@contextlib.contextmanager
def _cached_tensor_shapes(allow_hub: bool) -> Iterator[None]:
    """SAELens's safetensors shape probe, cache first.

    SAELens's `gemma_3` loader (and its CLT loader) read a weights file's tensor shapes by HTTP range
    requests made with `requests` (`get_safetensors_tensor_shapes`), past huggingface_hub's cache and
    its offline switch, on every load. Here the shapes come from the cached file's header; only with
    `allow_hub` and the file not cached does SAELens's own probe run.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors import safe_open
    from sae_lens.loading import pretrained_sae_loaders as loaders

    remote = loaders.get_safetensors_tensor_shapes

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        try:
            path = hf_hub_download(repo_id, filename, local_files_only=True)
        except LocalEntryNotFoundError:
            if not allow_hub:
                raise
            return remote(repo_id, filename)
        with safe_open(path, framework="numpy") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}

    loaders.get_safetensors_tensor_shapes = shapes
    try:
        yield
    finally:
        loaders.get_safetensors_tensor_shapes = remote


def load_sae(source: SaeSource, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
             allow_hub: bool = False) -> LoadedSAE:
    """Load an SAE from a local SAELens dir or a SAELens release (HF cache only unless `allow_hub`).

    Raises:
        MissingPathError: a local dir without cfg.json.
        HubUnavailableError: a release that is not cached while offline, or failed to download.
        SaeConfigError: unknown release/sae_id, or metadata lacking hook/context/BOS settings.
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from sae_lens import SAE

    dtype_name = str(dtype).removeprefix("torch.")
    if source.path is not None:
        path = Path(source.path)
        if not (path / "cfg.json").is_file():
            reason = describe_path(path) if not path.exists() else f"{path} has no cfg.json (not a SAELens SAE dir)"
            raise MissingPathError(f"SAE {source.name}: {reason}")
        sae = SAE.load_from_disk(path, device=device, dtype=dtype_name)
    elif source.release is not None and source.sae_id is not None:
        repo_id, _ = release_location(source.release, source.sae_id)
        try:
            with hub_guard(allow_hub), _cached_tensor_shapes(allow_hub):
                sae = SAE.from_pretrained(source.release, source.sae_id, device=device, dtype=dtype_name)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError) as err:
            raise HubUnavailableError(
                f"SAE {source.describe()}: {offline_reason(repo_id, allow_hub=allow_hub, what='SAE')}") from err
        _apply_release_overrides(sae, source.release, source.sae_id)
    else:
        raise MissingPathError(f"SAE {source.name}: names neither a release + id nor a local path")
    return _describe(sae, source)


def _apply_release_overrides(sae: SAE, release: str, sae_id: str) -> None:
    """Put the release's metadata overrides (pretrained_saes.yaml) into `sae.cfg.metadata`.

    SAELens applies `config_overrides` to the top level of the cfg dict; for a v6-format cfg.json
    (settings under "metadata") the metadata keys among them, such as `model_from_pretrained_kwargs`,
    are then silently dropped.
    """
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides

    for key, value in get_config_overrides(release, sae_id).items():
        if key in _METADATA_KEYS:
            setattr(sae.cfg.metadata, key, value)


def _describe(sae: SAE, source: SaeSource) -> LoadedSAE:
    meta = sae.cfg.metadata
    missing = [k for k in ("hook_name", "context_size", "prepend_bos") if getattr(meta, k, None) is None]
    if missing:
        raise SaeConfigError(f"SAE {source.describe()}: metadata lacks {missing} (needed to feed it as trained)")
    return LoadedSAE(
        sae=sae, hook_name=meta.hook_name, context_size=int(meta.context_size), prepend_bos=bool(meta.prepend_bos),
        model_from_pretrained_kwargs=dict(getattr(meta, "model_from_pretrained_kwargs", None) or {}),
        architecture=sae.cfg.architecture(), d_in=int(sae.cfg.d_in), d_sae=int(sae.cfg.d_sae), source=source,
        trained_on=source.trained_on or getattr(meta, "dataset_path", None))


def check_sae_fits(model: HookedSAETransformer, sae: LoadedSAE, hook: str) -> None:
    """Refuse an SAE that cannot read `hook` of `model`.

    Raises:
        SaeMismatchError: `hook` is not a hook of the model (close names listed), differs from the
            SAE's own hook, or the SAE's d_in differs from the hook's width (d_model for residual hooks).
    """
    hooks = list(model.hook_dict)
    name = getattr(model.cfg, "model_name", "model")
    if hook not in model.hook_dict:
        close = difflib.get_close_matches(hook, hooks, n=3, cutoff=0.6)
        raise SaeMismatchError(f"hook {hook!r} is not a hook of {name} ({model.cfg.n_layers} layers)"
                               + (f"; close: {close}" if close else ""))
    if hook != sae.hook_name:
        raise SaeMismatchError(f"registry hook {hook!r} differs from SAE {sae.source.describe()}'s own hook "
                               f"{sae.hook_name!r}")
    if hook.endswith(_RESIDUAL_WIDTH) and sae.d_in != model.cfg.d_model:
        raise SaeMismatchError(f"SAE {sae.source.describe()} has d_in {sae.d_in} but {name} has d_model "
                               f"{model.cfg.d_model} at {hook}")
