"""Smoke run of the issue-16 experiment (mixed precision on MNIST-5k) at tiny sizes."""

import pytest
from _experiments import run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.in_process]  # the slow tier, beside others


def test_mixed_precision_smoke(tmp_path, monkeypatch):
    r = run_experiment("mixed_precision", tmp_path, monkeypatch)
    assert r["seeds"] == [0] and r["target_points"] == 0.5
    for policy in ("f32", "mixed"):
        for run in r["runs"][policy].values():
            assert run["param_dtypes"] == ["float32"]  # master weights stay float32
            assert 0.5 < run["test_accuracy"] <= 1.0
            assert run["train_loss"][-1] < run["train_loss"][0]
    gaps = [100 * (r["runs"]["f32"][s]["test_accuracy"] - r["runs"]["mixed"][s]["test_accuracy"])
            for s in ("0",)]
    assert r["max_gap_points"] == max(abs(g) for g in gaps)
