"""The benchmark suite runs in a tiny smoke mode, so it cannot rot."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("benchmarks", ROOT / "experiments" /
                                                  "benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compiled_stats_counts_the_kernels_that_run():
    import jax
    import jax.numpy as jnp

    b = _load()
    one_dot = jax.jit(lambda a, c: a @ c).lower(jnp.ones((8, 8)), jnp.ones((8, 8))).compile()
    two = jax.jit(lambda a, c: jnp.tanh(a @ c) @ c).lower(jnp.ones((8, 8)),
                                                           jnp.ones((8, 8))).compile()
    assert b.compiled_stats(one_dot)["kernels"] == 1
    assert b.compiled_stats(two)["kernels"] >= 2
    assert b.compiled_stats(two)["temp_bytes"] >= 0


def test_gradient_flops_counts_the_matmuls():
    b = _load()
    # forward 2*B*(6+12), dW the same, deltas below layer 1 only: 2*B*12.
    assert b.gradient_flops(5, (2, 3, 4)) == 2 * 5 * (2 * (6 + 12) + 12)


@pytest.mark.slow
def test_smoke_run_writes_the_table(tmp_path, capsys):
    b = _load()
    assert b.main(["--smoke", "--repeats", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    kinds = [r["kind"] for r in report["results"]]
    assert kinds.count("gradient") == len(b.SMOKE_GRID) and "train_step" in kinds
    assert "epoch" in kinds
    for r in report["results"]:
        for name, t in r["times"].items():
            assert t["p25_s"] <= t["median_s"] <= t["p75_s"], name
            assert math.isfinite(t["median_s"]) and t["median_s"] > 0
        assert r["fnn_vs_autodiff" if r["kind"] != "epoch" else "fnn_vs_sklearn"] > 0
    gradient = report["results"][0]
    assert gradient["temp_bytes"]["fnn"] is not None
    assert 0 < gradient["fnn_pct_peak"] < 100
    for r in report["results"]:
        if r["kind"] != "epoch":
            assert r["kernels"]["fnn"] > 0 and r["kernels"]["autodiff"] > 0
    step = next(r for r in report["results"] if r["kind"] == "train_step")
    assert {"fnn", "autodiff", "sklearn"} <= set(step["times"])  # scikit-learn: one step
    epoch = report["results"][-1]
    # The floor is the epoch's matmuls at the measured peak: below fnn's time, and what
    # bounds the ratio any implementation could reach against scikit-learn.
    assert 0 < epoch["floor_s"] < epoch["times"]["fnn"]["median_s"]
    assert epoch["sklearn_vs_floor"] == pytest.approx(
        epoch["times"]["sklearn"]["median_s"] / epoch["floor_s"])
    assert epoch["sklearn_vs_floor"] > epoch["fnn_vs_sklearn"]
    assert 0 < report["dispatch_floor_s"] < gradient["times"]["fnn"]["median_s"]
    assert report["environment"]["versions"]["jax"]
    clipping = report["clipping"]
    assert set(clipping["times"]) == {"clipped_grad", "grad", "vmap_grad_clip"}
    assert clipping["clipped_vs_clipped_grad"] == 1.0
    precision = report["precision"]
    assert set(precision["times"]) == {"f32", "tf32", "mixed", "bf16"}
    assert precision["times"]["f32"]["ratio_to_f32"] == 1.0
    assert all(v is not None and v >= 0 for v in precision["temp_bytes"].values())
    curvature = report["curvature"]  # issue 13: fnn.curvature against grad and brute force
    assert [r["row"] for r in curvature["rows"]] == ["first-order set", "diag_hessian"]
    for r in curvature["rows"]:
        assert r["fnn_over_grad"] > 0 and r["brute_over_fnn"] > 0
        assert r["temp_bytes"]["fnn"] is not None
    assert curvature["rows"][1]["brute"]["extrapolated"]
    assert (tmp_path / "benchmarks.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "| row |" in out and "benchmarks.json" in out and "no implementation can" in out
    assert "| policy |" in out and "(issue 16; backend" in out
    (dp,) = report["dp"]  # issue 14: the DP-SGD step against the non-private one
    assert dp["kind"] == "dp_step" and dp["dp_vs_nonprivate"] > 0
    assert dp["max_batch"] > dp["batch"] and None not in dp["temp_bytes"].values()
    assert "DP-SGD step (issue 14)" in out


def test_gpu_script_names_what_exists():
    """experiments/gpu_benchmarks.sh runs only on a machine with a GPU: here, its syntax, and
    that every script, option and test file it names still exists."""
    import re
    import subprocess

    script = ROOT / "experiments" / "gpu_benchmarks.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    paths = set(re.findall(r"(?:experiments|tests)/[\w./]+\.py", text))
    assert {"experiments/benchmarks.py", "experiments/_bench_curvature.py"} <= paths
    assert all((ROOT / p).is_file() for p in paths), paths
    for name in ("benchmarks.py", "_bench_curvature.py"):
        source = (ROOT / "experiments" / name).read_text()
        used = re.findall(rf"experiments/{re.escape(name)}((?:\\\n|[^\n])*)", text)
        options = {o for line in used for o in re.findall(r"(--[a-z-]+)", line)}
        assert options and all(f'"{o}"' in source for o in options), (name, options)
