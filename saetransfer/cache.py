"""A keyed, atomic, lock-guarded, self-verifying on-disk cache of pair results.

The key hashes everything that changes a result: the pair's sources (local files by name, size and
mtime; Hub sources by resolved revision), the token sample's hash, dtype, device class, library
versions and `METRIC_VERSION`. A changed metric therefore never reads a stale entry, and concurrent
xdist workers compute a pair once.

An entry is trusted only when it proves itself: line one is an envelope
`{"format": CACHE_FORMAT, "metric_version": METRIC_VERSION, "sha256": <of the rest>}`, the rest is
the result's JSON exactly as `PairResult.to_json()` wrote it. An entry that fails either version, the
checksum (a hand-edited verdict, a removed section), does not decode or does not build a result is
recomputed with a `CacheEntryWarning` naming the file. Entries are written by `write_atomic` (temp
file + rename), so a killed writer leaves at most a `.<name>.*.tmp` file, which is never read and is
removed once stale.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from saetransfer.files import write_atomic
from saetransfer.results import METRIC_VERSION, PairResult

CACHE_FORMAT = 2
"""Bump when the envelope's layout changes. 1 was a bare result JSON (no checksum)."""
STALE_TMP_SECONDS = 60.0
"""A temp file this old is a killed writer's: writing one entry takes milliseconds, not a minute."""
LOCK_STRIPES = 256
"""Lock files per cache dir (by the key's first two hex digits). filelock keeps a lock file after release,
on purpose (waiters must share one inode), so one lock per key would grow with every key ever computed;
two keys sharing a stripe only wait for each other, with odds 1/256. Groups of keys (one streaming pass)
lock on one of 4,096 group stripes instead (`_lock_name`)."""


class CacheEntryWarning(UserWarning):
    """A cache entry was rejected (version, checksum, decoding) and is being recomputed."""


class CacheEntryError(ValueError):
    """Why an entry cannot be served; becomes the text of a `CacheEntryWarning`."""


def fingerprint_path(path: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime_ns) of every file under `path`: cheap, and changes on any rebuild."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def encode_entry(result: PairResult) -> bytes:
    """The envelope line, then the result's JSON; the checksum covers the result's bytes exactly."""
    payload = result.to_json().encode()
    envelope = {"format": CACHE_FORMAT, "metric_version": METRIC_VERSION, "sha256": hashlib.sha256(payload).hexdigest()}
    return json.dumps(envelope, sort_keys=True).encode() + b"\n" + payload


def decode_entry(data: bytes) -> PairResult:
    """The result in an entry written by `encode_entry`.

    Raises:
        CacheEntryError: another format or metric version, a checksum mismatch, or a payload that
            does not decode or build a `PairResult`.
    """
    head, sep, payload = data.partition(b"\n")
    try:
        envelope = json.loads(head.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheEntryError(f"no envelope line ({type(err).__name__}; an entry of an older format or not an entry)") \
            from err
    if not sep:
        raise CacheEntryError("truncated: nothing after the envelope line")
    if not isinstance(envelope, dict) or envelope.get("format") != CACHE_FORMAT:
        found = envelope.get("format") if isinstance(envelope, dict) else None
        raise CacheEntryError(f"cache format {found!r}, expected {CACHE_FORMAT}")
    if envelope.get("metric_version") != METRIC_VERSION:
        raise CacheEntryError(f"metric version {envelope.get('metric_version')!r}, expected {METRIC_VERSION}")
    if envelope.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise CacheEntryError("checksum mismatch: the result was edited or truncated after it was written")
    try:
        return PairResult.from_dict(json.loads(payload.decode()))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as err:
        raise CacheEntryError(f"the result does not build a PairResult ({type(err).__name__}: {err})") from err


def cached_result(directory: Path, key: str, compute: Callable[[], PairResult], refresh: bool = False) -> PairResult:
    """Read `key` from `directory`, or compute, store and return it; one process computes a key at a time."""
    return cached_results(directory, {key: key}, lambda _: {key: compute()}, refresh=refresh)[key]


def _lock_name(keys: list[str]) -> str:
    """A key's stripe (`LOCK_STRIPES`); a set of keys computed together gets one of 4,096 group stripes of its
    own, so that two passes rarely wait for each other (17 groups on 256 stripes share one 4 times in 10)."""
    if len(keys) == 1:
        return f".lock-{keys[0][:2]}"
    return f".lock-group-{hashlib.sha256(''.join(sorted(keys)).encode()).hexdigest()[:3]}"


def cached_results(directory: Path, keys: Mapping[str, str], compute: Callable[[list[str]], Mapping[str, PairResult]],
                   refresh: bool = False, wanted: Collection[str] | None = None) -> dict[str, PairResult]:
    """Results for several names (name -> key) computed together: those absent (all, with `refresh`) are
    computed in one `compute(names)` call and stored. One process at a time per set of keys.

    Returns the `wanted` names (default: all). The others' entries are only looked for, not read: decoding
    a result costs ~0.1 s, and one evaluation's test must not pay for its whole group's. A damaged entry
    among them is found, and recomputed, when it is wanted."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(keys) if wanted is None else set(wanted)
    with FileLock(str(directory / _lock_name(list(keys.values())))):
        remove_stale_temp_files(directory)
        out: dict[str, PairResult] = {}
        present = set()
        for name, key in keys.items():
            path = directory / f"{key}.json"
            if not path.exists() or refresh:
                continue
            if name not in wanted:
                present.add(name)
                continue
            try:
                out[name] = decode_entry(path.read_bytes())
            except CacheEntryError as err:
                warnings.warn(f"cache entry {path} rejected, recomputing it: {err}", CacheEntryWarning,
                              stacklevel=3)
        missing = [name for name in keys if name not in out and name not in present]
        if missing:
            computed = compute(missing)
            for name in missing:
                write_atomic(directory / f"{keys[name]}.json", encode_entry(computed[name]))
                if name in wanted:
                    out[name] = computed[name]
        return out


def remove_stale_temp_files(directory: Path, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete killed writers' temp files (`write_atomic`'s `.<name>.*.tmp`) and pre-stripe lock files.

    A live writer's temp file is younger than `older_than`; entries are never read from temp files.
    """
    now = time.time()
    removed = []
    for file in [*directory.glob(".*.tmp"), *directory.glob("*.json.lock")]:  # *.json.lock: CACHE_FORMAT 1 locks
        try:
            if now - file.stat().st_mtime > older_than:
                file.unlink()
                removed.append(file)
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed
