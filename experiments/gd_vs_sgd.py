"""Full-batch gradient descent against minibatch SGD and Adam, per epoch and per second (003).

    python experiments/gd_vs_sgd.py [--out DIR] [--smoke]

The lecture's training loop (001, 003) is $\\theta \\leftarrow \\theta - \\eta \\nabla L$ with
the gradient of the whole training set (full-batch gradient descent, one update per epoch) or
of minibatches of a shuffled epoch (minibatch SGD, ``N / B`` updates per epoch). This script
trains the same network from the same initial parameters three ways on the same data:
full-batch gradient descent (``optax.sgd``, ``batch_size=None``), minibatch SGD (``optax.sgd``,
batch 64) and Adam (``optax.adam``, batch 64). The problem is MNIST-5k (4,000 training and
1,000 test images, the split of ``digits.py``, pixels in [0, 1]) with a 784-64-10 ReLU
network. The experiment is about the loop, so it is written here: each epoch is one call of
``fnn.train_epoch`` (a jitted ``lax.scan`` over the minibatches), timed on its own (compiled
beforehand, ``block_until_ready``), and the full-batch training loss is evaluated after it,
outside the timing.

Writes ``loss.png`` (full-batch training loss against epochs and against wall-clock seconds
of training) and ``gd_vs_sgd.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np
from _common import Experiment, finite, plt, table

import fnn
from fnn import data

COLORS = {"full-batch GD": "tab:red", "minibatch SGD": "tab:blue", "Adam": "tab:green"}

init = jax.jit(fnn.init)


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("gd_vs_sgd", __doc__.splitlines()[0], argv)
    hidden, epochs = (16, 3) if exp.smoke else (64, 60)
    batch = 64
    runs = {  # name: (optimizer, learning rate, batch size)
        "full-batch GD": ("sgd", 0.3, None),
        "minibatch SGD": ("sgd", 0.1, batch),
        "Adam": ("adam", 1e-3, batch),
    }

    x, y = data.load_dataset("mnist5k")
    train, _, test = data.stratified_split(jax.random.key(0), y, (0.8, 0.0, 0.2))
    if exp.smoke:
        train, test = train[:512], test[:200]
    top = float(x[train].max())
    x_train, x_test = jax.device_put(x[train] / top), jax.device_put(x[test] / top)
    y_train, y_test = jax.device_put(y[train]), jax.device_put(y[test])
    n = int(train.size)

    net = fnn.MLP((784, hidden, 10), activation="relu")
    params0 = init(jax.random.key(1), net)  # the same start for every run
    key = jax.random.key(2)
    loss0 = float(fnn.evaluate(net, params0, x_train, y_train)["loss"])

    results: dict = {"layer_sizes": net.layer_sizes, "n_train": n, "n_test": int(test.size),
                     "epochs": epochs, "initial_loss": loss0, "runs": {}}
    curves = {}
    for name, (opt_name, lr, bs) in runs.items():
        optimizer = fnn.make_optimizer(opt_name, lr)
        state0 = optimizer.init(params0)
        # Compile train_epoch for this optimizer before timing anything.
        jax.block_until_ready(fnn.train_epoch(net, optimizer, params0, state0, x_train, y_train,
                                              key, batch_size=bs))
        params, state = params0, state0
        losses, seconds, elapsed = [loss0], [0.0], 0.0
        for epoch in range(1, epochs + 1):
            epoch_key = jax.random.fold_in(key, epoch)  # the shuffle of fnn.fit's epoch
            t0 = time.perf_counter()
            params, state, m = fnn.train_epoch(net, optimizer, params, state, x_train, y_train,
                                               epoch_key, batch_size=bs)
            jax.block_until_ready(params)
            elapsed += time.perf_counter() - t0
            seconds.append(elapsed)
            losses.append(float(fnn.evaluate(net, params, x_train, y_train)["loss"]))
        steps_per_epoch = int(m["steps"])
        test_eval = fnn.evaluate(net, params, x_test, y_test)
        curves[name] = {"loss": losses, "seconds": seconds}
        results["runs"][name] = {
            "optimizer": opt_name, "learning_rate": lr, "batch_size": bs,
            "steps_per_epoch": steps_per_epoch, "train_loss": losses,
            "train_seconds": seconds, "final_train_loss": losses[-1],
            "test_loss": float(test_eval["loss"]),
            "test_accuracy": float(test_eval["accuracy"]),
            "seconds_per_epoch": elapsed / epochs,
        }

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained", sharey=True)
    for name, c in curves.items():
        r = results["runs"][name]
        bs = "all" if r["batch_size"] is None else r["batch_size"]
        label = (f"{name}: {r['optimizer']} lr {r['learning_rate']:g}, batch {bs} "
                 f"({r['steps_per_epoch']} update{'s' * (r['steps_per_epoch'] > 1)}/epoch)")
        ax1.semilogy(np.arange(epochs + 1), c["loss"], "-", color=COLORS[name], label=label)
        ax2.semilogy(c["seconds"], c["loss"], ".-", ms=3, color=COLORS[name], label=name)
    ax1.set_xlabel("epoch (passes over the training set)")
    ax1.set_ylabel("full-batch training loss (mean cross-entropy, log scale)")
    ax1.set_title("Training loss against epochs")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("wall-clock seconds of training (2-core CPU, compilation excluded)")
    ax2.set_title("Training loss against time")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{'-'.join(map(str, net.layer_sizes))} ReLU on MNIST-5k ({n} training "
                 "images), the same initial parameters for all three")
    exp.save_figure(fig, "loss.png")

    exp.save_json(results)
    assert finite([r["final_train_loss"] for r in results["runs"].values()])
    rows = [(name, r["steps_per_epoch"], r["final_train_loss"], r["test_accuracy"],
             f"{r['seconds_per_epoch'] * 1e3:.1f}") for name, r in results["runs"].items()]
    exp.report([f"{'-'.join(map(str, net.layer_sizes))} on MNIST-5k ({n} train), {epochs} "
                f"epochs from the same start (initial loss {loss0:.3f})",
                *table(("run", "updates/epoch", "final train loss", "test acc", "ms/epoch"),
                       rows)])
    return results


if __name__ == "__main__":
    main()
