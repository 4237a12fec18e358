"""Can a pair run here? Unavailable (skip, with the reason) is told apart from wrong (an error).

Only what this machine legitimately lacks is a reason to skip: a Hub source that is not in the HF
cache while offline, a gated repo without a token. A local path is the user's own: when it does not
exist or lacks the files that make it usable, that is a mistake in the registry entry, and it raises
`MissingPathError` naming the entry and the field, so a typo can never turn a run green.
No network call is made either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from saetransfer.loading.errors import MissingPathError, SaeConfigError
from saetransfer.loading.hub import (
    MODEL_FILES, PICKLE_WEIGHTS, TOP_LEVEL_ONLY, cached_snapshot, describe_path, env_offline, has_files,
    has_token, is_gated, offline_reason,
)
from saetransfer.paths import portable_path
from saetransfer.registry import DatasetSource, ModelSource, Pair, SaeSource

Source = ModelSource | SaeSource | DatasetSource
WEIGHT_FILES: tuple[str, ...] = ("*.safetensors", *PICKLE_WEIGHTS)
TOKENIZER_MARKERS: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any one of these makes a dir loadable by AutoTokenizer (the same test as `load_tokenizer`)."""
SAE_WEIGHTS = "sae_weights.safetensors"
"""What SAELens's `SAE.load_from_disk` reads next to cfg.json."""
GEMMA_SCOPE_2_WEIGHTS = "params.safetensors"
"""What SAELens's `gemma_3` conversion (Gemma Scope 2) reads next to config.json."""


def where(pair: Pair, role: str) -> str:
    """`registry entry 'id' (file), field 'role'`: what a user needs to find the line to fix."""
    file = f" ({portable_path(pair.source_file)})" if pair.source_file is not None else ""
    return f"registry entry {pair.id!r}{file}, field {role!r}"


def sources(pair: Pair) -> Iterator[tuple[str, Source]]:
    """(field name, source) of everything the pair needs, in registry order."""
    yield "base", pair.base
    yield "finetune", pair.finetune
    yield "sae", pair.sae
    if pair.native_sae is not None:
        yield "native_sae", pair.native_sae
    yield "dataset", pair.dataset


def check_local_sources(pair: Pair) -> None:
    """Raise for a local source that does not exist or lacks the files that make it usable.

    Raises:
        MissingPathError: naming the registry entry, the field and the fix.
    """
    for role, source in sources(pair):
        if isinstance(source, ModelSource) and source.interpolate_from is not None:
            problem = _local_problem(Path(source.interpolate_from), source, needs_tokenizer=False)
            if problem is not None:
                raise MissingPathError(f"{where(pair, role)} (interpolate_from): {problem}")
        if source.path is not None:
            problem = _local_problem(Path(source.path), source, needs_tokenizer=True)
            if problem is not None:
                raise MissingPathError(f"{where(pair, role)}: {problem}")


def availability(pair: Pair, *, allow_hub: bool) -> str | None:
    """None when everything `pair` needs is here (or may be downloaded), else a one-line skip reason.

    Offline: Hub sources must be in the HF cache. With `allow_hub`: a gated repo that is not cached
    needs a token. No request is made either way.

    Raises:
        MissingPathError: a local source is absent or unusable (`check_local_sources`): not a skip.
        SaeConfigError: an SAE release or sae_id SAELens does not know (close names listed).
    """
    check_local_sources(pair)
    for role, source in sources(pair):
        if source.path is not None:
            continue
        try:
            reason = _sae(source, allow_hub=allow_hub) if isinstance(source, SaeSource) else _hub(source, allow_hub)
        except SaeConfigError as err:  # an unknown release or sae_id is a typo in the entry, not a skip
            raise SaeConfigError(f"{where(pair, role)}: {err}") from err
        if reason is not None:
            return f"{role}: {reason}"
    return None


def _local_problem(path: Path, source: Source, *, needs_tokenizer: bool) -> str | None:
    if not path.exists():
        return f"{describe_path(path)}; fix the path (relative paths are relative to the registry file)"
    if isinstance(source, ModelSource):
        if not (path / "config.json").is_file():
            return f"{portable_path(path)} has no config.json (not a HF checkpoint dir; `save_pretrained` writes one)"
        if not has_files(path, WEIGHT_FILES):
            return (f"{portable_path(path)} has config.json but no weights (model.safetensors, safetensors shards or "
                    "pytorch_model.bin); copy them in (`model.save_pretrained` writes them)")
        if needs_tokenizer and not has_files(path, TOKENIZER_MARKERS):
            return (f"{portable_path(path)} holds no tokenizer files ({', '.join(TOKENIZER_MARKERS)}); "
                    "save the tokenizer there (`tokenizer.save_pretrained`)")
    if isinstance(source, SaeSource):
        if not (path / "cfg.json").is_file():
            return f"{portable_path(path)} has no cfg.json (not a SAELens SAE dir; `sae.save_model` writes one)"
        if not (path / SAE_WEIGHTS).is_file():
            return f"{portable_path(path)} has cfg.json but no {SAE_WEIGHTS}; copy it in (`sae.save_model` writes it)"
    return None


def _hub(source: ModelSource | DatasetSource, allow_hub: bool) -> str | None:
    assert source.hub is not None
    if isinstance(source, ModelSource):
        folder = cached_snapshot(source.hub, revision=source.revision, allow_patterns=MODEL_FILES,
                                 ignore_patterns=TOP_LEVEL_ONLY)
        cached = folder is not None and (folder / "config.json").is_file() and has_files(folder, WEIGHT_FILES)
    else:
        cached = cached_snapshot(source.hub, repo_type="dataset", revision=source.revision) is not None
    return None if cached else _uncached(source.hub, allow_hub=allow_hub)


def _uncached(repo_id: str, *, allow_hub: bool) -> str | None:
    if not allow_hub or env_offline():
        return offline_reason(repo_id, allow_hub=allow_hub)
    if is_gated(repo_id) and not has_token():
        return f"{repo_id} is gated and no HF token is configured (accept its licence, then set HF_TOKEN)"
    return None


def sae_snapshot(source: SaeSource) -> Path | None:
    """The cached folder of a SAELens release entry, or None when it is not (usably) in the HF cache.

    Raises:
        SaeConfigError: an unknown release or sae_id.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saetransfer.loading.saes import release_location

    assert source.release is not None and source.sae_id is not None
    repo_id, folder = release_location(source.release, source.sae_id)
    found = cached_snapshot(repo_id, allow_patterns=[f"{folder}/*", folder])
    here = None if found is None else found / folder
    if here is None or not here.exists():
        return None
    # a SAELens-format folder needs its weights next to cfg.json, a Gemma Scope 2 SAE folder its
    # params.safetensors (config.json is optional: SAELens infers it); other formats: the folder itself
    entry = get_pretrained_saes_directory().get(source.release)
    if entry is not None and entry.conversion_func == "gemma_3" and "clt" not in folder:
        return here if (here / GEMMA_SCOPE_2_WEIGHTS).is_file() else None
    if not (here / "cfg.json").is_file() or (here / SAE_WEIGHTS).is_file():
        return here
    return None


def _sae(source: SaeSource, *, allow_hub: bool) -> str | None:
    from saetransfer.loading.saes import release_location

    if sae_snapshot(source) is not None:
        return None
    repo_id, _ = release_location(source.release or "", source.sae_id or "")
    return _uncached(repo_id, allow_hub=allow_hub)
