"""Report records on disk: one JSON file per evaluated test id, so partial runs merge.

`<dir>/<test_id>.json` holds the pair's PairResult plus `expected` and `outcomes` (finding name ->
outcome and reason); `<dir>/skipped/<test_id>.json` says why a pair could not run here. A skip never
hides a real record from an earlier run (a GPU run's record stays when a CPU run skips the pair).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from saetransfer.registry import Pair
from saetransfer.results import PairResult


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def write_record(directory: Path, pair: Pair, result: PairResult) -> Path:
    path = directory / f"{pair.test_id}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    data = json.loads(result.to_json())
    data["expected"] = asdict(pair.expected) if pair.expected else None
    data["outcomes"] = old.get("outcomes", {})
    _write(path, data)
    (directory / "skipped" / f"{pair.test_id}.json").unlink(missing_ok=True)
    return path


def write_skip(directory: Path, pair: Pair, reason: str) -> None:
    if (directory / f"{pair.test_id}.json").exists():
        return
    _write(directory / "skipped" / f"{pair.test_id}.json",
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
