"""Opacus's privacy accounting on a grid, written as a small file the test suite reads.

    python experiments/opacus_reference.py [--out tests/references/opacus_accounting.json]

Needs Opacus and PyTorch, which fnn and its tests do not: run it in a separate environment,
e.g. ``python -m venv .venv-ref && . .venv-ref/bin/activate && pip install torch==2.13.0
scipy numpy && pip install --no-deps opacus opt-einsum`` (``--no-deps`` keeps the CPU build
of PyTorch). ``tests/test_privacy.py`` compares ``fnn.privacy`` with every number here.

For each (sample rate q, noise multiplier sigma, steps, delta) of the grid it records
Opacus's RDP accountant (at its default orders and at the integer orders 2 to 64, with the
optimal order it chose), its PRV accountant, and ``get_noise_multiplier`` for a few targets.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

GRID = {"sample_rate": (0.004, 0.064, 0.25), "noise_multiplier": (0.8, 1.5, 4.0),
        "steps": (100, 5000), "delta": (1e-5, 1e-7)}
INTEGER_ORDERS = tuple(range(2, 65))
"""Orders at which both libraries compute the sampled Gaussian's RDP by the same finite sum."""
TARGETS = ((1.0, 1e-5, 0.064, 600), (3.0, 1e-5, 0.064, 600), (8.0, 1e-5, 0.004, 10000))
"""(target epsilon, delta, sample rate, steps) for ``get_noise_multiplier``."""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "tests" / "references" / "opacus_accounting.json")
    args = parser.parse_args(argv)
    import opacus
    import torch
    from opacus.accountants import PRVAccountant, RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    rows = []
    for q, sigma, steps, delta in itertools.product(*GRID.values()):
        rdp = RDPAccountant()
        rdp.history = [(sigma, q, steps)]
        eps, alpha = rdp.get_privacy_spent(delta=delta)
        eps_int, alpha_int = rdp.get_privacy_spent(delta=delta, alphas=list(INTEGER_ORDERS))
        prv = PRVAccountant()
        prv.history = [(sigma, q, steps)]
        rows.append({"sample_rate": q, "noise_multiplier": sigma, "steps": steps,
                     "delta": delta, "rdp_epsilon": eps, "rdp_order": alpha,
                     "rdp_integer_orders_epsilon": eps_int, "rdp_integer_orders_order": alpha_int,
                     "prv_epsilon": float(prv.get_epsilon(delta=delta))})
    calibrations = [
        {"target_epsilon": e, "delta": d, "sample_rate": q, "steps": t, "epsilon_tolerance": 0.01,
         "rdp_noise_multiplier": get_noise_multiplier(target_epsilon=e, target_delta=d,
                                                      sample_rate=q, steps=t)}
        for e, d, q, t in TARGETS]
    report = {"opacus": opacus.__version__, "torch": torch.__version__,
              "rdp_orders": list(RDPAccountant.DEFAULT_ALPHAS),
              "rdp_integer_orders": list(INTEGER_ORDERS), "grid": rows,
              "calibrations": calibrations}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One line per entry: small diffs when the references are made again.
    lines = ",\n".join(f" {json.dumps(k)}: [\n  " + ",\n  ".join(map(json.dumps, v)) + "\n ]"
                       if k in ("grid", "calibrations") else f" {json.dumps(k)}: {json.dumps(v)}"
                       for k, v in report.items())
    args.out.write_text("{\n" + lines + "\n}\n")
    print(f"wrote {len(rows)} accountings and {len(calibrations)} calibrations to {args.out}")
    return report


if __name__ == "__main__":
    main()
