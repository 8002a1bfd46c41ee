"""mkdocs hook: MathJax is served from the built site, so formulas render with no network.

The MathJax 3 files come from the ``django-static-mathjax`` package on PyPI (MathJax's own
release files, Apache-2.0, in a Python package named ``mathjax``; Django is not needed to use
them). ``tex-svg-full.js`` is the one file used: every TeX extension is built in, so nothing
is loaded later, and the SVG output draws its glyphs as paths (no web fonts to fetch).
"""

from __future__ import annotations

import importlib.resources

from mkdocs.structure.files import File

MATHJAX = "tex-svg-full.js"
SITE_PATH = f"javascripts/mathjax/{MATHJAX}"


def mathjax_source() -> str:
    """The installed MathJax file's path (``ImportError`` names the package to install)."""
    try:
        root = importlib.resources.files("mathjax")
    except ModuleNotFoundError as err:
        raise ImportError("the docs need MathJax from django-static-mathjax: "
                          'pip install "fnn[docs]"') from err
    return str(root / "static" / "mathjax" / "es5" / MATHJAX)


def on_files(files, config):
    files.append(File.generated(config, SITE_PATH, abs_src_path=mathjax_source()))
    return files
