"""Preflight: every bad input knowable from configs and file headers, before any weights are read.

`preflight(pair, config)` runs at the top of `engine.evaluate_pair` (and in the CLI before the
cache): the device, the local files, the hook against config.json's layer count, the SAE's cfg.json
against its own weight shapes and against the model's width, and the token budget. It parses JSON
configs and safetensors headers only (`safe_open` reads the header; no tensor is loaded), so a 7B
pair with a typo fails in milliseconds instead of after minutes of loading. Hub sources are checked
as far as the local HF cache holds them; what is not there is not knowable offline and is left to
the loaders.

A problem raises one `LoadingError` subclass whose message names the registry entry, the field and
the fix. What only needs recording (a budget below the kept-position floor, remote code) comes back
as warning strings for the caller to print or put into provenance.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from saetransfer.loading.availability import (
    GEMMA_SCOPE_2_WEIGHTS, SAE_WEIGHTS, check_local_sources, sae_snapshot, where,
)
from saetransfer.loading.errors import (
    DeviceUnavailableError, MissingPathError, SaeMismatchError, TokenBudgetError, UnreadableFileError,
    UnsupportedArchitectureError, UnsupportedHookError,
)
from saetransfer.loading.hub import MODEL_FILES, TOP_LEVEL_ONLY, cached_snapshot
from saetransfer.loading.saes import release_hook
from saetransfer.masking import KEPT_FLOOR
from saetransfer.paths import portable_path
from saetransfer.registry import ModelSource, Pair, SaeSource

RESIDUAL_HOOKS: tuple[str, ...] = ("hook_resid_pre", "hook_resid_post")
"""What the engine splices at: its second pass restarts the model at a block boundary
(`start_at_layer`), which only a residual-stream activation is the input of."""
TL_BLOCK_HOOKS: tuple[str, ...] = (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_in", "hook_q_input", "hook_k_input",
    "hook_v_input", "hook_mlp_in", "hook_attn_out", "hook_mlp_out",
)
"""TransformerLens `TransformerBlock` hook points: real hooks, told apart from typos."""
_N_LAYERS_KEYS = ("n_layer", "num_hidden_layers", "n_layers")
_D_MODEL_KEYS = ("n_embd", "hidden_size", "d_model")
_JSON_FILES = ("tokenizer.json", "tokenizer_config.json")


@runtime_checkable
class RunSettings(Protocol):
    """What preflight reads of a run configuration (`RunConfig` has these)."""

    n_tokens: int
    device: str


@dataclass(frozen=True)
class ModelShape:
    """What a checkpoint's config.json and weight headers say, read without loading anything."""

    name: str
    """`the base model (fixtures/zoo/models/base)`, for messages."""
    n_layers: int | None
    d_model: int | None
    d_model_key: str | None
    """The config.json key `d_model` came from (n_embd, hidden_size, d_model)."""
    weights: dict[str, tuple[int, ...]] = field(hash=False)
    """Tensor name -> shape from the safetensors headers (empty for pickled weights)."""


@dataclass(frozen=True)
class SaeShape:
    """What an SAE's cfg.json says, checked against its weight shapes."""

    d_in: int
    d_sae: int
    hook_name: str | None
    context_size: int | None
    prepend_bos: bool | None


# ---------------------------------------------------------------------------------------------
# single checks, usable on their own


def check_device(device: str) -> None:
    """Raise when a CUDA run is asked for on a machine without CUDA (before SAELens fails obscurely).

    Raises:
        DeviceUnavailableError: naming the fix.
    """
    if device.split(":")[0] != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {device!r} (--gpu) was asked for but torch.cuda.is_available() is False: run on a CUDA "
            "machine with a CUDA build of torch (see README), or drop --gpu to run on the CPU")


def check_token_budget(n_tokens: object, *, context_size: int | None = None, batch_size: int | None = None,
                       prepend_bos: bool = True, label: str = "--tokens") -> list[str]:
    """The one token-budget rule of the CLI and pytest; returns warnings to record.

    A budget must be a positive integer and, when the row and batch sizes are known, cover one full
    batch of rows (`context_size x batch_size` tokens): the engine streams whole batches. A budget
    that cannot keep `KEPT_FLOOR.min_count` positions (BOS is never kept) is allowed but warned
    about: its verdict will be `not judged`.

    Raises:
        TokenBudgetError: not a positive integer, or less than one batch.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0:
        raise TokenBudgetError(f"{label}: the token budget must be a positive integer, got {n_tokens!r}")
    if context_size is None or batch_size is None:
        return []
    batch = context_size * batch_size
    if n_tokens < batch:
        raise TokenBudgetError(
            f"{label}: {n_tokens} tokens are less than one full batch (context_size {context_size} x "
            f"batch_size {batch_size} = {batch} tokens); pass --tokens {batch} or more")
    per_row = context_size - (1 if prepend_bos else 0)
    most_kept = math.ceil(n_tokens / context_size) * per_row
    if most_kept < KEPT_FLOOR.min_count:
        needed = math.ceil(KEPT_FLOOR.min_count / per_row) * context_size
        return [f"{label}: {n_tokens} tokens keep at most {most_kept} positions, below the "
                f"kept-position floor of {KEPT_FLOOR.min_count} (saetransfer.masking.KEPT_FLOOR), so the pair "
                f"will be `not judged`; pass --tokens {max(needed, batch)} or more for a verdict"]
    return []


def check_hook_kind(hook: str, *, label: str = "hook") -> None:
    """Raise for a hook the engine cannot splice at, or that is no TransformerLens block hook at all.

    Raises:
        UnsupportedHookError: naming the supported hooks (and the near names of a typo).
    """
    layer, name = _split_hook(hook, label)
    if name in RESIDUAL_HOOKS:
        return
    if name in TL_BLOCK_HOOKS:
        raise UnsupportedHookError(
            f"{label}: {hook!r} is a TransformerLens hook, but only residual-stream SAEs "
            f"({', '.join(RESIDUAL_HOOKS)}) are supported: the spliced pass restarts the model at a block "
            f"boundary; use an SAE trained at blocks.{layer}.hook_resid_pre or blocks.{layer}.hook_resid_post")
    close = difflib.get_close_matches(hook, [f"blocks.{layer}.{n}" for n in RESIDUAL_HOOKS], n=3, cutoff=0.6)
    raise UnsupportedHookError(f"{label}: {hook!r} is not a TransformerLens hook name"
                               + (f"; close: {close}" if close else f"; supported: {list(RESIDUAL_HOOKS)}"))


def check_hook_layer(hook: str, shape: ModelShape, *, label: str = "hook") -> None:
    """Raise when the hook's block index is past the model's last block (config.json's layer count).

    Raises:
        UnsupportedHookError: with the nearest valid residual hooks.
    """
    layer, _ = _split_hook(hook, label)
    if shape.n_layers is None or layer < shape.n_layers:
        return
    valid = [f"blocks.{i}.{n}" for i in range(shape.n_layers) for n in RESIDUAL_HOOKS]
    close = difflib.get_close_matches(hook, valid, n=3, cutoff=0.6)
    raise UnsupportedHookError(f"{label}: {hook!r} is not a hook of {shape.name} ({shape.n_layers} layers, "
                               f"blocks.0 to blocks.{shape.n_layers - 1})" + (f"; close: {close}" if close else ""))


def model_shape(folder: Path, label: str, name: str) -> ModelShape:
    """Layer count and width from config.json, tensor shapes from the safetensors headers.

    `label` starts error messages (the registry entry and field), `name` says which model this is.

    Raises:
        UnreadableFileError: config.json or a weights file does not parse (truncated, half-downloaded).
        MissingPathError: a shard named by the safetensors index is absent.
    """
    config = _read_json(folder / "config.json", label)
    for nested in ("text_config", "llm_config"):  # multimodal configs keep the LM's sizes one level down
        if isinstance(config.get(nested), dict) and not any(k in config for k in _N_LAYERS_KEYS):
            config = config[nested]
    n_layers = next((config[k] for k in _N_LAYERS_KEYS if isinstance(config.get(k), int)), None)
    d_key = next((k for k in _D_MODEL_KEYS if isinstance(config.get(k), int)), None)
    return ModelShape(name=name, n_layers=n_layers, d_model=None if d_key is None else config[d_key],
                      d_model_key=d_key, weights=_weight_shapes(folder, label))


def sae_shape(folder: Path, label: str, *, local: bool) -> SaeShape | None:
    """d_in, d_sae (and, for a local dir, hook, context and BOS) from cfg.json, checked against the weights.

    A Gemma Scope 2 folder (no cfg.json): d_in, d_sae from params.safetensors's header, no settings.
    None for a folder in another format (no cfg.json with integer d_in/d_sae): SAELens converts those.

    Raises:
        UnreadableFileError: cfg.json or sae_weights.safetensors does not parse.
        SaeMismatchError: cfg.json's d_in/d_sae disagree with W_enc/W_dec (the cfg belongs to another SAE).
    """
    cfg_file = folder / "cfg.json"
    if not cfg_file.is_file():
        return _gemma_scope_2_shape(folder, label)
    cfg = _read_json(cfg_file, label)
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not isinstance(d_in, int) or not isinstance(d_sae, int):
        return None
    weights = folder / SAE_WEIGHTS
    if weights.is_file():
        shapes = _header(weights, label)
        expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        for name, want in expected.items():
            if name in shapes and shapes[name] != want:
                raise SaeMismatchError(
                    f"{label}: {portable_path(cfg_file)} says d_in {d_in}, d_sae {d_sae}, but {SAE_WEIGHTS} holds "
                    f"{name} of shape {list(shapes[name])} (expected {list(want)}): cfg.json and the weights come "
                    "from different SAEs; save the SAE again (`sae.save_model`) or fix d_in/d_sae")
    if not local:  # a release's metadata may be overridden by SAELens's pretrained_saes.yaml: not read here
        return SaeShape(d_in=d_in, d_sae=d_sae, hook_name=None, context_size=None, prepend_bos=None)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else cfg  # v6 nests the training settings

    def setting(key: str, kind: type) -> Any:
        value = meta.get(key, cfg.get(key))
        return value if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) else None

    return SaeShape(d_in=d_in, d_sae=d_sae, hook_name=setting("hook_name", str),
                    context_size=setting("context_size", int), prepend_bos=setting("prepend_bos", bool))


def _gemma_scope_2_shape(folder: Path, label: str) -> SaeShape | None:
    """d_in, d_sae of a Gemma Scope 2 folder (params.safetensors, `w_enc` of shape (d_in, d_sae)), else None."""
    params = folder / GEMMA_SCOPE_2_WEIGHTS
    if not params.is_file():
        return None
    w_enc = _header(params, label).get("w_enc")
    if w_enc is None or len(w_enc) != 2:
        return None
    return SaeShape(d_in=w_enc[0], d_sae=w_enc[1], hook_name=None, context_size=None, prepend_bos=None)


# ---------------------------------------------------------------------------------------------
# the whole preflight


def preflight(pair: Pair, config: RunSettings) -> list[str]:
    """Check everything knowable about `pair` from configs and headers; return warnings to record.

    Order: device, hook kind, local files, each model's config.json and weight headers, the hook's
    layer, the SAE (and the native SAE) against its weights and both models, the token budget, and
    last the warnings (budget below the kept-position floor, `trust_remote_code`).

    Raises:
        LoadingError: the first problem found (DeviceUnavailableError, UnsupportedHookError,
            MissingPathError, UnreadableFileError, UnsupportedArchitectureError, SaeMismatchError,
            TokenBudgetError), naming the registry entry, the field and the fix.
    """
    check_device(config.device)
    check_hook_kind(pair.hook, label=where(pair, "hook"))
    check_local_sources(pair)
    base = _model(pair, "base", pair.base)
    finetune = _model(pair, "finetune", pair.finetune)
    shapes = {"base": base} if base is not None else {}
    # A finetune with its own tokenizer may be another architecture: the engine stops that pair at the
    # tokenizer check as `not comparable` (the zoo's retok), so only a finetune sharing the base's
    # tokenizer files must fit the hook and the SAE.
    if finetune is not None and (pair.finetune == pair.base or _same_tokenizer(pair.base, pair.finetune)):
        shapes["finetune"] = finetune
    for shape in shapes.values():
        check_hook_layer(pair.hook, shape, label=where(pair, "hook"))

    sae = _sae(pair, "sae", pair.sae, shapes)
    if pair.native_sae is not None:
        _sae(pair, "native_sae", pair.native_sae, {} if finetune is None else {"finetune": finetune})

    context = pair.context_size or (sae.context_size if sae is not None else None)
    bos = pair.prepend_bos if pair.prepend_bos is not None else (
        sae.prepend_bos if sae is not None and sae.prepend_bos is not None else True)
    warnings = check_token_budget(config.n_tokens, context_size=context, batch_size=pair.batch_size,
                                  prepend_bos=bos, label=pair.id)
    for role, source in (("base", pair.base), ("finetune", pair.finetune)):
        if source.trust_remote_code:
            warnings.append(f"{where(pair, role)}: trust_remote_code = true runs the Python code shipped with "
                            f"{source.describe()} when it loads; keep it only for a repository you have read")
    return warnings


def _model(pair: Pair, role: str, source: ModelSource) -> ModelShape | None:
    folder = _model_folder(source)
    if folder is None:
        return None  # a Hub model not in the HF cache: nothing to read offline, the loader decides
    label = where(pair, role)
    shape = model_shape(folder, label, f"the {role} model {_shown(source, folder)}")
    for name in _JSON_FILES:  # AutoTokenizer's error on a broken one would not say which file
        if (folder / name).is_file():
            _read_json(folder / name, label)
    if source.interpolate_from is not None:
        start = Path(source.interpolate_from)
        _check_interpolable(pair, role, source, model_shape(start, f"{label} (interpolate_from)", portable_path(start)),
                            shape)
    return shape


def _model_folder(source: ModelSource) -> Path | None:
    if source.path is not None:
        return Path(source.path)
    assert source.hub is not None
    folder = cached_snapshot(source.hub, revision=source.revision, allow_patterns=MODEL_FILES,
                             ignore_patterns=TOP_LEVEL_ONLY)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _check_interpolable(pair: Pair, role: str, source: ModelSource, start: ModelShape, end: ModelShape) -> None:
    differ = [k for k in ("n_layers", "d_model") if getattr(start, k) != getattr(end, k)]
    if not differ and start.weights and end.weights:
        differ = sorted(set(start.weights) ^ set(end.weights))[:3] or [
            k for k in sorted(start.weights) if start.weights[k] != end.weights[k]][:3]
    if differ:
        raise UnsupportedArchitectureError(
            f"{where(pair, role)}: cannot interpolate from {portable_path(Path(source.interpolate_from or ''))} to "
            f"{portable_path(Path(source.path or ''))}: they differ in {differ}; "
            "interpolate_from must be a checkpoint of the same architecture and size")


def _sae(pair: Pair, role: str, source: SaeSource, shapes: dict[str, ModelShape]) -> SaeShape | None:
    label = f"{where(pair, role)} ({source.describe()})"
    if source.release is not None and source.sae_id is not None:
        # knowable from SAELens's directory alone, cached or not (Gemma Scope 2: from the folder name)
        known = release_hook(source.release, source.sae_id)
        if known is not None and known != pair.hook:
            raise SaeMismatchError(f"{label}: the SAE was trained at {known!r} but the entry's hook is {pair.hook!r}; "
                                   f"set hook = {known!r} or use an SAE trained at {pair.hook!r}")
    folder = Path(source.path) if source.path is not None else sae_snapshot(source)
    if folder is None:
        return None  # a release not in the HF cache
    sae = sae_shape(folder, label, local=source.is_local)
    if sae is None:
        return None
    if sae.hook_name is not None and sae.hook_name != pair.hook:
        raise SaeMismatchError(f"{label}: the SAE was trained at {sae.hook_name!r} but the entry's hook is "
                               f"{pair.hook!r}; set hook = {sae.hook_name!r} or use an SAE trained at {pair.hook!r}")
    for shape in shapes.values():
        if shape.d_model is not None and sae.d_in != shape.d_model:
            raise SaeMismatchError(
                f"{label}: the SAE has d_in {sae.d_in} but {shape.name} has d_model {shape.d_model} "
                f"(config.json {shape.d_model_key}): a residual-stream SAE must match the model's width; "
                "use an SAE trained on this model")
    return sae


def _same_tokenizer(base: ModelSource, finetune: ModelSource) -> bool:
    """Both dirs hold the same tokenizer files, byte for byte (False when either is not here)."""
    a, b = _model_folder(base), _model_folder(finetune)
    if a is None or b is None:
        return False
    names = [n for n in (*_JSON_FILES, "tokenizer.model", "vocab.json", "merges.txt") if (a / n).is_file()]
    return bool(names) and all((b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _shown(source: ModelSource, folder: Path) -> str:
    return portable_path(folder) if source.is_local else f"{source.hub} (HF cache)"


def _split_hook(hook: str, label: str) -> tuple[int, str]:
    parts = hook.split(".", 2)
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise UnsupportedHookError(f"{label}: {hook!r} must look like 'blocks.6.hook_resid_post'")
    return int(parts[1]), parts[2]


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableFileError(f"{label}: {portable_path(path)} is not readable JSON ({err}); "
                                  "restore it from the original checkpoint") from err
    if not isinstance(data, dict):
        raise UnreadableFileError(f"{label}: {portable_path(path)} holds a JSON {type(data).__name__}, not an object")
    return data


def _weight_shapes(folder: Path, label: str) -> dict[str, tuple[int, ...]]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index, label).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise MissingPathError(f"{label}: {portable_path(index)} names shards that are absent: {missing[:3]}; "
                                   "copy or download them again")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        shapes.update(_header(file, label))
    return shapes


def _header(file: Path, label: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header; the tensors themselves are not read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise UnreadableFileError(
            f"{label}: {portable_path(file)} is not a readable safetensors file ({err}); it is probably truncated "
            "or still being copied: copy or download it again") from err
