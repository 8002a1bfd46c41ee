"""Tests of the command line ``fnn train``: errors, the run folder, resume, extend, kill -9.

In-process (``cli.main(argv)``) except where the test is about processes (SIGKILL, the exit
code of a real interpreter): each subprocess pays JAX's start-up and compilation again.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnn
from fnn import checkpoint, cli, training

REPO = Path(fnn.__file__).resolve().parent.parent
LAST_LINE = re.compile(r"^test accuracy (\d\.\d{4}) -- run folder (.+)$")
TOY = ["--dataset", "circle", "--n-samples", "200", "--hidden", "8", "--no-progress"]


def _env():
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


def _assert_one_line_error(rc, out, err, match):
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fnn train: error: ") or lines[0].startswith("fnn: error: ")
    assert re.search(match, lines[0]), lines[0]


def _last_line(out):
    match = LAST_LINE.match(out.strip().splitlines()[-1])
    assert match, out
    return float(match.group(1)), match.group(2)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _template(folder: Path) -> training.TrainState:
    """The TrainState template of a run, built from its checkpoint's config."""
    return cli.setup(cli.resolve_config(checkpoint.read_meta(folder)["config"])).state


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_idx_dir(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(b"\x01\x02not an idx file")
    return d


ERRORS = {
    "negative lr": (["--lr", "-1.0"], r"--lr must be a finite number > 0, got -1\.0$"),
    "zero lr": (["--lr", "0"], r"--lr must be a finite number > 0, got 0\.0"),
    "nan lr": (["--lr", "nan"], r"--lr must be a finite number > 0, got nan"),
    "lr not a number": (["--lr", "fast"], r"--lr: invalid float value"),
    "negative batch": (["--batch-size", "-5"], r"--batch-size must be an integer >= 1"),
    "batch not a number": (["--batch-size", "big"], r"--batch-size must be a positive integer"),
    "zero epochs": (["--epochs", "0"], r"--epochs must be an integer >= 1, got 0"),
    "zero width": (["--hidden", "16,0"], r"--hidden: layer_sizes\[2\] must be a positive width"),
    "bad widths": (["--hidden", "a,b"], r"--hidden must be comma-separated integers"),
    "unknown optimizer": (["--optimizer", "lbfgs"], r"--optimizer: invalid choice: 'lbfgs'"),
    "unknown activation": (["--activation", "swish"], r"--activation: invalid choice"),
    "unknown dataset": (["--dataset", "cifar"], r"--dataset: invalid choice"),
    "unknown option": (["--bogus"], r"unrecognized arguments: --bogus"),
    "negative l2": (["--l2", "-0.1"], r"--l2 must be a finite number >= 0, got -0\.1"),
    "zero patience": (["--patience", "0"], r"--patience must be an integer >= 1 or None"),
    "noise above 0.5": ([*TOY[:2], "--noise", "0.7"], r"--noise must be a finite number >= 0 "
                        r"and <= 0\.5, got 0\.7"),
    "noise for images": (["--noise", "0.1"], r"--noise needs a 2-D set"),
    "mnist without dir": (["--dataset", "mnist"], r"--dataset mnist needs --data-dir"),
    "missing data dir": (["--dataset", "mnist", "--data-dir", "{tmp}/nowhere"],
                         r"data not found: MNIST directory not found"),
    "malformed idx": (["--dataset", "mnist", "--data-dir", "{idx}"],
                      r"cannot load data set 'mnist': .*bad IDX magic"),
    "data dir for another set": (["--dataset", "digits", "--data-dir", "{tmp}"],
                                 r"--data-dir needs --dataset mnist"),
    "batch larger than the data": (["--dataset", "circle", "--batch-size", "1000"],
                                   r"--batch-size 1000 exceeds the 400 training samples"),
    "resume without checkpoint": (["--resume", "{tmp}"], r"--resume .*: no checkpoint at"),
    "resume corrupted": (["--resume", "{broken}"], r"unusable checkpoint: .*"),
    "resume with options": (["--resume", "{broken}", "--lr", "0.1"],
                            r"--resume continues a run with its saved config; drop --lr"),
    "out is a file": (["--dataset", "circle", "--out", "{file}"], r"--out .* is not a directory"),
    "out holds metrics": (["--dataset", "circle", "--out", "{used}"],
                          r"--out .* already holds metrics\.json; continue that run"),
    "unknown command": (["fit"], r"invalid choice: 'fit'"),
    "zero dp clip": (["--dp-clip", "0"], r"--dp-clip must be a finite number > 0, got 0\.0"),
    "dp noise without clip": (["--dp-noise", "1.0"], r"--dp-noise needs --dp-clip"),
    "negative dp noise": (["--dp-clip", "1", "--dp-noise", "-1"],
                          r"--dp-noise must be a finite number >= 0"),
    "dp epsilon without clip": (["--dp-epsilon", "3"], r"--dp-epsilon needs --dp-clip"),
    "zero dp epsilon": (["--dp-clip", "1", "--dp-epsilon", "0"],
                        r"--dp-epsilon must be a finite number > 0"),
    "dp epsilon and noise": (["--dp-clip", "1", "--dp-epsilon", "3", "--dp-noise", "1"],
                             r"--dp-epsilon calibrates the noise: drop --dp-noise"),
    "dp delta not below 1/N": ([*TOY[:2], "--dp-clip", "1", "--dp-delta", "0.01"],
                               r"--dp-delta 0\.01 is not below 1/N = 0\.0025 for the N = 400 "
                               r"training examples"),
    "dp epsilon not reachable": ([*TOY[:2], "--dp-clip", "1", "--batch-size", "full",
                                  "--dp-epsilon", "0.001"],
                                 r"--dp-epsilon 0\.001 is not reachable at delta 1e-05"),
    "negative checkpoint interval": (["--checkpoint-every", "-1"],
                                     r"--checkpoint-every must be a finite number >= 0"),
    "seed out of range": (["--seed", "-1"], r"--seed must be an integer >= 0 and <= 2147483647"),
}


@pytest.mark.parametrize("argv, match", ERRORS.values(), ids=ERRORS.keys())
def test_bad_input_gives_one_line_and_exit_code_2(argv, match, tmp_path, bad_idx_dir, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / checkpoint.CHECKPOINT_NAME).write_bytes(checkpoint.MAGIC + b"\0" * 60)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    subst = {"{tmp}": str(tmp_path), "{idx}": str(bad_idx_dir), "{file}": "a_file",
             "{broken}": "broken", "{used}": "used"}
    for k, v in subst.items():
        argv = [a.replace(k, v) for a in argv]
    rc = cli.main(argv if argv[0] == "fit" else ["train", *argv])
    out, err = capsys.readouterr()
    _assert_one_line_error(rc, out, err, match)
    assert not (tmp_path / "runs").exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_bad_input_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "fnn", "train", "--lr", "-1"],
                          capture_output=True, text=True, timeout=120, env=_env())
    _assert_one_line_error(proc.returncode, proc.stdout, proc.stderr,
                           r"^fnn train: error: --lr must be a finite number > 0, got -1\.0$")


def test_no_arguments_prints_help_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fnn") and "train" in out
    assert list(tmp_path.iterdir()) == []


def test_playground_is_a_subcommand(capsys, monkeypatch):
    import fnn.playground

    seen = []
    monkeypatch.setattr(fnn.playground, "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["playground", "--port", "0", "--no-browser"]) == 7
    assert seen == [["--port", "0", "--no-browser"]]
    assert cli.main(["--help"]) == 0 and "playground" in capsys.readouterr().out


def test_help_lists_every_option_and_both_kinds_of_defaults(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--dataset", "--data-dir", "--hidden", "--activation", "--optimizer", "--lr",
                   "--batch-size", "--epochs", "--l2", "--patience", "--seed", "--out",
                   "--resume", "--schedule", "--scale", "--eps-loss", "--eps-grad",
                   "--no-progress", "--n-samples", "--noise", "--dp-clip", "--dp-noise",
                   "--dp-epsilon", "--dp-delta", "--dp-accountant",
                   "--checkpoint-every", "--diagnostics", "--no-compilation-cache"):
        assert option in out, option
    assert "default 256,128 for images, 16,16,16 for 2-D sets" in out
    assert "test = the 10,000 test images" in out


# ----------------------------------------------------------------------------- config


def test_config_keeps_only_the_keys_that_apply():
    images = cli.resolve_config({})
    assert images["dataset"] == "mnist5k" and images["optimizer"] == "momentum"
    assert not {"n_samples", "noise", "data_dir", "dp_noise"} & set(images)
    points = cli.resolve_config({"dataset": "spiral"})
    assert (points["optimizer"], points["lr"], points["schedule"]) == ("adam", 0.01, "constant")
    assert points["n_samples"] == 500 and "data_dir" not in points
    dp = cli.resolve_config({"dp_clip": 1.0, "dp_noise": 0.5})
    assert (dp["dp_clip"], dp["dp_noise"]) == (1.0, 0.5)
    assert cli.resolve_config({"batch_size": "full"})["batch_size"] is None


def test_the_cli_and_the_library_share_one_table_of_constraints(capsys):
    for option, name in (("lr", "learning_rate"), ("l2", "l2"), ("epochs", "epochs"),
                         ("n-samples", "n"), ("dp-clip", "clip_norm")):
        value = fnn._validation.PARAMETERS[name].kind(-1)  # as argparse converts it
        with pytest.raises(ValueError) as lib_err:
            fnn._validation.parameter(name, value)
        argv = ["train", f"--{option}", "-1"] + (["--dataset", "xor"] if name == "n" else [])
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"fnn train: error: --{option} {lib_err.value.problem}\n"


# ----------------------------------------------------------------------------- a real run


def test_tiny_run_writes_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["train", "--dataset", "digits", "--epochs", "2", "--hidden", "16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    accuracy, folder = _last_line(out)
    run = Path(folder)
    assert run.parent == Path("runs") and run.name.startswith("digits-")
    assert "digits (compiling)" in err and "2/2" in err and "val_acc=" in err  # tqdm

    report = json.loads((run / "metrics.json").read_text())
    assert report["config"] == cli.resolve_config({"dataset": "digits", "epochs": 2,
                                                   "hidden": [16]})
    assert report["test_accuracy"] == pytest.approx(accuracy, abs=5e-5) and accuracy > 0.8
    assert report["test_accuracy"] == float(f"{report['test_accuracy']:.6g}")  # no f32 noise
    sizes = report["data"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797  # stratified 80/10/10
    assert (report["layer_sizes"], sizes["num_classes"], sizes["scaling"]) == ([64, 16, 10], 10,
                                                                            "unit")
    assert np.sum(report["test_confusion_matrix"]) == sizes["test"]
    assert report["platform"]["devices"] == 1 and {"jax", "optax"} <= set(report["platform"])
    (session,) = report["sessions"]
    assert (session["first_epoch"], session["last_epoch"], session["checkpoints"]) == (1, 2, 2)
    assert report["wall_time_s"] >= session["train_time_s"] > 0

    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["train_loss"] < history[0][
        "train_loss"]
    assert report["train_time_s"] == pytest.approx(sum(h["time"] for h in history), abs=1e-3)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = checkpoint.read_meta(run)
    assert meta["config"] == report["config"] and meta["run_id"] == report["run_id"]
    state = checkpoint.load_checkpoint(run, like=_template(run))
    assert int(state.epoch) == 2 and [p["W"].shape for p in state.params] == [(16, 64),
                                                                              (10, 16)]
    assert sorted(p.name for p in run.iterdir()) == sorted(cli.RUN_FILES)

    # Resuming the finished run reports it and writes nothing.
    files = _snapshot(run)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "finished after epoch 2 (epochs); --epochs N extends it" in out
    assert _last_line(out) == (accuracy, str(run))
    assert _snapshot(run) == files


def test_extending_a_finished_run_accumulates_history_and_time(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "3", "--out", str(run)]) == 0
    first = json.loads((run / "metrics.json").read_text())
    assert cli.main(["train", "--resume", str(run), "--epochs", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(resuming after epoch 3)" in out and "5 epochs" in out
    report = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert report["config"]["epochs"] == 5 and report["config"]["extended_from"] == [3]
    assert [(s["first_epoch"], s["last_epoch"]) for s in report["sessions"]] == [(1, 3), (4, 5)]
    assert report["sessions"][0] == first["sessions"][0]  # never overwritten
    assert report["train_time_s"] >= first["train_time_s"] and report["run_id"] == first[
        "run_id"]
    assert report["wall_time_s"] == pytest.approx(
        first["wall_time_s"] + report["sessions"][1]["wall_time_s"], abs=2e-3)
    # Only longer: shortening is refused, and so is any option that changes the result.
    assert cli.main(["train", "--resume", str(run), "--epochs", "4"]) == 2
    assert "--epochs 4 is below the run's 5 planned epochs" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "drop --lr" in capsys.readouterr().err


def test_a_run_stopped_early_cannot_be_extended(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "50", "--patience", "1", "--lr", "0.5",
                     "--out", str(run)]) == 0
    report = json.loads((run / "metrics.json").read_text())
    assert report["stopped_because"] == "patience" and report["params_restored_to_best_epoch"]
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--epochs", "60"]) == 2
    assert re.search(r"the run stopped by patience after epoch \d+; there is nothing to extend",
                     capsys.readouterr().err)


def test_cosine_schedule_gets_a_new_cycle_when_extended():
    lr = cli._schedule(0.1, "cosine", (4, 6), steps_per_epoch=10)
    once = cli._schedule(0.1, "cosine", (4,), steps_per_epoch=10)
    for step in (0, 13, 39):  # the epochs already planned keep their learning rates
        assert float(lr(step)) == pytest.approx(float(once(step)), abs=1e-7)
    assert float(lr(40)) == pytest.approx(0.1) and float(lr(50)) == pytest.approx(0.05)


@pytest.mark.slow
@pytest.mark.in_process
def test_defaults_of_the_2d_sets_reach_095(tmp_path, capsys):
    """The README's claim for `fnn train --dataset NAME` with no other option (seed 0)."""
    for name in ("circle", "xor", "gaussians", "spiral"):
        assert cli.main(["train", "--dataset", name, "--no-progress",
                         "--out", str(tmp_path / name)]) == 0
        accuracy, _ = _last_line(capsys.readouterr().out)
        assert accuracy >= 0.95, name


@pytest.mark.slow
@pytest.mark.in_process
def test_checkpoints_follow_the_time_budget_and_sigusr1(tmp_path, capsys):
    """Default budget: saved at the start and the end only; SIGUSR1 asks for one more."""
    run = tmp_path / "run"
    lines = run / "metrics.jsonl"

    def ask_for_a_checkpoint():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if lines.exists() and len(lines.read_text().splitlines()) >= 3:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.001)

    asker = threading.Thread(target=ask_for_a_checkpoint)
    asker.start()
    assert cli.main(["train", *TOY, "--epochs", "400", "--out", str(run)]) == 0
    asker.join()
    (session,) = json.loads((run / "metrics.json").read_text())["sessions"]
    assert session["checkpoints"] == 3
    assert session["checkpoint_time_s"] < 0.05 * session["train_time_s"]


@pytest.mark.parametrize("precision, digits", [("bf16", 2), ("mixed", 6)])
def test_every_precision_trains_and_records_its_dtypes_digits(precision, digits, tmp_path):
    """bfloat16 numbers are rounded to bfloat16's 2 significant digits (``jnp.finfo``: NumPy's
    own ``finfo`` does not know bfloat16), float32 ones to 6."""
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "2", "--precision", precision, "--out",
                     str(run)]) == 0
    losses = [json.loads(line)["train_loss"]
              for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(v) and v == float(f"{v:.{digits}g}")
                                    for v in losses)
    report = json.loads((run / "metrics.json").read_text())
    assert report["config"]["precision"] == precision and 0 <= report["test_accuracy"] <= 1


def test_diagnostics_option_records_layers(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "2", "--diagnostics", "--dp-clip", "1.0",
                     "--dp-noise", "0.5", "--out", str(run)]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(record["layers"]["delta_norm"]) == 2 and record["grad_norm"] > 0
    report = json.loads((run / "metrics.json").read_text())
    config = report["config"]
    assert (config["dp_clip"], config["dp_noise"], config["diagnostics"]) == (1.0, 0.5, True)
    # --dp-noise reports the epsilon it spends: 2 epochs of 16 Poisson-sampled steps, q = 1/16
    p = report["privacy"]
    assert (p["sample_rate"], p["steps"], p["delta"], p["accountant"]) == (0.0625, 32, 1e-5,
                                                                           "rdp")
    assert p["epsilon"] == pytest.approx(fnn.privacy.epsilon(0.5, 0.0625, 32, 1e-5), rel=1e-9)
    assert p["target_epsilon"] is None and p["dp_accounting"]


@pytest.mark.slow
@pytest.mark.in_process
def test_dp_epsilon_calibrates_the_noise_for_the_planned_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "3", "--dp-clip", "1.0", "--dp-epsilon", "2",
                     "--out", str(run)]) == 0
    out = capsys.readouterr().out
    p = json.loads((run / "metrics.json").read_text())["privacy"]
    assert 2 - 1e-3 <= p["epsilon"] <= 2 and p["target_epsilon"] == 2.0
    assert p["noise_multiplier"] == pytest.approx(
        fnn.privacy.calibrate_noise(2.0, 1e-5, 0.0625, 48), rel=1e-12)
    assert (p["sampling"], p["expected_batch"], p["overflows"]) == ("poisson", 10.0, 0)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    spent = [r["dp_epsilon"] for r in history]
    assert spent == sorted(spent) and spent[-1] == pytest.approx(p["epsilon"], rel=1e-9)
    assert all(r["dp_overflows"] == 0 and r["dp_sampled"] > 0 for r in history)
    assert f"privacy: epsilon {p['epsilon']:.4g} at delta 1e-05 (rdp" in out


def test_full_batch_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "3", "--batch-size", "full", "--out",
                     str(run)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "full batch" in out
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["steps"] for h in history] == [1, 1, 1]


def test_a_killed_run_is_cleaned_up_at_resume(tmp_path):
    """Stale temporaries and epochs after the checkpoint go; a cut line is dropped."""
    run = tmp_path / "run"
    assert cli.main(["train", *TOY, "--epochs", "3", "--checkpoint-every", "0",
                     "--out", str(run)]) == 0
    state = checkpoint.load_checkpoint(run, like=_template(run))
    meta = checkpoint.read_meta(run)
    # As if killed after epoch 1's checkpoint, in the middle of writing epoch 3.
    one = state._replace(epoch=np.int32(1), best_epoch=np.int32(1))
    checkpoint.save_checkpoint(run, jax.device_put(one), {**meta, "stopped_because": None})
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "train_lo')
    (run / ".checkpoint.fnn.abc123.tmp").write_bytes(b"half a checkpoint")
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


# ----------------------------------------------------------------------------- kill, resume

# Small but not instant: about 0.2 s per epoch (500 steps), so the kill lands mid-epoch.
KILL_ARGS = ["--dataset", "mnist5k", "--hidden", "256,128", "--batch-size", "8", "--lr", "0.01",
             "--seed", "3", "--no-progress"]


def _run(command, env, **kw):
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_sigkill_mid_epoch_of_an_extended_run_then_resume_is_bitwise_identical(tmp_path):
    """Two runs of 2 epochs, both extended to 5; one extension is killed and resumed."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    # Real processes sharing a persistent compilation cache: the first compiles, the others
    # load the same executables (which also keeps this test short).
    env = {**_env(), "FNN_COMPILATION_CACHE": str(tmp_path / "jax-cache")}
    train = [sys.executable, "-m", "fnn", "train"]
    for folder in (full, killed):
        _run([*train, *KILL_ARGS, "--epochs", "2", "--out", str(folder)], env)
    _run([*train, "--resume", str(full), "--epochs", "5", "--no-progress"], env)

    proc = subprocess.Popen([*train, "--resume", str(killed), "--epochs", "5", "--no-progress",
                             "--checkpoint-every", "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    template = _template(killed)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "training did not start in time"
            try:
                state = checkpoint.load_checkpoint(killed, like=template)
            except (FileNotFoundError, checkpoint.CheckpointError):
                state = None
            if state is not None and int(state.epoch) >= 3:
                break
            time.sleep(0.01)
        time.sleep(0.1)  # half an epoch after the checkpoint of epoch k: inside epoch k + 1
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    at_kill = checkpoint.load_checkpoint(killed, like=template)
    assert 3 <= int(at_kill.epoch) < 5 and checkpoint.read_meta(killed)["stopped_because"] is None
    resumed = _run([*train, "--resume", str(killed), "--no-progress"], env)
    assert f"resuming after epoch {int(at_kill.epoch)}" in resumed.stdout

    a = checkpoint.load_checkpoint(full, like=template)
    b = checkpoint.load_checkpoint(killed, like=template)
    assert int(a.epoch) == int(b.epoch) == 5
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.numpy.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    lines = [[json.loads(x)["train_loss"] for x in (f / "metrics.jsonl").read_text().split()]
             for f in (full, killed)]
    assert lines[0] == lines[1] and len(lines[0]) == 5
    reports = [json.loads((f / "metrics.json").read_text()) for f in (full, killed)]
    assert reports[0]["test_accuracy"] == reports[1]["test_accuracy"]
    assert [s["first_epoch"] for s in reports[1]["sessions"]] == [1, 3, int(at_kill.epoch) + 1]


@pytest.mark.slow
@pytest.mark.in_process
def test_a_dp_run_keys_its_noise_from_the_os_not_from_the_seed(tmp_path, capsys):
    """The same --seed twice: the same data and initial weights, but two secret run keys."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert cli.main(["train", *TOY, "--epochs", "1", "--dp-clip", "1", "--dp-noise", "1",
                         "--out", str(run)]) == 0
    capsys.readouterr()
    template = _template(runs[0])
    states = [checkpoint.load_checkpoint(run, like=template) for run in runs]
    keys = [np.asarray(jax.random.key_data(s.key)) for s in (*states, template)]
    assert not np.array_equal(keys[0], keys[1]) and not np.array_equal(keys[0], keys[2])
    assert not np.array_equal(states[0].params[0]["W"], states[1].params[0]["W"])
