"""The HF Hub boundary: resolve repos to local snapshot dirs, offline unless asked, and say why not.

Offline means no request at all: `hub_guard(False)` flips huggingface_hub's offline switch for the
duration of a call, so even a library that would only "check for updates" (SAELens' hf_hub_download)
reads the cache or fails fast. Everything downstream works from local directories.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from saetransfer.loading.errors import HubUnavailableError
from saetransfer.paths import REPO_ROOT, ZOO

RepoType = Literal["model", "dataset"]

# What a causal-LM checkpoint needs: configs, tokenizer, safetensors weights. Top level only:
# sub-folders hold other formats (`original/`, `onnx/`) we would download for nothing.
MODEL_FILES: tuple[str, ...] = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)
# Enough for AutoTokenizer (config.json names the model type when tokenizer_config.json does not).
TOKENIZER_FILES: tuple[str, ...] = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json",
)
# Only when a repo has no safetensors (old GPT-2 finetunes): transformers loads these with
# torch.load(weights_only=True).
PICKLE_WEIGHTS: tuple[str, ...] = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
TOP_LEVEL_ONLY: tuple[str, ...] = ("*/*",)

# Repos that need an accepted licence and a token; detectable without a request.
GATED_PREFIXES: tuple[str, ...] = ("google/gemma", "meta-llama/", "mistralai/")


def is_gated(repo_id: str) -> bool:
    return repo_id.lower().startswith(GATED_PREFIXES)


def has_token() -> bool:
    """An HF token is configured (env or token file). Not `get_token()`: it may refresh over the network."""
    from huggingface_hub import constants

    return bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
                or Path(constants.HF_TOKEN_PATH).is_file())


def env_offline() -> bool:
    """HF_HUB_OFFLINE is set for this process: no download can happen even with allow_hub."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def hub_guard(allow_hub: bool) -> Iterator[None]:
    """Without `allow_hub`, any HF Hub request in the block raises instead of touching the network."""
    if allow_hub:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def offline_reason(repo_id: str, *, allow_hub: bool, what: str = "") -> str:
    """One line saying why a Hub repo is unusable here and what to do about it."""
    name = f"{repo_id}{f' ({what})' if what else ''}"
    gated = "; gated: set HF_TOKEN" if is_gated(repo_id) else ""
    if allow_hub and env_offline():
        return f"{name} is not in the HF cache and HF_HUB_OFFLINE=1 blocks downloads (unset it{gated})"
    if allow_hub:
        return f"{name} could not be downloaded{gated}"
    return f"offline: {name} is not in the HF cache (pass --hub to download{gated})"


def describe_path(path: Path) -> str:
    """A path relative to the checkout when inside it, with the zoo build hint for zoo paths."""
    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        shown = str(path)
    hint = ""
    try:
        path.resolve().relative_to(ZOO.resolve())
        hint = " (run `python -m saetransfer zoo build`?)"
    except ValueError:
        pass
    return f"missing local path {shown}{hint}"


def cached_snapshot(repo_id: str, *, repo_type: RepoType = "model", revision: str | None = None,
                    allow_patterns: Sequence[str] | None = None,
                    ignore_patterns: Sequence[str] | None = None) -> Path | None:
    """The cached snapshot dir of `repo_id@revision`, or None (also when known incomplete); no request."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True,
                                   allow_patterns=list(allow_patterns) if allow_patterns else None,
                                   ignore_patterns=list(ignore_patterns) if ignore_patterns else None)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None
    return Path(folder)


def snapshot(repo_id: str, *, revision: str | None, allow_hub: bool, repo_type: RepoType = "model",
             allow_patterns: Sequence[str] | None = None, ignore_patterns: Sequence[str] | None = None,
             what: str = "") -> Path:
    """Local snapshot dir of a Hub repo: the HF cache offline, a (partial) download with `allow_hub`.

    Raises:
        HubUnavailableError: not cached and downloads are off, or the download failed (gated, missing).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError, OfflineModeIsEnabled,
    )

    try:
        with hub_guard(allow_hub):
            folder = snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, local_files_only=not allow_hub,
                allow_patterns=list(allow_patterns) if allow_patterns else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns else None)
    except IncompleteSnapshotError as err:
        raise HubUnavailableError(f"{repo_id}{f' ({what})' if what else ''}: the HF cache holds an incomplete "
                                  f"snapshot (pass --hub to complete it): {err}") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise HubUnavailableError(offline_reason(repo_id, allow_hub=allow_hub, what=what)) from err
    except HfHubHTTPError as err:  # gated, private, missing repo or revision
        raise HubUnavailableError(f"{offline_reason(repo_id, allow_hub=allow_hub, what=what)}: {err}") from err
    return Path(folder)


def commit_of(folder: Path) -> str | None:
    """The commit a cache snapshot dir belongs to (`.../snapshots/<commit>`), else None."""
    return folder.name if folder.parent.name == "snapshots" else None


def has_files(folder: Path, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(p.name, pat) for p in folder.iterdir() for pat in patterns)
