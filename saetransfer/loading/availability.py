"""Can a pair run here? One line saying what is missing, checked without any network call."""

from __future__ import annotations

from pathlib import Path

from saetransfer.loading.errors import LoadingError
from saetransfer.loading.hub import (
    MODEL_FILES, PICKLE_WEIGHTS, TOP_LEVEL_ONLY, cached_snapshot, describe_path, env_offline, has_files,
    has_token, is_gated, offline_reason,
)
from saetransfer.registry import DatasetSource, ModelSource, Pair, SaeSource


def availability(pair: Pair, *, allow_hub: bool) -> str | None:
    """None when everything `pair` needs is here (or may be downloaded), else a one-line reason.

    Offline: local paths must exist and Hub sources must be in the HF cache. With `allow_hub`: local
    paths must exist, and a gated repo that is not cached needs a token. No request is made either way.
    """
    sources = [("base", pair.base), ("finetune", pair.finetune), ("sae", pair.sae)]
    if pair.native_sae is not None:
        sources.append(("native_sae", pair.native_sae))
    sources.append(("dataset", pair.dataset))
    for role, source in sources:
        reason = _check(source, allow_hub=allow_hub)
        if reason is not None:
            return f"{role}: {reason}"
    return None


def _check(source: ModelSource | SaeSource | DatasetSource, *, allow_hub: bool) -> str | None:
    if isinstance(source, ModelSource) and source.interpolate_from is not None:
        reason = _local(Path(source.interpolate_from), source)
        if reason is not None:
            return reason
    if source.path is not None:
        return _local(Path(source.path), source)
    if isinstance(source, SaeSource):
        return _sae(source, allow_hub=allow_hub)
    assert source.hub is not None
    if isinstance(source, ModelSource):
        folder = cached_snapshot(source.hub, revision=source.revision, allow_patterns=MODEL_FILES,
                                 ignore_patterns=TOP_LEVEL_ONLY)
        cached = folder is not None and (folder / "config.json").is_file() and (
            has_files(folder, ("*.safetensors",)) or has_files(folder, PICKLE_WEIGHTS))
    else:
        cached = cached_snapshot(source.hub, repo_type="dataset", revision=source.revision) is not None
    return None if cached else _uncached(source.hub, allow_hub=allow_hub)


def _uncached(repo_id: str, *, allow_hub: bool) -> str | None:
    if not allow_hub or env_offline():
        return offline_reason(repo_id, allow_hub=allow_hub)
    if is_gated(repo_id) and not has_token():
        return f"{repo_id} is gated and no HF token is configured (accept its licence, then set HF_TOKEN)"
    return None


def _local(path: Path, source: ModelSource | SaeSource | DatasetSource) -> str | None:
    if not path.exists():
        return describe_path(path)
    needed = {ModelSource: "config.json", SaeSource: "cfg.json"}.get(type(source))
    if needed is not None and not (path / needed).is_file():
        return f"{path} has no {needed}"
    return None


def _sae(source: SaeSource, *, allow_hub: bool) -> str | None:
    from saetransfer.loading.saes import release_location

    assert source.release is not None and source.sae_id is not None
    try:
        repo_id, folder = release_location(source.release, source.sae_id)
    except LoadingError as err:
        return str(err)
    found = cached_snapshot(repo_id, allow_patterns=[f"{folder}/*", folder])
    here = None if found is None else found / folder
    # a SAELens-format folder needs its weights next to cfg.json; other formats: the folder itself
    if here is not None and here.exists() and (
            not (here / "cfg.json").is_file() or (here / "sae_weights.safetensors").is_file()):
        return None
    return _uncached(repo_id, allow_hub=allow_hub)
