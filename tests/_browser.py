"""Debian's headless Chromium, driven by Selenium, for the tests that need a real browser.

Nothing is downloaded: the browser is ``/usr/bin/chromium`` and the driver
``/usr/bin/chromedriver`` (``apt-get install chromium chromium-driver``; ``.ci/run`` does it),
started with every background network feature off and a fresh profile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("FNN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FNN_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")


@contextlib.contextmanager
def chromium() -> Iterator:
    """A Selenium ``webdriver.Chrome`` on Debian's Chromium, quit (and its profile removed)
    on exit. Fails, with the command that installs it, when the browser is missing."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} not found: the browser tests need Debian's {package} "
                        f"(apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fnn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 60.0, *args):
    """Poll ``script`` (JavaScript returning a value) until it is truthy; return the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {script}")
        time.sleep(0.1)


def external_requests(driver, origin: str) -> list[str]:
    """Every resource the page loaded (or tried to) from anywhere but ``origin``."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat([location.href])")
    return [n for n in names if not (n.startswith(origin) or n.startswith("data:"))]


def failed_requests(driver) -> list[str]:
    """Resources that came back with an HTTP error, from the browser's console log."""
    return [e["message"] for e in driver.get_log("browser")
            if "Failed to load resource" in e["message"]]
