"""Headless chromium for the site: render a page and read back its DOM, or save a screenshot.

No driver or browser library: chromium's own `--dump-dom` (the DOM after layout and scripts) and
`--screenshot` switches. The flags keep it offline and stateless (a fresh profile each run).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 1000)  # wide enough for the two columns (the page stacks them below 900 px)


class BrowserError(RuntimeError):
    """chromium is missing, failed, or produced nothing."""


def find_chromium() -> str | None:
    """Path of a chromium/chrome executable on PATH, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float, window: tuple[int, int] = WINDOW) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise BrowserError(f"no chromium found on PATH (looked for {', '.join(CANDIDATES)}); "
                           "on Debian: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="twinformer-chromium-") as profile:
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise BrowserError(f"chromium exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return result


def dump_dom(page: str | Path, timeout: float = 60.0) -> str:
    """The page's DOM as serialised HTML after chromium has loaded it and run its scripts."""
    result = _run(["--virtual-time-budget=5000", "--dump-dom", Path(page).resolve().as_uri()], timeout)
    if "<html" not in result.stdout:
        raise BrowserError(f"chromium returned no DOM for {page}:\n{result.stderr[-2000:]}")
    return result.stdout


def screenshot(page: str | Path, png: str | Path, size: tuple[int, int] = (1400, 480), timeout: float = 60.0) -> Path:
    """Save the top `size` (width, height) pixels of the rendered page as a PNG."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    _run(["--virtual-time-budget=5000", f"--screenshot={png}", Path(page).resolve().as_uri()], timeout, window=size)
    if not png.is_file() or png.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot to {png}")
    return png
