"""A result answered from the cache, and the report, never import the model libraries (seconds each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saetransfer.config import RunConfig
from saetransfer.engine import run
from saetransfer.registry import get_pair, load_registry

MODEL_LIBRARIES = ("transformer_lens", "sae_lens", "transformers")
PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("saetransfer", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("IMPORTED", [m for m in {libs!r} if m in sys.modules])
"""


def _imported(argv: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, libs=MODEL_LIBRARIES)], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return out.rsplit("IMPORTED", 1)[1].strip()


@pytest.mark.slow
def test_a_cached_run_imports_no_model_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAETRANSFER_CACHE", str(tmp_path / "cache"))
    pair = get_pair(load_registry(), "tiny-gpt2__self")
    run(pair, RunConfig.for_pair(pair, tokens=2048, progress=False))  # fills the cache
    env = {**os.environ, "SAETRANSFER_CACHE": str(tmp_path / "cache")}
    assert _imported(["saetransfer", "run", "tiny-gpt2__self", "--tokens", "2048"], env) == "[]"


def test_the_report_modules_import_no_model_library() -> None:
    probe = f"import sys, saetransfer.report.render; print([m for m in {MODEL_LIBRARIES!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
