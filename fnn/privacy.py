r"""DP-SGD's privacy: Poisson sampling of the minibatches and the $(\varepsilon, \delta)$ it spends.

DP-SGD (Abadi et al. 2016) is private because of three things together: each example's
gradient is clipped to norm $C$ ([`dp_gradient`][fnn.per_example.dp_gradient], in the one backward
pass), Gaussian noise $\mathcal N(0, \sigma^2 C^2 I)$ is added to the clipped sum, and each
step's batch is a **Poisson sample**: every example joins it independently with probability
$q$. This module does the sampling and the accounting.

**The event accounted for.** $T$ steps, each the *Poisson-sampled Gaussian mechanism*:
a sample of the $N$ examples, each in it with probability $q$, the sum of their clipped
gradients (sensitivity $C$) plus Gaussian noise of standard deviation $\sigma C$. Two data sets
are neighbours when one is the other with one example added or removed (*add/remove*
adjacency, as in Opacus and TensorFlow Privacy). In ``dp_accounting``'s terms::

    SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)

The accountants are Google's ``dp_accounting`` package (``pip install fnn[dp]``), not
written here: ``"rdp"`` (Rényi DP, Mironov 2017, with the conversion to $(\varepsilon,
\delta)$ of Canonne, Kamath and Steinke 2020, at ``dp_accounting``'s default orders) and
``"pld"`` (privacy loss distributions, tighter, slower). What the guarantee assumes, and
what it does not cover, is in ``docs/privacy.md``: in short, only the training steps are
accounted for (not hyperparameter tuning, not the validation set, not the metrics logged),
and the floating-point noise and sampling are approximations of the real-valued mechanism.

**Sampling with one compiled step.** A Poisson sample has a random size, around its mean $qN$ with
standard deviation $\sqrt{qN(1-q)}$. [`poisson_sample`][fnn.privacy.poisson_sample] pads it to a
fixed ``max_batch`` ([`max_batch`][fnn.privacy.max_batch]: exceeded with probability at most
[`OVERFLOW`][fnn.privacy.OVERFLOW] per step) and returns a mask; masked rows contribute nothing, and
the clipped sum is divided by the *expected* batch size $qN$, as the analysis assumes. When a sample
is larger than ``max_batch`` (rare; each such step is counted) a uniformly random subset of
``max_batch`` of its examples is kept: that step is then the *truncated* Poisson-sampled Gaussian
(``dp_accounting``'s ``TruncatedSubsampledGaussianDpEvent``), which the standard event
above does not describe, so a run that reports overflows is outside its guarantee.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import _validation

__all__ = ["ACCOUNTANTS", "OVERFLOW", "PLD_MAX_EPSILON", "PoissonSample", "accounting_version",
           "calibrate_noise", "check_delta", "claim", "dp_sgd_event", "epsilon",
           "epsilon_schedule", "max_batch", "poisson_sample", "sampling_plan"]

ACCOUNTANTS = ("rdp", "pld")
"""The accountants of [`epsilon`][fnn.privacy.epsilon]: ``dp_accounting``'s ``RdpAccountant`` and
``PLDAccountant``, each with its default settings and add/remove adjacency."""

OVERFLOW = 1e-6
"""The largest probability, per step, that a Poisson sample exceeds
[`max_batch`][fnn.privacy.max_batch]."""

PLD_MAX_EPSILON = 100.0
r"""Where RDP's $\varepsilon$ exceeds this, ``epsilon(..., "pld")`` returns RDP's, a valid
(looser) bound: the PLD accountant's memory grows with $\varepsilon$ (measured: 1.1 GB at
$\varepsilon = 490$, over 6 GB at $\sigma = 0.1$, $q = 1/16$, 2,000 steps; a 24 GB machine
ran out at $\sigma = 0.01$), and a claim this large promises nothing anyway."""

NOISE_RANGE = (1e-3, 1e4)
"""The noise multipliers [`calibrate_noise`][fnn.privacy.calibrate_noise] searches: a target that
needs more noise than the upper end is refused as not reachable."""


# ------------------------------------------------------------------------------ accounting


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError:
        raise ImportError("privacy accounting needs the dp-accounting package: "
                          "pip install 'fnn[dp]' (or pip install dp-accounting)") from None
    return dp_accounting


def accounting_version() -> str | None:
    """The installed ``dp-accounting`` version, or None."""
    import importlib.metadata as md

    try:
        return md.version("dp-accounting")
    except md.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _quiet():
    """Silence ``dp_accounting``'s absl warnings about the RDP orders whose series does not
    converge: they are left out of the minimum over orders, which can only raise epsilon."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(noise_multiplier=None, sample_rate=None, steps=None, delta=None, accountant="rdp"):
    _validation.one_of("accountant", accountant, ACCOUNTANTS)
    return tuple(None if v is None else _validation.parameter(name, v) for name, v in (
        ("noise_multiplier", noise_multiplier), ("sample_rate", sample_rate),
        ("steps", steps), ("delta", delta)))


def dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int):
    r"""``dp_accounting``'s event for $T$ steps of DP-SGD with Poisson sampling.

    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``: each step
    a Poisson sample (rate $q$) through the Gaussian mechanism of noise multiplier $\sigma$.
    """
    dpa = _dp_accounting()
    step = dpa.PoissonSampledDpEvent(sample_rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SelfComposedDpEvent(step, steps)


def _accountant(name: str, orders: Sequence[float] | None = None):
    dpa = _dp_accounting()
    adjacency = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    if name == "pld":
        if orders is not None:
            raise ValueError("orders are for the 'rdp' accountant")
        return dpa.pld.PLDAccountant(adjacency)
    return dpa.rdp.RdpAccountant(orders, adjacency)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp", *, orders: Sequence[float] | None = None) -> float:
    r"""The $\varepsilon$ spent by ``steps`` steps of DP-SGD, at $\delta$.

    The event of [`dp_sgd_event`][fnn.privacy.dp_sgd_event] (Poisson-sampled Gaussian mechanism,
    add/remove adjacency), given to a fresh ``dp_accounting`` accountant with its default settings.

    Args:
      noise_multiplier: $\sigma \ge 0$; the noise's standard deviation is $\sigma C$ on the
        clipped sum. $\sigma = 0$ spends $\varepsilon = \infty$.
      sample_rate: $q \in (0, 1]$, the probability that an example joins a step's batch.
      steps: $T \ge 0$.
      delta: $\delta \in (0, 1)$.
      accountant: ``"rdp"`` (default) or ``"pld"``.
      orders: ``"rdp"`` only: the Rényi orders to minimise over (default:
        ``dp_accounting``'s). Opacus's are ``[1 + x / 10 for x in range(1, 100)] +
        list(range(12, 64))``.

    Returns:
      $\varepsilon \ge 0$ (``inf`` when $\sigma = 0$ and $T > 0$). With ``"pld"``, RDP's
      $\varepsilon$ where that exceeds [`PLD_MAX_EPSILON`][fnn.privacy.PLD_MAX_EPSILON].

    >>> round(epsilon(1.1, 256 / 60000, 60 * 234, 1e-5), 2)  # MNIST, batch 256, 60 epochs
    2.59
    """
    noise_multiplier, sample_rate, steps, delta = _check(noise_multiplier, sample_rate, steps,
                                                         delta, accountant)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "pld":
        bound = epsilon(noise_multiplier, sample_rate, steps, delta, "rdp")
        if bound > PLD_MAX_EPSILON:  # PLD's memory grows with epsilon: RDP's bound instead
            return bound
    with _quiet():
        acc = _accountant(accountant, orders).compose(
            dp_sgd_event(noise_multiplier, sample_rate, steps))
        return float(acc.get_epsilon(delta))


def epsilon_schedule(noise_multiplier: float, sample_rate: float, steps: Sequence[int],
                     delta: float, *, orders: Sequence[float] | None = None) -> list[float]:
    r"""The RDP accountant's $\varepsilon$ after each of several step counts, cheaply.

    Rényi DP composes by addition: $T$ steps have $T$ times one step's RDP at every order.
    One step's RDP is computed once (``dp_accounting``'s ``RdpAccountant``), then each
    count's $\varepsilon$ with ``dp_accounting``'s own conversion: equal to
    ``epsilon(..., t, delta, "rdp")`` for each ``t`` up to rounding. Used for the progress
    bar and the per-epoch records of ``fnn train``.

    >>> [round(e, 2) for e in epsilon_schedule(1.1, 256 / 60000, [234, 60 * 234], 1e-5)]
    [0.74, 2.59]
    """
    noise_multiplier, sample_rate, _, delta = _check(noise_multiplier, sample_rate, 1, delta)
    steps = [_validation.parameter("steps", t) for t in steps]
    if noise_multiplier == 0:
        return [0.0 if t == 0 else math.inf for t in steps]
    dpa = _dp_accounting()
    with _quiet():
        acc = _accountant("rdp", orders).compose(dp_sgd_event(noise_multiplier, sample_rate, 1))
        # One step's RDP at every order: what RdpAccountant keeps and adds up (_rdp).
        one, orders = np.asarray(acc._rdp), np.asarray(acc._orders)
        convert = dpa.rdp.rdp_privacy_accountant.compute_epsilon
        return [0.0 if t == 0 else float(convert(orders, t * one, delta)[0]) for t in steps]


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp") -> float:
    r"""The smallest noise multiplier $\sigma$ whose run spends at most ``target_epsilon``.

    ``dp_accounting.calibrate_dp_mechanism`` (Brent's method on
    $\sigma \mapsto \varepsilon(\sigma) - \varepsilon_{\text{target}}$, then a step to the safe
    side), over a bracket found by doubling inside [`NOISE_RANGE`][fnn.privacy.NOISE_RANGE]. The
    result $\sigma$ spends ``epsilon(sigma,
    sample_rate, steps, delta, accountant) <= target_epsilon``, within $10^{-6}$ of the exact root.

    Raises:
      fnn._validation.ParameterError: (a ``ValueError``) when the target is not reachable:
        even $\sigma$ at the top of [`NOISE_RANGE`][fnn.privacy.NOISE_RANGE] spends more (RDP's
        conversion has a floor near $\log(1/\delta) / \alpha_{\max}$), or the target needs less
        noise than its bottom.

    >>> sigma = calibrate_noise(3.0, 1e-5, 256 / 60000, 60 * 234)
    >>> round(sigma, 3), epsilon(sigma, 256 / 60000, 60 * 234, 1e-5) <= 3.0
    (1.014, True)
    """
    target = _validation.parameter("target_epsilon", target_epsilon)
    _, sample_rate, steps, delta = _check(1.0, sample_rate, steps, delta, accountant)
    if steps == 0:
        raise _validation.ParameterError("steps", "must be >= 1 to calibrate noise, got 0")

    def spent(sigma):
        return epsilon(sigma, sample_rate, steps, delta, accountant)

    low, high = NOISE_RANGE
    lo, hi = 0.5, 1.0
    while spent(lo) <= target:  # too much noise already: lower the bracket's floor
        lo, hi = lo / 4, lo
        if lo < low:
            raise _validation.ParameterError(
                "target_epsilon", f"{target:g} needs a noise multiplier below {low:g}: give "
                "the noise multiplier instead")
    while spent(hi) > target:
        lo, hi = hi, hi * 4
        if hi > high:
            raise _validation.ParameterError(
                "target_epsilon", f"{target:g} is not reachable at delta {delta:g} with "
                f"sample rate {sample_rate:g} over {steps} steps: even noise multiplier "
                f"{high:g} spends epsilon {spent(high):.4g} ({accountant} accountant)")
    dpa = _dp_accounting()
    with _quiet():
        return float(dpa.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda sigma: dp_sgd_event(sigma, sample_rate, steps), target, delta,
            dpa.ExplicitBracketInterval(lo, hi)))


def check_delta(delta: float, n: int) -> float:
    r"""Refuse $\delta \ge 1/N$: such a $\delta$ allows releasing one whole example.

    (An $(\varepsilon, \delta)$ mechanism may, with probability $\delta$, publish an example
    outright; over $N$ examples $\delta \ge 1/N$ lets it publish one on average.)
    """
    delta = _validation.parameter("delta", delta)
    if delta >= 1 / n:
        raise _validation.ParameterError(
            "delta", f"{delta:g} is not below 1/N = {1 / n:.3g} for the N = {n} training "
                     "examples: a delta that large allows releasing one example outright")
    return delta


def sampling_plan(n: int, batch_size: int | None, epochs: int) -> tuple[float, int]:
    r"""$(q, T)$ of ``epochs`` epochs of ``fit(..., batch_size=B, dp=...)`` on $N$ examples.

    $q = B / N$ (full batch: 1), and $\lfloor N / B \rfloor$ steps an epoch (full batch: 1),
    so that an epoch sees each example once in expectation.

    >>> sampling_plan(4000, 256, 10)
    (0.064, 150)
    """
    if batch_size is None:
        return 1.0, epochs
    return batch_size / n, epochs * (n // batch_size)


def claim(n: int, batch_size: int | None, epochs: int, noise_multiplier: float,
          clip_norm: float, delta: float, accountant: str = "rdp", *,
          target_epsilon: float | None = None, overflows: int = 0) -> dict:
    r"""The privacy claim of ``epochs`` epochs of DP-SGD on $N$ examples, as a JSON-ready dict.

    What ``fnn train`` writes under ``privacy`` in ``metrics.json``: the $\varepsilon$ spent
    at ``delta`` ([`epsilon`][fnn.privacy.epsilon] of the
    [`sampling_plan`][fnn.privacy.sampling_plan]), the mechanism's settings, the event
    accounted for, the steps whose sample overflowed ``max_batch`` (``overflows``: a run with
    any is outside the guarantee) and the version of ``dp_accounting``.

    >>> c = claim(60000, 256, 60, 1.1, 1.0, 1e-5)
    >>> round(c["epsilon"], 2), c["steps"], c["sampling"]
    (2.59, 14040, 'poisson')
    """
    q, steps = sampling_plan(n, batch_size, epochs)
    return {
        "epsilon": epsilon(noise_multiplier, q, steps, delta, accountant), "delta": delta,
        "accountant": accountant, "target_epsilon": target_epsilon,
        "noise_multiplier": noise_multiplier, "clip_norm": clip_norm, "sample_rate": q,
        "steps": steps, "epochs": epochs, "sampling": "full batch" if q == 1 else "poisson",
        "expected_batch": q * n, "max_batch": max_batch(n, q), "overflows": overflows,
        "event": "SelfComposedDpEvent(PoissonSampledDpEvent(sample_rate, GaussianDpEvent("
                 "noise_multiplier)), steps), add/remove adjacency",
        "dp_accounting": accounting_version()}


# ------------------------------------------------------------------------------ sampling


@functools.cache
def max_batch(n: int, sample_rate: float, overflow: float = OVERFLOW) -> int:
    r"""The smallest $m$ with $P(\mathrm{Binomial}(N, q) > m) \le$ ``overflow``.

    The padded size of a Poisson sample of $N$ examples at rate $q$: a step's sample exceeds
    it with probability at most ``overflow`` (default [`OVERFLOW`][fnn.privacy.OVERFLOW]). The
    binomial tail is summed exactly in log space from its pmf.

    >>> max_batch(60000, 1024 / 60000)  # mean 1024, standard deviation 31.7
    1178
    """
    n = _validation.parameter("n_examples", n)
    q = _validation.parameter("sample_rate", sample_rate)
    if q == 1:
        return n
    k = np.arange(int(n * q), n + 1)
    log_pmf = (math.lgamma(n + 1) - np.vectorize(math.lgamma)(k + 1.0)
               - np.vectorize(math.lgamma)(n - k + 1.0) + k * math.log(q)
               + (n - k) * math.log1p(-q))
    tail = np.cumsum(np.exp(log_pmf)[::-1])[::-1]  # tail[j] = P(X >= k[j])
    above = np.nonzero(tail <= overflow)[0]
    return n if above.size == 0 else int(k[above[0]] - 1)


class PoissonSample(NamedTuple):
    """What [`poisson_sample`][fnn.privacy.poisson_sample] returns."""

    indices: jax.Array
    """``(max_batch,)`` int32: the sampled examples first, then index 0 as padding."""
    mask: jax.Array
    """``(max_batch,)`` bool: True on the rows of sampled examples."""
    count: jax.Array
    """int32 scalar: the size of the Poisson sample before truncation (> ``max_batch``:
    the step overflowed and a random ``max_batch`` of them were kept)."""


def poisson_sample(key: ArrayLike, n: int, sample_rate: float, max_batch: int) -> PoissonSample:
    r"""A Poisson sample of ``range(n)`` at rate $q$, padded to ``max_batch`` rows with a mask.

    Example $i$ joins when $u_i < \lfloor q 2^{32} \rfloor$ for independent uniform 32-bit
    integers $u_i$: the rate is $q$ rounded down to a multiple of $2^{-32}$, never above the
    $q$ accounted for. Jittable; ``n``, ``sample_rate`` and ``max_batch`` are static.

    Args:
      key: a ``jax.random`` key (a fresh one each step).
      n: $N$, the number of examples; sample_rate: $q \in (0, 1]$.
      max_batch: rows of the result, e.g. [`max_batch`][fnn.privacy.max_batch] ``(n, q)``.

    Returns:
      [`PoissonSample`][fnn.privacy.PoissonSample]. If more than ``max_batch`` examples were
      sampled, the ``max_batch`` with the smallest $u_i$ are kept: a uniformly random subset of
      them.

    >>> s = poisson_sample(jax.random.key(0), 100, 0.1, 20)
    >>> s.indices.shape, int(s.mask.sum()) == min(int(s.count), 20)
    ((20,), True)
    """
    if sample_rate == 1:
        return PoissonSample(jnp.arange(max_batch, dtype=jnp.int32) % n,
                             jnp.arange(max_batch) < n, jnp.asarray(n, jnp.int32))
    u = jax.random.bits(key, (n,), jnp.uint32)
    joined = u < np.uint32(math.floor(sample_rate * 2**32))
    count = jnp.sum(joined, dtype=jnp.int32)
    indices = jax.lax.cond(
        count > max_batch,
        lambda: jnp.argsort(jnp.where(joined, u, np.uint32(2**32 - 1)))[:max_batch],
        lambda: jnp.nonzero(joined, size=max_batch, fill_value=0)[0])
    return PoissonSample(indices.astype(jnp.int32), jnp.arange(max_batch) < count, count)
