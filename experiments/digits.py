"""Handwritten digits: softmax regression against wider and deeper MLPs on MNIST-5k (004).

    python experiments/digits.py [--out DIR] [--smoke]

Lecture 004's task, 10-class classification of 28x28 digit images, on the 5,000 real MNIST
images of ``fnn.data.load_mnist_5k`` (500 per class). One stratified split is shared by all
models: 4,000 training and 1,000 test images, pixels divided by the training maximum (255)
into [0, 1], as ``python -m fnn`` does. The models grow from softmax regression (no hidden
layer, ``fnn.MLP((784, 10))``, ``L = 1``) to three hidden layers: 784-10, 784-32-10,
784-128-10, 784-256-128-10 and 784-256-256-128-10, ReLU hidden layers, softmax output, each
trained with ``fnn.fit`` for the same number of epochs of Adam (lr 1e-3, minibatches of 64)
from ``fnn.init``.

Writes ``accuracy.png`` (training and test accuracy per model), ``confusion_matrix.png`` (the
best model's test confusion matrix, counts; rows true, columns predicted),
``misclassified.png`` (test images the best model gets wrong, with true and predicted label)
and ``digits.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np
import optax
from _common import Experiment, finite, plt, table

import fnn
from fnn import data

HIDDEN = ((), (32,), (128,), (256, 128), (256, 256, 128))

init = jax.jit(fnn.init)
predict = jax.jit(fnn.predict)
forward = jax.jit(fnn.forward)


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("digits", __doc__.splitlines()[0], argv)
    hidden = HIDDEN[:2] if exp.smoke else HIDDEN
    epochs, batch, lr = (2, 64, 1e-3) if exp.smoke else (12, 64, 1e-3)

    x, y = data.load_dataset("mnist5k")
    train, _, test = data.stratified_split(jax.random.key(0), y, (0.8, 0.0, 0.2))
    if exp.smoke:
        train, test = train[:500], test[:200]
    top = float(x[train].max())  # 255: pixels into [0, 1] by the training maximum
    x_train, x_test = x[train] / top, x[test] / top
    y_train, y_test = y[train], y[test]
    optimizer = optax.adam(lr)

    results: dict = {"n_train": int(train.size), "n_test": int(test.size), "epochs": epochs,
                     "batch": batch, "learning_rate": lr, "optimizer": "adam",
                     "activation": "relu", "models": {}}
    trained = {}
    for i, h in enumerate(hidden):
        net = fnn.MLP((784, *h, 10), activation="relu")
        name = "-".join(map(str, net.layer_sizes))
        state = fnn.init_state(jax.random.key(100), net, optimizer,
                               init(jax.random.key(1 + i), net))
        t0 = time.perf_counter()
        res = fnn.fit(net, optimizer, state, (x_train, y_train), epochs=epochs, batch_size=batch)
        seconds = time.perf_counter() - t0
        params = res.state.params
        pred = np.asarray(predict(net, params, x_test))
        trained[name] = (net, params, pred)
        results["models"][name] = {
            "layer_sizes": net.layer_sizes,
            "hidden_layers": len(h),
            "parameters": sum(p.size for p in jax.tree.leaves(params)),
            "train_loss_final": res.history[-1]["train_loss"],
            "train_accuracy": res.history[-1]["train_accuracy"],
            "test_accuracy": float(np.mean(pred == y_test)),
            "seconds": seconds,
        }

    names = list(results["models"])
    best = max(names, key=lambda k: results["models"][k]["test_accuracy"])
    net, params, pred = trained[best]
    cm = np.asarray(fnn.confusion_matrix(y_test, pred, 10))
    wrong = np.flatnonzero(pred != y_test)
    results["best_model"] = best
    results["confusion_matrix"] = cm
    results["confusion_matrix_sum"] = int(cm.sum())
    results["best_test_errors"] = int(wrong.size)
    off = cm - np.diag(np.diag(cm))
    i_true, i_pred = np.unravel_index(np.argmax(off), off.shape)
    results["most_common_confusion"] = {"true": int(i_true), "predicted": int(i_pred),
                                        "count": int(off[i_true, i_pred])}

    # Bar chart: training and test accuracy per model.
    ms = results["models"]
    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    pos = np.arange(len(names))
    tr = [ms[k]["train_accuracy"] for k in names]
    te = [ms[k]["test_accuracy"] for k in names]
    ax.bar(pos - 0.2, tr, 0.4, color="tab:gray", alpha=0.6, label="training")
    bars = ax.bar(pos + 0.2, te, 0.4, color="tab:blue", label="test")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in te], padding=2, fontsize=9)
    ax.set_xticks(pos, [f"{k}\n({ms[k]['parameters']:,} parameters)" for k in names],
                  fontsize=9)
    ax.set_ylim(min(min(tr), min(te)) - 0.05, 1.01)
    ax.set_xlabel("network (layer sizes; 784-10 is softmax regression)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"MNIST-5k: {results['n_train']} training / {results['n_test']} test images, "
                 f"{epochs} epochs of Adam (lr {lr}, batch {batch}), ReLU hidden layers")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right")
    exp.save_figure(fig, "accuracy.png")

    # Confusion matrix of the best model, with counts.
    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    im = ax.imshow(cm, cmap="Blues", norm="log" if cm.max() > 50 else None)
    for (r, c), v in np.ndenumerate(cm):
        if v:
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > cm.max() / 4 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix of {best} on the {results['n_test']} test images\n"
                 f"test accuracy {ms[best]['test_accuracy']:.3f} ({wrong.size} errors)")
    fig.colorbar(im, ax=ax, label="count (log colour scale)" if cm.max() > 50 else "count")
    exp.save_figure(fig, "confusion_matrix.png")

    # Misclassified test images, with the network's confidence in its wrong answer.
    shown = wrong[:16 if exp.smoke else 32]
    probs = np.asarray(forward(net, params, x_test[shown])) if shown.size else np.zeros((0, 10))
    rows = max(1, int(np.ceil(shown.size / 8)))
    fig, axes = plt.subplots(rows, 8, figsize=(12, 1.75 * rows + 0.6), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, j, p in zip(axes.ravel(), shown, probs, strict=False):
        ax.imshow(x_test[j].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"true {y_test[j]}, pred {pred[j]}\n(p = {p[pred[j]]:.2f})", fontsize=9)
    fig.suptitle(f"The first {shown.size} of the {wrong.size} test images that {best} "
                 "misclassifies (p: its softmax output for the predicted class)")
    exp.save_figure(fig, "misclassified.png")

    exp.save_json(results)
    assert finite(te) and cm.sum() == results["n_test"]
    rows_ = [(k, ms[k]["parameters"], ms[k]["train_accuracy"], ms[k]["test_accuracy"],
              f"{ms[k]['seconds']:.1f}") for k in names]
    mc = results["most_common_confusion"]
    exp.report([f"MNIST-5k, {results['n_train']} train / {results['n_test']} test, "
                f"{epochs} epochs of Adam (lr {lr}, batch {batch})",
                *table(("network", "parameters", "train acc", "test acc", "seconds"), rows_),
                f"best: {best}, {wrong.size} test errors; most common confusion: "
                f"{mc['true']} predicted as {mc['predicted']} ({mc['count']} times)"])
    return results


if __name__ == "__main__":
    main()
