"""The documentation: every ``>>>`` example in docs/*.md runs, and the site builds strictly."""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PAGES_WITH_EXAMPLES = [p for p in PAGES if ">>>" in p.read_text()]


def test_the_docs_have_examples():
    assert {p.name for p in PAGES_WITH_EXAMPLES} >= {"index.md", "math.md"}


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.name)
def test_doc_examples_run(page):
    """Each page's ``>>>`` blocks, run in order as one doctest session."""
    result = doctest.testfile(str(page), module_relative=False, globs={}, report=True,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page}"


def test_gallery_images_exist():
    """Every figure the experiments page shows is in docs/figures (even without mkdocs)."""
    text = (DOCS / "experiments.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 11
    for image in images:
        assert (DOCS / image).is_file(), image
    for script in ("worked_example_5743", "softmax_logistic", "gradient_descent_quadratic",
                   "activations", "vanishing_gradients", "zero_init"):
        assert f"python experiments/{script}.py" in text, script


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None
    or importlib.util.find_spec("material") is None,
    reason="mkdocs, mkdocs-material or mkdocstrings[python] is not installed (docs extra)",
)
def test_docs_build_strictly(tmp_path):
    """``mkdocs build --strict``: any warning (broken link, bad docstring) fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for module in ("network", "backpropagation", "losses", "activations", "data", "checkpoint",
                   "curvature"):
        assert f'id="fnn.{module}"' in api, module
    assert 'class="arithmatex"' in (tmp_path / "site" / "math" / "index.html").read_text()
