"""Where things live. Paths come from this file's location, never from the current directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures"
DEFAULT_REGISTRY = FIXTURES / "pairs.toml"
ZOO = FIXTURES / "zoo"
REPORTS = Path(os.environ.get("SAETRANSFER_REPORTS", REPO_ROOT / "reports"))
"""The rendered report; `SAETRANSFER_REPORTS` points a scratch run elsewhere."""
RECORDS = REPORTS / "records"


def cache_dir() -> Path:
    """Result cache: `SAETRANSFER_CACHE` if set, else `.cache/saetransfer` in the checkout."""
    return Path(os.environ.get("SAETRANSFER_CACHE", REPO_ROOT / ".cache" / "saetransfer"))


def portable_path(path: str | Path) -> str:
    """Repo-relative inside the checkout, the home folder as '~', else unchanged: so records and
    reports do not differ between machines. Only a leading path is shortened."""
    text = str(path)
    for prefix, short in ((f"{REPO_ROOT}{os.sep}", ""), (f"{Path.home()}{os.sep}", f"~{os.sep}")):
        if text.startswith(prefix) and len(prefix) > 2:
            return short + text[len(prefix):]
    return text
