"""The result cache serves only entries that prove themselves, and never reads or keeps a writer's debris.

The entries hold a real `PairResult` (the zoo's retok pair, which stops at the tokenizer check, so
the entry is small); the engine's result goes through the cache end to end in test_kill.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from saetransfer import cache
from saetransfer.results import METRIC_VERSION, PairResult

KEY = "0123456789abcdef0123456789abcdef"


RESULT = PairResult.from_json((Path(__file__).parent / "data/results/tiny-gpt2__retok.json").read_text())


class Counter:
    """A `compute` that counts its calls."""

    def __init__(self, result: PairResult = RESULT) -> None:
        self.calls, self.result = 0, result

    def __call__(self) -> PairResult:
        self.calls += 1
        return self.result


def entry(tmp_path: Path) -> Path:
    return tmp_path / f"{KEY}.json"


def test_an_entry_is_computed_once_then_served(tmp_path: Path) -> None:
    compute = Counter()
    assert cache.cached_result(tmp_path, KEY, compute) == RESULT
    assert cache.cached_result(tmp_path, KEY, compute) == RESULT
    assert compute.calls == 1
    head, _, payload = entry(tmp_path).read_bytes().partition(b"\n")
    assert json.loads(head) == {"format": cache.CACHE_FORMAT, "metric_version": METRIC_VERSION,
                                "sha256": hashlib.sha256(payload).hexdigest()}
    assert payload.decode() == RESULT.to_json()  # the result stays readable as it is


def _edit_payload(old: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        head, _, payload = data.partition(b"\n")
        body = json.loads(payload)
        old(body)
        return head + b"\n" + json.dumps(body, indent=1, sort_keys=True).encode()
    return edit


def _envelope(**changes: Any) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        head, _, payload = data.partition(b"\n")
        return json.dumps({**json.loads(head), **changes}).encode() + b"\n" + payload
    return edit


def _rechecksummed(data: bytes) -> bytes:
    """A payload that no longer builds a result, with a matching checksum (a schema change, no version bump)."""
    payload = json.dumps({"verdict": {}, "masking": {}, "renamed_section": {}}).encode()
    return _envelope(sha256=hashlib.sha256(payload).hexdigest())(data.partition(b"\n")[0] + b"\n" + payload)


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "random bytes": (lambda data: os.urandom(512) + b"\xff\xfe", "no envelope line"),
    "empty file": (lambda data: b"", "no envelope line"),
    "format 1 (bare result JSON)": (lambda data: data.partition(b"\n")[2], "no envelope line|cache format"),
    "hand-edited verdict": (_edit_payload(lambda b: b["verdict"].update(verdict="transfers")), "checksum mismatch"),
    "removed section": (_edit_payload(lambda b: b.pop("masking")), "checksum mismatch"),
    "truncated result": (lambda data: data[:-20], "checksum mismatch"),
    "truncated envelope": (lambda data: data[:30], "no envelope line"),
    "older metric version": (_envelope(metric_version=METRIC_VERSION - 1), "metric version"),
    "newer cache format": (_envelope(format=cache.CACHE_FORMAT + 1), "cache format"),
    "does not build a result": (_rechecksummed, "does not build a PairResult"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_bad_entry_is_recomputed_with_a_warning_naming_the_file(tmp_path: Path, corrupt: str) -> None:
    edit, reason = CORRUPTIONS[corrupt]
    compute = Counter()
    cache.cached_result(tmp_path, KEY, compute)
    entry(tmp_path).write_bytes(edit(entry(tmp_path).read_bytes()))
    with pytest.warns(cache.CacheEntryWarning, match=rf"cache entry {entry(tmp_path)} rejected.*({reason})"):
        assert cache.cached_result(tmp_path, KEY, compute) == RESULT
    assert compute.calls == 2
    assert cache.decode_entry(entry(tmp_path).read_bytes()) == RESULT  # replaced by a good entry


def test_every_single_byte_change_of_the_result_is_caught() -> None:
    data = cache.encode_entry(RESULT)
    start = data.index(b"\n") + 1
    for offset in range(start, len(data), 7):
        flipped = data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]
        with pytest.raises(cache.CacheEntryError):
            cache.decode_entry(flipped)


def test_refresh_recomputes_a_good_entry(tmp_path: Path) -> None:
    compute = Counter()
    cache.cached_result(tmp_path, KEY, compute)
    cache.cached_result(tmp_path, KEY, compute, refresh=True)
    assert compute.calls == 2


def test_a_temp_file_is_never_read_and_stale_ones_are_removed(tmp_path: Path) -> None:
    """What a writer killed between write and rename leaves: a complete-looking temp file, no entry."""
    stale = tmp_path / f".{KEY}.json.k1ll3d.tmp"
    stale.write_bytes(cache.encode_entry(replace(RESULT, provenance=replace(RESULT.provenance, pair_id="temp__file"))))
    old = time.time() - 2 * cache.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    live = tmp_path / ".other.json.wr1t1ng.tmp"  # another process writing right now
    live.write_bytes(b"{")
    compute = Counter()
    assert cache.cached_result(tmp_path, KEY, compute) == RESULT
    assert compute.calls == 1
    assert not stale.exists() and live.exists()


def test_lock_files_stay_bounded(tmp_path: Path) -> None:
    """One lock file per key stripe, never one per key; old per-key locks are swept once stale."""
    legacy = tmp_path / f"{KEY}.json.lock"
    legacy.touch()
    old = time.time() - 2 * cache.STALE_TMP_SECONDS
    os.utime(legacy, (old, old))
    keys = [f"{i:02x}{'0' * 30}" for i in range(40)] + [f"00{i:030x}" for i in range(40)]
    for key in keys:
        cache.cached_result(tmp_path, key, Counter())
    locks = sorted(p.name for p in tmp_path.iterdir() if "lock" in p.name)
    assert locks == sorted({f".lock-{key[:2]}" for key in keys})
    assert len(locks) == 40 <= cache.LOCK_STRIPES


def test_under_pytest_a_rejected_entry_is_reported_not_fatal(tmp_path: Path) -> None:
    """pytest.ini turns warnings into errors; its filter for CacheEntryWarning keeps recomputation working."""
    compute = Counter()
    cache.cached_result(tmp_path, KEY, compute)
    entry(tmp_path).write_bytes(b"\x00garbage")
    assert cache.cached_result(tmp_path, KEY, compute) == RESULT  # raises if the warning were an error
    assert compute.calls == 2


def test_a_group_member_reads_only_its_own_entry_and_a_damaged_sibling_is_recomputed_when_wanted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {"a": KEY, "b": "f" * 32}
    calls: list[list[str]] = []

    def compute(names: list[str]) -> dict[str, PairResult]:
        calls.append(names)
        return dict.fromkeys(names, RESULT)

    assert cache.cached_results(tmp_path, keys, compute, wanted=["a"]) == {"a": RESULT}
    assert calls == [["a", "b"]]  # one pass computes the group, each entry stored
    decoded: list[bytes] = []
    real = cache.decode_entry
    monkeypatch.setattr(cache, "decode_entry", lambda data: decoded.append(data) or real(data))
    (tmp_path / f"{keys['b']}.json").write_bytes(b"damaged")
    assert cache.cached_results(tmp_path, keys, compute, wanted=["a"]) == {"a": RESULT}
    assert len(decoded) == 1 and calls == [["a", "b"]]  # b is present, so neither read nor recomputed
    with pytest.warns(cache.CacheEntryWarning, match="rejected"):
        assert cache.cached_results(tmp_path, keys, compute, wanted=["b"]) == {"b": RESULT}
    assert calls == [["a", "b"], ["b"]]
