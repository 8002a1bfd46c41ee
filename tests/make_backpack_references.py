"""BackPACK 1.7.1's numbers for the tests of fnn.curvature, written as small .npz files.

    python tests/make_backpack_references.py [--out tests/references]

Needs PyTorch and BackPACK, which the test suite does not: in a separate environment,

    pip install torch==2.13.0 numpy
    pip install --no-deps backpack-for-pytorch==1.7.1 einops unfoldNd packaging

(BackPACK's declared dependencies pull a multi-GB CUDA build of PyTorch; ``--no-deps`` beside
the CPU wheel avoids it). Everything runs in float64. For each case of :data:`CASES` it
builds the network in PyTorch with the weights of :func:`problem`, runs each BackPACK
extension in its own ``with backpack(...)`` on a mean-reduced loss, converts the results to
fnn's conventions (:func:`fnn_scale`) and writes ``<case>.npz``, holding for every quantity
and layer ``l`` the arrays ``"<quantity>/<l>/W"`` and ``"<quantity>/<l>/b"`` (``G`` and ``A``
for KFAC and KFLR), and the sampled square-root rows BackPACK drew for its Monte Carlo
extensions (``"<quantity>/rows"``, shape ``(N, M, k)`` in fnn's convention), so that the
tests can run fnn's recursion on the same samples.

The weights and data are not stored: :func:`problem` redraws them from ``numpy.random.
RandomState``, whose streams NumPy keeps fixed across versions; each file holds a
fingerprint of them (``"inputs/*"``) that the tests check first. Arrays of more than 64
entries (per sample, for the per-sample quantities) are stored as a random projection onto
16 fixed Gaussian directions (:func:`stored`, :func:`sketch`), which keeps the files small
(about 100 KiB each) and differs from the projection of fnn's numbers as soon as the arrays
differ: the relative error of the projections estimates that of the arrays.
"""

from __future__ import annotations

import argparse
import itertools
import math
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "references"

CASES = {
    # name: (layer sizes, hidden activation, output, loss, batch)
    "cce-sigmoid-20-16-12-5": ((20, 16, 12, 5), "sigmoid", "softmax", "cce", 32),
    "cce-tanh-20-16-12-5": ((20, 16, 12, 5), "tanh", "softmax", "cce", 32),
    "cce-relu-20-16-12-5": ((20, 16, 12, 5), "relu", "softmax", "cce", 32),
    "cce-leaky_relu-20-16-12-5": ((20, 16, 12, 5), "leaky_relu", "softmax", "cce", 32),
    "bce-tanh-20-16-12-1": ((20, 16, 12, 1), "tanh", "sigmoid", "bce", 32),
    "mse-identity-tanh-20-16-12-5": ((20, 16, 12, 5), "tanh", "identity", "mse", 32),
    "mse-sigmoid-sigmoid-20-16-12-5": ((20, 16, 12, 5), "sigmoid", "sigmoid", "mse", 32),
    "cce-sigmoid-784-64-32-10": ((784, 64, 32, 10), "sigmoid", "softmax", "cce", 32),
    "cce-tanh-784-64-32-10": ((784, 64, 32, 10), "tanh", "softmax", "cce", 32),
    "cce-relu-784-64-32-10": ((784, 64, 32, 10), "relu", "softmax", "cce", 32),
}
"""Every case BackPACK is run on."""

MC_SAMPLES = {"diag_ggn_mc": 3, "batch_diag_ggn_mc": 1, "kfac": 2}
"""The Monte Carlo extensions and their ``mc_samples``."""

SKETCH = 16
"""Random directions per sketched array (per sample for the per-sample quantities)."""

WHOLE = 64
"""Arrays (per sample: rows) with at most this many entries are stored whole."""


def problem(case: str):
    """``(params, x, y)`` of a case as NumPy float64 arrays, from a fixed ``RandomState``.

    ``params`` is a list of ``(W, b)`` with ``W`` of shape ``(n[l], n[l-1])``; ``y`` holds
    integer labels (softmax) or rows ``(N, k)`` (0/1 for sigmoid, real for identity).
    """
    sizes, _, output, _, batch = CASES[case]
    rng = np.random.RandomState(sum(sizes) + batch)
    params = [(rng.standard_normal((m, n)) / math.sqrt(n), 0.1 * rng.standard_normal(m))
              for n, m in itertools.pairwise(sizes)]
    x = rng.standard_normal((batch, sizes[0]))
    k = sizes[-1]
    if output == "softmax":
        y = rng.randint(0, k, batch)
    elif output == "sigmoid":
        y = rng.randint(0, 2, (batch, k)).astype(np.float64)
    else:
        y = rng.standard_normal((batch, k))
    return params, x, y


def fingerprint(params, x, y) -> dict[str, np.ndarray]:
    """A few numbers that change whenever :func:`problem` draws different inputs."""
    return {"inputs/x": x[:2, :8].copy(), "inputs/y": np.asarray(y, np.float64)[:4].copy(),
            "inputs/W_sums": np.array([W.sum() for W, _ in params]),
            "inputs/b_sums": np.array([b.sum() for _, b in params])}


def sketch(array: np.ndarray, batched: bool) -> np.ndarray:
    """``array`` flattened (after the batch axis if ``batched``) times a fixed Gaussian
    ``(size, 64)`` matrix drawn from ``RandomState(size)``."""
    array = np.asarray(array, np.float64)
    flat = array.reshape(array.shape[0], -1) if batched else array.reshape(-1)
    size = flat.shape[-1]
    directions = np.random.RandomState(size).standard_normal((size, SKETCH)) / math.sqrt(SKETCH)
    return flat @ directions


def fnn_scale(case: str, quantity: str) -> float:
    """The factor from BackPACK's number (mean-reduced PyTorch loss) to fnn's.

    Cross-entropy: 1, the losses agree. Binary cross-entropy and squared error: PyTorch's
    mean divides by ``N k`` where fnn's sums over the ``k`` outputs and divides by ``N``,
    so fnn's loss is ``k`` times PyTorch's: ``k`` for the quantities linear in the loss,
    ``k**2`` for the squared ones. KFAC's and KFLR's ``A`` do not depend on the loss; their
    ``G`` is linear in it.
    """
    _, _, _, loss, _ = CASES[case]
    k = CASES[case][0][-1]
    if loss == "cce":
        return 1.0
    squared = quantity in ("batch_l2_grad", "sum_grad_squared", "grad_variance")
    return float(k**2 if squared else k)


EXTENSIONS = {
    # fnn name: (BackPACK extension class name, attribute on the parameter)
    "batch_grad": ("BatchGrad", "grad_batch"),
    "batch_l2_grad": ("BatchL2Grad", "batch_l2"),
    "sum_grad_squared": ("SumGradSquared", "sum_grad_squared"),
    "grad_variance": ("Variance", "variance"),
    "diag_ggn": ("DiagGGNExact", "diag_ggn_exact"),
    "batch_diag_ggn": ("BatchDiagGGNExact", "diag_ggn_exact_batch"),
    "diag_ggn_mc": ("DiagGGNMC", "diag_ggn_mc"),
    "batch_diag_ggn_mc": ("BatchDiagGGNMC", "diag_ggn_mc_batch"),
    "diag_hessian": ("DiagHessian", "diag_h"),
    "batch_diag_hessian": ("BatchDiagHessian", "diag_h_batch"),
    "kflr": ("KFLR", "kflr"),
    "kfac": ("KFAC", "kfac"),
}


def _torch_problem(torch, case):
    _sizes, activation, output, loss, _ = CASES[case]
    params, x, y = problem(case)
    acts = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
            "leaky_relu": lambda: torch.nn.LeakyReLU(0.01)}
    layers = []
    for l, (W, b) in enumerate(params, start=1):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if l < len(params):
            layers.append(acts[activation]())
    if output == "sigmoid" and loss == "mse":
        layers.append(torch.nn.Sigmoid())  # the output function belongs to the model
    lossfunc = {"cce": torch.nn.CrossEntropyLoss, "bce": torch.nn.BCEWithLogitsLoss,
                "mse": torch.nn.MSELoss}[loss](reduction="mean")
    ty = torch.from_numpy(y) if output != "softmax" else torch.from_numpy(y).long()
    return torch.nn.Sequential(*layers), lossfunc, torch.from_numpy(x), ty


def _record_samples(backpack_module):
    """Wrap BackPACK's sampled square root so that each call's result is kept."""
    base = backpack_module.core.derivatives.basederivatives.BaseLossDerivatives
    original = base.sqrt_hessian_sampled
    drawn = []

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        drawn.append(out.detach().clone())
        return out

    base.sqrt_hessian_sampled = recording
    return drawn


def _rows_in_fnn_convention(case, sqrt, model, x):
    """BackPACK's sampled ``[M, N, k]`` square root -> fnn's rows ``(N, M, k)`` at the logits.

    BackPACK's carries the mean's ``1 / sqrt(N)`` (``1 / sqrt(N k)`` for MSE and BCE, whose
    per-element gradients are those of fnn's per-sample loss, summed over the outputs); fnn
    applies ``1 / N`` in its contractions. With a Sigmoid module before MSELoss, BackPACK's
    rows are at the output ``yhat``; fnn's are at the logits: ``rows * sigma'(z)``.
    """
    sizes, _, output, loss, batch = CASES[case]
    rows = sqrt.numpy().transpose(1, 0, 2) * math.sqrt(batch * (1 if loss == "cce" else sizes[-1]))
    if output == "sigmoid" and loss == "mse":
        p = model(x).detach().numpy()
        rows = rows * (p * (1 - p))[:, None, :]
    return rows


def stored(key: str, array: np.ndarray) -> np.ndarray:
    """What the file keeps of ``array``: the array itself if it has at most :data:`WHOLE`
    entries (per sample for the per-sample quantities), else its :func:`sketch`. The tests
    apply the same to fnn's numbers."""
    batched = key.split("/")[0].startswith("batch_")
    size = array[0].size if batched else array.size
    if size <= WHOLE or key.startswith("inputs/") or key.endswith("/rows"):
        return array
    return sketch(array, batched)


def _store(out, name, l, lin, attribute, scale):
    for key, param in (("W", lin.weight), ("b", lin.bias)):
        value = getattr(param, attribute)
        if name not in ("kflr", "kfac"):
            out[f"{name}/{l}/{key}"] = value.detach().numpy() * scale
        elif key == "W":  # weight: [G, A]; bias: [G], the same G
            out[f"{name}/{l}/G"] = value[0].detach().numpy() * scale
            out[f"{name}/{l}/A"] = value[1].detach().numpy()


def run_case(torch, case: str, drawn: list) -> dict[str, np.ndarray]:
    """Every extension of :data:`EXTENSIONS` on one case, in fnn's conventions."""
    from backpack import backpack, extend, extensions

    params, x_np, y_np = problem(case)
    out = fingerprint(params, x_np, y_np)
    for name, (ext_name, attribute) in EXTENSIONS.items():
        model, lossfunc, x, y = _torch_problem(torch, case)
        model, lossfunc = extend(model), extend(lossfunc)
        cls = getattr(extensions, ext_name)
        ext = cls(mc_samples=MC_SAMPLES[name]) if name in MC_SAMPLES else cls()
        torch.manual_seed(sum(map(ord, case + name)))
        drawn.clear()
        loss = lossfunc(model(x), y)
        try:
            with backpack(ext):
                loss.backward()
        except NotImplementedError as e:  # KFAC and KFLR have no LeakyReLU
            print(f"{case}: BackPACK has no {ext_name} here ({e}); left out")
            continue
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        for l, lin in enumerate(linears, start=1):
            _store(out, name, l, lin, attribute, fnn_scale(case, name))
            if name == "batch_grad":  # the gradient, for reference
                out[f"grad/{l}/W"] = lin.weight.grad.numpy() * fnn_scale(case, "grad")
                out[f"grad/{l}/b"] = lin.bias.grad.numpy() * fnn_scale(case, "grad")
        if name in MC_SAMPLES:
            assert len(drawn) == 1, f"{name}: expected one sampled square root, got {len(drawn)}"
            out[f"{name}/rows"] = _rows_in_fnn_convention(case, drawn[0], model, x)
    return {k: stored(k, v) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import backpack as backpack_module
    import torch

    torch.set_default_dtype(torch.float64)
    # BackPACK's hooks on a batch whose input needs no gradient: expected, and harmless.
    warnings.filterwarnings("ignore", "Full backward hook is firing")
    args.out.mkdir(parents=True, exist_ok=True)
    drawn = _record_samples(backpack_module)
    for case in CASES:
        arrays = run_case(torch, case, drawn)
        path = args.out / f"{case}.npz"
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a str
            np.savez_compressed(f, **arrays)
        print(f"{path}: {len(arrays)} arrays, {path.stat().st_size / 1024:.0f} KiB")
    print(f"torch {torch.__version__}, backpack-for-pytorch {_backpack_version()}")
    return 0


def _backpack_version() -> str:
    from importlib.metadata import version

    return version("backpack-for-pytorch")


if __name__ == "__main__":
    raise SystemExit(main())
