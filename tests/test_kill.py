"""Kill anywhere, lose nothing: `python -m saetransfer run` SIGKILLed at several points, then run again.

The killed runs share a private result cache; an uninterrupted run with a cache of its own, started
alongside, is the reference. The rerun must print byte for byte what the reference printed, must
compute (nothing a killed run left was served) and must reject no entry (nothing partial was read).
The write is interrupted for certain, not by timing: the child replaces `saetransfer.files`' view of
`os` so that the temp file receives half the entry and the process then SIGKILLs itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saetransfer.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # four model runs of a tiny pair: ~30 s on 2 cores

PAIR = "tiny-gpt2__math"
RUN = ["run", PAIR, "--tokens", "2048"]  # one batch of the pair (16 rows x 128)
KILL_DURING_WRITE = """
import os, signal, sys, types
import saetransfer.files as files

class HalfThenKill:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.handle.close()
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

view = types.ModuleType("os")
view.__dict__.update(os.__dict__)
view.fdopen = lambda fd, mode="r", *a, **k: HalfThenKill(os.fdopen(fd, mode, *a, **k))
files.os = view
from saetransfer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def start(cache: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAETRANSFER_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err.decode(errors="replace")


def test_killed_runs_lose_nothing_and_leave_nothing_that_is_read(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results = cache / "results"
    reference = start(tmp_path / "reference-cache", "-m", "saetransfer", *RUN)

    for delay in (0.5, 2.0):  # while importing and loading: before anything is written
        proc = start(cache, "-m", "saetransfer", *RUN)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert finish(proc)[0] == -signal.SIGKILL
        assert not list(results.glob("*.json"))

    code, out, err = finish(start(cache, "-c", KILL_DURING_WRITE, *RUN))
    assert code == -signal.SIGKILL and out == b"", err
    [partial] = results.glob(".*.tmp")  # what the killed writer left: half an entry under a temp name
    assert not list(results.glob("*.json"))
    stale = time.time() - 120  # as if the kill had been minutes ago
    os.utime(partial, (stale, stale))

    code, out, err = finish(start(cache, "-m", "saetransfer", *RUN))
    ref_code, ref_out, ref_err = finish(reference)
    assert code == 0 and ref_code == 0, err + ref_err
    assert out == ref_out  # byte-identical to the uninterrupted run
    assert f"{PAIR} [prose]:" in err  # it computed (its progress bar), as nothing complete had been left
    assert "rejected" not in err  # and read no partial entry
    assert not partial.exists()  # the killed writer's temp file is gone
    # one entry per evaluation of the pair's pass on its first dataset (`registry.group_of`)
    from saetransfer.registry import get_pair, group_of, load_registry

    assert len(list(results.glob("*.json"))) == len(group_of(get_pair(load_registry(), PAIR)))

    code, again, err = finish(start(cache, "-m", "saetransfer", *RUN))
    assert code == 0 and again == ref_out and f"{PAIR}:" not in err  # served from the cache, unchanged
