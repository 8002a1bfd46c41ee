"""Smoke run of the curvature-instruments experiment (issue 13) at tiny sizes."""

from __future__ import annotations

import math

import pytest
from _experiments import run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.in_process]  # the slow tier, beside others


def test_curvature_instruments(tmp_path, monkeypatch):
    r = run_experiment("curvature_instruments", tmp_path, monkeypatch)
    assert len(r["figures"]) == 3
    assert len(r["snr"]) == len(r["ggn_trace"]) == r["epochs"] + 1
    for snr, trace in zip(r["snr"], r["ggn_trace"], strict=True):
        assert len(snr) == len(trace) == len(r["sizes"]) - 1
        assert all(s > 0 and math.isfinite(s) for s in snr)
        assert all(t > 0 and math.isfinite(t) for t in trace)
    assert r["loss"][-1] < r["loss"][0]  # three epochs of Adam lower the probe loss
    assert all(p["value"] > 0 for p in r["ggn_top_pixels"])
    assert 0.0 <= r["test_accuracy"] <= 1.0
