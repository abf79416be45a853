"""Headless Chromium for checking a report the way a person opens it (test_report_browser.py, and the
README screenshot, docs/report.png, is that test's ``report.png``).

Test tooling, not part of the package: ``datajuicer-ray inspect`` only writes HTML and never starts a
browser, so an installed package has no use for this. Only the command line is used (``--dump-dom``,
``--screenshot``): no driver, no extra package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html import unescape
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Quiet, offline, root-safe: a report must render with no network at all.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
]


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="dj-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def self_test(html_path: str | Path, browser: str, timeout: float = 120) -> dict:
    """Open ``report.html#selftest`` and return what the page's own check found (see report/assets.py)."""
    url = Path(html_path).resolve().as_uri() + "#selftest"
    proc = _run(browser, ["--virtual-time-budget=20000", "--dump-dom", url], timeout)
    match = re.search(r'<pre id="selftest-result">(.*?)</pre>', proc.stdout, re.S)
    if not match or not match.group(1).strip():
        raise RuntimeError(f"no self-test result in the page (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(unescape(match.group(1)))


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    browser: str,
    width: int = 1400,
    height: int = 2000,
    timeout: float = 120,
) -> Path:
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    url = Path(html_path).resolve().as_uri()
    args = [f"--window-size={width},{height}", "--virtual-time-budget=10000", f"--screenshot={png}", url]
    proc = _run(browser, args, timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return png
