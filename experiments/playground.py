"""The TensorFlow Playground demo: decision regions of small tanh networks on 2-D sets (003).

    python experiments/playground.py [--out DIR] [--smoke]

Lecture 003 shows the TensorFlow Playground: a small network learns to separate two classes
of points in the plane, and the background colour shows what it predicts everywhere. This
script does the same with fnn on the Playground's four data sets (``fnn.data.make_circle``,
``make_xor``, ``make_gaussians``, ``make_spiral``; 500 points, no noise) with the
Playground's defaults: half the points for training and half for testing (a stratified split),
tanh hidden layers, minibatches of 10, learning rate 0.01 (here with Adam). The inputs are
standardised with the training statistics. Each set gets its own network, ``2-8-8-2``
(softmax output), and a deeper and wider ``2-16-16-16-2`` for the spiral. Training is
``fnn.fit``; the test set is passed as ``val`` only to record its loss per epoch.

Writes ``decision_regions.png`` (top row: the predicted probability of class 1 over the plane
with the training points (dots) and test points (crosses); bottom row: training and test loss
per epoch) and ``playground.json`` (test accuracy and final losses per set). ``--smoke`` runs
only the xor and Gaussian sets, 100 points each, 5 epochs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import Experiment, finite, plt, table

import fnn
from fnn import data

SETS = ("circle", "xor", "gaussians", "spiral")
HIDDEN = {"circle": (8, 8), "xor": (8, 8), "gaussians": (8, 8), "spiral": (16, 16, 16)}
EPOCHS = {"circle": 60, "xor": 60, "gaussians": 20, "spiral": 400}


def class1_probability(net: fnn.MLP, params: fnn.Params, x: jax.Array) -> jax.Array:
    """The network's softmax output for class 1, shape ``(N,)``."""
    return fnn.forward(net, params, x)[:, 1]


init = jax.jit(fnn.init)


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("playground", __doc__.splitlines()[0], argv)
    n, batch, lr = (100, 10, 0.01) if exp.smoke else (500, 10, 0.01)
    epochs = {s: (5 if exp.smoke else e) for s, e in EPOCHS.items()}
    # Smoke: two sets and one architecture, so that fnn.fit compiles once.
    sets = ("xor", "gaussians") if exp.smoke else SETS
    hidden = {s: ((8, 8) if exp.smoke else h) for s, h in HIDDEN.items()}
    optimizer = optax.adam(lr)
    prob = jax.jit(class1_probability)

    results: dict = {"n": n, "train_fraction": 0.5, "batch": batch, "learning_rate": lr,
                     "optimizer": "adam", "sets": {}}
    panels = {}
    for name in sets:
        i = SETS.index(name)
        x, y = data.load_dataset(name, key=jax.random.key(10 + i), n=n)
        train, _, test = data.stratified_split(jax.random.key(20 + i), y, (0.5, 0.0, 0.5))
        mean, std = data.fit_standardize(x[train])
        x_train = data.standardize(x[train], mean, std)
        x_test = data.standardize(x[test], mean, std)
        y_train, y_test = y[train], y[test]
        net = fnn.MLP((2, *hidden[name], 2), activation="tanh")
        state = fnn.init_state(jax.random.key(40 + i), net, optimizer,
                               init(jax.random.key(30 + i), net))
        res = fnn.fit(net, optimizer, state, (x_train, y_train), (x_test, y_test),
                      epochs=epochs[name], batch_size=batch)
        test_acc = res.history[-1]["val_accuracy"]  # fnn.accuracy on the test set, jitted
        train_acc = res.history[-1]["train_accuracy"]
        # The plane in the data's own coordinates, mapped through the training standardisation.
        lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
        g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        grid = np.stack([g1.ravel(), g2.ravel()], axis=1).astype(np.float32)
        p = np.asarray(prob(net, res.state.params, jnp.asarray(data.standardize(grid, mean,
                                                                                  std))))
        panels[name] = {"g1": g1, "g2": g2, "p": p.reshape(g1.shape), "x_train": x[train],
                        "y_train": y_train, "x_test": x[test], "y_test": y_test,
                        "history": res.history, "net": net}
        results["sets"][name] = {
            "layer_sizes": net.layer_sizes, "epochs": int(res.state.epoch),
            "n_train": int(train.size), "n_test": int(test.size),
            "train_accuracy": train_acc, "test_accuracy": test_acc,
            "train_loss_final": res.history[-1]["train_loss"],
            "test_loss_final": res.history[-1]["val_loss"],
        }

    fig, axes = plt.subplots(2, len(sets), figsize=(4.25 * len(sets), 8.4),
                             layout="constrained", gridspec_kw={"height_ratios": [1.35, 1]})
    for col, name in enumerate(sets):
        pn, r = panels[name], results["sets"][name]
        ax = axes[0, col]
        mesh = ax.contourf(pn["g1"], pn["g2"], pn["p"], levels=np.linspace(0, 1, 11),
                           cmap="RdBu", vmin=0, vmax=1, alpha=0.75)
        ax.contour(pn["g1"], pn["g2"], pn["p"], levels=[0.5], colors="k", linewidths=1)
        for cls, color in ((0, "tab:red"), (1, "tab:blue")):
            tr, te = pn["x_train"][pn["y_train"] == cls], pn["x_test"][pn["y_test"] == cls]
            ax.scatter(tr[:, 0], tr[:, 1], s=12, c=color, edgecolors="white", linewidths=0.5,
                       label=f"class {cls}, train")
            ax.scatter(te[:, 0], te[:, 1], s=14, c=color, marker="x", linewidths=0.8,
                       label=f"class {cls}, test")
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_title(f"{name}: {'-'.join(map(str, r['layer_sizes']))} tanh\n"
                     f"test accuracy {r['test_accuracy']:.3f}")
        ax = axes[1, col]
        hist = pn["history"]
        ep = [h["epoch"] for h in hist]
        ax.semilogy(ep, [h["train_loss"] for h in hist], label="training (mean minibatch loss)")
        ax.semilogy(ep, [h["val_loss"] for h in hist], label="test (at the epoch's end)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean cross-entropy (log scale)")
        ax.set_title(f"{name}: loss, {r['epochs']} epochs")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0, 0].legend(loc="lower left", fontsize=7, framealpha=0.8)
    fig.colorbar(mesh, ax=axes[0, :], shrink=0.8, label="predicted P(class 1)")
    fig.suptitle(f"The Playground demo with fnn: {results['n']} points per set, half for "
                 f"training, Adam (lr {lr}, batch {batch}); black line: P(class 1) = 0.5")
    exp.save_figure(fig, "decision_regions.png")

    exp.save_json(results)
    assert finite([r["test_accuracy"] for r in results["sets"].values()])
    rows = [(name, "-".join(map(str, r["layer_sizes"])), r["epochs"], r["train_accuracy"],
             r["test_accuracy"]) for name, r in results["sets"].items()]
    exp.report([f"Playground sets, {n} points each (half train, half test), Adam lr {lr}, "
                f"batch {batch}",
                *table(("set", "network", "epochs", "train acc", "test acc"), rows)])
    return results


if __name__ == "__main__":
    main()
