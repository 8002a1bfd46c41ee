"""Lecture 003's worked example: the 5-7-4-3 sigmoid/sigmoid/softmax network on 4 samples.

    python experiments/worked_example_5743.py [--out DIR] [--smoke]

The slide's batch ``X`` (4 x 5, samples as rows) with labels ``2, 0, 1, 2``, weights and
biases uniform on [0, 1) as the slide's ``torch.rand`` (here from ``jax.random.key(1)``).
Shows the forward shapes, the mean cross-entropy, ``dL/dZ3 = (A3 - Y) / N`` (the slide
prints a stray minus sign), and every gradient of the delta recursion (``fnn.backprop``)
next to ``jax.grad`` of the plain forward (``fnn.loss_autodiff``), together with
``dL/dZ[l] = delta[l] / N`` against ``jax.grad`` with respect to each ``Z[l]``.

Writes ``deltas.png`` (the per-sample deltas of every layer), ``gradient_check.png`` (the
largest difference to ``jax.grad`` per parameter) and ``worked_example_5743.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from _common import Experiment, plt, table

import fnn
from fnn import activations

X = [[-8.0, 1.0, -3.0, 5.0, 2.0], [-2.0, 2.0, -1.0, 5.0, 2.0], [7.0, 1.0, 9.0, -5.0, -2.0],
     [3.0, 1.0, 9.0, 5.0, 2.0]]
LABELS = [2, 0, 1, 2]
NET = fnn.MLP((5, 7, 4, 3), activation="sigmoid", output="softmax")


def lecture_params(key: jax.Array, net: fnn.MLP = NET) -> fnn.Params:
    """Weights and biases uniform on [0, 1), like the slide's ``torch.rand``."""
    keys = jax.random.split(key, 2 * net.depth)
    sizes = net.layer_sizes
    return tuple(
        {"W": jax.random.uniform(keys[2 * i], (sizes[i + 1], sizes[i])),
         "b": jax.random.uniform(keys[2 * i + 1], (sizes[i + 1],))}
        for i in range(net.depth)
    )


def dL_dZ_autodiff(params: fnn.Params, x: jax.Array, Y: jax.Array) -> list[jax.Array]:
    """``dL/dZ[l]`` for ``l = 1, 2, 3`` by ``jax.grad``: add a zero ``E[l]`` to each ``Z[l]``."""

    def loss_with_offsets(offsets):
        a = x
        for l, (p, E) in enumerate(zip(params, offsets, strict=True), start=1):
            z = a @ p["W"].T + p["b"][None, :] + E
            a = activations.sigmoid(z) if l < NET.depth else z
        return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(a, axis=1), axis=1))

    zeros = [jnp.zeros((x.shape[0], n)) for n in NET.layer_sizes[1:]]
    return list(jax.grad(loss_with_offsets)(zeros))


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("worked_example_5743", __doc__.splitlines()[0], argv)
    params = jax.jit(lecture_params)(jax.random.key(1))
    x = jnp.array(X)
    y = jnp.array(LABELS)
    N = x.shape[0]

    # Jitted (one compilation each instead of one per operation), then NumPy from here on.
    bp = jax.jit(fnn.backprop)(NET, params, x, y)
    reference = jax.jit(jax.grad(fnn.loss_autodiff, argnums=1))(NET, params, x, y)
    custom = jax.jit(jax.grad(fnn.loss, argnums=1))(NET, params, x, y)
    dZ = jax.jit(dL_dZ_autodiff)(params, x, jax.nn.one_hot(y, 3))
    bp, reference, custom, dZ = jax.device_get((bp, reference, custom, dZ))
    Y = np.eye(3, dtype=np.float32)[LABELS]

    shapes = {f"A{l}": list(bp.a[l].shape) for l in range(4)}
    A3 = bp.a[3]
    loss_formula = float(-np.mean(np.sum(Y * np.log(A3), axis=1)))  # the slide's formula
    output_delta_error = float(np.max(np.abs(bp.delta[3] / N - (A3 - Y) / N)))

    rows, grad_errors = [], {}
    for l in range(1, 4):
        for name in ("W", "b"):
            ours = bp.grads[l - 1][name]
            ref = reference[l - 1][name]
            err = float(np.max(np.abs(ours - ref)))
            err_custom = float(np.max(np.abs(custom[l - 1][name] - ref)))
            grad_errors[f"{name}{l}"] = {"max_abs_diff_backprop": err,
                                        "max_abs_diff_custom_vjp": err_custom,
                                        "max_abs_grad": float(np.max(np.abs(ref)))}
            rows.append((f"dL/d{name}{l}", str(tuple(ours.shape)),
                         float(np.max(np.abs(ref))), err, err_custom))

    delta_errors = {f"delta{l}": float(np.max(np.abs(bp.delta[l] / N - dZ[l - 1])))
                    for l in range(1, 4)}

    # Figure 1: every layer's per-sample deltas, one heatmap per layer, stacked so that the
    # figure stays narrow enough for its numbers to be read at the docs' width. Each layer has
    # its own colour scale: through two sigmoid layers the deltas shrink by about 10x a layer.
    fig, axes = plt.subplots(3, 1, figsize=(8.5, 9.6), layout="constrained")
    for l, ax in zip(range(1, 4), axes, strict=True):
        D = np.asarray(bp.delta[l])
        vmax = float(np.max(np.abs(D)))
        im = ax.imshow(D, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        for i in range(D.shape[0]):
            for j in range(D.shape[1]):
                ax.text(j, i, f"{D[i, j]:.1e}" if l == 1 else f"{D[i, j]:.3f}",
                        ha="center", va="center", fontsize=10.5,
                        color="white" if abs(D[i, j]) > 0.6 * vmax else "black")
        ax.set_title(rf"$\delta^{{[{l}]}}$: {D.shape[0]} samples $\times$ {D.shape[1]} units "
                     f"of layer {l}, max |entry| = {vmax:.2g}", fontsize=12)
        ax.set_xticks(range(D.shape[1]), [f"unit {j}" for j in range(D.shape[1])], fontsize=10)
        ax.set_yticks(range(N), [f"sample {i}, y={LABELS[i]}" for i in range(N)], fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.9)
    fig.suptitle("5-7-4-3 sigmoid/sigmoid/softmax network (lecture 003): per-sample deltas\n"
                 r"$\delta^{[l]}$ from fnn.backprop ($\partial L/\partial Z^{[l]} = "
                 r"\delta^{[l]}/N$; $\delta^{[3]} = A^{[3]} - Y$)", fontsize=13)
    exp.save_figure(fig, "deltas.png")

    # Figure 2: every gradient entry of the delta recursion against jax.grad's.
    fig, ax = plt.subplots(figsize=(6, 5.2), layout="constrained")
    for l in range(1, 4):
        for name, marker in (("W", "o"), ("b", "s")):
            ref = np.ravel(reference[l - 1][name])
            ours = np.ravel(bp.grads[l - 1][name])
            err = grad_errors[f"{name}{l}"]["max_abs_diff_backprop"]
            ax.scatter(ref, ours, marker=marker, s=22, alpha=0.75,
                       label=f"dL/d{name}{l}: max |diff| = {err:.1g}")
    lim = 1.1 * max(v["max_abs_grad"] for v in grad_errors.values())
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls="--", label="identity line")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("jax.grad(fnn.loss_autodiff) entry (symlog)")
    ax.set_ylabel("fnn.backprop (delta recursion) entry (symlog)")
    ax.set_title("Every gradient entry: delta recursion vs jax.grad\n"
                 "5-7-4-3 network, lecture 003's batch, float32")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    exp.save_figure(fig, "gradient_check.png")

    max_grad_error = max(v["max_abs_diff_backprop"] for v in grad_errors.values())
    results = {
        "shapes": shapes,
        "A3": A3,
        "loss": float(bp.loss),
        "loss_slide_formula": loss_formula,
        "dL_dZ3": bp.delta[3] / N,
        "output_delta_max_abs_error": output_delta_error,
        "gradients": grad_errors,
        "max_abs_grad_error": max_grad_error,
        "dL_dZ_vs_jax_grad": delta_errors,
        "max_abs_delta_error": max(delta_errors.values()),
    }
    exp.save_json(results)
    lines = [
        "5-7-4-3 sigmoid/sigmoid/softmax network, lecture 003's batch (float32)",
        "shapes: " + ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items()),
        f"mean cross-entropy L = {results['loss']:.4f} (slide formula: {loss_formula:.4f})",
        f"max |delta[3]/N - (A3 - Y)/N| = {output_delta_error:.2g}",
        *table(("gradient", "shape", "max |jax.grad|", "|backprop - grad|",
                "|custom_vjp - grad|"), rows),
        "max |delta[l]/N - jax.grad dL/dZ[l]|: "
        + ", ".join(f"{k} {v:.2g}" for k, v in delta_errors.items()),
    ]
    exp.report(lines)
    return results


if __name__ == "__main__":
    main()
