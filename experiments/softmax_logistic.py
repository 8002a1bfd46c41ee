"""Lecture 003's logistic unit and softmax of z = [5, -2, -1, 3] with its Jacobian.

    python experiments/softmax_logistic.py [--out DIR] [--smoke]

The logistic unit: the slide's ``x = [-8, 1, -3, 5, 2]``, ``W = [0.7576, 0.2793, 0.4031,
0.7347, 0.0293]`` and ``b = 0.7999`` give ``z = x W^T + b = -2.4591`` and
``a = sigmoid(z) = 0.0788`` (and for the slide's 3-sample batch ``z = [-2.4591, 3.1721,
6.2782]``, ``a = [0.0788, 0.9598, 0.9981]``), computed as an ``fnn.MLP((5, 1),
output="sigmoid")``. The softmax of ``z = [5, -2, -1, 3]`` and its Jacobian
``diag(a) - a a^T`` (``fnn.softmax_jacobian``), checked against ``jax.jacrev(fnn.softmax)``.

Writes ``logistic_unit.png``, ``softmax_jacobian.png`` and ``softmax_logistic.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from _common import Experiment, plt

import fnn

X_BATCH = [[-8.0, 1.0, -3.0, 5.0, 2.0], [-2.0, 2.0, -1.0, 5.0, 2.0], [7.0, 1.0, 9.0, -5.0, -2.0]]
W_SLIDE = [0.7576, 0.2793, 0.4031, 0.7347, 0.0293]
B_SLIDE = 0.7999
Z_SLIDE = [-2.4591, 3.1721, 6.2782]  # the slide's printed z and a (4 decimals)
A_SLIDE = [0.0788, 0.9598, 0.9981]
Z_SOFTMAX = [5.0, -2.0, -1.0, 3.0]


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("softmax_logistic", __doc__.splitlines()[0], argv)

    # The logistic unit is the network with no hidden layer: L = 1, sigmoid output.
    unit = fnn.MLP((5, 1), output="sigmoid")
    params = ({"W": jnp.array([W_SLIDE]), "b": jnp.array([B_SLIDE])},)

    @jax.jit  # one compilation for everything, then NumPy
    def compute(params, x, zs, grid):
        z = x @ params[0]["W"].T + params[0]["b"][None, :]  # z = x W^T + b, (3, 1)
        a = fnn.forward(unit, params, x)  # (3, 1)
        return (z[:, 0], a[:, 0], fnn.softmax(zs), fnn.softmax_jacobian(zs),
                jax.jacrev(fnn.softmax)(zs), fnn.sigmoid(grid))

    grid = np.linspace(-8, 8, 401)
    z, a, s, J, J_ref, sig = jax.device_get(
        compute(params, jnp.array(X_BATCH), jnp.array(Z_SOFTMAX), grid.astype(np.float32)))
    z_err = float(np.max(np.abs(z - np.array(Z_SLIDE))))
    a_err = float(np.max(np.abs(a - np.array(A_SLIDE))))
    jac_err = float(np.max(np.abs(J - J_ref)))
    row_sums = np.sum(J, axis=1)

    # Figure 1: the sigmoid with the slide's three samples on it.
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    ax.plot(grid, sig, color="tab:blue", label=r"$a = \sigma(z) = 1/(1+e^{-z})$")
    for i, (zi, ai) in enumerate(zip(z, a, strict=True)):
        ax.plot([zi], [ai], "o", color="tab:red", zorder=3)
        ax.annotate(f"sample {i}: z = {zi:.4f}, a = {ai:.4f}", (zi, ai),
                    textcoords="offset points", xytext=[(15, -5), (-20, -45), (-20, -80)][i],
                    fontsize=8, ha="left" if i == 0 else "right", va="center",
                    arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.6})
    ax.axhline(0.5, color="gray", lw=0.6, ls=":")
    ax.set_xlabel(r"$z = x W^T + b$")
    ax.set_ylabel(r"$a = \sigma(z)$")
    ax.set_title("Logistic unit (lecture 003): W = [0.7576, 0.2793, 0.4031, 0.7347, 0.0293], "
                 "b = 0.7999\n(the slide prints z = -2.4591, 3.1721, 6.2782 from the unrounded "
                 "torch.rand weights)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    exp.save_figure(fig, "logistic_unit.png")

    # Figure 2: the softmax as bars, its Jacobian as an annotated heatmap.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained",
                                   gridspec_kw={"width_ratios": [1, 1.25]})
    labels = [f"z{j + 1} = {v:g}" for j, v in enumerate(Z_SOFTMAX)]
    bars = ax1.bar(labels, s, color="tab:blue")
    ax1.bar_label(bars, [f"{v:.4f}" for v in s], fontsize=8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel(r"$a_j = \mathrm{softmax}(z)_j$")
    ax1.set_title(r"softmax of $z = [5, -2, -1, 3]$ (sums to 1)")
    Jn = J
    vmax = float(np.max(np.abs(Jn)))
    im = ax2.imshow(Jn, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    for i in range(4):
        for j in range(4):
            ax2.text(j, i, f"{Jn[i, j]:.4f}", ha="center", va="center", fontsize=8,
                     color="white" if abs(Jn[i, j]) > 0.6 * vmax else "black")
    ticks = [f"z{j + 1}" for j in range(4)]
    ax2.set_xticks(range(4), ticks)
    ax2.set_yticks(range(4), [f"a{j + 1}" for j in range(4)])
    ax2.set_xlabel("with respect to")
    ax2.set_title(r"Jacobian $\partial a_i/\partial z_j = \mathrm{diag}(a) - a a^T$" "\n"
                  f"max |fnn.softmax_jacobian - jax.jacrev| = {jac_err:.1g}", fontsize=10)
    fig.colorbar(im, ax=ax2, shrink=0.9)
    exp.save_figure(fig, "softmax_jacobian.png")

    results = {
        "logistic": {"x": X_BATCH[0], "W": W_SLIDE, "b": B_SLIDE,
                     "z": z, "a": a,
                     "z_slide": Z_SLIDE, "a_slide": A_SLIDE,
                     "max_abs_z_error_vs_slide": z_err, "max_abs_a_error_vs_slide": a_err},
        "softmax": {"z": Z_SOFTMAX, "a": s, "sum": float(np.sum(s)),
                    "jacobian": Jn, "jacobian_row_sums": row_sums,
                    "max_abs_jacobian_error_vs_jacrev": jac_err,
                    "jacobian_symmetric": bool(np.allclose(J, J.T))},
    }
    exp.save_json(results)
    exp.report([
        "logistic unit (slide's W, b): z = " + ", ".join(f"{v:.4f}" for v in z)
        + "; a = " + ", ".join(f"{v:.4f}" for v in a)
        + f"  (max |z - slide| = {z_err:.1g}, max |a - slide| = {a_err:.1g})",
        "softmax([5, -2, -1, 3]) = [" + ", ".join(f"{v:.4f}" for v in s) + "]",
        "Jacobian row 1 = [" + ", ".join(f"{v:.4f}" for v in J[0]) + "]",
        f"max |diag(a) - a a^T - jax.jacrev(softmax)| = {jac_err:.2g}; "
        f"max |row sum| = {float(np.max(np.abs(row_sums))):.2g}",
    ])
    return results


if __name__ == "__main__":
    main()
