"""BackPACK's quantities as training instruments on MNIST-5k, from one call per epoch.

    python experiments/curvature_instruments.py [--out DIR] [--smoke]

Trains a 784-64-32-10 tanh MLP with minibatch Adam on the MNIST-5k training split and,
after every epoch, reads one :func:`fnn.backpack` call on a fixed probe batch of training
images (one forward pass, one delta recursion on the gradient's column and the ten columns
of the softmax Hessian's square root):

- **gradient signal-to-noise per layer**, from ``grad`` and ``grad_variance``:
  $\\mathrm{SNR}^{[l]} = \\lVert \\bar g^{[l]} \\rVert^2 / \\operatorname{tr}
  \\operatorname{Var}(\\bar g^{[l]})$, the squared norm of the probe batch's mean gradient
  over the summed variance of that mean as an estimate (``N * grad_variance``, since
  ``grad_variance`` is the variance of the per-sample ``grad l_n / N``). Above 1 the
  minibatch gradient points the same way as the full one; below 1 it is mostly noise.
- **the GGN diagonal** (``diag_ggn``): its trace per layer over the epochs, and where its
  largest entries sit: the first layer's diagonal summed over the hidden units is one number
  per pixel, drawn as a 28 x 28 image.
- **per-sample gradient norms** (``batch_l2_grad``): $\\lVert \\nabla \\ell_n \\rVert =
  N (\\sum_\\text{leaves} \\texttt{batch\\_l2\\_grad})^{1/2}$, their histogram at a few epochs.

Writes ``curvature_instruments__snr_and_trace.png``,
``curvature_instruments__gradient_norms.png``, ``curvature_instruments__ggn_pixels.png`` and
``curvature_instruments.json``.
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

INSTRUMENTS = ("loss", "grad", "grad_variance", "batch_l2_grad", "diag_ggn")
"""What :func:`fnn.backpack` computes every epoch, in one call."""


def train_epoch(net, optimizer, params, state, x, y, *, batch, key):
    """One pass of minibatch steps of :func:`fnn.train_step` in a shuffled order."""
    order = np.asarray(jax.random.permutation(key, x.shape[0]))
    for start in range(0, x.shape[0] - batch + 1, batch):
        idx = order[start:start + batch]
        params, state, _ = fnn.train_step(net, optimizer, params, state, (x[idx], y[idx]))
    return params, state


def read_instruments(q: dict, n: int) -> dict:
    """The per-epoch numbers from one :func:`fnn.backpack` result on ``n`` probe samples."""
    snr, trace = [], []
    for g, v, d in zip(q["grad"], q["grad_variance"], q["diag_ggn"], strict=True):
        signal = sum(float(jnp.sum(g[k] ** 2)) for k in ("W", "b"))
        noise = n * sum(float(jnp.sum(v[k])) for k in ("W", "b"))
        snr.append(signal / noise)
        trace.append(sum(float(jnp.sum(d[k])) for k in ("W", "b")))
    sq = sum(jnp.asarray(leaf) for layer in q["batch_l2_grad"] for leaf in layer.values())
    return {"loss": float(q["loss"]), "snr": snr, "ggn_trace": trace,
            "grad_norms": np.asarray(n * jnp.sqrt(sq))}


def _figures(exp, history, pixels, net, epochs_shown):
    epochs = np.arange(len(history))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for l in range(net.depth):
        label = f"layer {l + 1} ({net.layer_sizes[l]}->{net.layer_sizes[l + 1]})"
        axes[0].plot(epochs, [h["snr"][l] for h in history], marker="o", label=label)
        axes[1].plot(epochs, [h["ggn_trace"][l] for h in history], marker="o", label=label)
    axes[0].axhline(1.0, color="gray", ls="--", lw=1)
    axes[0].set(yscale="log", xlabel="epoch", ylabel="SNR = |mean g|^2 / tr Var(mean g)",
                title="gradient signal-to-noise on the probe batch")
    axes[1].set(yscale="log", xlabel="epoch", ylabel="trace of the GGN diagonal block",
                title="curvature (GGN diagonal) per layer")
    axes[0].legend()
    fig.suptitle(f"MNIST-5k, MLP {net.layer_sizes} tanh, Adam: one fnn.backpack call per epoch")
    exp.save_figure(fig, "curvature_instruments__snr_and_trace.png")

    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    norms = np.concatenate([history[e]["grad_norms"] for e in epochs_shown])
    bins = np.geomspace(max(norms.min(), 1e-6), norms.max(), 40)
    for e in epochs_shown:
        ax.hist(history[e]["grad_norms"], bins=bins, histtype="step", lw=1.5,
                label=f"epoch {e}")
    ax.set(xscale="log", xlabel=r"per-sample gradient norm $\|\nabla \ell_n\|$",
           ylabel="probe samples", title="per-sample gradient norms (batch_l2_grad)")
    ax.legend()
    exp.save_figure(fig, "curvature_instruments__gradient_norms.png")

    fig, axes = plt.subplots(1, len(pixels), figsize=(3.6 * len(pixels), 3.4),
                             layout="constrained")
    for ax, (e, image) in zip(np.atleast_1d(axes), pixels.items(), strict=True):
        shown = ax.imshow(image.reshape(28, 28), cmap="magma")
        ax.set(title=f"epoch {e}", xticks=[], yticks=[])
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle("GGN diagonal of the first layer, summed over its hidden units, per pixel")
    exp.save_figure(fig, "curvature_instruments__ggn_pixels.png")


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("curvature_instruments", __doc__.splitlines()[0], argv)
    n, epochs, probe = (500, 3, 64) if exp.smoke else (None, 15, 512)
    batch, lr = 64, 1e-3
    key_split, key_init, key_train = jax.random.split(jax.random.key(0), 3)
    x, y, x_test, y_test = (jnp.asarray(a) for a in load(n, key_split))
    net = fnn.MLP((x.shape[1], 64, 32, 10), "tanh")
    params = jax.jit(fnn.init)(key_init, net)
    opt = optax.adam(lr)
    instruments = jax.jit(lambda p: fnn.backpack(net, p, x[:probe], y[:probe], INSTRUMENTS))
    state = opt.init(params)
    history, pixels = [], {}
    shown = sorted({0, epochs // 2, epochs})
    for e, key in enumerate(jax.random.split(key_train, epochs + 1)):
        q = instruments(params)
        history.append(read_instruments(q, probe))
        if e in (0, epochs):
            pixels[e] = np.asarray(jnp.sum(q["diag_ggn"][0]["W"], axis=0))
        if e < epochs:
            params, state = train_epoch(net, opt, params, state, x, y, batch=batch, key=key)
    accuracy = float(jnp.mean(jnp.argmax(fnn.forward(net, params, x_test), 1) == y_test))
    _figures(exp, history, pixels, net, shown)
    top = np.argsort(pixels[epochs])[::-1][:5]
    results = {
        "sizes": list(net.layer_sizes), "activation": "tanh", "optimizer": f"adam({lr})",
        "batch": batch, "epochs": epochs, "probe": probe, "n_train": int(x.shape[0]),
        "test_accuracy": accuracy,
        "loss": [h["loss"] for h in history],
        "snr": [h["snr"] for h in history], "ggn_trace": [h["ggn_trace"] for h in history],
        "grad_norm_median": [float(np.median(h["grad_norms"])) for h in history],
        "grad_norm_p90": [float(np.percentile(h["grad_norms"], 90)) for h in history],
        "ggn_top_pixels": [{"row": int(i // 28), "col": int(i % 28),
                            "value": float(pixels[epochs][i])} for i in top],
    }
    exp.save_json(results)
    exp.report([
        f"test accuracy {accuracy:.3f} after {epochs} epochs; probe loss "
        f"{results['loss'][0]:.3f} -> {results['loss'][-1]:.3f}",
        "SNR per layer, first / last epoch: " + ", ".join(
            f"{a:.3g} / {b:.3g}" for a, b in zip(results["snr"][0], results["snr"][-1],
                                                   strict=True)),
        "GGN trace per layer, first / last epoch: " + ", ".join(
            f"{a:.3g} / {b:.3g}" for a, b in zip(results["ggn_trace"][0],
                                                   results["ggn_trace"][-1], strict=True)),
        f"median per-sample gradient norm: {results['grad_norm_median'][0]:.3g} -> "
        f"{results['grad_norm_median'][-1]:.3g}",
    ])
    return results


if __name__ == "__main__":
    main()
