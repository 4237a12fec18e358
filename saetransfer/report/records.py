"""The records a pytest run leaves on disk: one evaluated pair per `*.json`, skips under `skipped/`.

Written by the findings (`write_record`, `write_skip`, `merge_outcomes`); read by the renderer.
`<dir>/<test_id>.json` holds the pair's PairResult plus `expected` and `outcomes` (finding name ->
outcome and reason); `<dir>/skipped/<test_id>.json` says why a pair could not run here. A skip never
hides a real record from an earlier run (a GPU run's record stays when a CPU run skips the pair).

The report is rendered from every record present, so a `-k` run adds or updates rows and never
shrinks the report. A file that cannot be read becomes a warning line in the report, not a crash.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saetransfer.files import write_atomic
from saetransfer.paths import portable_path
from saetransfer.registry import Pair
from saetransfer.results import PairResult

SKIPPED_DIR = "skipped"
_RESULT_FIELDS = frozenset(f.name for f in dataclasses.fields(PairResult))
_REQUIRED_DICTS = ("provenance", "tokenizer", "compatibility", "verdict")
_OPTIONAL_DICTS = ("masking", "similarity", "density", "features", "worst_tokens")


@dataclass(frozen=True)
class Entry:
    """One row of the report: an evaluated pair (with `result`) or one that could not run."""

    test_id: str
    pair_id: str
    result: PairResult | None = None
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    """finding name -> {"outcome": passed|failed|skipped, "reason": str}."""
    expected: dict[str, Any] | None = None
    """{"verdict", "source", "extrapolated"} from the registry, or None."""
    skip_reason: str | None = None
    """Why the latest run did not evaluate it; with a `result` too, the result is from an earlier run."""
    sae: str | None = None
    hook: str | None = None

    @property
    def verdict(self) -> str | None:
        return None if self.result is None else _str_or_none(self.result.verdict.get("verdict"))

    @property
    def expected_verdict(self) -> str | None:
        return None if not self.expected else _str_or_none(self.expected.get("verdict"))

    @property
    def matches(self) -> bool | None:
        """Verdict equals the expected verdict; None when either is absent (nothing to compare)."""
        if self.verdict is None or self.expected_verdict is None:
            return None
        return self.verdict == self.expected_verdict


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict_or_none(value: Any, what: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{what} must be an object or null, got {type(value).__name__}")
    return value


def _outcomes(value: Any) -> dict[str, dict[str, str]]:
    value = _dict_or_none(value, "'outcomes'") or {}
    # a bare string ("passed") is accepted as the outcome with no reason
    return {str(k): ({"outcome": str(v), "reason": ""} if not isinstance(v, dict) else
                     {"outcome": str(v.get("outcome", "")), "reason": str(v.get("reason") or "")})
            for k, v in value.items()}


def portable(value: Any) -> Any:
    """Every string of a nested value through `paths.portable_path`: the report must not differ by machine."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    return portable_path(value) if isinstance(value, str) else value


def parse_record(data: Any, stem: str) -> Entry:
    """An evaluated pair from `PairResult.to_json()` plus the optional 'outcomes' and 'expected' keys."""
    if not isinstance(data, dict):
        raise TypeError(f"a record must be a JSON object, got {type(data).__name__}")
    for key in _REQUIRED_DICTS:
        if not isinstance(data.get(key), dict):
            raise TypeError(f"missing or malformed section {key!r}")
    for key in _OPTIONAL_DICTS:
        _dict_or_none(data.get(key), repr(key))
    sae = data.get("sae") or {}
    if not isinstance(sae, dict) or not all(isinstance(v, dict) for v in sae.values()):
        raise TypeError("'sae' must map SAE names to metric objects")
    # unknown top-level keys (added by later runners) are ignored rather than breaking PairResult(**...)
    fields = {k: v for k, v in data.items() if k in _RESULT_FIELDS}
    result = PairResult.from_dict({**fields, "sae": sae, "provenance": portable(data["provenance"])})
    prov = result.provenance
    test_id = str(prov.get("test_id") or stem)
    return Entry(test_id=test_id, pair_id=str(prov.get("pair_id") or test_id), result=result,
                 outcomes=_outcomes(data.get("outcomes")), expected=_dict_or_none(data.get("expected"), "'expected'"),
                 sae=_str_or_none(prov.get("sae")), hook=_str_or_none(prov.get("hook")))


def parse_skip(data: Any, stem: str) -> Entry:
    """A pair that could not run: {"test_id", "pair_id", "reason"} (+ optional "expected", "sae", "hook")."""
    if not isinstance(data, dict):
        raise TypeError(f"a skip record must be a JSON object, got {type(data).__name__}")
    test_id = str(data.get("test_id") or stem)
    return Entry(test_id=test_id, pair_id=str(data.get("pair_id") or test_id),
                 expected=_dict_or_none(data.get("expected"), "'expected'"),
                 skip_reason=str(data.get("reason") or "no reason given"),
                 sae=_str_or_none(data.get("sae")), hook=_str_or_none(data.get("hook")))


def _read_all(folder: Path, parse: Any, label: str, warnings: list[str]) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for path in sorted(folder.glob("*.json")):
        name = f"{label}/{path.name}"  # relative: an absolute path would churn the committed report
        try:
            entry = parse(json.loads(path.read_text(encoding="utf-8")), path.stem)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            warnings.append(f"ignored {name}: {type(exc).__name__}: {exc}")
            continue
        if entry.test_id in entries:
            warnings.append(f"ignored {name}: test id {entry.test_id!r} already read from another file")
            continue
        entries[entry.test_id] = entry
    return entries


def load_entries(records_dir: Path) -> tuple[list[Entry], list[str]]:
    """All entries sorted by test id, and warnings about files that were ignored.

    A pair with both a record and a skip note keeps its record (the evidence of an earlier run, e.g.
    on a GPU box) and shows the skip reason beside it.
    """
    warnings: list[str] = []
    label = records_dir.name
    results = _read_all(records_dir, parse_record, label, warnings) if records_dir.is_dir() else {}
    skips = _read_all(records_dir / SKIPPED_DIR, parse_skip, f"{label}/{SKIPPED_DIR}", warnings)
    merged = dict(skips)
    for test_id, entry in results.items():
        skip = skips.get(test_id)
        merged[test_id] = entry if skip is None else dataclasses.replace(
            entry, skip_reason=skip.skip_reason, expected=entry.expected or skip.expected)
    return [merged[k] for k in sorted(merged)], warnings


# ---------------------------------------------------------------------------------------------
# writing (the findings' side)


def _write(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


RECORD_DIGITS = 7
"""Significant digits kept in records: the last digits of a float sum depend on the thread count, and
a committed report must not churn on them (the result cache keeps full precision)."""


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{RECORD_DIGITS}g}") if value == value and abs(value) != float("inf") else value
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def write_record(directory: Path, pair: Pair, result: PairResult) -> Path:
    path = directory / f"{pair.test_id}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    data = _rounded(json.loads(result.to_json()))
    data["expected"] = asdict(pair.expected) if pair.expected else None
    data["outcomes"] = old.get("outcomes", {})
    _write(path, data)
    (directory / SKIPPED_DIR / f"{pair.test_id}.json").unlink(missing_ok=True)
    return path


def write_skip(directory: Path, pair: Pair, reason: str) -> None:
    """Why `pair` did not run now; an earlier run's record stays, and the report shows both."""
    _write(directory / SKIPPED_DIR / f"{pair.test_id}.json",
           {"test_id": pair.test_id, "pair_id": pair.id, "reason": reason,
            "expected": asdict(pair.expected) if pair.expected else None})


def merge_outcomes(directory: Path, outcomes: dict[str, dict[str, dict[str, str]]]) -> None:
    """Add {test_id: {finding: {outcome, reason}}} into the existing records (run on the controller only)."""
    for test_id, by_finding in outcomes.items():
        path = directory / f"{test_id}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        data["outcomes"] = {**data.get("outcomes", {}), **by_finding}
        _write(path, data)
