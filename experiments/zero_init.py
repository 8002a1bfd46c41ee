"""Why the weights must not start equal: zero and constant initialisation (lecture 004).

    python experiments/zero_init.py [--out DIR] [--smoke]

Trains ``64 - 16 - 10`` networks on scikit-learn's 8x8 digits (standardised) with minibatch
SGD from four starts:

- **sigmoid, all zero** (``W = 0``, ``b = 0``): every hidden unit computes the same
  ``a = 0.5``. At the first step ``delta[1] = (W[2]^T delta[2]) * g'(z[1]) = 0`` because
  ``W[2] = 0``; from then on ``W[2]`` has identical columns, so the hidden deltas are
  nonzero but identical for every hidden unit, every hidden unit gets the same update and the
  16 units stay copies of one unit: the layer has the power of a single unit.
- **sigmoid, constant** (every weight 0.1): the same symmetry, from a nonzero start.
- **ReLU, all zero**: ``z[1] = 0``, ``a[1] = relu(0) = 0`` and ``relu'(0) = 0``, so
  ``delta[1] = 0`` and ``dW[2] = delta[2] a[1]^T = 0`` forever: only the output bias learns.
- **sigmoid, random** (``fnn.init``): the symmetry is broken and the units specialise.

The symmetry is measured as the largest pairwise Euclidean distance between the rows of
``W[1]`` (the hidden units' incoming weights), exactly 0 while the units are identical.

Writes ``hidden_weights.png`` (the 16 rows of ``W[1]`` as 8x8 images after training, per
start), ``symmetry_and_loss.png`` (the row spread and the training loss over the steps) and
``zero_init.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from _common import Experiment, digits_split, plt, table

import fnn

CASES = (  # name -> (activation, start)
    ("sigmoid, all zero", "sigmoid", "zero"),
    ("sigmoid, constant 0.1", "sigmoid", "constant"),
    ("ReLU, all zero", "relu", "zero"),
    ("sigmoid, random (fnn.init)", "sigmoid", "random"),
)
COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:green")


def start(net: fnn.MLP, how: str) -> fnn.Params:
    """Initial parameters: all zero, every weight 0.1 (biases zero), or ``fnn.init``."""
    if how == "random":
        return jax.jit(fnn.init)(jax.random.key(0), net)
    value = 0.0 if how == "zero" else 0.1
    sizes = net.layer_sizes
    return tuple({"W": jnp.asarray(np.full((sizes[l], sizes[l - 1]), value, np.float32)),
                  "b": jnp.asarray(np.zeros(sizes[l], np.float32))}
                 for l in range(1, net.depth + 1))


def row_spread(W: jax.Array) -> jax.Array:
    """The largest Euclidean distance between two rows of ``W``: 0 iff all rows are equal."""
    diff = W[:, None, :] - W[None, :, :]
    return jnp.max(jnp.sqrt(jnp.sum(diff * diff, axis=-1)))


@jax.jit
def sgd_step(net: fnn.MLP, lr: float, params: fnn.Params, xb: jax.Array, yb: jax.Array):
    """One SGD step on ``fnn.loss``; returns the new params, the loss, the rows' spread."""
    value, grads = jax.value_and_grad(fnn.loss, argnums=1)(net, params, xb, yb)
    params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params, value, row_spread(params[0]["W"])


backprop = jax.jit(fnn.backprop)
forward = jax.jit(fnn.forward)


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("zero_init", __doc__.splitlines()[0], argv)
    epochs, batch, lr = (1, 64, 0.5) if exp.smoke else (20, 64, 0.5)
    hidden = 4 if exp.smoke else 16

    x_train, y_train, x_test, y_test = digits_split(exp.smoke)
    n_batches = x_train.shape[0] // batch

    results: dict = {"layer_sizes": [64, hidden, 10], "epochs": epochs, "batch": batch,
                     "learning_rate": lr, "cases": {}}
    curves = {}
    for name, act, how in CASES:
        net = fnn.MLP((64, hidden, 10), activation=act)
        params = start(net, how)

        # The hidden deltas before and after the first step (then W[2] is no longer zero).
        bp0 = backprop(net, params, x_train[:batch], y_train[:batch])
        spreads, losses = [float(row_spread(params[0]["W"]))], []
        bp1 = None
        rng = np.random.default_rng(1)
        for _ in range(epochs):
            order = rng.permutation(x_train.shape[0])
            for b in range(n_batches):
                idx = order[b * batch:(b + 1) * batch]
                params, value, spread = sgd_step(net, lr, params, x_train[idx], y_train[idx])
                losses.append(float(value))
                spreads.append(float(spread))
                if bp1 is None:
                    bp1 = backprop(net, params, x_train[:batch], y_train[:batch])
        d1 = np.asarray(bp1.delta[1])
        test_acc = float(np.mean(np.argmax(forward(net, params, x_test), 1) == y_test))
        curves[name] = {"spread": spreads, "loss": losses, "W1": np.asarray(params[0]["W"])}
        results["cases"][name] = {
            "activation": act, "start": how,
            "hidden_delta_abs_max_step0": float(np.max(np.abs(bp0.delta[1]))),
            "hidden_delta_abs_max_step1": float(np.max(np.abs(d1))),
            # per sample, the largest difference between two hidden units' deltas
            "hidden_delta_spread_step1": float(np.max(d1.max(axis=1) - d1.min(axis=1))),
            "W1_row_spread_final": spreads[-1],
            "W1_row_spread_max_over_training": max(spreads),
            "W2_abs_max_final": float(np.max(np.abs(params[1]["W"]))),
            "loss_first": losses[0], "loss_last_epoch": float(np.mean(losses[-n_batches:])),
            "test_accuracy": test_acc,
        }

    # Figure 1: the hidden units' incoming weights as 8x8 images, one row per start.
    fig, axes = plt.subplots(len(CASES), hidden, figsize=(16, 5.2), layout="constrained")
    for r, (name, _, _) in enumerate(CASES):
        W1 = curves[name]["W1"]
        vmax = max(float(np.max(np.abs(W1))), 1e-12)
        for j in range(hidden):
            ax = axes[r, j]
            ax.imshow(W1[j].reshape(8, 8), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"unit {j + 1}", fontsize=8)
        c = results["cases"][name]
        stuck = "\n(W[1] stays 0)" if c["W1_row_spread_max_over_training"] == 0 and not np.any(
            W1) else ""
        axes[r, 0].set_ylabel(f"{name}{stuck}\nrow spread {c['W1_row_spread_final']:.2g}\n"
                              f"test acc {c['test_accuracy']:.2f}", fontsize=8, rotation=0,
                              ha="right", va="center")
    fig.suptitle(f"Rows of W[1] after {epochs} epochs of SGD, as 8x8 images (red +, blue -, "
                 "per-row-of-panels colour scale): equal starts give 16 identical units")
    exp.save_figure(fig, "hidden_weights.png")

    # Figure 2: the spread of the rows of W[1] and the training loss, per step.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    for (name, _, _), color in zip(CASES, COLORS, strict=True):
        c = curves[name]
        ls = "--" if "constant" in name else "-"
        ax1.plot(c["spread"], color=color, ls=ls, label=name)
        ax2.plot(np.arange(1, len(c["loss"]) + 1), c["loss"], color=color, ls=ls, lw=0.8,
                 label=f"{name} (test acc {results['cases'][name]['test_accuracy']:.2f})")
    ax1.set_xlabel("SGD step")
    ax1.set_ylabel("max distance between two rows of W[1]")
    ax1.set_title("Symmetry: 0 means every hidden unit is the same\n"
                  "(the three equal starts lie on top of each other, at exactly 0)", fontsize=10)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.axhline(np.log(10), color="gray", ls=":", lw=1, label="ln 10 (uniform guess)")
    ax2.set_xlabel("SGD step")
    ax2.set_ylabel("minibatch mean cross-entropy")
    ax2.set_title("Training loss")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    exp.save_figure(fig, "symmetry_and_loss.png")

    exp.save_json(results)
    rows = [(name, c["hidden_delta_abs_max_step0"], c["hidden_delta_abs_max_step1"],
             c["hidden_delta_spread_step1"], c["W1_row_spread_final"], c["test_accuracy"])
            for name, c in results["cases"].items()]
    exp.report([f"64-{hidden}-10 on the 8x8 digits, {epochs} epochs of SGD (lr {lr})",
                *table(("start", "max|d1| step 0", "max|d1| step 1", "d1 unit spread",
                        "W1 row spread", "test acc"), rows)])
    return results


if __name__ == "__main__":
    main()
