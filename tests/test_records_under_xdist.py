"""Under `pytest -n 2` (the README's test command) every finding's outcome reaches its record. xdist's
loadgroup appends `@<group>` to node ids, which once made the outcome merge skip them silently: the
records kept whatever outcomes they had before, and a clean `git status` looked like a reproduction. One
worker suffices: the suffix comes with xdist, not with the number of workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIR = "tiny-gpt2__retok"  # stops at the tokenizer check: cheap, and its skipped findings carry a reason


@pytest.mark.slow
def test_outcomes_reach_the_records_under_xdist(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "findings", "-n", "1", "-k", PAIR, "-q", "-p",
                           "no:cacheprovider"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "SAETRANSFER_REPORTS": str(tmp_path / "reports"),
                               "SAETRANSFER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = sorted((tmp_path / "reports" / "records").glob(f"{PAIR}-*.json"))
    assert len(records) == 2  # prose and code
    for path in records:
        outcomes = json.loads(path.read_text())["outcomes"]
        assert outcomes["finding1_tokenizers"]["outcome"] == "passed", path.name
        similarity = outcomes["finding2_activation_similarity"]
        assert similarity["outcome"] == "skipped" and "not comparable" in similarity["reason"], path.name
