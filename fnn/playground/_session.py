"""One Playground session: the data, the network, its training and what the page draws.

Everything here is plain Python around fnn's own functions; the HTTP layer
(``fnn.playground._server``) only moves JSON in and out of a ``Session``.

- Training is ``fnn.train_step`` (the hand-written delta recursion behind ``jax.grad(fnn.loss)``),
  called once per update from Python, so a run can be replayed with the same calls.
- The deltas drawn on the network are ``fnn.backprop``'s, served as they are (float32 values
  written as JSON numbers, which round-trip exactly).
- The histogram is ``fnn.per_example_grad_norms`` over the training points.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn import data as fnn_data
from fnn.training import OPTIMIZERS

DATASETS = ("circle", "xor", "gaussians", "spiral")
"""The Playground's four generated sets (``fnn.data.make_*``); ``"upload"`` is a user's CSV."""

FEATURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "x1": lambda x1, x2: x1,
    "x2": lambda x1, x2: x2,
    "x1^2": lambda x1, x2: x1 * x1,
    "x2^2": lambda x1, x2: x2 * x2,
    "x1*x2": lambda x1, x2: x1 * x2,
    "sin(x1)": lambda x1, x2: np.sin(x1),
    "sin(x2)": lambda x1, x2: np.sin(x2),
}
"""The Playground's input features, as functions of the point's coordinates."""

ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity", "leaky_relu")
LOSSES = {"cce": "cross-entropy", "mse": "squared error"}
MAX_LAYERS = 6
MAX_WIDTH = 8
DOMAIN = (-6.0, 6.0)  # the Playground's plot range for its generated sets
GRID = 64  # the decision-region image: GRID x GRID cells
NEURON_GRID = 20  # each neuron's small heat map
MAX_UPLOAD_BYTES = 1 << 20
MAX_UPLOAD_ROWS = 10_000


def _show(value) -> str:
    """``repr(value)``, shortened to 80 characters for a message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else (
        f"an integer of {len(str(abs(value)))} digits")
    return text if len(text) <= 80 else text[:77] + "..."


def _number(name: str, lo: float, hi: float, integer: bool = False):
    """A check that a setting is a number in ``[lo, hi]`` (an integer if ``integer``)."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {_show(value)}")
        if not lo <= value <= hi:  # NaN, infinities and integers of any size compare
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {_show(value)}")
        if integer and value != int(value):
            raise ValueError(f"{name} must be an integer, got {_show(value)}")
        return int(value) if integer else float(value)

    return check


def _choice(name: str, valid):
    """A check that a setting is one of the names ``valid``."""
    def check(value):
        if not isinstance(value, str) or value not in valid:
            raise ValueError(f"{name} must be one of {sorted(valid)}, got {_show(value)}")
        return value

    return check


def _features(value):
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"features must be a non-empty list of {list(FEATURES)}, got {value!r}")
    for name in value:
        _choice("features", FEATURES)(name)
    if len(set(value)) != len(value):
        raise ValueError(f"features must not repeat, got {value!r}")
    return tuple(name for name in FEATURES if name in value)  # the page's fixed order


def _hidden(value):
    if not isinstance(value, list | tuple) or len(value) > MAX_LAYERS:
        raise ValueError(f"hidden must be a list of at most {MAX_LAYERS} widths, got {value!r}")
    return tuple(_number("hidden width", 1, MAX_WIDTH, integer=True)(n) for n in value)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the page can set. Defaults: the Playground's (circle, 2-4-2 tanh, lr 0.03)."""

    dataset: str = "circle"
    noise: float = 0.0
    train_ratio: float = 0.5
    points: int = 500
    seed: int = 0
    features: tuple[str, ...] = ("x1", "x2")
    hidden: tuple[int, ...] = (4, 2)
    activation: str = "tanh"
    loss: str = "cce"
    optimizer: str = "sgd"
    learning_rate: float = 0.03
    l2: float = 0.0
    batch_size: int = 10
    feedback: str = "backprop"
    steps_per_frame: int = 5

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (len(self.features), *self.hidden, 2)

    def net(self) -> fnn.MLP:
        """Two softmax outputs, ``P(class 0)`` and ``P(class 1)``, with the chosen loss."""
        return fnn.MLP(self.layer_sizes, activation=self.activation, output="softmax",
                       loss=self.loss, feedback=self.feedback)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "dataset": _choice("dataset", (*DATASETS, "upload")),
    "noise": _number("noise", 0.0, 0.5),
    "train_ratio": _number("train_ratio", 0.1, 0.9),
    "points": _number("points", 50, 2000, integer=True),
    "seed": _number("seed", 0, 2**31 - 1, integer=True),
    "features": _features,
    "hidden": _hidden,
    "activation": _choice("activation", ACTIVATIONS),
    "loss": _choice("loss", LOSSES),
    "optimizer": _choice("optimizer", OPTIMIZERS),
    "learning_rate": _number("learning_rate", 1e-5, 10.0),
    "l2": _number("l2", 0.0, 10.0),
    "batch_size": _number("batch_size", 1, 2000, integer=True),
    "feedback": _choice("feedback", fnn.FEEDBACK_RULES),
    "steps_per_frame": _number("steps_per_frame", 1, 100, integer=True),
}
# What a change of each field throws away: the data (and so the net), the net, the optimizer
# state, or nothing (learning rate, L2, batch size, feedback and speed apply from the next step).
_NEW_DATA = {"dataset", "noise", "train_ratio", "points", "seed"}
_NEW_NET = {"features", "hidden", "activation", "loss"}
_NEW_OPTIMIZER = {"optimizer"}


def validate(changes: Mapping[str, Any], base: Config) -> Config:
    """``base`` with ``changes`` applied, each value checked by name (``ValueError``)."""
    if not isinstance(changes, Mapping):
        raise ValueError(f"expected a JSON object of settings, got {type(changes).__name__}")
    unknown = sorted(set(changes) - set(_CHECKS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; valid: {sorted(_CHECKS)}")
    return dataclasses.replace(base, **{k: _CHECKS[k](v) for k, v in changes.items()})


def input_features(points: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The network's inputs: one column per feature name, shape ``(N, len(names))`` float32."""
    with np.errstate(over="ignore", invalid="ignore"):  # x1^2 of a point near float32's limit
        x1, x2 = points[:, 0].astype(np.float32), points[:, 1].astype(np.float32)
        return np.stack([FEATURES[n](x1, x2) for n in names], axis=1).astype(np.float32)


def parse_csv(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A user's 2-D data set: rows ``x1,x2,label``, an optional header, labels 0/1 (or -1/1).

    Returns:
      ``(points, y)``: float32 ``(N, 2)`` and int32 ``(N,)``.

    Raises:
      ValueError: naming the row and what is wrong (not numeric, not finite, not three
      columns, a label outside {0, 1} / {-1, 1}, one class only, too few or too many rows).
    """
    if len(text.encode()) > MAX_UPLOAD_BYTES:
        raise ValueError(f"the file is larger than {MAX_UPLOAD_BYTES} bytes")
    text = text.removeprefix("\ufeff")  # a byte-order mark (spreadsheets write one)
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and not _is_numeric_row(lines[0][1]):
        lines = lines[1:]  # a header
    if not 4 <= len(lines) <= MAX_UPLOAD_ROWS:
        raise ValueError(f"expected 4 to {MAX_UPLOAD_ROWS} data rows, found {len(lines)}")
    rows = []
    for number, line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 3:
            raise ValueError(f"row {number}: expected 3 columns (x1, x2, label), "
                             f"found {len(cells)}: {line[:80]!r}")
        try:
            values = [float(c) for c in cells]
        except ValueError:
            raise ValueError(f"row {number}: not a number in {line[:80]!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"row {number}: values must be finite, found {line[:80]!r}")
        rows.append(values)
    table = np.asarray(rows, dtype=np.float64)
    labels = table[:, 2]
    if np.all(np.isin(labels, (-1.0, 1.0))):
        labels = (labels > 0).astype(np.float64)
    bad = np.flatnonzero(~np.isin(labels, (0.0, 1.0)))
    if bad.size:
        raise ValueError(f"row {lines[bad[0]][0]}: the label must be 0 or 1 (or -1 or 1), "
                         f"found {table[bad[0], 2]!r}")
    if np.unique(labels).size < 2:
        raise ValueError("the labels must include both classes, 0 and 1")
    return _float32_points(table[:, :2], lines), labels.astype(np.int32)


def _float32_points(points: np.ndarray, lines: list[tuple[int, str]]) -> np.ndarray:
    """``points`` as float32, refusing by row and column a value float32 cannot hold."""
    with np.errstate(over="ignore"):
        out = points.astype(np.float32)
    bad = np.argwhere(~np.isfinite(out))
    if bad.size:
        row, col = bad[0]
        value = float(points[row, col])
        raise ValueError(f"row {lines[row][0]}, column x{col + 1}: {value!r} is "
                         f"too large for float32 (at most {float(np.finfo(np.float32).max):.4g}"
                         " in magnitude)")
    return out


def _is_numeric_row(line: str) -> bool:
    try:
        [float(c) for c in line.split(",")]
    except ValueError:
        return False
    return True


def quantize(values: np.ndarray) -> str:
    """Values in ``[-1, 1]`` (clipped; NaN drawn as 0, white) as base64 bytes
    ``round((v + 1) * 127.5)``."""
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    q = np.rint((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii")


def grid_points(domain: np.ndarray, n: int) -> np.ndarray:
    """``n * n`` cell centres over ``domain = [[x1_lo, x1_hi], [x2_lo, x2_hi]]``, row-major
    from the top row (largest ``x2``) down, as an image is stored."""
    x1 = np.linspace(domain[0, 0], domain[0, 1], n, endpoint=False) + (
        domain[0, 1] - domain[0, 0]) / (2 * n)
    x2 = np.linspace(domain[1, 1], domain[1, 0], n, endpoint=False) - (
        domain[1, 1] - domain[1, 0]) / (2 * n)
    g1, g2 = np.meshgrid(x1, x2)
    big = float(np.finfo(np.float32).max)  # an uploaded set's domain may reach beyond it
    return np.clip(np.stack([g1.ravel(), g2.ravel()], axis=1), -big, big).astype(np.float32)


@jax.jit
def _frame(net: fnn.MLP, params: fnn.Params, x_train, y_train, x_test, y_test, x_all,
           grid, neuron_grid):
    """What the page draws after each batch of updates, in one compiled call."""
    loss = lambda x, y: fnn.loss(net, params, x, y)  # noqa: E731
    _, a = jax.vmap(lambda x: fnn.forward_trace(net, params, x))(neuron_grid)
    return {
        "train_loss": loss(x_train, y_train),
        "test_loss": loss(x_test, y_test) if x_test.shape[0] else jnp.nan,
        "train_accuracy": fnn.accuracy(net, params, x_train, y_train),
        "test_accuracy": (fnn.accuracy(net, params, x_test, y_test) if x_test.shape[0]
                          else jnp.nan),
        "region": fnn.forward(net, params, grid)[:, 1] * 2 - 1,
        # hidden units as they are; output unit k's probability in class k's colour
        # (class 0 orange = -1, class 1 blue = +1), as the Playground colours everything
        "neurons": jnp.concatenate([*a[1:-1], (a[-1] * 2 - 1) * jnp.array([[-1.0, 1.0]])],
                                   axis=1).T,
        "points_p1": fnn.forward(net, params, x_all)[:, 1],
        "grad_norms": fnn.per_example_grad_norms(net, params, x_train, y_train),
    }


backprop = jax.jit(fnn.backprop)
"""``fnn.backprop``, compiled; the deltas the page draws are this function's."""


@functools.cache
def _optimizer(name: str) -> optax.GradientTransformation:
    # One object per name, so that fnn.train_step (static in its optimizer) compiles once;
    # the learning rate lives in the optimizer's state and changes without recompiling.
    return optax.inject_hyperparams(OPTIMIZERS[name])(lr=0.0)


def _floats(a, decimals: int | None = None) -> list:
    """JSON numbers; a value that is not finite (training diverged) becomes ``null``."""
    a = np.asarray(a, dtype=np.float64)
    if decimals is not None:
        a = np.round(a, decimals)
    return np.where(np.isfinite(a), a, None).tolist()


class Session:
    """The state behind one page: configuration, data, parameters and optimizer state."""

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.upload: tuple[np.ndarray, np.ndarray] | None = None
        self.init_seed = self.config.seed
        self._new_data()

    # ----------------------------------------------------------------- (re)building

    def _new_data(self) -> None:
        c = self.config
        if c.dataset == "upload":
            if self.upload is None:
                raise ValueError("no uploaded data set: upload a CSV first")
            points, y = self.upload
        else:
            key = jax.random.key(c.seed)
            points, y = fnn_data.load_dataset(c.dataset, key=key, n=c.points, noise=c.noise)
        train, _, test = fnn_data.stratified_split(
            jax.random.fold_in(jax.random.key(c.seed), 1), y,
            (c.train_ratio, 0.0, 1.0 - c.train_ratio))
        if np.size(train) == 0:
            raise ValueError(f"the training split is empty at train_ratio {c.train_ratio} "
                             f"with {np.size(y)} points: raise train_ratio or add points")
        self.points, self.y = np.asarray(points, np.float32), np.asarray(y, np.int32)
        self.train_idx, self.test_idx = train, test
        if c.dataset == "upload":
            lo, hi = self.points.min(0).astype(np.float64), self.points.max(0).astype(np.float64)
            pad = np.maximum(0.1 * (hi - lo), 1e-3)  # in float64: hi - lo may overflow float32
            self.domain = np.stack([lo - pad, hi + pad], axis=1)
        else:
            self.domain = np.array([DOMAIN, DOMAIN])
        self._new_net()

    def _new_net(self) -> None:
        c = self.config
        self.net = c.net()
        self.x_all = input_features(self.points, c.features)
        self.grid = input_features(grid_points(self.domain, GRID), c.features)
        self.neuron_grid = input_features(grid_points(self.domain, NEURON_GRID), c.features)
        self.params = fnn.init(jax.random.key(self.init_seed), self.net)
        self.step_count = 0
        self.seen = 0  # training points the updates have used, for the epoch count
        self.replayable = True  # no setting changed since the initial parameters
        self.epoch_rng = np.random.default_rng(self.init_seed)
        self.queue = np.zeros(0, np.int64)
        self.last_batch = self.train_idx[: c.batch_size]
        self._new_optimizer()

    def _new_optimizer(self) -> None:
        self.optimizer = _optimizer(self.config.optimizer)
        self.opt_state = self.optimizer.init(self.params)

    @contextlib.contextmanager
    def _all_or_nothing(self):
        """Put every attribute back as it was if the block raises: a refused change changes
        nothing."""
        saved = dict(vars(self))
        try:
            yield
        except BaseException:
            vars(self).clear()
            vars(self).update(saved)
            raise

    def configure(self, changes: Mapping[str, Any]) -> str:
        """Apply the page's settings; returns what was rebuilt: data, net, optimizer or none.
        A refused setting (``ValueError``) changes nothing."""
        with self._all_or_nothing():
            return self._configure(changes)

    def _configure(self, changes: Mapping[str, Any]) -> str:
        old, new = self.config, validate(changes, self.config)
        changed = {f.name for f in dataclasses.fields(Config)
                   if getattr(old, f.name) != getattr(new, f.name)}
        if new.dataset == "upload" and self.upload is None:
            raise ValueError("no uploaded data set: upload a CSV first")
        self.config = new
        if changed & _NEW_DATA:
            self._new_data()
            return "data"
        if changed & _NEW_NET:
            self._new_net()
            return "net"
        if changed and self.step_count:
            self.replayable = False
        if "feedback" in changed:
            self.net = new.net()  # same parameters, a different B in the recursion
        if changed & _NEW_OPTIMIZER:
            self._new_optimizer()
            return "optimizer"
        return "none"

    def reset(self) -> None:
        """New initial parameters (the next seed), the same data and settings."""
        self.init_seed += 1
        self._new_net()

    def set_upload(self, text: str) -> None:
        """Validate a CSV (``parse_csv``) and train on it from now on; a refused file
        (``ValueError``) changes nothing."""
        upload = parse_csv(text)
        with self._all_or_nothing():
            self.upload = upload
            self.config = dataclasses.replace(self.config, dataset="upload")
            self._new_data()

    # ----------------------------------------------------------------- training

    def _next_batch(self) -> np.ndarray:
        """The next minibatch of a shuffled epoch over the training points."""
        b = min(self.config.batch_size, self.train_idx.size)
        if self.queue.size < b:
            self.queue = self.epoch_rng.permutation(self.train_idx)
        batch, self.queue = self.queue[:b], self.queue[b:]
        return batch

    def step(self, n: int) -> None:
        """``n`` updates, each ``fnn.train_step`` on the next minibatch."""
        c = self.config
        self.opt_state.hyperparams["lr"] = jnp.asarray(c.learning_rate, jnp.float32)
        for _ in range(n):
            batch = self._next_batch()
            self.params, self.opt_state, _ = fnn.train_step(
                self.net, self.optimizer, self.params, self.opt_state,
                (self.x_all[batch], self.y[batch]), c.l2)
            self.last_batch = batch
            self.step_count += 1
            self.seen += batch.size

    # ----------------------------------------------------------------- what the page draws

    def deltas(self, example: int | None) -> list[list[float]]:
        """``delta[l]`` for ``l = 1 .. L``: of point ``example``, or the mean over the last
        minibatch (``None``), from ``fnn.backprop`` on the current parameters."""
        if example is None:
            idx = self.last_batch
            bp = backprop(self.net, self.params, self.x_all[idx], self.y[idx])
            return [_floats(np.asarray(d).mean(0)) for d in bp.delta[1:]]
        if not (isinstance(example, int) and 0 <= example < self.y.size):
            raise ValueError(f"example must be a point index in [0, {self.y.size}), "
                             f"got {example!r}")
        bp = backprop(self.net, self.params, self.x_all[example:example + 1],
                      self.y[example:example + 1])
        return [_floats(np.asarray(d)[0]) for d in bp.delta[1:]]

    def frame(self, example: int | None = None) -> dict:
        """The state after the latest update, as JSON-ready values."""
        tr, te = self.train_idx, self.test_idx
        out = jax.device_get(_frame(self.net, self.params, self.x_all[tr], self.y[tr],
                                    self.x_all[te], self.y[te], self.x_all, self.grid,
                                    self.neuron_grid))
        norms = np.asarray(out["grad_norms"], np.float64)
        q1, q3 = np.nanpercentile(norms, [25, 75]) if np.isfinite(norms).any() else (0, 0)
        outliers = tr[norms > q3 + 1.5 * (q3 - q1)]
        finite = lambda v: float(v) if math.isfinite(float(v)) else None  # noqa: E731
        return {
            "step": self.step_count,
            "epoch": self.seen / tr.size,
            "train_loss": finite(out["train_loss"]),
            "test_loss": finite(out["test_loss"]),
            "train_accuracy": finite(out["train_accuracy"]),
            "test_accuracy": finite(out["test_accuracy"]),
            "region": quantize(np.asarray(out["region"])),
            "neurons": quantize(np.asarray(out["neurons"])),
            "weights": [{"W": _floats(p["W"], 5), "b": _floats(p["b"], 5)} for p in self.params],
            "example": example,
            "deltas": self.deltas(example),
            "points_p1": _floats(out["points_p1"]),
            "grad_norms": _floats(norms),
            "outliers": outliers.tolist(),
        }

    def dataset(self) -> dict:
        """The points, their labels and split, the plot's domain, the feature heat maps."""
        features = input_features(grid_points(self.domain, NEURON_GRID), tuple(FEATURES))
        scale = np.maximum(np.abs(features).max(0), 1e-12)
        with np.errstate(invalid="ignore"):  # inf / inf where x1^2 overflowed: drawn as 0
            maps = {n: quantize(features[:, i] / scale[i]) for i, n in enumerate(FEATURES)}
        return {
            "config": dataclasses.asdict(self.config),
            "layer_sizes": list(self.config.layer_sizes),
            "points": _floats(self.points),
            "y": self.y.tolist(),
            "train": self.train_idx.tolist(),
            "test": self.test_idx.tolist(),
            "domain": self.domain.tolist(),
            "grid": GRID,
            "neuron_grid": NEURON_GRID,
            "feature_maps": maps,
        }

    # ----------------------------------------------------------------- export

    def export_npz(self) -> bytes:
        """The trained parameters and what is needed to use them, as ``.npz`` bytes."""
        c = self.config
        arrays: dict[str, np.ndarray] = {}
        for l, p in enumerate(self.params, start=1):
            arrays[f"W{l}"] = np.asarray(p["W"])
            arrays[f"b{l}"] = np.asarray(p["b"])
        arrays.update(
            layer_sizes=np.asarray(c.layer_sizes), points=self.points, y=self.y,
            x=self.x_all, train_idx=self.train_idx, test_idx=self.test_idx,
            step=np.asarray(self.step_count), init_seed=np.asarray(self.init_seed),
            config=np.asarray(json.dumps(dataclasses.asdict(c))))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def snippet(self, filename: str = "fnn-playground.npz") -> str:
        """Python that loads the export with fnn, and runs the same training again."""
        c = self.config
        changed = "" if self.replayable else (
            "\n# Settings changed during this run: the replay uses the final settings only,"
            "\n# so its weights differ from the export's.")
        return SNIPPET.format(
            filename=filename, L=self.net.depth, layer_sizes=c.layer_sizes,
            activation=c.activation, loss=c.loss, feedback=c.feedback, changed=changed,
            optimizer=c.optimizer, lr=c.learning_rate, l2=c.l2, batch=c.batch_size,
            seed=self.init_seed, steps=self.step_count, features=", ".join(c.features)).strip()


SNIPPET = '''
# Exported from fnn's Playground after {steps} updates. Inputs (features): {features}.
import jax, jax.numpy as jnp, numpy as np, optax
import fnn
from fnn.training import OPTIMIZERS

f = np.load("{filename}")
x, y, train, test = f["x"], f["y"], f["train_idx"], f["test_idx"]
net = fnn.MLP({layer_sizes}, activation="{activation}", output="softmax",
              loss="{loss}", feedback="{feedback}")
params = tuple({{"W": jnp.asarray(f[f"W{{l}}"]), "b": jnp.asarray(f[f"b{{l}}"])}}
               for l in range(1, {L} + 1))
p1 = fnn.forward(net, params, x)[:, 1]  # P(class 1) of every point
print("test accuracy", float(fnn.accuracy(net, params, x[test], y[test])))

# The same run again with fnn's API: same initial weights, minibatches and updates.{changed}
optimizer = optax.inject_hyperparams(OPTIMIZERS["{optimizer}"])(lr={lr})
replay = fnn.init(jax.random.key({seed}), net)
opt_state = optimizer.init(replay)
rng, queue, size = np.random.default_rng({seed}), train[:0], min({batch}, train.size)
for step in range({steps}):
    if queue.size < size:
        queue = rng.permutation(train)
    batch, queue = queue[:size], queue[size:]
    replay, opt_state, _ = fnn.train_step(
        net, optimizer, replay, opt_state, (x[batch], y[batch]), {l2})
gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(replay),
                                                        jax.tree.leaves(params)))
print("replayed", {steps}, "updates; largest difference to the export:", gap)
'''
