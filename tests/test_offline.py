"""The offline environment helper: offline by default, --hub lifts it, a user's setting wins, and it is light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from saetransfer.offline import ALWAYS, HUB_OFFLINE, set_offline_environment
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
