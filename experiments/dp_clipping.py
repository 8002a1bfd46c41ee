"""Per-example clipping norm vs test accuracy on MNIST-5k, with and without DP noise.

    python experiments/dp_clipping.py [--out DIR] [--smoke]

Each run trains the same MLP from the same initial parameters with SGD (momentum 0.9) on
:func:`fnn.per_example.dp_gradient`: every sample's own gradient $g_i$ clipped to norm at
most $C$ (from the deltas alone: $\\lVert g_i \\rVert^2 = \\sum_l \\lVert \\delta_i^{[l]}
\\rVert^2 (\\lVert a_i^{[l-1]} \\rVert^2 + 1)$), averaged, plus Gaussian noise of standard
deviation $\\sigma C / N$. It sweeps $C$ for $\\sigma = 0$ (clipping only) and $\\sigma = 1$
(DP-SGD), next to an unclipped baseline. Privacy accounting (the $\\epsilon$ such a run
achieves) is out of scope: the point is what clipping and noise do to learning.

Writes ``dp_clipping.png`` (test accuracy vs $C$; the distribution of per-example gradient
norms at initialisation with the clipping norms marked) and ``dp_clipping.json``.
The benchmark rows of clipped_grad live in ``experiments/_bench_per_example.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import Experiment, plt
from feedback_rules import load

import fnn
from fnn.per_example import dp_gradient, per_example_grad_norms

NO_CLIP = 1e30
"""A clipping norm no gradient reaches: the unclipped baseline."""


def make_run(net, x, y, x_test, y_test, *, epochs, batch, lr):
    """A jitted ``run(params, clip_norm, noise_multiplier, key) -> (accuracy, clipped)``."""
    opt = optax.sgd(lr, momentum=0.9)
    steps = x.shape[0] // batch

    @jax.jit
    def run(params, clip_norm, noise_multiplier, key):
        def epoch(carry, key):
            order_key, noise_key = jax.random.split(key)
            order = jax.random.permutation(order_key, x.shape[0])[: steps * batch]

            def step(carry, inputs):
                params, state, clipped = carry
                idx, k = inputs
                g = dp_gradient(net, params, x[idx], y[idx], clip_norm, noise_multiplier, k)
                frac = jnp.mean(per_example_grad_norms(net, params, x[idx], y[idx]) > clip_norm)
                updates, state = opt.update(g, state, params)
                return (optax.apply_updates(params, updates), state, clipped + frac / steps), None

            inputs = (order.reshape(steps, batch), jax.random.split(noise_key, steps))
            return jax.lax.scan(step, carry, inputs)[0], None

        carry = (params, opt.init(params), jnp.zeros(()))
        (params, _, clipped), _ = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
        accuracy = jnp.mean(jnp.argmax(fnn.forward(net, params, x_test), 1) == y_test)
        return accuracy, clipped / epochs

    return run


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("dp_clipping", __doc__.splitlines()[0], argv)
    if exp.smoke:
        n, hidden, epochs, clips, sigmas = 300, (16,), 1, (0.1, 10.0), (0.0, 1.0)
    else:
        n, hidden, epochs = None, (128,), 8
        clips, sigmas = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0), (0.0, 1.0)
    batch, lr = 64, 0.05
    key_split, key_init, key_train = jax.random.split(jax.random.key(0), 3)
    x, y, x_test, y_test = (jnp.asarray(a) for a in load(n, key_split))
    net = fnn.MLP((x.shape[1], *hidden, 10), "relu")
    params = jax.jit(fnn.init)(key_init, net)
    run = make_run(net, x, y, x_test, y_test, epochs=epochs, batch=batch, lr=lr)

    norms0 = np.asarray(jax.jit(per_example_grad_norms)(net, params, x, y))
    baseline, _ = run(params, NO_CLIP, 0.0, key_train)
    results = {"sizes": list(net.layer_sizes), "activation": "relu", "batch": batch,
               "optimizer": f"sgd({lr}, momentum=0.9)", "epochs": epochs,
               "n_train": int(x.shape[0]), "n_test": int(x_test.shape[0]),
               "unclipped_accuracy": float(baseline),
               "initial_norms": {"median": float(np.median(norms0)),
                                 "p10": float(np.percentile(norms0, 10)),
                                 "p90": float(np.percentile(norms0, 90))},
               "clip_norms": list(clips), "runs": {}}
    for sigma in sigmas:
        runs = [run(params, c, sigma, key_train) for c in clips]
        results["runs"][f"sigma={sigma:g}"] = {
            "noise_multiplier": sigma,
            "test_accuracy": [float(a) for a, _ in runs],
            "fraction_clipped": [float(f) for _, f in runs],
        }

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for label, r in results["runs"].items():
        axes[0].plot(clips, r["test_accuracy"], marker="o", label=f"clipped, {label}")
    axes[0].axhline(float(baseline), color="gray", ls="--", label="no clipping, no noise")
    axes[0].set(xscale="log", xlabel="clipping norm C", ylabel="test accuracy",
                title=f"{epochs} epochs SGD, batch {batch}, lr {lr}")
    axes[0].legend()
    positive = norms0 > 0
    bins = np.geomspace(norms0[positive].min(), norms0.max(), 40) if positive.all() else 40
    axes[1].hist(norms0, bins=bins, color="tab:blue", alpha=0.8)
    for c in clips:
        axes[1].axvline(c, color="tab:red", lw=0.8)
    axes[1].set(xscale="log" if positive.all() else "linear",
                xlabel=r"$\|g_i\|$ at initialisation", ylabel="samples",
                title="per-example gradient norms (red: clipping norms)")
    fig.suptitle(f"per-example clipping and DP-SGD noise, MNIST-5k, MLP {net.layer_sizes}")
    exp.save_figure(fig, "dp_clipping.png")
    exp.save_json(results)
    lines = [f"unclipped: test accuracy {float(baseline):.3f}; per-example norms at init: "
             f"median {results['initial_norms']['median']:.2f}"]
    for label, r in results["runs"].items():
        lines.append(f"{label}: " + ", ".join(
            f"C={c:g}: {a:.3f} ({100 * f:.0f}% clipped)"
            for c, a, f in zip(clips, r["test_accuracy"], r["fraction_clipped"], strict=True)))
    exp.report(lines)
    return results


if __name__ == "__main__":
    main()
