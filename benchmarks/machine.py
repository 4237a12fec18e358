"""The machine a benchmark ran on, and the code it ran, as every results JSON records them (a library for the
scripts, not a script).

Timings here move with the host, not only with the load: the same 2-core machine kind has run on CPU hosts
whose timings differed by 2.7x, and torch dispatches other vector kernels by the CPU's capability (AVX2,
AVX512), which also moves the last digits of the metrics. So the CPU and torch's kernel level are recorded
beside the core count. The commit matters as much: an entry measured on an earlier engine is not evidence about
today's, and a file keeps entries from several sessions.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if v}


ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def _copied_tree() -> dict[str, Any]:
    """A tree without its own .git (a lent GPU machine gets the files only): the commit its sender names, if any."""
    given = os.environ.get("SAETRANSFER_CODE_COMMIT")
    return {"commit": given, "modified": None, **({"commit_source": "SAETRANSFER_CODE_COMMIT"} if given else {})}


def code_state() -> dict[str, Any]:
    """The commit checked out, and the files of the package and the benchmarks that differ from it (results
    files aside); outside a git checkout of its own (a copied tree, as on a lent GPU machine) the commit is
    $SAETRANSFER_CODE_COMMIT where the sender set it, else None, and `modified` is None."""
    try:
        if Path(_git("rev-parse", "--show-toplevel").strip()).resolve() != ROOT:  # a tree copied into another repo
            return _copied_tree()
        commit = _git("rev-parse", "HEAD").strip()
        status = _git("status", "--porcelain", "--", "saetransfer", "benchmarks", ":(exclude)benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return _copied_tree()
    return {"commit": commit, "modified": sorted(line[3:] for line in status.splitlines())}


def describe() -> dict[str, Any]:
    import torch

    info = _cpuinfo()
    cpu = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return {"cpus": os.cpu_count(), "cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(), "code": code_state()}
