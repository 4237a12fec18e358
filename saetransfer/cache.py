"""A keyed, atomic, lock-guarded on-disk cache of pair results.

The key hashes everything that changes a result: the pair's sources (local files by name, size and
mtime; Hub sources by resolved revision), the token sample's hash, dtype, device class, library
versions and `METRIC_VERSION`. A changed metric therefore never reads a stale entry (the post's code reused
old files by a bare try/except), and concurrent xdist workers compute a pair once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from saetransfer.files import write_atomic
from saetransfer.results import PairResult


def fingerprint_path(path: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime_ns) of every file under `path`: cheap, and changes on any rebuild."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def cached_result(directory: Path, key: str, compute: Callable[[], PairResult], refresh: bool = False) -> PairResult:
    """Read `key` from `directory`, or compute, store and return it; one process computes at a time."""
    path = Path(directory) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists() and not refresh:
            try:
                return PairResult.from_dict(json.loads(path.read_text()))
            except (json.JSONDecodeError, TypeError):
                pass  # a truncated or older-format entry: recompute it
        result = compute()
        write_atomic(path, result.to_json().encode())
        return result
