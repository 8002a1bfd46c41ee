"""Smoke runs of the issue-6 experiments (feedback rules, DP clipping) at tiny sizes."""

import importlib
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.in_process]  # the slow tier, beside others

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("name", ["feedback_rules", "dp_clipping"])
def test_experiment_smoke(name, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    module = importlib.import_module(name)
    results = module.main(["--smoke", "--out", str(tmp_path)])
    written = json.loads((tmp_path / f"{name}.json").read_text())
    assert written["smoke"] is True and written["figures"] == [f"{name}.png"]
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out
    if name == "feedback_rules":
        rules = results["rules"]
        assert set(rules) == {"backprop", "random", "sign"}
        assert rules["backprop"]["angle_layer1_deg"][-1] < 1e-2  # backprop is the gradient
        assert all(0.0 <= a <= 1.0 for r in rules.values() for a in r["test_accuracy"])
    else:
        for r in results["runs"].values():
            assert len(r["test_accuracy"]) == len(results["clip_norms"])
            assert all(0.0 <= f <= 1.0 for f in r["fraction_clipped"])
        assert 0.0 <= results["unclipped_accuracy"] <= 1.0
