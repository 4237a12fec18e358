"""The process environment helper: offline by default, --hub lifts it, a user's setting wins, torch's large CPU
buffers are advised huge pages, and it is light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saetransfer.offline import ALWAYS, HUB_OFFLINE, HUGE_PAGES, set_offline_environment
from saetransfer.paths import REPO_ROOT


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in (*HUB_OFFLINE, *ALWAYS):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_offline_by_default(clean_env: pytest.MonkeyPatch) -> None:
    import os

    set_offline_environment()
    assert all(os.environ[v] == "1" for v in HUB_OFFLINE)
    assert os.environ["WANDB_MODE"] == "disabled" and os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert all(os.environ[v] == value for v, value in HUGE_PAGES.items())


def test_hub_allowed_leaves_hub_variables_unset(clean_env: pytest.MonkeyPatch) -> None:
    import os

    set_offline_environment(allow_hub=True)
    assert not any(v in os.environ for v in HUB_OFFLINE)
    assert os.environ["WANDB_MODE"] == "disabled"


def test_a_users_setting_wins(clean_env: pytest.MonkeyPatch) -> None:
    import os

    clean_env.setenv("HF_HUB_OFFLINE", "0")
    clean_env.setenv("WANDB_MODE", "offline")
    set_offline_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["WANDB_MODE"] == "offline"


def test_importing_it_loads_no_hub_library_or_torch() -> None:
    """The root conftest imports it before anything else; a heavy import would defeat the offline switch."""
    code = ("import sys, saetransfer.offline; "
            "heavy = {'torch', 'huggingface_hub', 'transformers', 'datasets', 'sae_lens'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


@pytest.mark.parametrize("hub", [True, False], ids=["hub", "offline"])
def test_xdist_workers_follow_the_controllers_hub_option(tmp_path, hub: bool) -> None:
    """A worker's sys.argv is not the user's: `pytest -n 2 --hub` once ran its workers offline."""
    import os

    (tmp_path / "test_probe.py").write_text(
        "import os\n"
        f"def test_probe():\n    assert os.environ.get('HF_HUB_OFFLINE') == {None if hub else '1'!r}\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in HUB_OFFLINE and not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    args = ["-n", "1", "-p", "conftest", "-p", "no:cacheprovider", "-q", "test_probe.py", *(["--hub"] if hub else [])]
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


_ADVISED = """
import re, saetransfer.offline as o
o.set_offline_environment()
import torch
live = [torch.empty(2**20) for _ in range(8)]  # 4 MiB each
maps = re.findall(r"^([0-9a-f]+)-([0-9a-f]+) .*?^VmFlags:(.*?)$", open("/proc/self/smaps").read(), re.M | re.S)
def advised(ptr):
    return any(int(lo, 16) <= ptr < int(hi, 16) and "hg" in flags.split() for lo, hi, flags in maps)
print(sum(advised(t.data_ptr()) for t in live))
"""


@pytest.mark.skipif(not HUGE_PAGES, reason="torch's huge-page switch is Linux-only, and so is the setting")
@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists(),
                    reason="this kernel has no transparent huge pages: madvise refuses the advice (torch warns once)")
@pytest.mark.parametrize("users", [None, "0"], ids=["default", "user-off"])
def test_torchs_large_cpu_buffers_are_advised_huge_pages_unless_the_user_says_no(users: str | None) -> None:
    """torch reads THP_MEM_ALLOC_ENABLE once, at its first large allocation: set by the entry points, each buffer of
    4 MiB lies in a mapping advised MADV_HUGEPAGE (`hg` in its smaps VmFlags; whether the kernel then backs it with
    huge pages is its policy's call). A user's 0 wins."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if users is not None:
        env["THP_MEM_ALLOC_ENABLE"] = users
    proc = subprocess.run([sys.executable, "-c", _ADVISED], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          check=True)
    assert int(proc.stdout.strip()) == (8 if users is None else 0), proc.stdout
