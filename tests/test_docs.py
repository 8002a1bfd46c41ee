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


@pytest.mark.slow
@pytest.mark.in_process
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


def test_docstrings_use_mkdocstrings_cross_references():
    """The API page renders docstrings with mkdocstrings, which prints Sphinx roles
    (``:func:`x` ``) literally: cross-references are written ``[`x`][fnn.module.x]``.
    A cheap source check, so that the browser test (slow tier) is not the first to see it."""
    sources = sorted((ROOT / "fnn").glob("*.py")) + PAGES
    found = [f"{p.name}: {m.group(0)}" for p in sources
             for m in re.finditer(r":(?:func|data|class|meth|mod|attr):`[^`]*`", p.read_text())]
    assert found == []


DOCS_TOOLS = ("mkdocs", "mkdocstrings_handlers", "material", "mathjax")
needs_docs_tools = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in DOCS_TOOLS),
    reason="mkdocs, mkdocs-material, mkdocstrings[python] or django-static-mathjax is not "
           "installed (docs extra)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``mkdocs build --strict``, once: any warning (broken link, bad docstring, unresolved
    cross-reference) fails the build."""
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        # No --quiet: in mkdocs 1.6 it hides the warnings from --strict, which then passes.
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@needs_docs_tools
@pytest.mark.slow  # beside the browser test, which reads the same build
def test_docs_build_strictly(site):
    api = (site / "api" / "index.html").read_text()
    for module in ("network", "backpropagation", "losses", "activations", "data", "checkpoint",
                   "precision", "testing", "curvature"):
        assert f'id="fnn.{module}"' in api, module
    assert 'class="arithmatex"' in (site / "math" / "index.html").read_text()
    assert (site / "javascripts" / "mathjax" / "tex-svg-full.js").stat().st_size > 1_000_000


# What a page must not show or need, checked in the page as the browser built it.
PAGE_PROBLEMS = r"""
const problems = [];
const origin = location.origin;
const outside = (url) => url && !url.startsWith(origin) && !url.startsWith("data:")
  && !url.startsWith("about:") && !url.startsWith("blob:");
for (const e of performance.getEntriesByType("resource")) {
  if (outside(e.name)) problems.push("loads from the network: " + e.name);
}
const needed = "script[src], link[rel=stylesheet], link[rel=preconnect], img, iframe";
for (const el of document.querySelectorAll(needed)) {
  const url = el.src || el.href;
  if (outside(url)) problems.push("needs " + url);
}
for (const img of document.querySelectorAll("img")) {
  if (!img.complete || img.naturalWidth === 0) problems.push("image not shown: " + img.src);
}
const text = document.body.innerText;
for (const m of text.matchAll(/:(func|class|data|mod|meth|attr|exc|obj):`?[\w.]+/g)) {
  problems.push("literal Sphinx role: " + m[0]);
}
for (const el of document.querySelectorAll(".arithmatex")) {
  if (!el.querySelector("mjx-container svg")) {
    problems.push("math not rendered: " + el.textContent.slice(0, 80));
  }
}
for (const el of document.querySelectorAll("mjx-merror, [data-mjx-error]")) {
  problems.push("TeX error: " + (el.getAttribute("data-mjx-error") || el.textContent));
}
const walker = document.createTreeWalker(document.querySelector("article") || document.body,
  NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  if (node.parentElement.closest("code, pre, script, style, mjx-container")) continue;
  const raw = node.textContent.match(/\\[a-zA-Z]+|\\[()[\]]|\$[^\s$][^$]*\$/);
  if (raw) problems.push("raw TeX in the text: " + node.textContent.trim().slice(0, 80));
}
for (const code of document.querySelectorAll("pre > code")) {
  if (code.scrollWidth > code.clientWidth + 1) {
    problems.push("code block cut off: " + code.textContent.split("\n")[0].slice(0, 60));
  }
}
return problems;
"""


@needs_docs_tools
@pytest.mark.browser
@pytest.mark.slow
def test_docs_render_offline_in_a_browser(site):
    """Every page in headless Chromium, served from the built site with no network: nothing
    loaded from elsewhere, every formula typeset by the site's own MathJax, no Sphinx role
    printed literally, no code block cut off, no failed request, no script error."""
    import functools
    import http.server

    from _browser import background, chromium, wait_for

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    pages = sorted(p.relative_to(site).parent.as_posix() for p in site.rglob("index.html"))
    assert {".", "math", "api", "playground"} <= set(pages)
    problems = {}
    with background(server), chromium() as driver:
        for page in pages:
            driver.get(f"http://127.0.0.1:{server.server_address[1]}/"
                       + ("" if page == "." else f"{page}/"))
            wait_for(driver, "return window.MathJax && MathJax.startup"
                             " && MathJax.startup.promise.then(() => true)")
            found = driver.execute_script(PAGE_PROBLEMS)
            found += [e["message"] for e in driver.get_log("browser")  # failed requests
                      if e["level"] == "SEVERE"]                      # and script errors
            if found:
                problems[page] = found
    assert not problems, "\n".join(f"{page}: {p}" for page, found in problems.items()
                                    for p in found)
