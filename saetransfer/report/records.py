"""The records a pytest run leaves on disk: one evaluated pair per `*.json`, skips under `skipped/`.

Written by the findings (`write_record`, `write_skip`, `merge_outcomes`); read by the renderer.
`<dir>/<test_id>.json` holds the pair's PairResult (in the stable form of `stable.committed_form`) plus
`expected`, `outcomes` (finding name -> outcome and reason), `claims` (one {"claim", "section",
"holds", "message"} per claim of `saetransfer.claims`, `merge_claims`) and `evaluation` (which of its
registry entry's evaluations it is: `evaluation_of`). `<dir>/skipped/<test_id>.json` says why a pair
could not run here. A skip never hides a real record from an earlier run (a GPU run's
record stays when a CPU run skips the pair).

The report is rendered from every record present, so a `-k` run adds or updates rows and never
shrinks the report. A file that cannot be read becomes a warning line in the report, not a crash.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saetransfer.claims import CLAIMS_BY_ID, ClaimOutcome
from saetransfer.files import write_atomic
from saetransfer.paths import portable_path
from saetransfer.registry import Pair
from saetransfer.report.stable import committed_form
from saetransfer.results import PairResult

SKIPPED_DIR = "skipped"
RUNNER_KEYS = ("expected", "outcomes", "claims", "evaluation")
"""Keys a record adds to the PairResult JSON (written by the findings, not by the engine)."""


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
    claims: tuple[ClaimOutcome, ...] = ()
    """The post's claims evaluated on this pair (`saetransfer.claims`), as the latest run recorded them."""
    primary: bool = True
    """The registry entry's own evaluation (`Pair.primary`: first axis, first dataset, base -> finetune): the
    headline, the claims matrix and the cross-pair figure read only these. A record without the flag
    (written before records said) is primary unless its provenance says reverse or its test id names a
    later dataset; another axis cannot be told from the record alone."""
    axis: int = 0
    """`Pair.axis`: which (hook, SAE) entry of the registry entry (orders the across-axes rows)."""
    dataset_index: int = 0
    """`Pair.dataset_index`: which of the entry's datasets, in registry order."""
    sae_name: str | None = None
    """The evaluated SAE's registry slug (`SaeSource.name`); `sae` is where it was loaded from."""
    direction: str = "forward"
    """`forward`: the base SAE on the finetune; `reverse`: the finetune-native SAE on the base."""
    dataset: str | None = None
    """The evaluation distribution's name (`DatasetSource.key`)."""

    @property
    def verdict(self) -> str | None:
        return None if self.result is None else self.result.verdict.verdict

    @property
    def norm_matched_verdict(self) -> str | None:
        nm = None if self.result is None else self.result.norm_matching
        return None if nm is None else nm.verdict.verdict

    @property
    def expected_verdict(self) -> str | None:
        return None if not self.expected or self.expected.get("verdict") is None else str(self.expected["verdict"])

    @property
    def matches(self) -> bool | None:
        """Verdict equals the expected verdict (the norm-matched one where the source's numbers are
        norm-matched); None when either is absent (nothing to compare)."""
        if self.verdict is None or self.expected_verdict is None:
            return None
        compared = self.norm_matched_verdict if (self.expected or {}).get("norm_matched") else self.verdict
        return compared == self.expected_verdict

    @property
    def layer(self) -> int | None:
        """Block index of the hook (`blocks.6.hook_resid_post` -> 6); None for a hook without one."""
        parts = (self.hook or "").split(".")
        return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None

    @property
    def sae_architecture(self) -> str | None:
        return None if self.result is None else self.result.provenance.sae_architecture

    @property
    def sae_trained_on(self) -> str | None:
        return None if self.result is None else self.result.provenance.sae_trained_on

    @property
    def order(self) -> tuple[bool, int, int, bool, str]:
        """Registry order within the entry: the primary, then by dataset, axis, forward before reverse (so
        the two directions of one SAE sit side by side, as in Kissane et al.'s table)."""
        return (not self.primary, self.dataset_index, self.axis, self.direction != "forward", self.test_id)


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


def _claims(value: Any) -> tuple[ClaimOutcome, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise TypeError("'claims' must be a list of objects")
    return tuple(ClaimOutcome.from_dict(c) for c in value)


def portable(value: Any) -> Any:
    """Every string of a nested value through `paths.portable_path`: the report must not differ by machine."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    return portable_path(value) if isinstance(value, str) else value


def evaluation_of(pair: Pair) -> dict[str, Any]:
    """The record's `evaluation` key: where `pair` sits among its registry entry's evaluations."""
    return {"primary": pair.primary, "axis": pair.axis, "dataset_index": pair.dataset_index,
            "sae_name": pair.sae.name, "direction": pair.direction, "dataset": pair.dataset.key}


def _evaluation(value: Any) -> dict[str, Any]:
    """The `evaluation` key as Entry fields; absent keys keep the Entry defaults (a record before axes)."""
    value = _dict_or_none(value, "'evaluation'") or {}
    kinds = {"primary": bool, "axis": int, "dataset_index": int, "sae_name": str, "direction": str, "dataset": str}
    out: dict[str, Any] = {}
    for key, kind in kinds.items():
        if value.get(key) is None:
            continue
        if not isinstance(value[key], kind) or (kind is int and isinstance(value[key], bool)):
            raise TypeError(f"'evaluation.{key}' must be {kind.__name__}, got {value[key]!r}")
        out[key] = value[key]
    if out.get("direction", "forward") not in ("forward", "reverse"):
        raise TypeError(f"'evaluation.direction' must be forward or reverse, got {out['direction']!r}")
    return out


def _sae_name(test_id: str, pair_id: str, hook: str) -> str | None:
    """The SAE slug inside `Pair.test_id` ('{pair}-{sae}-{hook}[-{dataset}]'), for a record without `evaluation`."""
    head, sep, _ = test_id.removeprefix(f"{pair_id}-").partition(f"-{hook}")
    return head if sep and test_id.startswith(f"{pair_id}-") and head else None


def parse_record(data: Any, stem: str) -> Entry:
    """An evaluated pair: `PairResult.to_json()` plus the runner's keys (`RUNNER_KEYS`).

    `PairResult.from_dict` refuses anything that does not fit the typed result (a missing section, an
    unknown key, a string where a number belongs); the caller turns that into a warning line.
    """
    if not isinstance(data, dict):
        raise TypeError(f"a record must be a JSON object, got {type(data).__name__}")
    fields = {k: v for k, v in data.items() if k not in RUNNER_KEYS}
    result = PairResult.from_dict({**fields, "provenance": portable(fields.get("provenance"))})
    prov = result.provenance
    # the result's own provenance says what was evaluated; the runner's key says where it sits
    evaluation = {**_evaluation(data.get("evaluation")), "direction": prov.direction}
    if prov.dataset_name is not None:
        evaluation["dataset"] = prov.dataset_name
    test_id, pair_id = prov.test_id or stem, prov.pair_id or prov.test_id or stem
    evaluation.setdefault("sae_name", _sae_name(test_id, pair_id, prov.hook))
    if "primary" not in evaluation:  # a record without the key: what its test id and provenance tell
        first_dataset = test_id.endswith(f"-{prov.hook}")  # a later dataset appends `-{name}`
        evaluation.setdefault("dataset_index", 0 if first_dataset else 1)
        evaluation["primary"] = first_dataset and prov.direction == "forward"
    return Entry(test_id=test_id, pair_id=pair_id, result=result,
                 outcomes=_outcomes(data.get("outcomes")), expected=_dict_or_none(data.get("expected"), "'expected'"),
                 sae=prov.sae, hook=prov.hook, claims=_claims(data.get("claims")), **evaluation)


def parse_skip(data: Any, stem: str) -> Entry:
    """A pair that could not run: {"test_id", "pair_id", "reason"} (+ optional "expected", "sae", "hook",
    "evaluation")."""
    if not isinstance(data, dict):
        raise TypeError(f"a skip record must be a JSON object, got {type(data).__name__}")
    test_id = str(data.get("test_id") or stem)
    pair_id = str(data.get("pair_id") or test_id)
    optional = {k: None if data.get(k) is None else str(data[k]) for k in ("sae", "hook")}
    evaluation = _evaluation(data.get("evaluation"))
    if optional["hook"] is not None:
        evaluation.setdefault("sae_name", _sae_name(test_id, pair_id, optional["hook"]))
    return Entry(test_id=test_id, pair_id=pair_id, expected=_dict_or_none(data.get("expected"), "'expected'"),
                 skip_reason=str(data.get("reason") or "no reason given"), **optional, **evaluation)


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


def write_record(directory: Path, pair: Pair, result: PairResult) -> Path:
    """Commit `result` in its stable form (see `stable`); numbers within tolerance keep their committed value."""
    path = directory / f"{pair.test_id}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    data = committed_form(result, {k: v for k, v in old.items() if k not in RUNNER_KEYS})
    data["expected"] = asdict(pair.expected) if pair.expected else None
    data["outcomes"] = old.get("outcomes", {})
    data["evaluation"] = evaluation_of(pair)
    if "claims" in old:
        data["claims"] = old["claims"]
    _write(path, data)
    (directory / SKIPPED_DIR / f"{pair.test_id}.json").unlink(missing_ok=True)
    return path


def write_skip(directory: Path, pair: Pair, reason: str) -> None:
    """Why `pair` did not run now; an earlier run's record stays, and the report shows both."""
    _write(directory / SKIPPED_DIR / f"{pair.test_id}.json",
           {"test_id": pair.test_id, "pair_id": pair.id, "reason": reason, "sae": pair.sae.describe(),
            "hook": pair.hook, "evaluation": evaluation_of(pair),
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


def merge_claims(directory: Path, claims: dict[str, list[ClaimOutcome]]) -> None:
    """Add {test_id: [ClaimOutcome]} into the records' `claims` lists, replacing outcomes of the same claim.

    Run on the controller only. A record rewritten with a fresh result starts without claims (they were
    decided on the old result), so a claim not run since shows as not run.
    """
    for test_id, outcomes in claims.items():
        path = directory / f"{test_id}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        merged = {c["claim"]: c for c in data.get("claims") or ()}
        merged.update({o.claim: o.to_dict() for o in outcomes})
        # in the claims' own order, not the order the tests happened to finish in (xdist varies it)
        rank = {claim: i for i, claim in enumerate(CLAIMS_BY_ID)}
        data["claims"] = sorted(merged.values(), key=lambda c: (rank.get(c["claim"], len(rank)), c["claim"]))
        _write(path, data)
