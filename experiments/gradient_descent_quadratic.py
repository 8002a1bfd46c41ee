"""Lecture 003's gradient descent on f(x1, x2) = x1^2 + x1 x2 + 4 x2^2 from (3, 3).

    python experiments/gradient_descent_quadratic.py [--out DIR] [--smoke]

Runs ``x_{k+1} = x_k - eta grad f(x_k)`` with the slide's step sizes ``eta = 0.1`` and
``eta = 0.2`` (and ``eta = 0.25``, just above the stability limit, for contrast) and records
the first step at which each of the lecture's convergence criteria holds:
``|f(x_{k+1}) - f(x_k)| < eps1``, ``||grad f(x_k)|| < eps2``, and the iteration cap.
(At ``eta = 0.25`` the first step happens to land on the same level set, ``f(x_1) = f(x_0)
= 54``: the f-change criterion alone would stop a diverging run at step 1.)

Why ``eta = 0.2`` oscillates: f is quadratic with Hessian ``H = [[2, 1], [1, 8]]``, so one
step multiplies the error by ``I - eta H``, whose eigenvalues are ``1 - eta lambda_i`` with
``lambda = 5 -+ sqrt(10) = 1.84, 8.16``. Gradient descent converges iff every
``|1 - eta lambda_i| < 1``, i.e. ``eta < 2 / 8.16 = 0.245``. At ``eta = 0.2`` the factor
along the steep eigenvector is ``1 - 0.2 * 8.16 = -0.63``: the iterate flips sides of the
valley every step, but shrinks, so it converges. At ``eta = 0.25`` the factor is ``-1.04``
and it diverges.

Writes ``trajectories.png`` (contours and iterates), ``f_per_step.png`` and
``gradient_descent_quadratic.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from _common import Experiment, plt, table

H = np.array([[2.0, 1.0], [1.0, 8.0]])  # f(x) = x^T H x / 2
X0 = (3.0, 3.0)
ETAS = (0.1, 0.2)
ETA_UNSTABLE = 0.25
EPS1 = 1e-6  # |f_{k+1} - f_k| < eps1
EPS2 = 1e-3  # ||grad f(x_k)|| < eps2
COLORS = {0.1: "tab:blue", 0.2: "tab:orange", 0.25: "tab:red"}
MARKERS = {"eps1": ("o", r"$|f_{k+1} - f_k| < \varepsilon_1$"),
           "eps2": ("s", r"$\|\nabla f(x_k)\| < \varepsilon_2$"),
           "max_iter": ("X", "max iterations")}


def f(x):
    """The slide's quadratic, for a point ``x`` of shape ``(2,)``."""
    return x[0] ** 2 + x[0] * x[1] + 4 * x[1] ** 2


def grad_f(x: np.ndarray) -> np.ndarray:
    """Hand-written gradient ``[2 x1 + x2, x1 + 8 x2]`` (checked against ``jax.grad``)."""
    return np.array([2 * x[0] + x[1], x[0] + 8 * x[1]])


def descend(eta: float, max_iter: int) -> dict:
    """``max_iter`` steps from ``X0``; where each stopping criterion first holds."""
    xs = [np.array(X0)]
    for _ in range(max_iter):
        x = xs[-1]
        xs.append(x - eta * grad_f(x))
        if not np.all(np.isfinite(xs[-1])):
            break
    xs = np.array(xs)
    fs = np.array([f(x) for x in xs])
    gnorm = np.array([np.linalg.norm(grad_f(x)) for x in xs])
    # eps1 compares f_{k+1} with f_k: it "stops at k+1", the step that made the change small.
    small_change = np.nonzero(np.abs(np.diff(fs)) < EPS1)[0]
    small_grad = np.nonzero(gnorm < EPS2)[0]
    stops = {
        "eps1": int(small_change[0] + 1) if small_change.size else None,
        "eps2": int(small_grad[0]) if small_grad.size else None,
        "max_iter": max_iter,
    }
    first = min(k for k in stops.values() if k is not None)
    return {"eta": eta, "x": xs, "f": fs, "grad_norm": gnorm, "stops": stops,
            "stopped_at": first,
            "stopped_by": [name for name, k in stops.items() if k == first],
            "x_at_stop": xs[first], "f_at_stop": fs[first],
            "f_increases": int(np.sum(np.diff(fs) > 0)),
            "x2_sign_changes": int(np.sum(np.diff(np.sign(xs[: first + 1, 1])) != 0)),
            "converged": bool(gnorm[-1] < EPS2)}


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("gradient_descent_quadratic", __doc__.splitlines()[0], argv)
    max_iter = 60  # cheap (NumPy): the same with --smoke

    x0 = jnp.array(X0)
    grad_autodiff, hess_autodiff = jax.device_get(
        jax.jit(lambda x: (jax.grad(f)(x), jax.hessian(f)(x)))(x0))
    grad_check = float(np.max(np.abs(grad_autodiff - grad_f(np.array(X0)))))
    lam = np.linalg.eigvalsh(hess_autodiff)
    eta_max = 2.0 / lam[-1]
    runs = {eta: descend(eta, max_iter) for eta in (*ETAS, ETA_UNSTABLE)}
    factors = {eta: (1 - eta * lam).tolist() for eta in runs}

    # Figure 1: the iterates on the contour plot of f, with each criterion's stop marked.
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained", sharey=True)
    g1, g2 = np.meshgrid(np.linspace(-3.5, 3.5, 300), np.linspace(-3.5, 3.5, 300))
    F = g1**2 + g1 * g2 + 4 * g2**2
    levels = np.geomspace(0.05, 100, 14)
    for ax, eta in zip(axes, ETAS, strict=True):
        run = runs[eta]
        ax.contour(g1, g2, F, levels=levels, cmap="viridis", linewidths=0.8)
        xs = run["x"]
        ax.plot(xs[:, 0], xs[:, 1], "-", color=COLORS[eta], lw=1, marker=".", ms=5,
                label=rf"iterates $x_k$, $\eta = {eta}$")
        ax.plot(*X0, "k^", ms=8, label=r"start $x_0 = (3, 3)$")
        ax.plot(0, 0, "k*", ms=10, label="minimum (0, 0)")
        for name, k in run["stops"].items():
            if k is not None and k < len(xs):
                m, text = MARKERS[name]
                ax.plot(*xs[k], m, ms=9, mfc="none", mec="k", mew=1.5,
                        label=f"{text}: k = {k}")
        r = max(abs(c) for c in factors[eta])
        ax.set_title(rf"$\eta = {eta}$: error factors $1 - \eta\lambda_i$ = "
                     f"{factors[eta][0]:.2f}, {factors[eta][1]:.2f} (|max| = {r:.2f})",
                     fontsize=10)
        ax.set_xlabel("$x_1$")
        ax.set_aspect("equal")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("$x_2$")
    fig.suptitle(r"Gradient descent on $f(x_1, x_2) = x_1^2 + x_1 x_2 + 4 x_2^2$ (lecture 003); "
                 rf"$\lambda(H) = {lam[0]:.2f}, {lam[1]:.2f}$, converges iff "
                 rf"$\eta < 2/\lambda_{{max}} = {eta_max:.3f}$")
    exp.save_figure(fig, "trajectories.png")

    # Figure 2: f(x_k) per step, log scale, with the stops marked.
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for eta, run in runs.items():
        label = rf"$\eta = {eta}$" + (" (above the limit: diverges)" if eta > eta_max else "")
        ax.semilogy(run["f"], color=COLORS[eta], lw=1.3, label=label)
        for name, k in run["stops"].items():
            if k is not None and k < len(run["f"]):
                ax.semilogy(k, run["f"][k], MARKERS[name][0], ms=9, mfc="none",
                            mec=COLORS[eta], mew=1.5)
    for m, text in MARKERS.values():
        ax.plot([], [], m, mfc="none", mec="k", ms=8, label=f"first step where {text}")
    ax.set_xlabel("step k")
    ax.set_ylabel("$f(x_k)$ (log scale)")
    ax.set_title(rf"$f$ per step; $\varepsilon_1 = {EPS1:g}$, $\varepsilon_2 = {EPS2:g}$, "
                 f"max iterations = {max_iter}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    exp.save_figure(fig, "f_per_step.png")

    results = {
        "x0": X0, "eps1": EPS1, "eps2": EPS2, "max_iter": max_iter,
        "max_abs_grad_error_vs_jax_grad": grad_check,
        "hessian": hess_autodiff, "hessian_eigenvalues": lam,
        "eta_max": eta_max,
        "runs": {
            str(eta): {
                "error_factors": factors[eta],
                "stops": run["stops"], "stopped_at": run["stopped_at"],
                "stopped_by": run["stopped_by"], "x_at_stop": run["x_at_stop"],
                "f_at_stop": run["f_at_stop"], "converged": run["converged"],
                "f_increases": run["f_increases"], "x2_sign_changes": run["x2_sign_changes"],
                "f_first_steps": run["f"][:6], "x_first_steps": run["x"][:6],
                "f_last": run["f"][-1],
            }
            for eta, run in runs.items()
        },
    }
    exp.save_json(results)
    rows = [(str(eta), run["stops"]["eps1"], run["stops"]["eps2"], run["stopped_at"],
             f"{run['f_at_stop']:.3g}", run["x2_sign_changes"], run["converged"])
            for eta, run in runs.items()]
    exp.report([
        f"Hessian eigenvalues {lam[0]:.4f}, {lam[1]:.4f}: converges iff eta < 2/{lam[1]:.4f} "
        f"= {eta_max:.4f}",
        *table(("eta", "eps1 step", "eps2 step", "stop", "f at stop", "x2 sign flips",
                "converged"), rows),
        f"eta = 0.2: factor 1 - 0.2*{lam[1]:.2f} = {factors[0.2][1]:.3f}; x2 changes sign "
        f"{runs[0.2]['x2_sign_changes']} times (oscillates) and converges: "
        f"{runs[0.2]['converged']}",
        f"eta = {ETA_UNSTABLE}: diverges (f = {runs[ETA_UNSTABLE]['f'][-1]:.3g} after "
        f"{max_iter} steps), yet |f_1 - f_0| = "
        f"{abs(runs[ETA_UNSTABLE]['f'][1] - runs[ETA_UNSTABLE]['f'][0]):.2g} < eps1: the "
        "f-change criterion alone can stop a diverging run",
    ])
    return results


if __name__ == "__main__":
    main()
