"""Tests of the command line ``python -m fnn train``: errors, outputs, resume after SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnn
from fnn import checkpoint, cli

REPO = Path(fnn.__file__).resolve().parent.parent
LAST_LINE = re.compile(r"^test accuracy (\d\.\d{4}) -- run folder (.+)$")


def _env():
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


def _assert_one_line_error(rc, out, err, match):
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("fnn train: error: ") or lines[0].startswith("fnn: error: ")
    assert re.search(match, lines[0]), lines[0]


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_idx_dir(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(b"\x01\x02not an idx file")
    return d


@pytest.fixture
def corrupted_checkpoint(tmp_path):
    path = tmp_path / "broken" / checkpoint.CHECKPOINT_NAME
    path.parent.mkdir()
    path.write_bytes(checkpoint.MAGIC + b"\x00" * 40 + b"garbage")
    return path


ERRORS = {
    "negative lr": (["--lr", "-1.0"], r"--lr must be positive, got -1\.0"),
    "zero lr": (["--lr", "0"], r"--lr must be positive"),
    "lr not a number": (["--lr", "fast"], r"--lr: invalid float value"),
    "negative batch": (["--batch-size", "-5"], r"--batch-size must be positive"),
    "batch not a number": (["--batch-size", "big"], r"--batch-size must be"),
    "zero epochs": (["--epochs", "0"], r"--epochs must be a positive integer"),
    "negative epochs": (["--epochs", "-3"], r"--epochs must be a positive integer"),
    "zero width": (["--hidden", "16,0"], r"--hidden widths must be positive, got 0"),
    "negative width": (["--hidden", "-4"], r"--hidden widths must be positive"),
    "bad widths": (["--hidden", "a,b"], r"--hidden must be comma-separated integers"),
    "unknown optimizer": (["--optimizer", "lbfgs"], r"--optimizer: invalid choice: 'lbfgs'"),
    "unknown activation": (["--activation", "swish"], r"--activation: invalid choice"),
    "unknown dataset": (["--dataset", "cifar"], r"--dataset: invalid choice"),
    "unknown option": (["--bogus"], r"unrecognized arguments: --bogus"),
    "negative l2": (["--l2", "-0.1"], r"--l2 must be >= 0"),
    "negative patience": (["--patience", "-1"], r"--patience must be an integer >= 0"),
    "mnist without dir": (["--dataset", "mnist"], r"--dataset mnist needs --data-dir"),
    "missing data dir": (["--dataset", "mnist", "--data-dir", "{tmp}/nowhere"],
                         r"data not found: MNIST directory not found"),
    "malformed idx": (["--dataset", "mnist", "--data-dir", "{idx}"],
                      r"cannot load data set 'mnist': .*bad IDX magic"),
    "data dir for another set": (["--dataset", "digits", "--data-dir", "{tmp}"],
                                 r"--data-dir is only used with --dataset mnist"),
    "batch larger than the data": (["--dataset", "circle", "--batch-size", "1000"],
                                   r"--batch-size 1000 exceeds the 400 training samples"),
    "resume without checkpoint": (["--resume", "{tmp}"], r"--resume .*: no checkpoint at"),
    "resume corrupted": (["--resume", "{broken}"], r"unusable checkpoint: .*"),
    "resume with options": (["--resume", "{broken}", "--lr", "0.1"],
                            r"--resume continues a run with its saved config; drop --lr"),
    "out is a file": (["--dataset", "circle", "--out", "{file}"], r"--out .* is not a directory"),
    "unknown command": (["fit"], r"invalid choice: 'fit'"),
    "zero dp clip": (["--dp-clip", "0"], r"--dp-clip must be positive, got 0\.0"),
    "dp noise without clip": (["--dp-noise", "1.0"], r"--dp-noise 1\.0 needs --dp-clip"),
    "negative dp noise": (["--dp-clip", "1", "--dp-noise", "-1"], r"--dp-noise must be >= 0"),
}


@pytest.mark.parametrize("argv, match", ERRORS.values(), ids=ERRORS.keys())
def test_bad_input_gives_one_line_and_exit_code_2(argv, match, tmp_path, bad_idx_dir,
                                                  corrupted_checkpoint, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    subst = {"{tmp}": str(tmp_path), "{idx}": str(bad_idx_dir), "{file}": str(a_file),
             "{broken}": str(corrupted_checkpoint.parent)}
    for k, v in subst.items():
        argv = [a.replace(k, v) for a in argv]
    args = argv if argv and argv[0] == "fit" else ["train", *argv]
    rc = cli.main(args)
    out, err = capsys.readouterr()
    _assert_one_line_error(rc, out, err, match)
    assert not (tmp_path / "runs").exists()


def test_bad_input_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "fnn", "train", "--lr", "-1"],
                          capture_output=True, text=True, timeout=120, env=_env())
    _assert_one_line_error(proc.returncode, proc.stdout, proc.stderr,
                           r"^fnn train: error: --lr must be positive, got -1\.0$")


def test_help_lists_every_option(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--hidden", "--activation", "--optimizer", "--lr",
                   "--batch-size", "--epochs", "--l2", "--patience", "--seed", "--out",
                   "--resume", "--schedule", "--scale", "--eps-loss", "--eps-grad",
                   "--no-progress", "--n-samples", "--noise", "--dp-clip", "--dp-noise"):
        assert option in out, option
    for name in ("mnist5k", "adam", "momentum", "relu", "full"):
        assert name in out
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a real run


def _last_line(out):
    lines = out.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    return float(match.group(1)), match.group(2)


def test_tiny_run_writes_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["train", "--dataset", "digits", "--epochs", "2", "--hidden", "16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    accuracy, folder = _last_line(out)
    run = Path(folder)
    assert run.parent == Path("runs") and run.name.startswith("digits-")
    assert "2/2" in err and "val_acc=" in err  # the tqdm bar, on stderr

    report = json.loads((run / "metrics.json").read_text())
    assert report["config"]["dataset"] == "digits" and report["config"]["hidden"] == [16]
    assert report["config"]["epochs"] == 2 and report["config"]["lr"] == cli.DEFAULTS["lr"]
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    losses = [h["train_loss"] for h in report["history"]]
    assert losses[1] < losses[0]
    assert report["test_accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert accuracy > 0.8  # 8x8 digits, two epochs
    sizes = report["data"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797  # stratified 80/10/10
    assert abs(sizes["train"] - 1437.6) < 5 and abs(sizes["test"] - 179.7) < 5
    assert (sizes["num_features"], sizes["num_classes"], sizes["scale"]) == (64, 10, "unit")
    assert np.sum(report["test_confusion_matrix"]) == sizes["test"]
    assert report["wall_time_s"] > 0 and {"jax", "optax", "numpy"} <= set(report["versions"])

    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 300 and height > 200

    state = checkpoint.load_checkpoint(run / checkpoint.CHECKPOINT_NAME)
    assert state["epoch"] == 2 and state["finished"] is True
    assert [p["W"].shape for p in state["params"]] == [(16, 64), (10, 16)]
    assert len(jax.tree.leaves(state["opt_state"])) > 0
    assert state["config"] == report["config"]
    assert [h["train_loss"] for h in state["history"]] == losses

    # The same --out twice is refused; resuming the finished run only reports it again.
    assert cli.main(["train", "--dataset", "digits", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    out, _ = capsys.readouterr()
    assert _last_line(out) == (accuracy, str(run))


def test_toy_run_full_batch(tmp_path, capsys):
    out_dir = tmp_path / "circle"
    rc = cli.main(["train", "--dataset", "circle", "--epochs", "3", "--hidden", "8",
                   "--batch-size", "full", "--optimizer", "adam", "--lr", "0.05",
                   "--patience", "2", "--out", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    accuracy, folder = _last_line(out)
    assert folder == str(out_dir) and 0.0 <= accuracy <= 1.0
    report = json.loads((out_dir / "metrics.json").read_text())
    assert report["config"]["batch_size"] is None
    assert [h["steps"] for h in report["history"]] == [1] * len(report["history"])
    assert report["data"]["scale"] == "standardize"


def test_dp_run_records_config_and_layer_diagnostics(tmp_path, capsys):
    out_dir = tmp_path / "dp"
    rc = cli.main(["train", "--dataset", "gaussians", "--epochs", "2", "--hidden", "8",
                   "--optimizer", "adam", "--lr", "0.05", "--dp-clip", "1.0", "--dp-noise", "0.5",
                   "--out", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads((out_dir / "metrics.json").read_text())
    assert report["config"]["dp_clip"] == 1.0 and report["config"]["dp_noise"] == 0.5
    layers = report["history"][-1]["layers"]
    assert len(layers["delta_norm"]) == 2 and len(layers["dead_fraction"]) == 1
    assert _last_line(out)[1] == str(out_dir)


# ----------------------------------------------------------------------------- kill, resume

# Small but not instant: about 0.2 s per epoch (500 steps), so the kill lands mid-epoch.
KILL_ARGS = ["--dataset", "mnist5k", "--hidden", "256,128", "--batch-size", "8", "--lr", "0.01",
             "--epochs", "6", "--seed", "3", "--no-progress"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    # Three real processes share a persistent compilation cache: the first compiles, the
    # other two load the same executables (which also keeps this test short).
    env = {**_env(), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    command = [sys.executable, "-m", "fnn", "train", *KILL_ARGS]
    uninterrupted = subprocess.run([*command, "--out", str(full)], env=env, capture_output=True,
                                   text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    ckpt = killed / checkpoint.CHECKPOINT_NAME
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "training did not start in time"
            try:
                state = checkpoint.load_checkpoint(ckpt)
            except (FileNotFoundError, checkpoint.CheckpointError):
                state = None
            if state is not None and state["epoch"] >= 2:
                break
            time.sleep(0.01)
        # Half an epoch after the checkpoint of epoch k: in the middle of epoch k + 1.
        time.sleep(0.5 * state["history"][-1]["time"])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    at_kill = checkpoint.load_checkpoint(ckpt)
    assert 2 <= at_kill["epoch"] < 6 and at_kill["finished"] is False
    assert not (killed / "metrics.json").exists()

    resumed = subprocess.run([*command[:4], "--resume", str(killed), "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {at_kill['epoch']}" in resumed.stdout

    a = checkpoint.load_checkpoint(full / checkpoint.CHECKPOINT_NAME)
    b = checkpoint.load_checkpoint(ckpt)
    assert a["epoch"] == b["epoch"] == 6 and b["finished"] is True
    for name in ("params", "opt_state"):
        for u, v in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    report_a = json.loads((full / "metrics.json").read_text())
    report_b = json.loads((killed / "metrics.json").read_text())
    assert report_a["test_accuracy"] == report_b["test_accuracy"]
    assert report_b["resumed_from_epoch"] == at_kill["epoch"]
    assert uninterrupted.stdout.splitlines()[-1] == resumed.stdout.splitlines()[-1].replace(
        str(killed), str(full))
