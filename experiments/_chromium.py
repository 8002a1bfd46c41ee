"""Debian's headless Chromium driven by Selenium: for the Playground's screenshots and frame
rate (experiments/playground_page.py) and the browser tests (tests/_browser.py).

Nothing is downloaded: the browser is ``/usr/bin/chromium`` and the driver
``/usr/bin/chromedriver`` (``apt-get install chromium chromium-driver``), started with every
background network feature off and a fresh, temporary profile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

CHROMIUM = os.environ.get("FNN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FNN_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def missing() -> str | None:
    """What is not installed, as a sentence with the command that installs it; else None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return (f"{path} not found: this needs Debian's {package} "
                    "(apt-get install -y chromium chromium-driver)")
    return None


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A Selenium ``webdriver.Chrome`` on Debian's Chromium with a ``width x height`` window,
    quit (and its profile removed) on exit."""
    problem = missing()
    if problem:
        raise RuntimeError(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fnn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 60.0):
    """Poll ``script`` (JavaScript returning a value) until it is truthy; return the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for: {script}")
        time.sleep(0.1)
