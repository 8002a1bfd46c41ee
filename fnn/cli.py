"""The command line: ``fnn train`` (or ``python -m fnn train``) trains an MLP end to end.

Defaults depend on the kind of data. The image sets (``mnist5k``, the default; ``digits``;
``mnist``) train 784-256-128-10 ReLU with SGD, momentum 0.9, learning rate 0.1 with cosine
decay, batch 32, 40 epochs, L2 3e-3, pixels scaled to [0, 1]. The Playground's 2-D sets
(``circle``, ``xor``, ``gaussians``, ``spiral``; 500 points) train 2-16-16-16-2 tanh with
Adam at a constant learning rate 0.01, batch 10, no L2, standardised inputs, for 300 epochs
with early stopping (patience 50, the best validation epoch's params kept). ``mnist`` keeps
its official split (test: the 10,000 test images; validation: 5,000 of the 60,000 training
images); the other sets are split 80/10/10 (stratified, from the seed).

A run folder (``runs/<dataset>-<timestamp>`` or ``--out DIR``) gets

* ``metrics.jsonl``: one line per epoch, appended and flushed as the epoch ends;
* ``checkpoint.fnn``: the [`TrainState`][fnn.training.TrainState] with the run's config in
  its header, written at the start, then whenever ``--checkpoint-every`` seconds (default
  60) have passed and the saves so far cost under 5% of the time, on SIGUSR1, on Ctrl-C and
  at the end;
* ``metrics.json``: the summary (config, test accuracy and confusion matrix, timings of
  every session, versions) and ``curves.png``, at the end.

``--resume RUN`` continues a run, killed or not, from its checkpoint; ``--epochs N`` with it
extends a run (a cosine schedule gets a new cycle over the added epochs; the epochs done
keep theirs). The shuffles come from the seed and the epoch number, so a resumed run ends
with bitwise the parameters of an uninterrupted one (same machine).

JAX's persistent compilation cache is on (``$XDG_CACHE_HOME/fnn/jax``, or
``~/.cache/fnn/jax``; ``FNN_COMPILATION_CACHE=DIR`` moves it, ``FNN_COMPILATION_CACHE=off``
or ``--no-compilation-cache`` turns it off), so a second run of a configuration compiles
nothing new. Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted.
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
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from fnn import _validation, activations, checkpoint, data, metrics, parallel, privacy, training
from fnn.network import MLP

__all__ = ["COMMON", "DEFAULTS", "build_parser", "main", "resolve_config"]

PROG = "fnn"
COMMON: dict[str, Any] = {"dataset": "mnist5k", "scale": "auto", "seed": 0, "patience": None,
                          "eps_loss": None, "eps_grad": None, "dp_clip": None, "dp_noise": 0.0,
                          "dp_epsilon": None, "dp_delta": 1e-5, "dp_accountant": "rdp",
                          "diagnostics": False}
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
DP_OPTIONS = ("dp_noise", "dp_epsilon", "dp_delta", "dp_accountant")
"""The options that need ``--dp-clip``."""
"""Option -> the name of its entry in the library's parameter table, where they differ."""
RUN_FILES = (checkpoint.CHECKPOINT_NAME, "metrics.jsonl", "metrics.json", "curves.png")
RUN_OPTIONS = ("out", "resume", "no_progress", "checkpoint_every", "no_compilation_cache",
               "data_parallel", "coordinator", "num_processes", "process_id")
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
    """The ``fnn`` parser and its ``train`` subcommand."""
    from fnn import __version__

    parser = _Parser(prog=PROG, description="Feedforward networks and backprop, as the lecture "
                     "teaches them. 'fnn train --help' lists the options of the main job.")
    parser.add_argument("--version", action="version", version=f"fnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train}")
    p = sub.add_parser("train", prog=f"{PROG} train", argument_default=argparse.SUPPRESS,
                       help="train an MLP and write a run folder",
                       description="Train an MLP with the lecture's backprop and write a run "
                       "folder. The last line of stdout gives the test accuracy and the folder.")
    add = p.add_argument_group("data").add_argument
    add("--dataset", choices=data.DATASETS, help=f"{_default('dataset')}; mnist keeps the "
        "official split (test = the 10,000 test images, validation = 5,000 of the 60,000 "
        "training images), the others are split 80/10/10, stratified, from the seed")
    add("--data-dir", metavar="DIR", help="the MNIST IDX files or mnist.npz (--dataset mnist)")
    add("--n-samples", type=int, metavar="N", help=f"points of a 2-D set ({_default('n_samples')})")
    add("--noise", type=float, help=f"noise of a 2-D set, 0..0.5 ({_default('noise')})")
    add("--scale", choices=("auto", *data.SCALINGS), help="input scaling fitted on the train "
        "split: unit = divide by its largest |x|, standardize = mean 0 and std 1 per feature; "
        "auto = unit for images, standardize for 2-D sets")
    add = p.add_argument_group("network").add_argument
    add("--hidden", metavar="WIDTHS", help=f"hidden widths, comma-separated; 'none' for "
        f"softmax regression ({_default('hidden')})")
    add("--activation", choices=tuple(activations.ACTIVATIONS), help=_default("activation"))
    add = p.add_argument_group("training").add_argument
    add("--optimizer", choices=tuple(training.OPTIMIZERS), help="sgd is the lecture's "
        f"theta -= lr * grad; momentum and nesterov use 0.9 ({_default('optimizer')})")
    add("--lr", type=float, help=f"learning rate ({_default('lr')})")
    add("--schedule", choices=("constant", "cosine"), help=_default("schedule"))
    add("--batch-size", metavar="B", help=f"minibatch size, or 'full' for full-batch gradient "
        f"descent ({_default('batch_size')})")
    add("--epochs", type=int, help=f"maximum epochs; with --resume, extend the run to this "
        f"many ({_default('epochs')})")
    add("--l2", type=float, help=f"L2 lambda, added as lambda*W to the weight gradients "
        f"({_default('l2')})")
    add("--patience", type=int, help="early stopping: stop after this many epochs without a "
        f"lower validation loss, keep the best epoch's params ({_default('patience')})")
    add("--eps-loss", type=float, help="stop when |L_k - L_k-1| < this (default off)")
    add("--eps-grad", type=float, help="stop when the full-batch ||grad|| < this (default off)")
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
    add("--diagnostics", action="store_true", help="record the full-batch gradient norm and "
        "per-layer diagnostics every epoch (costs a full-batch backward pass per epoch)")
    add("--seed", type=int, help="seed of the data, the split, the init and the shuffles "
        "(default 0)")
    add = p.add_argument_group("run").add_argument
    add("--out", metavar="DIR", help="run folder (default runs/<dataset>-<timestamp>)")
    add("--resume", metavar="RUN", help="continue the run in this folder (or of this "
        "checkpoint file) with its saved config; --epochs N extends it")
    add("--checkpoint-every", type=float, metavar="SECONDS", help="seconds between checkpoints "
        "(default 60; 0 = every epoch); also on SIGUSR1, Ctrl-C and at the end")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    add("--no-compilation-cache", action="store_true", help="do not use JAX's persistent "
        "compilation cache (or set FNN_COMPILATION_CACHE=off)")
    add = p.add_argument_group("parallel (see docs/distributed.md)").add_argument
    add("--data-parallel", action="store_true", help="shard every minibatch over all devices "
        "(the batch size must be a multiple of the device count)")
    add("--coordinator", metavar="HOST:PORT", help="multi-process: address of process 0 "
        f"(or ${parallel.ENV_COORDINATOR})")
    add("--num-processes", type=int, metavar="P", help="multi-process: number of processes "
        f"(or ${parallel.ENV_NUM_PROCESSES})")
    add("--process-id", type=int, metavar="I", help=f"multi-process: this process, 0..P-1 "
        f"(or ${parallel.ENV_PROCESS_ID})")
    p.set_defaults(func=_train_command)
    return parser


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
        net = MLP(sizes, activation=c["activation"])
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


class RunFolder:
    """The files of one run. Only process 0 of a multi-process run writes (``writer``)."""

    def __init__(self, path: Path, writer: bool, every: float):
        self.path, self.writer, self.every = path, writer, every
        self.jsonl = self.saved_at = None
        self.save_time, self.saves, self.requested = 0.0, 0, False

    def open(self, keep_epochs: int) -> list[dict[str, Any]]:
        """Clear a killed run's leftovers: stale temporaries, epochs after the checkpoint."""
        history = []
        lines = self.path / "metrics.jsonl"
        if lines.exists():
            for line in lines.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                if isinstance(record, dict) and record.get("epoch", keep_epochs + 1) <= keep_epochs:
                    history.append(record)
        if self.writer:
            checkpoint.remove_stale_temporaries(self.path / checkpoint.CHECKPOINT_NAME)
            _write_atomic(lines, "".join(_json_line(r) for r in history))
            self.jsonl = open(lines, "a")
        return history

    def append(self, record: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(_json_line(record))
            self.jsonl.flush()

    def due(self) -> bool:
        """A checkpoint is due: asked for, or ``every`` seconds passed and saves cost < 5%."""
        if self.requested or self.saved_at is None:
            return True
        quiet = time.perf_counter() - self.saved_at
        return quiet >= self.every and quiet >= 19 * self.save_time / max(self.saves, 1)

    def save(self, state: training.TrainState, meta: dict[str, Any]) -> None:
        if self.writer:
            t0 = time.perf_counter()
            checkpoint.save_checkpoint(self.path / checkpoint.CHECKPOINT_NAME, state, meta)
            self.saved_at = time.perf_counter()
            self.save_time += self.saved_at - t0
            self.saves += 1
        self.requested = False

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(_jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file in its folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _new_folder(config: dict[str, Any], out: str | None, writer: bool) -> Path:
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = Path("runs") / f"{config['dataset']}-{stamp}", 1
        while path.exists():
            i += 1
            path = Path("runs") / f"{config['dataset']}-{stamp}-{i}"
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory")
        taken = [name for name in RUN_FILES if (path / name).exists()]
        if taken:
            raise UsageError(f"--out {out} already holds {', '.join(taken)}; continue that run "
                             f"with --resume {out} or choose another --out")
    if writer:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the run folder {path}: {err.strerror}") from None
    return path


def _load_run(resume: str, epochs: int | None) -> tuple[Path, dict, Setup, dict]:
    """The run to continue: its folder, config, setup (with the saved state) and header."""
    path = Path(resume)
    file = path / checkpoint.CHECKPOINT_NAME if path.is_dir() else path
    try:
        meta = checkpoint.read_meta(file)
        if meta.get("fnn") != "train" or not isinstance(meta.get("config"), dict):
            raise UsageError(f"--resume {resume}: {file} is not a checkpoint of fnn train")
        config = resolve_config(meta["config"])
        s = setup(config)
        s = s._replace(state=checkpoint.load_checkpoint(file, like=s.state))
    except FileNotFoundError:
        raise UsageError(f"--resume {resume}: no checkpoint at {file}") from None
    except (checkpoint.CheckpointError, OSError) as err:
        raise UsageError(f"--resume {resume}: unusable checkpoint: {err}") from None
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
    return file.parent, config, s, meta


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


def _mesh(run: dict[str, Any]) -> Any:
    try:
        many = parallel.initialize_distributed(run.get("coordinator"), run.get("num_processes"),
                                               run.get("process_id"))
    except ValueError as err:
        raise UsageError(str(err)) from None
    return parallel.data_mesh() if many or run.get("data_parallel") else None


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


def _progress(enabled: bool, c: dict[str, Any], done: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    tqdm.monitor_interval = 0  # no monitor thread
    bar = tqdm(total=c["epochs"], initial=done, desc=f"{c['dataset']} (compiling)",
               unit="epoch", file=sys.stderr, dynamic_ncols=True, smoothing=0)
    bar.refresh()
    return bar


def _tick(bar: Any, record: dict[str, Any], name: str) -> None:
    if bar is None:
        return
    first = bar.desc.endswith("(compiling)")
    bar.set_description(name, refresh=False)
    spent = {"eps": f"{record['dp_epsilon']:.3g}"} if "dp_epsilon" in record else {}
    bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                    val_acc=f"{record.get('val_accuracy', float('nan')):.4f}", **spent,
                    refresh=False)
    bar.update(1)
    if first:  # the rate and ETA count from here: compilation is not an epoch
        bar.start_t = bar.last_print_t = bar._time()
        bar.initial = bar.n


def _epsilon_per_epoch(s: Setup, c: dict[str, Any]) -> list[float]:
    """The RDP accountant's epsilon after each epoch (DP-SGD only): one step's RDP, scaled."""
    if s.dp is None:
        return []
    q, per_epoch = privacy.sampling_plan(len(s.splits.train[1]), c["batch_size"], 1)
    return privacy.epsilon_schedule(s.dp.noise_multiplier, q, [k * per_epoch for k in range(
        1, c["epochs"] + 1)], c["dp_delta"])


def _privacy_report(s: Setup, c: dict[str, Any], epochs: int,
                    history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The privacy claim of the epochs run: metrics.json's ``privacy``."""
    if s.dp is None:
        return None
    n = len(s.splits.train[1])
    q, steps = privacy.sampling_plan(n, c["batch_size"], epochs)
    sigma, delta, accountant = s.dp.noise_multiplier, c["dp_delta"], c["dp_accountant"]
    return {
        "epsilon": privacy.epsilon(sigma, q, steps, delta, accountant), "delta": delta,
        "accountant": accountant, "target_epsilon": c["dp_epsilon"], "noise_multiplier": sigma,
        "clip_norm": s.dp.clip_norm, "sample_rate": q, "steps": steps, "epochs": epochs,
        "sampling": "full batch" if q == 1 else "poisson", "expected_batch": q * n,
        "max_batch": privacy.max_batch(n, q),
        "overflows": sum(r.get("dp_overflows") or 0 for r in history),
        "event": "SelfComposedDpEvent(PoissonSampledDpEvent(sample_rate, GaussianDpEvent("
                 "noise_multiplier)), steps), add/remove adjacency",
        "dp_accounting": privacy.accounting_version()}


def _train_command(ns: argparse.Namespace) -> int:
    """``fnn train``: resolve the config (or load the run), train, write the run folder."""
    t_start = time.perf_counter()
    given = {k: v for k, v in vars(ns).items() if k not in ("func", "command")}
    run = {k: given.pop(k) for k in RUN_OPTIONS if k in given}
    every = _validation.parameter("checkpoint_every", run.get("checkpoint_every", 60.0))
    cache = _compilation_cache(run.get("no_compilation_cache", False))
    mesh = _mesh(run)
    writer = jax.process_index() == 0
    if "resume" in run:
        extra = sorted(set(given) - {"epochs"}) + (["out"] if "out" in run else [])
        if extra:
            raise UsageError("--resume continues a run with its saved config; drop "
                             + ", ".join(map(_option, extra)))
        folder, config, s, meta = _load_run(run["resume"], given.get("epochs"))
        if meta["stopped_because"] is not None and (folder / "metrics.json").exists():
            report = json.loads((folder / "metrics.json").read_text())
            print(f"the run finished after epoch {report['epochs_run']} "
                  f"({report['stopped_because']}); --epochs N extends it")
            print(f"test accuracy {report['test_accuracy']:.4f} -- run folder {folder}")
            return 0
    else:
        config = resolve_config(given)
        if mesh is not None and config["dp_clip"] is not None:
            raise UsageError("--dp-clip (DP-SGD) runs on one device: drop --data-parallel")
        if "dp_epsilon" in given and "dp_noise" in given:
            raise UsageError("--dp-epsilon calibrates the noise: drop --dp-noise")
        s = setup(config)
        meta = {"fnn": "train", "run_id": uuid.uuid4().hex, "config": config,
                "stopped_because": None, "sessions": []}
    training.check_batch_size(config["batch_size"], len(s.splits.train[1]), mesh)
    if "resume" not in run:
        folder = _new_folder(config, run.get("out"), writer)
    return _train(s, config, meta, RunFolder(folder, writer, every), mesh,
                  not run.get("no_progress", False), cache, t_start)


def _train(s: Setup, c: dict[str, Any], meta: dict[str, Any], rf: RunFolder, mesh: Any,
           progress: bool, cache: str | None, t_start: float) -> int:
    done = int(s.state.epoch)
    history = rf.open(done)
    session = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "first_epoch": done + 1, "last_epoch": done}
    meta["sessions"].append(session)
    latest = [s.state]
    spent = _epsilon_per_epoch(s, c)

    def save(state):
        session.update(wall_time_s=round(time.perf_counter() - t_start, 3), checkpoints=rf.saves
                       + 1, checkpoint_time_s=round(rf.save_time, 4))
        rf.save(state, meta)

    def on_epoch(state, record):
        latest[0] = state
        if spent:
            record["dp_epsilon"] = spent[record["epoch"] - 1]
        history.append(record)
        rf.append(record)
        session["last_epoch"] = record["epoch"]
        if record["stopped_because"] is None and rf.due():
            save(state)
        _tick(bar, record, c["dataset"])

    save(s.state)
    print(f"{PROG} train {_describe(c, s)}" + (f" (resuming after epoch {done})" if done else ""),
          flush=True)
    if mesh is not None:
        n, p = jax.device_count(), jax.process_count()
        print(f"data-parallel on {n} device{'s' * (n > 1)} ({p} process{'es' * (p > 1)}): "
              f"{jax.local_device_count()} on this one", flush=True)
    bar = _progress(progress, c, done)
    usr1 = signal.signal(signal.SIGUSR1, lambda *_: setattr(rf, "requested", True)) if hasattr(
        signal, "SIGUSR1") else None
    t_train = time.perf_counter()
    try:
        result = training.fit(
            s.net, s.optimizer, s.state, s.splits.train, s.splits.val, epochs=c["epochs"],
            batch_size=c["batch_size"], l2=c["l2"], eps_loss=c["eps_loss"],
            eps_grad=c["eps_grad"], patience=c["patience"], diagnostics=c["diagnostics"],
            callback=on_epoch, mesh=mesh, dp=s.dp)
    except KeyboardInterrupt:
        save(latest[0])
        print(f"{PROG} train: interrupted after epoch {int(latest[0].epoch)}; continue with: "
              f"{PROG} train --resume {rf.path}", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        if usr1 is not None:
            signal.signal(signal.SIGUSR1, usr1)
        rf.close()
    session.update(compile_time_s=round(result.compile_time, 3), train_time_s=round(
        time.perf_counter() - t_train - result.compile_time, 3))
    meta["stopped_because"] = result.stopped_because
    params = result.state.params
    if mesh is not None:  # replicated over the mesh: evaluate on this host's device
        params = jax.device_put(parallel.to_host(params))
    ev = training._number(jax.device_get(_evaluate(s.net, params, s.splits.val, s.splits.test)))
    title = (f"fnn: {'-'.join(map(str, s.net.layer_sizes))} {c['activation']} on "
             f"{c['dataset']} (test accuracy {ev['test']['accuracy']:.4f})")
    best = int(result.state.best_epoch) or None
    curves = plot_curves(history, rf.path / "curves.png", title, best) if rf.writer else False
    save(result.state)  # the last: the session's wall time now covers nearly all of it
    return _report(s, c, meta, rf, result.state, history, ev, curves, cache)


@jax.jit
def _evaluate(net: MLP, params: Any, val: tuple, test: tuple) -> dict[str, Any]:
    """Validation and test metrics and the test confusion matrix, as one program."""
    k = net.layer_sizes[-1]
    predicted = metrics.predict(net, params, test[0])
    return {"val": training.evaluate(net, params, *val),
            "test": training.evaluate(net, params, *test),
            "confusion": metrics.confusion_matrix(test[1], predicted, num_classes=k)}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from fnn import __version__

    out = {"python": platform.python_version(), "fnn": __version__}
    for name in ("jax", "jaxlib", "optax", "numpy"):
        out[name] = md.version(name)
    return out


def _report(s: Setup, c: dict[str, Any], meta: dict[str, Any], rf: RunFolder,
            state: training.TrainState, history: list[dict[str, Any]], ev: dict[str, Any],
            curves: bool, cache: str | None) -> int:
    """Write ``metrics.json`` (the run's summary) and print the result."""
    reason, epoch, best = meta["stopped_because"], int(state.epoch), int(state.best_epoch) or None
    train_time = sum(r["time"] for r in history)
    report = {
        "command": "fnn train", "run_id": meta["run_id"], "run_folder": str(rf.path),
        "config": c,
        "network": {"layer_sizes": list(s.net.layer_sizes), "activation": c["activation"],
                    "output": s.net.output, "loss": s.net.loss,
                    "num_params": sum(int(p.size) for p in jax.tree.leaves(state.params))},
        "data": {"train": len(s.splits.train[1]), "val": len(s.splits.val[1]),
                 "test": len(s.splits.test[1]), "num_features": s.net.layer_sizes[0],
                 "num_classes": s.splits.num_classes, "scaling": s.splits.scaling},
        "epochs_run": epoch, "stopped_because": reason, "best_epoch": best,
        "params_restored_to_best_epoch": c["patience"] is not None,
        "val_loss": ev["val"]["loss"], "val_accuracy": ev["val"]["accuracy"],
        "test_loss": ev["test"]["loss"], "test_accuracy": ev["test"]["accuracy"],
        "test_confusion_matrix": ev["confusion"],
        "train_time_s": round(train_time, 3),
        "wall_time_s": round(sum(x.get("wall_time_s", 0.0) for x in meta["sessions"]), 3),
        "sessions": meta["sessions"],
        "files": {"history": "metrics.jsonl", "checkpoint": checkpoint.CHECKPOINT_NAME,
                  "curves": "curves.png" if curves else None},
        "privacy": _privacy_report(s, c, epoch, history),
        "compilation_cache": cache, "versions": _versions(),
        "platform": {"machine": platform.machine(), "system": platform.system(),
                     "jax_backend": jax.default_backend(), "devices": jax.device_count(),
                     "processes": jax.process_count()},
    }
    if rf.writer:
        _write_atomic(rf.path / "metrics.json", json.dumps(_jsonable(report), indent=2,
                                                           allow_nan=False) + "\n")
    best_text = f", best val loss at epoch {best}" if best else ""
    print(f"stopped after {epoch} epochs ({reason}){best_text}; train {train_time:.1f} s; "
          f"val accuracy {ev['val']['accuracy']:.4f}, test loss {ev['test']['loss']:.4f}")
    if report["privacy"] is not None:
        p = report["privacy"]
        print(f"privacy: epsilon {p['epsilon']:.4g} at delta {p['delta']:g} ({p['accountant']}; "
              f"noise {p['noise_multiplier']:.4g}, clip {p['clip_norm']:g}, sample rate "
              f"{p['sample_rate']:.4g}, {p['steps']} steps, {p['overflows']} overflows)")
    print(f"test accuracy {ev['test']['accuracy']:.4f} -- run folder {rf.path}", flush=True)
    return 0


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
    epochs = [r["epoch"] for r in history]

    def series(key):
        return [np.nan if r.get(key) is None else r[key] for r in history]

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, series("train_loss"), label="train (mean minibatch loss)")
    ax_loss.plot(epochs, series("val_loss"), label="validation")
    ax_loss.set(xlabel="epoch", ylabel="mean cross-entropy loss", title="Loss", yscale="log")
    ax_acc.plot(epochs, series("train_accuracy"), label="train")
    ax_acc.plot(epochs, series("val_accuracy"), label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
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
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return ns.func(ns)
    except (UsageError, _validation.ParameterError) as err:
        if isinstance(err, _validation.ParameterError):  # the library's name -> the option
            option = {v: k for k, v in PARAMETER.items()}.get(err.name, err.name)
            err = f"{_option(option)} {err.problem}"
        print(f"{PROG} {ns.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {ns.command}: interrupted", file=sys.stderr)
        return 130
