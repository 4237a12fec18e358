"""portable_path: the one rule that keeps machine-specific prefixes out of records and reports."""

from __future__ import annotations

from pathlib import Path

from saetransfer.paths import REPO_ROOT, ZOO, portable_path


def test_inside_the_checkout_is_repo_relative() -> None:
    assert portable_path(ZOO / "models" / "base") == "fixtures/zoo/models/base"
    assert portable_path(f"{ZOO}/models/base + 0.5 x (...)") == "fixtures/zoo/models/base + 0.5 x (...)"


def test_home_becomes_tilde_and_anything_else_is_unchanged() -> None:
    home = Path.home()
    if not str(REPO_ROOT).startswith(str(home)):
        assert portable_path(home / "ckpt") == "~/ckpt"
    assert portable_path("/elsewhere/ckpt") == "/elsewhere/ckpt"
    assert portable_path("google/gemma-2b") == "google/gemma-2b"
    assert portable_path(f"see {ZOO}") == f"see {ZOO}"  # only a leading path is shortened

