"""Shared by the experiment smoke tests: run ``experiments/<name>.py --smoke`` in-process."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def run_experiment(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Import ``experiments/<name>.py`` under a private name, run ``main(["--smoke", ...])``
    into ``tmp_path``, check its figures are real PNGs, and return the JSON it wrote."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # the scripts import _common
    spec = importlib.util.spec_from_file_location(f"_experiment_{name}",
                                                  EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / name
    returned = module.main(["--smoke", "--out", str(out)])
    written = json.loads((out / f"{name}.json").read_text())
    assert isinstance(returned, dict)
    assert written["experiment"] == name and written["smoke"] is True
    assert written["figures"], "no figure written"
    for figure in written["figures"]:
        png = out / figure
        assert png.suffix == ".png" and png.stat().st_size > 10_000, figure
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return written
