"""The command line: ``fnn train`` trains an MLP end to end; ``fnn playground`` serves the page.

``fnn train`` (or ``python -m fnn train``) resolves a config (defaults per kind of data:
``DEFAULTS``), loads and splits the data ([`load_splits`][fnn.data.load_splits]), trains with
[`fit`][fnn.training.fit] and writes a run folder: ``metrics.jsonl`` (a flushed line per
epoch), ``checkpoint.fnn`` (the [`TrainState`][fnn.training.TrainState], the config in its
header; written at the start, on a time budget, on SIGUSR1, on Ctrl-C and at the end),
``metrics.json`` (the summary) and ``curves.png``. ``--resume RUN`` continues a run, killed or
not, and with ``--epochs N`` extends it; a resumed run ends bitwise where an uninterrupted one
does. JAX's persistent compilation cache is on (``FNN_COMPILATION_CACHE`` or
``--no-compilation-cache``). Exit codes: 0 success, 2 bad input (one line on stderr), 130
interrupted. The README's "The main job" section is the user's guide.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from fnn import (
    _interrupt,
    _validation,
    activations,
    checkpoint,
    data,
    metrics,
    parallel,
    privacy,
    training,
)
from fnn.network import MLP

__all__ = ["COMMON", "DEFAULTS", "build_parser", "main", "resolve_config", "setup"]

PROG = "fnn"
COMMON: dict[str, Any] = {"dataset": "mnist5k", "scale": "auto", "seed": 0, "patience": None,
                          "eps_loss": None, "eps_grad": None, "dp_clip": None, "dp_noise": 0.0,
                          "dp_epsilon": None, "dp_delta": 1e-5, "dp_accountant": "rdp",
                          "diagnostics": False, "precision": "f32"}
"""The defaults shared by every kind of data."""
DEFAULTS: dict[str, dict[str, Any]] = {
    "images": {"hidden": [256, 128], "activation": "relu", "optimizer": "momentum", "lr": 0.1,
               "schedule": "cosine", "batch_size": 32, "epochs": 40, "l2": 3e-3},
    "points": {"n_samples": 500, "noise": 0.0, "hidden": [16, 16, 16], "activation": "tanh",
               "optimizer": "adam", "lr": 0.01, "schedule": "constant", "batch_size": 10,
               "epochs": 300, "l2": 0.0, "patience": 50},
}
"""The defaults of ``fnn train`` per kind: the image sets and the Playground's 2-D sets."""
PARAMETER = {"lr": "learning_rate", "n_samples": "n", "dp_clip": "clip_norm",
             "dp_noise": "noise_multiplier", "dp_epsilon": "target_epsilon", "dp_delta": "delta"}
"""Option -> the name of its entry in the library's parameter table, where they differ."""
DP_OPTIONS = ("dp_noise", "dp_epsilon", "dp_delta", "dp_accountant")
"""The options that need ``--dp-clip``."""
RUN_FILES = (checkpoint.CHECKPOINT_NAME, "metrics.jsonl", "metrics.json", "curves.png")
RUN_OPTIONS = ("out", "resume", "no_progress", "checkpoint_every", "no_compilation_cache",
               "data_parallel", "coordinator", "num_processes", "process_id",
               "distributed_timeout")
"""Options about how a run is run, not what it computes: allowed with ``--resume``."""


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(kind: str, key: str) -> str:
    v = {**COMMON, **DEFAULTS[kind]}.get(key)
    return "off" if v is None else ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _default(key: str) -> str:
    a, b = _show("images", key), _show("points", key)
    return f"default {a}" if a == b else f"default {a} for images, {b} for 2-D sets"


def build_parser() -> argparse.ArgumentParser:
    """The ``fnn`` parser and its ``train`` subcommand (``playground`` parses its own)."""
    from fnn import __version__

    parser = _Parser(prog=PROG, description="Feedforward networks and backprop, as the lecture "
                     "teaches them.")
    parser.add_argument("--version", action="version", version=f"fnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,playground}")
    sub.add_parser("playground", add_help=False, help="serve the Playground in your browser, "
                   "with every neuron's delta (see 'fnn playground --help')")
    p = sub.add_parser("train", prog=f"{PROG} train", argument_default=argparse.SUPPRESS,
                       help="train an MLP and write a run folder", description="Train an MLP "
                       "and write a run folder; the last line of stdout gives the test accuracy "
                       "and the folder.")
    _train_options(p)
    p.set_defaults(func=_train_command)
    return parser


def _train_options(p: argparse.ArgumentParser) -> None:
    add = p.add_argument_group("data").add_argument
    add("--dataset", choices=data.DATASETS, help=f"{_default('dataset')}; mnist keeps its "
        "official split (test = the 10,000 test images, validation = 5,000 of the 60,000 "
        "training images), the others are split 80/10/10, stratified, from the seed")
    add("--data-dir", metavar="DIR", help="the MNIST IDX files or mnist.npz (--dataset mnist)")
    add("--n-samples", type=int, metavar="N", help=f"points of a 2-D set ({_default('n_samples')})")
    add("--noise", type=float, help=f"noise of a 2-D set, 0..0.5 ({_default('noise')})")
    add("--scale", choices=("auto", *data.SCALINGS), help="input scaling fitted on the train "
        "split (auto: unit = /max|x| for images, standardize for 2-D sets)")
    add = p.add_argument_group("network").add_argument
    add("--hidden", metavar="WIDTHS", help=f"hidden widths, e.g. 64,32; 'none' for softmax "
        f"regression ({_default('hidden')})")
    add("--activation", choices=tuple(activations.ACTIVATIONS), help=_default("activation"))
    add("--precision", choices=("f32", "bf16", "mixed"), help="f32; bf16 throughout; mixed: "
        "float32 params, bfloat16 products accumulated in float32 (default f32)")
    add = p.add_argument_group("training").add_argument
    add("--optimizer", choices=tuple(training.OPTIMIZERS), help=f"sgd is the lecture's rule; "
        f"momentum and nesterov use 0.9 ({_default('optimizer')})")
    add("--lr", type=float, help=f"learning rate ({_default('lr')})")
    add("--schedule", choices=("constant", "cosine"), help=_default("schedule"))
    add("--batch-size", metavar="B", help=f"minibatch size, or 'full' (or 0) "
        f"({_default('batch_size')})")
    add("--epochs", type=int, help=f"maximum epochs; with --resume, extend the run to this "
        f"many ({_default('epochs')})")
    add("--l2", type=float, help=f"L2 lambda on the weights ({_default('l2')})")
    add("--patience", type=int, help="stop after this many epochs without a lower validation "
        f"loss and keep the best epoch's params ({_default('patience')})")
    add("--eps-loss", type=float, help="stop when |L_k - L_k-1| < this (default off)")
    add("--eps-grad", type=float, help="stop when the full-batch ||grad|| < this (default off)")
    _dp_options(add)
    add("--diagnostics", action="store_true", help="record the full-batch gradient norm and "
        "per-layer diagnostics every epoch (a full-batch backward pass each)")
    add("--seed", type=int, help="seed of data, split, init and shuffles (default 0)")
    _run_options(p)


def _dp_options(add: Any) -> None:
    """The DP-SGD options of ``fnn train`` (in its "training" group)."""
    add("--dp-clip", type=float, metavar="C", help="DP-SGD: clip each example's gradient to "
        "norm C in the one backward pass; each step's batch is then a Poisson sample with "
        "rate batch/N (default off; see docs/privacy.md)")
    add("--dp-noise", type=float, metavar="SIGMA", help="DP-SGD: Gaussian noise of std "
        "SIGMA * C on the clipped sum, divided by the expected batch; the epsilon spent is "
        "reported (needs --dp-clip; default 0)")
    add("--dp-epsilon", type=float, metavar="E", help="DP-SGD: calibrate the noise so that "
        "the planned epochs spend at most epsilon E at --dp-delta (needs --dp-clip; "
        "instead of --dp-noise)")
    add("--dp-delta", type=float, metavar="D", help="DP-SGD: the delta of the privacy claim, "
        "below 1/N (default 1e-5)")
    add("--dp-accountant", choices=privacy.ACCOUNTANTS, help="DP-SGD: dp_accounting's RDP or "
        "PLD accountant (default rdp)")


def _run_options(p: argparse.ArgumentParser) -> None:
    """``fnn train``'s options for the run folder and for several devices and processes."""
    add = p.add_argument_group("run").add_argument
    add("--out", metavar="DIR", help="run folder (default runs/<dataset>-<timestamp>)")
    add("--resume", metavar="RUN", help="continue this run (folder or checkpoint) with its "
        "saved config")
    add("--checkpoint-every", type=float, metavar="SECONDS", help="seconds between checkpoints "
        "(default 60; 0: every epoch); also on SIGUSR1, Ctrl-C and at the end")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    add("--no-compilation-cache", action="store_true", help="do not use JAX's persistent "
        "compilation cache (or FNN_COMPILATION_CACHE=off)")
    add = p.add_argument_group("parallel (see docs/distributed.md)").add_argument
    add("--data-parallel", action="store_true", help="shard each minibatch over all devices")
    for flag, env, what in (("coordinator", "COORDINATOR", "HOST:PORT of process 0"),
                            ("num-processes", "NUM_PROCESSES", "the number of processes"),
                            ("process-id", "PROCESS_ID", "this process, 0..P-1")):
        add(f"--{flag}", type=str if flag == "coordinator" else int,
            help=f"multi-process: {what} (or $FNN_{env})")
    add("--distributed-timeout", type=float, metavar="SECONDS", help="multi-process: give up "
        "when the processes have not all connected, or not all reached training, in this "
        "time; a process silent mid-run is given up after this time or 60 s, the shorter "
        "(default 300)")


# ------------------------------------------------------------------------------- config


def _parse_hidden(text: Any) -> list[int]:
    if isinstance(text, list):
        return text
    text = str(text).strip()
    try:
        return [] if text.lower() in ("", "none") else [int(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated integers, got {text!r}") from None


def _parse_batch_size(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    if text.strip().lower() in ("full", "0"):
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--batch-size must be a positive integer or 'full', got {text!r}"
                         ) from None


def resolve_config(given: dict[str, Any]) -> dict[str, Any]:
    """The full config of a run: the defaults of its kind of data, updated with ``given``.

    Each value is checked against the library's parameter table
    ([`PARAMETERS`][fnn._validation.PARAMETERS]); only the keys that apply to the data set and
    the options chosen are kept. Raises ``UsageError`` naming the option.
    """
    dataset = given.get("dataset", COMMON["dataset"])
    _validation.one_of("dataset", dataset, data.DATASETS)
    kind = "images" if dataset in data.IMAGE_SETS else "points"
    c = {**COMMON, **DEFAULTS[kind], **given}
    unknown = set(c) - set(COMMON) - set(DEFAULTS["images"]) - set(DEFAULTS["points"]) - {
        "data_dir", "extended_from"}
    if unknown:
        raise UsageError(f"unknown config entries {sorted(unknown)}")
    for key, needs in (("n_samples", kind == "points"), ("noise", kind == "points"),
                       ("data_dir", dataset == "mnist"),
                       *((k, c["dp_clip"] is not None) for k in DP_OPTIONS)):
        if key in given and not needs and given[key] != COMMON.get(key):
            why = {**dict.fromkeys(DP_OPTIONS, "--dp-clip"), "data_dir": "--dataset mnist"}.get(
                key, "a 2-D set")
            raise UsageError(f"{_option(key)} needs {why}")
        if not needs:
            c.pop(key, None)
    if dataset == "mnist" and c.get("data_dir") is None:
        raise UsageError("--dataset mnist needs --data-dir DIR (the MNIST IDX files or mnist.npz)")
    c["hidden"], c["batch_size"] = _parse_hidden(c["hidden"]), _parse_batch_size(c["batch_size"])
    for key in c:
        name = PARAMETER.get(key, key)
        if name in _validation.PARAMETERS and not (c[key] is None and key in COMMON):
            c[key] = _validation.parameter(name, c[key])
    return c


# ------------------------------------------------------------------------------- the run


class Setup(NamedTuple):
    """What a config makes: the data, the network, the optimizer and the first TrainState."""

    splits: data.Splits
    net: MLP
    optimizer: optax.GradientTransformation
    state: training.TrainState
    dp: training.DP | None = None
    """DP-SGD's clipping norm and noise multiplier (given, or calibrated to ``--dp-epsilon``)."""


def _schedule(lr: float, schedule: str, ends: tuple[int, ...], steps_per_epoch: int) -> Any:
    """The learning rate: constant, or one cosine cycle per segment of the run's epochs (the
    planned epochs, then each extension's), ``ends`` the last epoch of each segment."""
    if schedule == "constant":
        return lr
    cycles = [optax.cosine_decay_schedule(lr, (end - start) * steps_per_epoch)
              for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    return optax.join_schedules(cycles, [e * steps_per_epoch for e in ends[:-1]])


@jax.jit
def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The run's two keys (data and split; init and shuffles), made in one program."""
    return tuple(jax.random.split(jax.random.key(seed)))


def setup(c: dict[str, Any]) -> Setup:
    """Load and split the data, make the net, the optimizer and the initial state of ``c``."""
    k_data, k_state = _keys(c["seed"])
    try:
        splits = data.load_splits(c["dataset"], k_data, data_dir=c.get("data_dir"),
                                  n=c.get("n_samples", 500), noise=c.get("noise", 0.0),
                                  scaling=c["scale"])
    except FileNotFoundError as err:
        raise UsageError(f"data not found: {err}") from None
    except (ImportError, ValueError) as err:
        raise UsageError(f"cannot load data set {c['dataset']!r}: {err}") from None
    n_train = len(splits.train[1])
    training.check_batch_size(c["batch_size"], n_train)
    sizes = (splits.train[0].shape[1], *c["hidden"], splits.num_classes)
    try:
        net = MLP(sizes, activation=c["activation"], precision=c["precision"])
    except (TypeError, ValueError) as err:
        raise UsageError(f"--hidden: {err}") from None
    optimizer = _optimizer(c, n_train)
    return Setup(splits, net, optimizer, training.init_state(k_state, net, optimizer),
                 _dp(c, n_train))


def _dp(c: dict[str, Any], n_train: int) -> training.DP | None:
    """DP-SGD's settings: ``--dp-noise``, or the noise that spends ``--dp-epsilon`` over the
    planned epochs (the first segment's: extending a run spends more, it does not recalibrate)."""
    if c["dp_clip"] is None:
        return None
    privacy.check_delta(c["dp_delta"], n_train)
    sigma = c["dp_noise"]
    if c.get("dp_epsilon") is not None:
        q, steps = privacy.sampling_plan(n_train, c["batch_size"],
                                         [*c.get("extended_from", []), c["epochs"]][0])
        try:
            sigma = privacy.calibrate_noise(c["dp_epsilon"], c["dp_delta"], q, steps,
                                            c["dp_accountant"])
        except ImportError as err:
            raise UsageError(f"--dp-epsilon: {err}") from None
    return training.DP(c["dp_clip"], sigma)


def _optimizer(c: dict[str, Any], n_train: int) -> optax.GradientTransformation:
    steps = 1 if c["batch_size"] is None else n_train // c["batch_size"]
    ends = (*c.get("extended_from", ()), c["epochs"])
    return _make_optimizer(c["optimizer"], c["lr"], c["schedule"], ends, steps)


@functools.cache
def _make_optimizer(name: str, lr: float, schedule: str, ends: tuple[int, ...], steps: int
                    ) -> optax.GradientTransformation:
    """One optimizer object per configuration: jit caches by its identity (a static
    argument), so a run resumed in the same process compiles nothing again."""
    return training.make_optimizer(name, _schedule(lr, schedule, ends, steps))


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(_jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def _check_out(out: str) -> Path:
    """Refuse an ``--out`` that is a file or holds another run's files. Every process checks
    before joining a multi-process run: none can have written anything yet."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    taken = [name for name in RUN_FILES if (path / name).exists()]
    if taken:
        raise UsageError(f"--out {out} already holds {', '.join(taken)}; continue that run "
                         f"with --resume {out} or choose another --out")
    return path


def _new_folder(config: dict[str, Any], out: str | None, writer: bool) -> Path:
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = Path("runs") / f"{config['dataset']}-{stamp}", 1
        while path.exists():
            i += 1
            path = Path("runs") / f"{config['dataset']}-{stamp}-{i}"
    else:
        path = Path(out)  # checked by _check_out before joining a multi-process run
    if writer:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the run folder {path}: {err.strerror}") from None
    return path


def _load_run(resume: str, epochs: int | None) -> tuple[Path, dict, Setup, dict, dict | None]:
    """The run to continue: its folder, config, setup (with the saved state), header and
    summary (``metrics.json``; None before the run finished)."""
    path = Path(resume)
    file = path / checkpoint.CHECKPOINT_NAME if path.is_dir() else path
    try:
        meta = checkpoint.read_meta(file)
        if not _is_train_meta(meta):
            raise UsageError(f"--resume {resume}: {file} is not a checkpoint of fnn train")
        config = resolve_config(meta["config"])
        s = setup(config)
        s = s._replace(state=checkpoint.load_checkpoint(file, like=s.state))
    except FileNotFoundError:
        raise UsageError(f"--resume {resume}: no checkpoint at {file}") from None
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(f"--resume {resume}: unusable checkpoint: {err}") from None
    report = _check_run(resume, file, meta, s.state, config)
    if epochs is not None and epochs != config["epochs"]:
        if meta["stopped_because"] not in (None, "epochs"):
            raise UsageError(f"--epochs: the run stopped by {meta['stopped_because']} after "
                             f"epoch {int(s.state.epoch)}; there is nothing to extend")
        if epochs < config["epochs"]:
            raise UsageError(f"--epochs {epochs} is below the run's {config['epochs']} planned "
                             "epochs; a run can only be extended")
        config["extended_from"] = [*config.get("extended_from", []), config["epochs"]]
        config["epochs"] = epochs
        s = s._replace(optimizer=_optimizer(config, len(s.splits.train[1])))
        meta = {**meta, "config": config, "stopped_because": None}
    return file.parent, config, s, meta, report


def _is_train_meta(meta: dict[str, Any]) -> bool:
    """Whether a checkpoint's header has what ``fnn train`` wrote there (checked before use:
    anyone can write a header with a valid checksum)."""
    sessions = meta.get("sessions")
    return (meta.get("fnn") == "train" and isinstance(meta.get("config"), dict)
            and isinstance(meta.get("run_id"), str) and isinstance(sessions, list)
            and all(isinstance(x, dict) and isinstance(x.get("wall_time_s"), int | float)
                    for x in sessions)
            and meta.get("stopped_because", "absent") in (None, *training.STOP_REASONS))


def _check_run(resume: str, file: Path, meta: dict, state: training.TrainState,
               config: dict) -> dict[str, Any] | None:
    """Refuse a checkpoint that is not this folder's run, or whose numbers do not add up;
    returns the run's summary (``_read_report``)."""
    own = file.parent / checkpoint.CHECKPOINT_NAME
    others = [checkpoint.read_meta(own)] if own.exists() and not own.samefile(file) else []
    report = _read_report(resume, file.parent)
    if report is not None:
        others.append(report)
    if any(other.get("run_id") != meta.get("run_id") for other in others):
        raise UsageError(f"--resume {resume}: {file} belongs to another run than the folder "
                         f"{file.parent} (its run_id differs); resume that run in its own folder")
    epoch, best = int(state.epoch), int(state.best_epoch)
    logged = 0  # the records of epochs 1, 2, ... at the start of metrics.jsonl
    for line in _logged(file.parent / "metrics.jsonl"):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill, or not JSON
            break
        if not (isinstance(record, dict) and record.get("epoch") == logged + 1):
            break
        logged += 1
    if not 0 <= best <= epoch <= config["epochs"] or logged < epoch:
        raise UsageError(f"--resume {resume}: inconsistent run: the checkpoint is at epoch "
                         f"{epoch} (best {best}) of {config['epochs']}, metrics.jsonl holds "
                         f"{logged} epochs")
    return report


def _logged(lines: Path) -> list[str]:
    return lines.read_text().splitlines() if lines.exists() else []


def _read_report(resume: str, folder: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (None if there is none), refused by name if it is not one."""
    path = folder / "metrics.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        report = err
    if not (isinstance(report, dict) and type(report.get("epochs_run")) is int and isinstance(
            report.get("test_accuracy"), float) and isinstance(report.get("stopped_because"), str)):
        raise UsageError(f"--resume {resume}: {path} is not the summary fnn train writes; move "
                         "it away and resume again to write it anew")
    return report


def _compilation_cache(off: bool) -> str | None:
    """Turn on JAX's persistent compilation cache (unless ``off``); returns its folder."""
    where = os.environ.get("FNN_COMPILATION_CACHE", "")
    if off or where.lower() in ("off", "0", "no", "false"):
        return None
    if jax.config.jax_compilation_cache_dir:  # the user's own, e.g. JAX_COMPILATION_CACHE_DIR
        return jax.config.jax_compilation_cache_dir
    path = where or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(
        "~/.cache"), "fnn", "jax")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _describe(c: dict[str, Any], s: Setup) -> str:
    sizes = "/".join(str(len(part[1])) for part in s.splits[:3])
    batch = "full batch" if c["batch_size"] is None else f"batch {c['batch_size']}"
    extra = f", patience {c['patience']}" if c["patience"] else ""
    if s.dp is not None:
        extra += (f", DP-SGD clip {s.dp.clip_norm:g} noise {s.dp.noise_multiplier:.4g}" + (
            f" (epsilon {c['dp_epsilon']:g} at delta {c['dp_delta']:g})" if c.get("dp_epsilon")
            else ""))
    return (f"{c['dataset']}: {'-'.join(map(str, s.net.layer_sizes))} {c['activation']}, "
            f"{sizes} train/val/test, {c['optimizer']} lr {c['lr']:g} {c['schedule']}, {batch}, "
            f"{c['epochs']} epochs, l2 {c['l2']:g}{extra}, seed {c['seed']}")


def _epsilon_per_epoch(s: Setup, c: dict[str, Any]) -> list[float]:
    """The RDP accountant's epsilon after each epoch (DP-SGD only): one step's RDP, scaled."""
    if s.dp is None:
        return []
    q, per_epoch = privacy.sampling_plan(len(s.splits.train[1]), c["batch_size"], 1)
    return privacy.epsilon_schedule(s.dp.noise_multiplier, q, [k * per_epoch for k in range(
        1, c["epochs"] + 1)], c["dp_delta"])


def _train_command(ns: argparse.Namespace) -> int:
    """``fnn train``: resolve the config (or load the run), then train it as a ``Run``."""
    t_start = time.perf_counter()
    given = {k: v for k, v in vars(ns).items() if k not in ("func", "command")}
    opts = {k: given.pop(k) for k in RUN_OPTIONS if k in given}
    every = _validation.parameter("checkpoint_every", opts.get("checkpoint_every", 60.0))
    cache = _compilation_cache(opts.get("no_compilation_cache", False))
    timeout = _validation.parameter("distributed_timeout", opts.get("distributed_timeout", 300.0))
    if "out" in opts and "resume" not in opts:
        _check_out(opts["out"])
    try:
        many = parallel.initialize_distributed(opts.get("coordinator"), opts.get("num_processes"),
                                               opts.get("process_id"), timeout)
    except ValueError as err:
        raise UsageError(str(err)) from None
    mesh = parallel.data_mesh() if many or opts.get("data_parallel") else None
    writer = jax.process_index() == 0
    if "resume" in opts:
        extra = sorted(set(given) - {"epochs"}) + (["out"] if "out" in opts else [])
        if extra:
            raise UsageError("--resume continues a run with its saved config; drop "
                             + ", ".join(map(_option, extra)))
        folder, config, s, meta, report = _load_run(opts["resume"], given.get("epochs"))
        if meta["stopped_because"] is not None and report is not None:
            print(f"the run finished after epoch {report['epochs_run']} "
                  f"({report['stopped_because']}); --epochs N extends it")
            print(f"test accuracy {report['test_accuracy']:.4f} -- run folder {folder}")
            return 0
    else:
        config = resolve_config(given)
        if "dp_epsilon" in given and "dp_noise" in given:
            raise UsageError("--dp-epsilon calibrates the noise: drop --dp-noise")
        s = setup(config)
        if s.dp is not None:  # DP-SGD: a key nobody can recompute from the public --seed
            s = s._replace(state=s.state._replace(key=jax.random.wrap_key_data(
                np.frombuffer(os.urandom(8), np.uint32))))
        meta = {"fnn": "train", "run_id": uuid.uuid4().hex, "config": config,
                "stopped_because": None, "sessions": []}
    if mesh is not None and config["dp_clip"] is not None:
        raise UsageError("--dp-clip (DP-SGD) runs on one device: drop --data-parallel")
    training.check_batch_size(config["batch_size"], len(s.splits.train[1]), mesh)
    if "resume" not in opts:
        folder = _new_folder(config, opts.get("out"), writer)
    _interrupt.check()  # Ctrl-C during start-up: nothing written yet
    run = Run(s, config, meta, folder, writer, every, mesh, cache, t_start)
    return run.train(not opts.get("no_progress", False))


class Run:
    """One session of a run: its folder's files, the checkpoint budget, the progress bar."""

    def __init__(self, s: Setup, config: dict[str, Any], meta: dict[str, Any], folder: Path,
                 writer: bool, every: float, mesh: Any, cache: str | None, t_start: float):
        self.s, self.c, self.meta, self.folder, self.writer = s, config, meta, folder, writer
        self.every, self.mesh, self.cache, self.t_start = every, mesh, cache, t_start
        self.state = self.finite = s.state  # the latest state; the latest with finite numbers
        self.lock = threading.Lock()
        self.bar, self.jsonl, self.saved_at, self.requested, self.spent = None, None, None, \
            False, []
        self.session = {"started": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"), "first_epoch": int(s.state.epoch) + 1,
            "last_epoch": int(s.state.epoch), "checkpoints": 0, "checkpoint_time_s": 0.0}
        meta["sessions"].append(self.session)
        self.history = self._open_history(int(s.state.epoch))

    def _open_history(self, keep: int) -> list[dict[str, Any]]:
        """The epochs up to the checkpoint's (``_check_run`` found them whole); a killed run's
        leftovers after them are removed."""
        lines = self.folder / "metrics.jsonl"
        history = [json.loads(line) for line in _logged(lines)[:keep]]
        if self.writer:
            for name in RUN_FILES:
                checkpoint.remove_stale_temporaries(self.folder / name)
            checkpoint.write_atomic(lines, [_json_line(r).encode() for r in history])
            self.jsonl = open(lines, "a")  # closed at the end of train()
        return history

    def save(self, state: training.TrainState) -> None:
        """Write the checkpoint: the state, with the config and the sessions in its header."""
        t0 = time.perf_counter()
        self.session.update(wall_time_s=round(t0 - self.t_start, 3))
        self.session["checkpoints"] += self.writer
        self.saved_sessions = json.loads(json.dumps(self.meta["sessions"]))  # as written
        if self.writer:
            checkpoint.save_checkpoint(self.folder / checkpoint.CHECKPOINT_NAME, state, self.meta)
            self.saved_at = time.perf_counter()
            self.session["checkpoint_time_s"] = round(self.session["checkpoint_time_s"]
                                                      + self.saved_at - t0, 4)
        self.requested = False

    def _due(self) -> bool:
        """Asked for (SIGUSR1), or ``every`` seconds passed and saving took < 5% of them."""
        quiet = time.perf_counter() - self.saved_at
        cost = self.session["checkpoint_time_s"] / max(self.session["checkpoints"], 1)
        return self.requested or (quiet >= self.every and quiet >= 19 * cost)

    def on_epoch(self, state: training.TrainState, record: dict[str, Any]) -> None:
        with self.lock:  # not while a lost peer's handler saves
            self._epoch(state, record)
        _interrupt.check()  # Ctrl-C: raised here, between epochs, where it is safe

    def _epoch(self, state: training.TrainState, record: dict[str, Any]) -> None:
        self.state = state
        if self.spent:  # DP-SGD: the epsilon spent up to this epoch
            record["dp_epsilon"] = self.spent[record["epoch"] - 1]
        if record["stopped_because"] != "nonfinite":
            self.finite = state
        self.history.append(record)
        if self.jsonl is not None:
            self.jsonl.write(_json_line(record))
            self.jsonl.flush()
        self.session["last_epoch"] = record["epoch"]
        if record["stopped_because"] is None and self.writer and self._due():
            self.save(state)
        if self.bar is not None:
            first = self.bar.desc.endswith("(compiling)")
            self.bar.set_description(self.c["dataset"], refresh=False)
            spent = {"eps": f"{record['dp_epsilon']:.3g}"} if "dp_epsilon" in record else {}
            self.bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                                 val_acc=f"{record.get('val_accuracy', np.nan):.4f}", **spent,
                                 refresh=False)
            self.bar.update(1)
            if first:  # rate and ETA count from here: compilation is not an epoch
                self.bar.start_t = self.bar.last_print_t = self.bar._time()
                self.bar.initial = self.bar.n

    def lost(self, message: str) -> None:
        """A peer process is gone (``parallel.watch_peers``, another thread): keep the last
        finite state, say so in one line, exit 1 at once (the main thread waits in an
        all-reduce that will not end)."""
        kept = ""
        with self.lock:  # the epoch the main thread may be recording is finished first
            try:
                if self.writer:
                    self.save(self.finite)
                    self.jsonl.flush()
                    kept = f"; the checkpoint holds epoch {int(self.finite.epoch)}"
            except OSError as err:  # a full disk, say: the checkpoint saved before is kept
                kept = f"; saving failed ({err.strerror or err}): the checkpoint is the last saved"
        if self.writer:
            kept += f"; continue with: {PROG} train --resume {self.folder} (every process)"
        print(f"{PROG} train: error: {message}{kept}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

    def train(self, progress: bool) -> int:
        """Train to the config's epochs; then evaluate and write the summary."""
        c, s, done = self.c, self.s, int(self.s.state.epoch)
        if self.meta["stopped_because"] is not None:  # finished, killed before its summary
            if self.jsonl is not None:
                self.jsonl.close()
            return self.report(s.state)
        self.save(s.state)
        print(f"{PROG} train {_describe(c, s)}" + (f" (resuming after epoch {done})"
                                                    if done else ""), flush=True)
        if self.mesh is not None:
            n, p = jax.device_count(), jax.process_count()
            print(f"data-parallel on {n} device{'s' * (n > 1)} ({p} process{'es' * (p > 1)}): "
                  f"{jax.local_device_count()} on this one", flush=True)
        self.bar, self.spent = _progress(progress, c, done), _epsilon_per_epoch(s, c)
        usr1 = signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "requested", True))
        watching = parallel.watch_peers(self.lost)
        t0 = time.perf_counter()
        try:
            result = training.fit(
                s.net, s.optimizer, s.state, s.splits.train, s.splits.val, epochs=c["epochs"],
                batch_size=c["batch_size"], l2=c["l2"], eps_loss=c["eps_loss"],
                eps_grad=c["eps_grad"], patience=c["patience"], diagnostics=c["diagnostics"],
                callback=self.on_epoch, mesh=self.mesh,
                dp=s.dp)
        except KeyboardInterrupt:
            self.save(self.finite)
            print(f"{PROG} train: interrupted after epoch {int(self.finite.epoch)}; continue "
                  f"with: {PROG} train --resume {self.folder}", file=sys.stderr)
            return 130
        finally:
            watching.set()
            for closing in (self.bar, self.jsonl):
                if closing is not None:
                    closing.close()
            signal.signal(signal.SIGUSR1, usr1)
        self.session.update(compile_time_s=round(result.compile_time, 3), train_time_s=round(
            time.perf_counter() - t0 - result.compile_time, 3))
        if result.stopped_because == "nonfinite":
            return self.diverged(result.history[-1])
        self.meta["stopped_because"] = result.stopped_because
        return self.report(result.state)

    def diverged(self, record: dict[str, Any]) -> int:
        """Keep the last finite state (never a non-finite one), say where it went, exit 3."""
        self.save(self.finite)
        step = f", step {record['nonfinite_step']}" if "nonfinite_step" in record else ""
        print(f"{PROG} train: error: diverged: the loss or a parameter became NaN or infinite in "
              f"epoch {record['epoch']}{step}; the checkpoint holds epoch "
              f"{int(self.finite.epoch)}, the last finite state; train anew with a smaller "
              "--lr", file=sys.stderr)
        return 3

    def report(self, state: training.TrainState) -> int:
        """Evaluate the final params, save, write ``metrics.json`` and ``curves.png``."""
        s, c = self.s, self.c
        params = state.params if self.mesh is None else jax.device_put(
            parallel.to_host(state.params))  # replicated over the mesh: to this host's device
        ev = training._number(jax.device_get(_evaluate(s.net, params, s.splits.val,
                                                       s.splits.test)))
        best, epoch, reason = int(state.best_epoch) or None, int(state.epoch), \
            self.meta["stopped_because"]
        self.save(state)  # before the figure: a full disk there loses no training
        title = (f"fnn: {'-'.join(map(str, s.net.layer_sizes))} {c['activation']} on "
                 f"{c['dataset']} (test accuracy {ev['test']['accuracy']:.4f})")
        curves = self.writer and plot_curves(self.history, self.folder / "curves.png", title,
                                             best)
        train_time = sum(r["time"] for r in self.history)
        report = {
            "command": "fnn train", "run_id": self.meta["run_id"], "run_folder": str(self.folder),
            "config": c, "layer_sizes": list(s.net.layer_sizes),
            "num_params": sum(int(p.size) for p in jax.tree.leaves(state.params)),
            "data": {"train": len(s.splits.train[1]), "val": len(s.splits.val[1]),
                     "test": len(s.splits.test[1]), "num_classes": s.splits.num_classes,
                     "scaling": s.splits.scaling},
            "epochs_run": epoch, "stopped_because": reason, "best_epoch": best,
            "params_restored_to_best_epoch": c["patience"] is not None,
            **{f"{part}_{k}": v for part in ("val", "test") for k, v in ev[part].items()},
            "test_confusion_matrix": ev["confusion"], "train_time_s": round(train_time, 3),
            "wall_time_s": round(sum(x["wall_time_s"] for x in self.saved_sessions), 3),
            "sessions": self.saved_sessions, "compilation_cache": self.cache,
            "curves": "curves.png" if curves else None,
            "privacy": None if s.dp is None else privacy.claim(
                len(s.splits.train[1]), c["batch_size"], epoch, s.dp.noise_multiplier,
                s.dp.clip_norm, c["dp_delta"], c["dp_accountant"], target_epsilon=c["dp_epsilon"],
                overflows=sum(r.get("dp_overflows") or 0 for r in self.history)),
            "platform": _platform()}
        if self.writer:
            checkpoint.write_atomic(self.folder / "metrics.json", [json.dumps(
                _jsonable(report), indent=2, allow_nan=False).encode() + b"\n"])
        print(f"stopped after {epoch} epochs ({reason})"
              + (f", best val loss at epoch {best}" if best else "")
              + f"; train {train_time:.1f} s; val accuracy {ev['val']['accuracy']:.4f}, "
              f"test loss {ev['test']['loss']:.4f}")
        if report["privacy"] is not None:
            p = report["privacy"]
            print(f"privacy: epsilon {p['epsilon']:.4g} at delta {p['delta']:g} "
                  f"({p['accountant']}; noise {p['noise_multiplier']:.4g}, clip "
                  f"{p['clip_norm']:g}, sample rate {p['sample_rate']:.4g}, {p['steps']} "
                  f"steps, {p['overflows']} overflows)")
        print(f"test accuracy {ev['test']['accuracy']:.4f} -- run folder {self.folder}",
              flush=True)
        return 0


def _progress(enabled: bool, c: dict[str, Any], done: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if not enabled:
        return None
    tqdm.monitor_interval = 0  # no monitor thread
    bar = tqdm(total=c["epochs"], initial=done, desc=f"{c['dataset']} (compiling)",
               unit="epoch", file=sys.stderr, dynamic_ncols=True, smoothing=0)
    bar.refresh()
    return bar


@jax.jit
def _evaluate(net: MLP, params: Any, val: tuple, test: tuple) -> dict[str, Any]:
    """Validation and test metrics and the test confusion matrix, as one program."""
    predicted = metrics.predict(net, params, test[0])
    return {"val": training.evaluate(net, params, *val),
            "test": training.evaluate(net, params, *test),
            "confusion": metrics.confusion_matrix(test[1], predicted,
                                                  num_classes=net.layer_sizes[-1])}


def _platform() -> dict[str, Any]:
    import importlib.metadata as md

    from fnn import __version__

    return {"python": platform.python_version(), "fnn": __version__,
            **{name: md.version(name) for name in ("jax", "jaxlib", "optax", "numpy")},
            "machine": platform.machine(), "backend": jax.default_backend(),
            "devices": jax.device_count(), "processes": jax.process_count()}


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str,
                best_epoch: int | None = None) -> bool:
    """Loss and accuracy per epoch, train vs validation, as a two-panel PNG.

    matplotlib's object-oriented API with the Agg canvas (no GUI, no global state). Returns
    False (and writes nothing) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, what, label in ((axes[0], "loss", "mean cross-entropy loss"),
                            (axes[1], "accuracy", "accuracy")):
        for part, name in (("train", "train (minibatch mean)" if what == "loss" else "train"),
                           ("val", "validation")):
            values = [r.get(f"{part}_{what}") for r in history]
            ax.plot([r["epoch"] for r in history],
                    [np.nan if v is None else v for v in values], label=name)
        ax.set(xlabel="epoch", ylabel=label, title=what.capitalize(),
               yscale="log" if what == "loss" else "linear")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                       label=f"best val loss (epoch {best_epoch})")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fnn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    ``fnn`` with no arguments prints the help and does nothing else. Exit codes: 0 success,
    2 bad input (one line on stderr), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["playground"]:
        from fnn.playground import main as playground

        return playground(argv[1:])
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    previous = _interrupt.install()
    try:
        return ns.func(ns)
    except (UsageError, ValueError, TypeError, OSError) as err:
        code, text = 2, str(err)  # bad input, the library's ValueError and TypeError included
        if isinstance(err, _validation.ParameterError):  # the library's name -> the option
            option = {v: k for k, v in PARAMETER.items()}.get(err.name, err.name)
            text = f"{_option(option)} {err.problem}"
        elif isinstance(err, OSError):  # a fault (full disk, read-only folder): exit code 1
            code, text = 1, f"{err.strerror or err}: {err.filename}" if err.filename else text
        print(f"{PROG} {ns.command}: error: {' '.join(text.split())}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"{PROG} {ns.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _interrupt.uninstall(previous)

