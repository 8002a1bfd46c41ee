"""Helpers shared by the lecture experiments: command line, output folder, JSON, figures.

Every experiment is ``python experiments/<name>.py [--out DIR] [--smoke]``: it writes its
figures as PNG and its numbers as ``<name>.json`` into ``DIR`` (default
``runs/experiments/<name>``) and prints a short summary. ``--smoke`` runs tiny sizes, for the
test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import jax
import matplotlib.pyplot as plt
import numpy as np

# As strict as the test suite: (B,) against (B, 1) must never broadcast silently.
jax.config.update("jax_numpy_rank_promotion", "raise")

__all__ = ["Experiment", "finite", "plt", "table"]


class Experiment:
    """The parsed command line of one experiment and where its files go.

    Args:
      name: the script's name, ``<name>.py``; also the JSON file's and the default folder's.
      description: the ``--help`` text.
      argv: the arguments (``None``: ``sys.argv[1:]``).
    """

    def __init__(self, name: str, description: str, argv: Sequence[str] | None = None):
        parser = argparse.ArgumentParser(prog=f"python experiments/{name}.py",
                                         description=description)
        parser.add_argument("--out", default=os.path.join("runs", "experiments", name),
                            help="folder for the figures and the JSON (default: %(default)s)")
        parser.add_argument("--smoke", action="store_true",
                            help="tiny sizes, seconds only (for the test suite)")
        args = parser.parse_args(argv)
        self.name = name
        self.smoke: bool = args.smoke
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

    def save_figure(self, fig: Any, filename: str) -> Path:
        """Write ``fig`` as ``DIR/filename`` (PNG, 120 dpi) and close it."""
        path = self.out / filename
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.files.append(str(path))
        return path

    def save_json(self, results: dict[str, Any]) -> Path:
        """Write ``results`` (plus ``smoke`` and the figure paths) as ``DIR/<name>.json``."""
        path = self.out / f"{self.name}.json"
        payload = {"experiment": self.name, "smoke": self.smoke, **_plain(results),
                   "figures": [Path(f).name for f in self.files]}
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        self.files.append(str(path))
        return path

    def report(self, lines: Sequence[str]) -> None:
        """Print the summary and the files written."""
        print("\n".join(lines))
        print(f"wrote {', '.join(self.files)}")


def digits_split(smoke: bool):
    """scikit-learn's 8x8 digits, split 80/20 (stratified, key 0), standardised on train.

    Returns NumPy ``x_train, y_train, x_test, y_test`` (256 / 128 samples with ``smoke``);
    NumPy, so that minibatches cut from them compile no small JAX operations one by one.
    """
    from fnn import data

    x, y = data.load_dataset("digits")
    train, _, test = data.stratified_split(jax.random.key(0), y, (0.8, 0.0, 0.2))
    if smoke:
        train, test = train[:256], test[:128]
    mean, std = data.fit_standardize(x[train])
    return (data.standardize(x[train], mean, std), y[train],
            data.standardize(x[test], mean, std), y[test])


def _plain(x: Any) -> Any:
    """Turn arrays and NumPy scalars into JSON numbers and lists (NaN/inf become None)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        arr = np.asarray(x)
        if arr.ndim == 0:
            return _plain(arr.item())
        return _plain(arr.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def finite(x: Any) -> bool:
    """True if every number in ``x`` (array or nested lists) is finite."""
    return bool(np.all(np.isfinite(np.asarray(x, dtype=float))))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in cells[1:]]
    return lines


def _cell(c: Any) -> str:
    if isinstance(c, (float, np.floating)):
        if c == 0:
            return "0"
        return f"{c:.3g}" if abs(c) < 1e-3 and c != 0 else f"{c:.4f}"
    return str(c)
