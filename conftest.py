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
- The slow tier's tests run one after another in one worker (an ``xdist_group``): they start
  real processes, bind ports, time a peer's silence and drive a browser.
"""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
_CACHE = os.environ.setdefault("FNN_COMPILATION_CACHE",
                               str(Path(__file__).parent / ".pytest_cache" / "jax"))
if _CACHE.lower() not in ("off", "0", "no", "false"):
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

settings.register_profile(
    "fnn", derandomize=True, deadline=None, database=None, max_examples=12, print_blob=True
)
settings.register_profile(
    "fnn-thorough", derandomize=True, deadline=None, database=None, max_examples=200
)
settings.load_profile(os.environ.get("FNN_HYPOTHESIS_PROFILE", "fnn"))


@pytest.fixture
def x64():
    """Run the test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


def pytest_collection_modifyitems(items):
    """The slow tier runs serially: all of it in one xdist group (one worker, in order)."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("slow-tier-serial"))
