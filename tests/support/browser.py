"""A headless Chromium driven by selenium, offline, for the report page tests and its screenshot script.

Needs the Debian packages chromium and chromium-driver (or a chromedriver and a Chrome/Chromium on PATH)
and the selenium package; `browser_missing()` says what is absent. The driver binary is named explicitly,
so selenium never tries to download one.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No network (the page must need none), no first-run or background traffic, no GPU.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
)


def _binaries() -> tuple[str | None, str | None]:
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    return browser, shutil.which("chromedriver")


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    browser, driver = _binaries()
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    if browser is None or driver is None:
        return "no Chromium and chromedriver (apt-get install -y chromium chromium-driver)"
    return None


def chrome(profile: Path, width: int = 1280, height: int = 1600):
    """A headless Chromium with a fresh profile in `profile`, its console kept (goog:loggingPrefs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
