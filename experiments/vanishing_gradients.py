"""Vanishing gradients: per-layer delta norms of deep sigmoid, tanh and ReLU networks (000).

    python experiments/vanishing_gradients.py [--out DIR] [--smoke]

Lecture 000 remarks that sigmoid and tanh saturate: ``g'(z)`` is at most 1/4 (sigmoid) or 1
(tanh) and near 0 for large ``|z|``, and the delta recursion
``delta[l] = (W[l+1]^T delta[l+1]) * g'(z[l])`` multiplies one such factor per layer. This
script measures it on a small real problem, scikit-learn's 8x8 digits (standardised with
training statistics): three networks ``64 - 10 x 32 - 10`` with sigmoid, tanh or ReLU hidden
layers (fnn's default init: Xavier for sigmoid/tanh, He for ReLU), trained with plain
minibatch SGD (``optax.sgd``, ``jax.grad(fnn.loss)``, a jitted step). At initialisation,
during and after training it takes ``fnn.backprop`` on a fixed batch of training samples and
reports the mean over samples of ``||delta[l]||`` for every layer ``l``.

Writes ``delta_norms.png`` (per-layer mean ``||delta[l]||`` vs layer, one line per
activation, at init and after training), ``training.png`` (the ratio
``||delta[1]|| / ||delta[L]||`` and the training loss over the steps) and
``vanishing_gradients.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import Experiment, digits_split, finite, plt, table

import fnn

ACTIVATIONS = ("sigmoid", "tanh", "relu")
COLORS = {"sigmoid": "tab:blue", "tanh": "tab:orange", "relu": "tab:green"}


def delta_norms(net: fnn.MLP, params: fnn.Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over the samples of ``||delta[l]||`` for ``l = 1 .. L``, shape ``(L,)``."""
    bp = fnn.backprop(net, params, x, y)
    return jnp.stack([jnp.mean(jnp.linalg.norm(d, axis=1)) for d in bp.delta[1:]])


forward = jax.jit(fnn.forward)
init = jax.jit(fnn.init)


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("vanishing_gradients", __doc__.splitlines()[0], argv)
    hidden, width = (4, 8) if exp.smoke else (10, 32)
    epochs, batch, lr = (1, 64, 0.1) if exp.smoke else (15, 64, 0.1)

    x_train, y_train, x_test, y_test = digits_split(exp.smoke)
    probe_x, probe_y = x_train[:512], y_train[:512]  # fixed batch for the delta norms
    n_batches = x_train.shape[0] // batch
    optimizer = optax.sgd(lr)

    results: dict = {"layer_sizes": None, "epochs": epochs, "batch": batch,
                     "learning_rate": lr, "optimizer": "sgd", "runs": {}}
    curves = {}
    for act in ACTIVATIONS:
        net = fnn.MLP((64, *(width,) * hidden, 10), activation=act)
        results["layer_sizes"] = net.layer_sizes
        params = init(jax.random.key(1), net)
        opt_state = optimizer.init(params)

        @jax.jit
        def step(params, opt_state, xb, yb, net=net):
            value, grads = jax.value_and_grad(fnn.loss, argnums=1)(net, params, xb, yb)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        norms_at = jax.jit(delta_norms)
        norms = [np.asarray(norms_at(net, params, probe_x, probe_y))]
        norm_steps, losses = [0], []
        rng = np.random.default_rng(2)
        for _ in range(epochs):
            order = rng.permutation(x_train.shape[0])
            for b in range(n_batches):
                idx = order[b * batch:(b + 1) * batch]
                params, opt_state, value = step(params, opt_state, x_train[idx], y_train[idx])
                losses.append(float(value))
            norms.append(np.asarray(norms_at(net, params, probe_x, probe_y)))
            norm_steps.append(len(losses))
        norms = np.array(norms)
        test_acc = float(np.mean(np.argmax(forward(net, params, x_test), 1) == y_test))
        curves[act] = {"norms": norms, "steps": norm_steps, "loss": losses}
        results["runs"][act] = {
            "delta_norm_init": norms[0], "delta_norm_trained": norms[-1],
            "ratio_first_to_last_init": norms[0][0] / norms[0][-1],
            "ratio_first_to_last_trained": norms[-1][0] / norms[-1][-1],
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-n_batches:])),
            "test_accuracy": test_acc,
        }

    L = hidden + 1
    layers = np.arange(1, L + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained", sharey=True)
    for ax, when, idx in ((axes[0], "at initialisation", 0), (axes[1], "after training", -1)):
        for act in ACTIVATIONS:
            ax.semilogy(layers, curves[act]["norms"][idx], "o-", color=COLORS[act], label=act)
        ax.set_title(f"{when}" + (f" ({epochs} epochs of SGD, lr {lr})" if idx else ""))
        ax.set_xlabel(f"layer l (1 = first hidden, {L} = softmax output)")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="hidden activation")
    axes[0].set_ylabel(r"mean over samples of $\|\delta^{[l]}\|$ (log scale)")
    fig.suptitle(rf"Delta norms per layer, $64 - {hidden} \times {width} - 10$ networks on the "
                 "8x8 digits: sigmoid deltas vanish towards the input, ReLU's do not")
    exp.save_figure(fig, "delta_norms.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    for act in ACTIVATIONS:
        c = curves[act]
        ax1.semilogy(c["steps"], c["norms"][:, 0] / c["norms"][:, -1], "o-", ms=3,
                     color=COLORS[act], label=act)
        ax2.plot(np.arange(1, len(c["loss"]) + 1), c["loss"], color=COLORS[act], lw=0.8,
                 label=f"{act} (test accuracy {results['runs'][act]['test_accuracy']:.2f})")
    ax1.set_xlabel("SGD step")
    ax1.set_ylabel(rf"$\|\delta^{{[1]}}\| / \|\delta^{{[{L}]}}\|$ (log scale)")
    ax1.set_title("How much of the output delta reaches layer 1")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend()
    ax2.axhline(np.log(10), color="gray", ls=":", lw=1, label="ln 10 (uniform guess)")
    ax2.set_xlabel("SGD step")
    ax2.set_ylabel("minibatch mean cross-entropy")
    ax2.set_title("Training loss")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="center right")
    exp.save_figure(fig, "training.png")

    exp.save_json(results)
    assert finite([results["runs"][a]["delta_norm_trained"] for a in ACTIVATIONS])
    rows = [(act, r["ratio_first_to_last_init"], r["ratio_first_to_last_trained"],
             r["loss_last"], r["test_accuracy"]) for act, r in results["runs"].items()]
    exp.report([f"network {'-'.join(map(str, results['layer_sizes']))}, {epochs} epochs of SGD "
                f"(lr {lr}, batch {batch}) on the 8x8 digits",
                *table(("activation", "||d1||/||dL|| init", "... trained", "last-epoch loss",
                        "test acc"), rows)])
    return results


if __name__ == "__main__":
    main()
