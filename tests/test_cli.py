"""The command line and the pytest options, as a user meets them (subprocesses, no model runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from saetransfer.paths import REPO_ROOT, REPORTS


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_gpu_without_cuda_is_a_usage_error_not_a_silent_skip():
    import torch

    if torch.cuda.is_available():
        return  # on a CUDA machine --gpu is valid; nothing to check here
    proc = run("-m", "pytest", "--gpu", "tests/test_registry.py", "-q", "-p", "no:cacheprovider")
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage-error exit code
    assert "--gpu was given but torch.cuda.is_available() is False" in proc.stderr


def test_pairs_lists_the_registry_with_where_each_runs():
    proc = run("-m", "saetransfer", "pairs")
    assert proc.returncode == 0, proc.stderr
    assert "tiny-gpt2__code-tiny-res-relu-blocks.2.hook_resid_pre" in proc.stdout
    gemma = next(line for line in proc.stdout.splitlines() if line.startswith("gemma-2b__python-codes"))
    assert " gpu " in gemma and "expected: fails" in gemma


def test_run_names_an_unknown_pair_and_suggests_one():
    proc = run("-m", "saetransfer", "run", "tiny-gpt2__cod")
    assert proc.returncode != 0
    assert "unknown pair id 'tiny-gpt2__cod'" in proc.stderr and "tiny-gpt2__code" in proc.stderr


def test_report_rerenders_from_records_without_recomputing(tmp_path: Path):
    shutil.copytree(REPORTS / "records", tmp_path / "records")
    proc = run("-m", "saetransfer", "report", env={"SAETRANSFER_REPORTS": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "tiny-gpt2__code" in proc.stdout and "fails" in proc.stdout
    assert (tmp_path / "README.md").read_text() == (REPORTS / "README.md").read_text()


def test_zoo_verify_checks_the_committed_hashes():
    proc = run("-m", "saetransfer", "zoo", "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_evidence_runs_in_workers_unless_the_user_chooses():
    from saetransfer.__main__ import EVIDENCE_WORKERS, evidence_args

    assert evidence_args([], cores=2) == ["-v", "-n", "2"]
    assert evidence_args(["--hub", "-q"], cores=3) == ["-v", "-n", "2", "--hub", "-q"]
    assert evidence_args([], cores=1) == ["-v"]
    assert evidence_args([], cores=64) == ["-v", "-n", str(EVIDENCE_WORKERS)]
    for chosen in (["-n", "4"], ["-n4"], ["--numprocesses=3"], ["-p", "no:xdist"], ["--pdb"], ["--gpu"],
                   ["--dist", "no"], ["-k", "code"], ["-kcode"], ["-m", "not slow"]):
        assert evidence_args(chosen, cores=8) == ["-v", *chosen]
