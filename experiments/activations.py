"""The activation functions g and their hand-written derivatives g' (lectures 000, 001).

    python experiments/activations.py [--out DIR] [--smoke]

Draws identity, sigmoid, tanh, ReLU and leaky ReLU and the derivatives ``fnn.activations``
writes by hand (the ones the delta recursion multiplies with), on a grid of ``z``, with
``jax.grad`` of each ``g`` overlaid as a check. The grid contains ``z = 0`` exactly, where
fnn takes ``relu'(0) = 0`` and ``leaky_relu'(0) = 1`` (the lecture leaves it open); the
figure marks those values. Leaky ReLU is drawn with ``alpha = 0.1`` so that its slope is
visible; the check runs for fnn's default ``alpha = 0.01`` too.

Writes ``activations.png`` and ``activations.json``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from _common import Experiment, plt, table

from fnn import activations

ALPHA_PLOT = 0.1
TITLES = {"identity": "identity", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "ReLU",
          "leaky_relu": rf"leaky ReLU ($\alpha = {ALPHA_PLOT}$)"}
FORMULAS = {
    "identity": (r"$g(z) = z$", r"$g'(z) = 1$"),
    "sigmoid": (r"$g(z) = 1/(1+e^{-z})$", r"$g'(z) = g(z)(1-g(z))$"),
    "tanh": (r"$g(z) = \tanh z$", r"$g'(z) = 1 - g(z)^2$"),
    "relu": (r"$g(z) = \max(0, z)$", r"$g'(z) = [z > 0]$"),
    "leaky_relu": (r"$g(z) = z\ (z \geq 0)$, $\alpha z\ (z < 0)$",
                   r"$g'(z) = 1\ (z \geq 0)$, $\alpha\ (z < 0)$"),
}


@functools.partial(jax.jit, static_argnums=(0, 2))
def check(name: str, z: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``g(z)``, the hand-written ``g'(z)`` and ``jax.grad(g)`` at every point of ``z``."""
    g, dg = activations.get_activation(name, alpha)
    return g(z), dg(z), jax.vmap(jax.grad(g))(z)


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("activations", __doc__.splitlines()[0], argv)
    n = 101 if exp.smoke else 801  # odd: the grid holds z = 0 exactly
    grid = np.linspace(-5.0, 5.0, n)
    grid[n // 2] = 0.0  # exactly, not a float32 rounding of it
    z = jnp.asarray(grid, jnp.float32)
    zn = np.asarray(z)

    results: dict = {"grid": {"min": -5.0, "max": 5.0, "points": n}, "activations": {}}
    rows = []
    fig, axes = plt.subplots(2, 5, figsize=(16, 6), layout="constrained", sharex=True)
    for col, name in enumerate(activations.ACTIVATIONS):
        g, dg, dg_auto = jax.device_get(check(name, z, ALPHA_PLOT))
        errors = {}
        errors[str(ALPHA_PLOT)] = float(np.max(np.abs(dg - dg_auto)))
        if name == "leaky_relu":  # alpha only matters here: check fnn's default too
            alpha = activations.LEAKY_RELU_SLOPE
            _, d, d_auto = jax.device_get(check(name, z, alpha))
            errors[str(alpha)] = float(np.max(np.abs(d - d_auto)))
        err = max(errors.values())
        d0, d0_auto = float(dg[n // 2]), float(dg_auto[n // 2])  # z[n // 2] == 0 exactly
        results["activations"][name] = {
            "max_abs_derivative_error_vs_jax_grad": err,
            "error_by_leaky_alpha": errors if name == "leaky_relu" else None,
            "g_prime_at_0": d0, "jax_grad_at_0": d0_auto,
            "g_range_on_grid": [float(np.min(g)), float(np.max(g))],
            "max_g_prime": float(np.max(dg)),
        }
        rows.append((name, err, d0, d0_auto, float(np.max(dg))))

        top, bottom = axes[0, col], axes[1, col]
        top.plot(zn, g, color="tab:blue", lw=2)
        top.set_title(f"{TITLES[name]}\n{FORMULAS[name][0]}", fontsize=10)
        if name in ("relu", "leaky_relu"):  # a jump at 0: draw the two sides apart
            for side in (zn < 0, zn > 0):
                bottom.plot(zn[side], dg[side], color="tab:green", lw=2)
        else:
            bottom.plot(zn, dg, color="tab:green", lw=2)
        step = max(n // 40, 1)
        bottom.plot(zn[::step], dg_auto[::step], "k.", ms=4)
        if name in ("relu", "leaky_relu"):
            bottom.plot([0], [d0], "o", color="tab:red", ms=7, zorder=3)
            bottom.annotate(f"g'(0) = {d0:g}", (0, d0), textcoords="offset points",
                            xytext=(8, 8 if d0 < 0.5 else -16), color="tab:red", fontsize=9)
        bottom.set_title(f"{FORMULAS[name][1]}\nmax |g' - jax.grad| = {err:.1g}", fontsize=10)
        bottom.set_xlabel("z")
        bottom.set_ylim(-0.15, 1.15)
        for ax in (top, bottom):
            ax.axhline(0, color="gray", lw=0.5)
            ax.axvline(0, color="gray", lw=0.5)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color="tab:green", lw=2),
               plt.Line2D([], [], color="k", marker=".", ls="none"),
               plt.Line2D([], [], color="tab:red", marker="o", ls="none")]
    fig.legend(handles, ["hand-written g' (fnn.activations)", "jax.grad(g), every 20th point",
                         "the value fnn chooses at the kink z = 0"],
               loc="outside lower center", ncols=3, fontsize=9)
    axes[0, 0].set_ylabel("g(z)")
    axes[1, 0].set_ylabel("g'(z)")
    fig.suptitle("Activation functions (top) and their derivatives (bottom), as lectures 000/001 "
                 "draw them; the dots are jax.grad, a check on the hand-written g'")
    exp.save_figure(fig, "activations.png")

    results["max_abs_derivative_error"] = max(r[1] for r in rows)
    exp.save_json(results)
    exp.report([f"{n} grid points on [-5, 5], float32",
                *table(("activation", "max |g' - jax.grad|", "g'(0)", "jax.grad at 0",
                        "max g'"), rows)])
    return results


if __name__ == "__main__":
    main()
