"""`pytest -n N --dist loadgroup` keeps each `xdist_group` on one worker (the findings rely on it: one group is
one streaming pass). pytest 9.2 broke this silently (pytest-xdist#1386: the tests are spread round-robin), so
this runs xdist itself on a throwaway suite and reads which worker ran what."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SUITE = '''
import pytest

@pytest.mark.parametrize("case", [pytest.param(f"{g}-{i}", marks=pytest.mark.xdist_group(f"g{g}"))
                                  for g in range(3) for i in range(4)])
def test_case(case):
    pass
'''


def test_loadgroup_keeps_each_group_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # this rootdir, not the project's conftest and options
    (tmp_path / "test_groups.py").write_text(SUITE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p",
                           "no:cacheprovider", "test_groups.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, case in re.findall(r"\[(gw\d+)\].*PASSED test_groups\.py::test_case\[(\d+)-\d+\]", proc.stdout):
        workers[case].add(worker)
    assert sorted(workers) == ["0", "1", "2"], proc.stdout[-2000:]
    assert all(len(w) == 1 for w in workers.values()), f"groups split across workers: {dict(workers)}"
