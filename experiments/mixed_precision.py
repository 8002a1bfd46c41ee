"""Mixed precision on MNIST-5k: the mixed policy's test accuracy against float32, seeds 0-2.

    python experiments/mixed_precision.py [--out DIR] [--smoke]

The recipe of ``fnn train`` with its defaults: 784-256-128-10 ReLU/softmax, SGD with momentum
0.9, learning rate 0.1 with cosine decay, batch 32, 40 epochs, L2 3e-3 on the weights; the
80/10/10 stratified split and the parameters drawn from the seed as the CLI draws them, pixels
divided by the training split's maximum. Each seed trains twice from the same parameters and
shuffles, once with ``precision="f32"`` and once with ``precision="mixed"`` (bfloat16 products,
float32 master weights, loss and output delta), step by step with ``fnn.train_step``. The
target: mixed within 0.5 points of float32 on the test split, for every seed.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import Experiment, plt, table

import fnn
from fnn import data

SEEDS = (0, 1, 2)
POLICIES = ("f32", "mixed")


def split(seed: int, smoke: bool):
    """The CLI's split and scaling of MNIST-5k for ``seed``, and its init key."""
    _, k_split, k_init, k_run = jax.random.split(jax.random.key(seed), 4)
    x, y = data.load_dataset("mnist5k")
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if smoke:
        x, y = x[:600], y[:600]
    train, _, test = data.stratified_split(k_split, y, (0.8, 0.1, 0.1))
    factor = np.float32(1.0 / np.max(np.abs(x[train])))
    return (x[train] * factor, y[train], x[test] * factor, y[test]), k_init, k_run


def train(precision: str, seed: int, epochs: int, smoke: bool, batch: int = 32):
    (x, y, x_test, y_test), k_init, k_run = split(seed, smoke)
    net = fnn.MLP((784, 256, 128, 10), precision=precision)
    params = fnn.init(k_init, net)
    steps = x.shape[0] // batch
    optimizer = fnn.make_optimizer("momentum", optax.cosine_decay_schedule(0.1, epochs * steps))
    state = optimizer.init(params)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    losses, t0 = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(k_run, epoch), len(y)))
        total = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            params, state, m = fnn.train_step(net, optimizer, params, state,
                                              (xj[idx], yj[idx]), 3e-3)
            total += float(m["loss"])
        losses.append(total / steps)
    accuracy = float(fnn.accuracy(net, params, jnp.asarray(x_test), jnp.asarray(y_test)))
    dtypes = sorted({str(p.dtype) for p in jax.tree.leaves(params)})
    return {"test_accuracy": accuracy, "train_loss": losses, "param_dtypes": dtypes,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    ex = Experiment("mixed_precision", __doc__.split("\n\n")[0], argv)
    epochs, seeds = (2, SEEDS[:1]) if ex.smoke else (40, SEEDS)
    runs = {p: {str(s): train(p, s, epochs, ex.smoke) for s in seeds} for p in POLICIES}
    gaps = {str(s): 100 * (runs["f32"][str(s)]["test_accuracy"]
                           - runs["mixed"][str(s)]["test_accuracy"]) for s in seeds}
    results = {"epochs": epochs, "seeds": list(seeds), "runs": runs,
               "gap_points": gaps, "max_gap_points": max(abs(g) for g in gaps.values()),
               "target_points": 0.5, "backend": jax.default_backend()}

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for p, style in zip(POLICIES, ("-", "--"), strict=True):
        for s in seeds:
            ax_loss.plot(range(1, epochs + 1), runs[p][str(s)]["train_loss"], style,
                         label=f"{p} seed {s}")
    ax_loss.set(xlabel="epoch", ylabel="mean minibatch loss", yscale="log",
                title="training loss")
    ax_loss.legend(fontsize=7)
    width = 0.38
    for i, p in enumerate(POLICIES):
        ax_acc.bar(np.arange(len(seeds)) + (i - 0.5) * width,
                   [100 * runs[p][str(s)]["test_accuracy"] for s in seeds], width, label=p)
    ax_acc.set(xticks=range(len(seeds)), xticklabels=[f"seed {s}" for s in seeds],
               ylabel="test accuracy (%)", title="MNIST-5k test accuracy")
    low = min(100 * r["test_accuracy"] for p in POLICIES for r in runs[p].values())
    ax_acc.set_ylim(max(0.0, low - 3), 100)
    ax_acc.legend()
    ex.save_figure(fig, "mixed_precision.png")
    ex.save_json(results)
    rows = [[s, runs["f32"][str(s)]["test_accuracy"], runs["mixed"][str(s)]["test_accuracy"],
             f"{gaps[str(s)]:+.2f}", f"{runs['f32'][str(s)]['seconds']:.1f}",
             f"{runs['mixed'][str(s)]['seconds']:.1f}"] for s in seeds]
    ex.report([*table(["seed", "f32 acc", "mixed acc", "gap (points)", "f32 s", "mixed s"],
                      rows),
               f"largest gap {results['max_gap_points']:.2f} points (target 0.5) on "
               f"{results['backend']}"])
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
