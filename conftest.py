"""Strict test configuration for the whole suite (tests/, doctests in fnn/ and README.md).

- Rank promotion raises, so ``(B,)`` against ``(B, 1)`` can never silently become ``(B, B)``.
- Warnings are errors (``filterwarnings = error`` in pyproject.toml).
- Hypothesis is deterministic and has no deadline (jit compilation time breaks deadlines).
- float64 is opt-in per test with the ``x64`` fixture, so the rest runs as users run fnn.
- float32 matrix products are true float32 products (``jax_default_matmul_precision`` is
  ``"highest"``): on a GPU with tensor cores JAX's default is TF32, 10 bits of mantissa, and
  the suite compares equations at float32 tolerances (seen on an H200: fnn against
  ``vmap(grad)`` 2e-4 apart under the default, both TF32). A no-op on CPUs, whose float32
  products are float32 anyway.
- JAX's persistent compilation cache is on, in ``.pytest_cache/jax`` (or the folder
  ``FNN_COMPILATION_CACHE`` names; ``off`` turns it off): compilation, not arithmetic, is
  what the suite spends its time on, and a second run loads what the first compiled. The
  CLI's in-process runs use the same folder. The suite runs in one pytest-xdist worker per
  core (``-n auto`` in pyproject.toml), all sharing that folder (pyproject.toml's
  ``filterwarnings`` says what happens when one reads an entry another is still writing).
- The fast tier compiles with JAX's ``jax_disable_most_optimizations``: LLVM's code
  generation at ``-O0`` and without its expensive passes, XLA's own HLO passes unchanged.
  Measured on a cold fast tier (643 tests, two workers, idle): 9:31 without it, 6:07 with it,
  every test passing; the workers' backend compilation 713 s -> 394 s. The numbers are not
  bitwise those of the optimised programs: a gradient and three curvature quantities of a
  784-64-32-10 tanh net differed by at most 4.5e-7 of their largest entry, float32
  rounding, far inside every tolerance of the suite. The slow tier (``-m slow``), benchmarks
  and experiments compile as users do, so CI runs the experiments' and the docs' examples
  and the CLI's real processes fully optimised. ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` (or
  ``1``) in the environment decides for any run; subprocesses inherit it.
- The slow tier's tests run one after another in one worker (an ``xdist_group``): they start
  real processes, bind ports, time a peer's silence and drive a browser; those marked
  ``in_process`` (experiment smoke runs, the docs pages' examples, a long CLI accuracy check)
  need none of that and run beside them.
"""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
_CACHE = os.environ.setdefault("FNN_COMPILATION_CACHE",
                               str(Path(__file__).parent / ".pytest_cache" / "jax"))
if _CACHE.lower() not in ("off", "0", "no", "false"):
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# No deadline and no too_slow health check: a draw may compile (each new shape does), and
# how long that takes depends on the machine's load, which must not decide a derandomised
# test. (A hypothesis.find of fnn.testing batches failed once in a cold suite run and passed
# in every run after; its error was not kept; too_slow is the check that load can trip.)
_UNTIMED = {"derandomize": True, "deadline": None, "database": None,
            "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("fnn", max_examples=12, print_blob=True, **_UNTIMED)
settings.register_profile("fnn-thorough", max_examples=200, **_UNTIMED)
settings.load_profile(os.environ.get("FNN_HYPOTHESIS_PROFILE", "fnn"))


@pytest.fixture
def x64():
    """Run the test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


def pytest_configure(config):
    """Compile fast in the fast tier (the default ``-m 'not slow'``), fully optimised in any
    other selection, unless ``JAX_DISABLE_MOST_OPTIMIZATIONS`` says otherwise. Refuse to run
    when ``--dist loadgroup`` would silently not group (pytest-xdist 3.8 with pytest 9.2:
    https://github.com/pytest-dev/pytest-xdist/issues/1386): the slow tier's processes, ports
    and browser would run side by side."""
    if config.getoption("dist", None) == "loadgroup":
        import xdist
        from packaging.version import Version

        if Version(pytest.__version__) >= Version("9.2") and Version(xdist.__version__) <= \
                Version("3.8.0"):
            raise pytest.UsageError(f"pytest-xdist {xdist.__version__}'s --dist loadgroup does "
                                    f"not group with pytest {pytest.__version__}: install "
                                    "pytest < 9.2 (pyproject.toml's test extra pins it)")
    fast_tier = config.getoption("markexpr", "") == "not slow"
    flag = os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1" if fast_tier else "0")
    jax.config.update("jax_disable_most_optimizations", flag.strip().lower() in ("1", "true"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook reads the groups
def pytest_collection_modifyitems(items):
    """The slow tier runs serially (one xdist group: one worker, in order), but for the tests
    marked ``in_process``."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("in_process"):
            item.add_marker(pytest.mark.xdist_group("slow-tier-serial"))
