"""Backprop vs feedback alignment vs sign-symmetric feedback on MNIST-5k.

    python experiments/feedback_rules.py [--out DIR] [--smoke]

The same small MLP is trained three times from the same initial parameters with the same
minibatches (optax Adam), once per ``fnn.MLP.feedback`` rule:

- ``"backprop"``: $\\delta^{[l]} = (W^{[l+1]T} \\delta^{[l+1]}) \\odot g'(z^{[l]})$, the gradient;
- ``"random"``: a fixed random $B^{[l+1]}$ in place of $W^{[l+1]}$ (feedback alignment,
  Lillicrap et al. 2016);
- ``"sign"``: $B^{[l+1]} = \\operatorname{sign}(W^{[l+1]})$ (Liao, Leibo and Poggio 2016).

``jax.grad(fnn.loss)`` returns each rule's update; ``jax.grad(fnn.loss_autodiff)`` the true
gradient, and the angle between the two for the first layer's weights is logged per epoch
(feedback alignment: it falls below 90 degrees as the forward weights come to align with B).

Writes ``feedback_rules.png`` (train loss, test accuracy and alignment angle per epoch) and
``feedback_rules.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import Experiment, plt

import fnn
from fnn import data

RULES = ("backprop", "random", "sign")


def load(n: int | None, key):
    """Standardised MNIST-5k train / test split (80 / 20, stratified)."""
    x, y = data.load_dataset("mnist5k")
    x, y = np.array(x, np.float32), np.array(y, np.int32)  # copies: the loaded arrays are read-only
    if n is not None:
        x, y = x[:n], y[:n]
    train, _, test = data.stratified_split(key, y, (0.8, 0.0, 0.2))
    mean, std = data.fit_standardize(x[train])
    return (data.standardize(x[train], mean, std), y[train],
            data.standardize(x[test], mean, std), y[test])


def angle(u, v) -> float:
    """The angle between two arrays, in degrees."""
    u, v = jnp.ravel(u), jnp.ravel(v)
    cos = jnp.dot(u, v) / (jnp.linalg.norm(u) * jnp.linalg.norm(v) + 1e-30)
    return float(jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0))))


def train(net, params, x, y, x_test, y_test, *, epochs, batch, lr, key):
    opt = optax.adam(lr)
    steps = x.shape[0] // batch

    @jax.jit
    def epoch(params, state, key):
        """One pass of minibatch Adam, then the metrics (one compiled function per rule)."""
        order = jax.random.permutation(key, x.shape[0])[: steps * batch].reshape(steps, batch)

        def step(carry, idx):
            params, state = carry
            g = jax.grad(fnn.loss, argnums=1)(net, params, x[idx], y[idx])
            updates, state = opt.update(g, state)
            return (optax.apply_updates(params, updates), state), None

        params, state = jax.lax.scan(step, (params, state), order)[0]
        update = jax.grad(fnn.loss, argnums=1)(net, params, x, y)
        true = jax.grad(fnn.loss_autodiff, argnums=1)(net, params, x, y)
        accuracy = jnp.mean(jnp.argmax(fnn.forward(net, params, x_test), 1) == y_test)
        metrics = (fnn.loss(net, params, x, y), accuracy, update[0]["W"], true[0]["W"])
        return params, state, metrics

    state = opt.init(params)
    history = {"train_loss": [], "test_accuracy": [], "angle_layer1_deg": []}
    for k in jax.random.split(key, epochs):
        params, state, (loss, accuracy, update, true) = epoch(params, state, k)
        history["train_loss"].append(float(loss))
        history["test_accuracy"].append(float(accuracy))
        history["angle_layer1_deg"].append(angle(update, true))
    return history


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("feedback_rules", __doc__.splitlines()[0], argv)
    epochs, n, hidden = (1, 300, (16,)) if exp.smoke else (15, None, (128, 64))
    key_split, key_init, key_train = jax.random.split(jax.random.key(0), 3)
    x, y, x_test, y_test = (jnp.asarray(a) for a in load(n, key_split))
    sizes = (x.shape[1], *hidden, 10)
    params = jax.jit(fnn.init)(key_init, fnn.MLP(sizes, "tanh"))  # one compile, not ~50 ops
    results = {"sizes": list(sizes), "activation": "tanh", "optimizer": "adam(1e-3)",
               "batch": 64, "epochs": epochs, "n_train": int(x.shape[0]),
               "n_test": int(x_test.shape[0]), "rules": {}}
    for rule in RULES:
        net = fnn.MLP(sizes, "tanh", feedback=rule)
        results["rules"][rule] = train(net, params, x, y, x_test, y_test, epochs=epochs,
                                       batch=64, lr=1e-3, key=key_train)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    epochs_axis = np.arange(1, epochs + 1)
    for rule, h in results["rules"].items():
        axes[0].plot(epochs_axis, h["train_loss"], marker="o", label=rule)
        axes[1].plot(epochs_axis, h["test_accuracy"], marker="o", label=rule)
        axes[2].plot(epochs_axis, h["angle_layer1_deg"], marker="o", label=rule)
    axes[0].set(xlabel="epoch", ylabel="train loss (mean cross-entropy)", yscale="log",
                title="train loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    axes[2].axhline(90, color="gray", lw=0.8, ls="--")
    axes[2].set(xlabel="epoch", ylabel="degrees",
                title="angle(update, true gradient), $W^{[1]}$")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"feedback rules on MNIST-5k, MLP {sizes}, tanh, Adam")
    exp.save_figure(fig, "feedback_rules.png")
    exp.save_json(results)
    exp.report([
        f"{rule:>8}: train loss {h['train_loss'][-1]:.4f}, test accuracy "
        f"{h['test_accuracy'][-1]:.3f}, angle to gradient (W[1]) "
        f"{h['angle_layer1_deg'][-1]:.1f} deg"
        for rule, h in results["rules"].items()
    ])
    return results


if __name__ == "__main__":
    main()
