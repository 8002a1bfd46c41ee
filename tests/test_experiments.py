"""Smoke runs of the lecture experiments in ``experiments/`` (``main(["--smoke", ...])``).

Each script runs with tiny sizes into ``tmp_path``; the test checks that its figures and JSON
were written and that the numbers in the JSON say what the experiment is about.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
from _experiments import EXPERIMENTS, run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.in_process]  # the slow tier, beside others

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

run = run_experiment


def test_worked_example_5743(tmp_path, monkeypatch):
    r = run("worked_example_5743", tmp_path, monkeypatch)
    assert r["shapes"] == {"A0": [4, 5], "A1": [4, 7], "A2": [4, 4], "A3": [4, 3]}
    assert r["loss"] == pytest.approx(r["loss_slide_formula"], rel=1e-5)
    assert r["output_delta_max_abs_error"] < 1e-6  # dL/dZ3 = (A3 - Y) / N
    assert r["max_abs_grad_error"] < 1e-5
    assert r["max_abs_delta_error"] < 1e-5
    assert set(r["gradients"]) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    for g in r["gradients"].values():
        assert g["max_abs_diff_custom_vjp"] < 1e-5 and g["max_abs_grad"] > 0


def test_softmax_logistic(tmp_path, monkeypatch):
    r = run("softmax_logistic", tmp_path, monkeypatch)
    lg, sm = r["logistic"], r["softmax"]
    # The slide prints z and a from unrounded weights; its 4-decimal W, b agree to ~3e-4.
    assert lg["max_abs_z_error_vs_slide"] < 1e-3
    assert lg["max_abs_a_error_vs_slide"] < 1e-4
    assert sm["a"] == pytest.approx([0.8782, 0.0008, 0.0022, 0.1188], abs=1e-4)
    assert sm["sum"] == pytest.approx(1.0, abs=1e-6)
    assert sm["max_abs_jacobian_error_vs_jacrev"] < 1e-6
    assert max(abs(v) for v in sm["jacobian_row_sums"]) < 1e-6
    assert sm["jacobian_symmetric"]


def test_gradient_descent_quadratic(tmp_path, monkeypatch):
    r = run("gradient_descent_quadratic", tmp_path, monkeypatch)
    assert r["hessian_eigenvalues"] == pytest.approx([5 - math.sqrt(10), 5 + math.sqrt(10)],
                                                     rel=1e-5)
    assert r["eta_max"] == pytest.approx(2 / (5 + math.sqrt(10)), rel=1e-5)
    assert r["max_abs_grad_error_vs_jax_grad"] < 1e-5
    slow, fast, unstable = r["runs"]["0.1"], r["runs"]["0.2"], r["runs"]["0.25"]
    assert slow["converged"] and fast["converged"] and not unstable["converged"]
    assert fast["error_factors"][1] == pytest.approx(1 - 0.2 * (5 + math.sqrt(10)), rel=1e-5)
    assert fast["x2_sign_changes"] > 5  # eta = 0.2 oscillates across the valley ...
    assert fast["stopped_at"] < slow["stopped_at"]  # ... and still gets there first
    assert slow["f_increases"] == 0
    for run_ in (slow, fast):
        assert run_["stops"]["eps1"] <= run_["stops"]["eps2"] < r["max_iter"]


def test_activations(tmp_path, monkeypatch):
    r = run("activations", tmp_path, monkeypatch)
    assert set(r["activations"]) == {"identity", "sigmoid", "tanh", "relu", "leaky_relu"}
    assert r["max_abs_derivative_error"] < 1e-6
    assert r["activations"]["relu"]["g_prime_at_0"] == 0.0
    assert r["activations"]["leaky_relu"]["g_prime_at_0"] == 1.0
    assert r["activations"]["sigmoid"]["max_g_prime"] == pytest.approx(0.25)


def test_vanishing_gradients(tmp_path, monkeypatch):
    r = run("vanishing_gradients", tmp_path, monkeypatch)
    runs = r["runs"]
    assert set(runs) == {"sigmoid", "tanh", "relu"}
    depth = len(r["layer_sizes"]) - 1
    for act in runs.values():
        assert len(act["delta_norm_init"]) == depth == len(act["delta_norm_trained"])
        assert all(v > 0 and math.isfinite(v) for v in act["delta_norm_init"])
    # Sigmoid's deltas shrink towards the input far more than ReLU's.
    assert runs["sigmoid"]["ratio_first_to_last_init"] < 0.1
    assert runs["sigmoid"]["ratio_first_to_last_init"] < runs["relu"]["ratio_first_to_last_init"]


def test_zero_init(tmp_path, monkeypatch):
    r = run("zero_init", tmp_path, monkeypatch)
    cases = r["cases"]
    for name in ("sigmoid, all zero", "sigmoid, constant 0.1", "ReLU, all zero"):
        assert cases[name]["W1_row_spread_max_over_training"] == 0.0, name
        assert cases[name]["hidden_delta_spread_step1"] == 0.0, name
    # Zero start, sigmoid: delta[1] is 0 at step 0 (W[2] = 0), then nonzero but identical.
    assert cases["sigmoid, all zero"]["hidden_delta_abs_max_step0"] == 0.0
    assert cases["sigmoid, all zero"]["hidden_delta_abs_max_step1"] > 0.0
    # Zero start, ReLU: relu'(0) = 0 and a[1] = 0, so nothing but the output bias moves.
    assert cases["ReLU, all zero"]["hidden_delta_abs_max_step1"] == 0.0
    assert cases["ReLU, all zero"]["W2_abs_max_final"] == 0.0
    assert cases["sigmoid, random (fnn.init)"]["W1_row_spread_final"] > 0.1


def test_scripts_are_importable_without_running():
    """Importing a script runs nothing; ``--help`` works."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        spec = importlib.util.spec_from_file_location("_experiment_help",
                                                      EXPERIMENTS / "activations.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
    finally:
        sys.path.remove(str(EXPERIMENTS))
