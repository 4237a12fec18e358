"""The report's HTML page in a real browser: at 1400 px nothing is wider than the window (the headline and the
across-axes tables included: the page has a pair with nine evaluations side by side).

Needs headless Chromium (`apt-get install chromium`); skipped with the reason otherwise. The
browser-free structure of the same page is checked in test_report.py (runs everywhere).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from saetransfer.report import render_report
from test_report import fill_axes

WINDOW = (1400, 900)
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed (apt-get install chromium)")
# The report has no scripts (self-contained, nothing runs); the probe is added to a copy only.
_PROBE = ("<script>document.body.setAttribute('data-widths', "
          "document.documentElement.scrollWidth + ' ' + window.innerWidth)</script></body>")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    return render_report(fill_axes(root / "records"), root / "out").html


def test_page_is_not_wider_than_a_1400px_window(page: Path) -> None:
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE), encoding="utf-8")
    dom = _chromium("--dump-dom", probed.as_uri()).stdout
    match = re.search(r'data-widths="(\d+) (\d+)"', dom)
    assert match, "the probe did not run"
    scroll_width, inner_width = map(int, match.groups())
    assert inner_width == WINDOW[0]
    assert scroll_width <= inner_width, f"the page scrolls sideways: {scroll_width} px in a {inner_width} px window"


def test_screenshot_at_1400px(page: Path) -> None:
    """Written beside the page for a person to look at (the first screen: the headline table)."""
    shot = page.with_name("report-1400.png")
    _chromium(f"--screenshot={shot}", page.as_uri())
    assert shot.read_bytes().startswith(b"\x89PNG")
