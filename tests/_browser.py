"""The browser tests' Chromium: experiments/_chromium.py's, failing (not skipping) with the
install command when Debian's chromium or chromium-driver is missing."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_fnn_experiments_chromium",
    Path(__file__).resolve().parent.parent / "experiments" / "_chromium.py")
_chromium = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_chromium)
wait_for = _chromium.wait_for


@contextlib.contextmanager
def chromium() -> Iterator:
    """Debian's headless Chromium under Selenium (see experiments/_chromium.py)."""
    problem = _chromium.missing()
    if problem:
        pytest.fail(problem)
    with _chromium.chromium() as driver:
        yield driver


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


@contextlib.contextmanager
def background(server):
    """Run a ``socketserver`` server (the Playground's, a static site's) in a daemon thread;
    shut it down and close its socket on exit."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
