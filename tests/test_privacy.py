"""fnn.privacy: the accountant is dp_accounting's, agrees with Opacus where they compute the same
thing, calibration inverts it; Poisson sampling, the masked clipped sum and the noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import privacy, training
from fnn._validation import ParameterError

dpa = pytest.importorskip("dp_accounting")  # in the test extra: never skipped in CI

REFERENCE = json.loads((Path(__file__).parent / "references" / "opacus_accounting.json")
                       .read_text())
GRID = [(0.8, 0.004, 100, 1e-5), (1.5, 0.064, 600, 1e-5), (4.0, 0.25, 5000, 1e-7),
        (1.1, 1.0, 40, 1e-6)]
"""(sigma, q, steps, delta): small and large sample rates and step counts, and full batch."""


def _dp_accounting_epsilon(sigma, q, steps, delta, accountant):
    """dp_accounting's own computation, written out: one Poisson-sampled Gaussian, composed
    ``steps`` times, in an accountant made with its defaults."""
    event = dpa.PoissonSampledDpEvent(sampling_probability=q,
                                      event=dpa.GaussianDpEvent(noise_multiplier=sigma))
    made = {"rdp": dpa.rdp.RdpAccountant, "pld": dpa.pld.PLDAccountant}[accountant]()
    return made.compose(event, steps).get_epsilon(target_delta=delta)


@pytest.mark.parametrize("point", GRID, ids=str)
def test_rdp_epsilon_is_dp_accountings(point):
    assert privacy.epsilon(*point) == pytest.approx(_dp_accounting_epsilon(*point, "rdp"),
                                                    rel=1e-9)


def test_pld_epsilon_is_dp_accountings():
    for point in ((1.5, 0.064, 100, 1e-5), GRID[3]):
        ours = privacy.epsilon(*point, accountant="pld")
        assert ours == pytest.approx(_dp_accounting_epsilon(*point, "pld"), rel=1e-9)
        assert ours < privacy.epsilon(*point)  # PLD is the tighter accountant here


def test_epsilon_edges_and_bad_input():
    assert privacy.epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert privacy.epsilon(0.0, 0.1, 10, 1e-5) == math.inf
    a, b = privacy.epsilon(1.0, 0.01, 100, 1e-5), privacy.epsilon(1.0, 0.01, 400, 1e-5)
    assert 0 < a < b  # more steps, more epsilon
    for bad, match in (({"sample_rate": 0.0}, "sample_rate"), ({"sample_rate": 1.5}, "sample_"),
                       ({"delta": 0.0}, "delta"), ({"steps": -1}, "steps"),
                       ({"noise_multiplier": -1.0}, "noise_multiplier")):
        args = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "delta": 1e-5, **bad}
        with pytest.raises(ParameterError, match=match):
            privacy.epsilon(**args)
    with pytest.raises(ValueError, match="accountant"):
        privacy.epsilon(1.0, 0.1, 10, 1e-5, accountant="gdp")


def test_pld_reports_rdps_bound_where_it_would_exhaust_memory():
    """sigma 0.2 (q 0.025, 80 steps): RDP spends 131 > PLD_MAX_EPSILON; PLD itself would
    take 426 MB and 5.6 s here, and at sigma 0.01 more than this 24 GB machine has."""
    rdp = privacy.epsilon(0.2, 0.025, 80, 1e-5, "rdp")
    assert rdp > privacy.PLD_MAX_EPSILON
    assert privacy.epsilon(0.2, 0.025, 80, 1e-5, "pld") == rdp
    assert privacy.epsilon(0.01, 0.025, 80, 1e-5, "pld") == privacy.epsilon(0.01, 0.025, 80,
                                                                           1e-5, "rdp")


def test_epsilon_schedule_equals_epsilon():
    sigma, q, delta = 1.2, 0.05, 1e-5
    steps = [0, 20, 200, 2000]
    schedule = privacy.epsilon_schedule(sigma, q, steps, delta)
    assert schedule[0] == 0.0
    for t, e in zip(steps[1:], schedule[1:], strict=True):
        assert e == pytest.approx(privacy.epsilon(sigma, q, t, delta), rel=1e-9)


@pytest.mark.parametrize("target, delta, q, steps", [(1.0, 1e-5, 0.064, 600),
                                                     (8.0, 1e-6, 0.01, 3000),
                                                     (0.5, 1e-5, 1.0, 10)])
def test_calibrate_noise_inverts_epsilon(target, delta, q, steps):
    sigma = privacy.calibrate_noise(target, delta, q, steps)
    spent = privacy.epsilon(sigma, q, steps, delta)
    assert target - 1e-3 <= spent <= target
    assert privacy.epsilon(sigma * 0.999, q, steps, delta) > target  # the smallest such sigma


@pytest.mark.slow
def test_calibrate_noise_with_pld():
    sigma = privacy.calibrate_noise(3.0, 1e-5, 0.05, 200, accountant="pld")
    assert 3.0 - 1e-3 <= privacy.epsilon(sigma, 0.05, 200, 1e-5, "pld") <= 3.0
    assert sigma < privacy.calibrate_noise(3.0, 1e-5, 0.05, 200)  # tighter: less noise


def test_unreachable_targets_and_large_delta_are_refused():
    # Full batch: RDP's conversion has a floor near log(1/delta) / max order.
    with pytest.raises(ParameterError, match=r"target_epsilon 0\.001 is not reachable"):
        privacy.calibrate_noise(0.001, 1e-5, 1.0, 10)
    with pytest.raises(ParameterError, match="target_epsilon"):
        privacy.calibrate_noise(0.0, 1e-5, 0.1, 10)
    assert privacy.check_delta(1e-5, 4000) == 1e-5
    with pytest.raises(ParameterError, match=r"delta 0.001 is not below 1/N = 0.00025"):
        privacy.check_delta(1e-3, 4000)


# --------------------------------------------------------------------------- Opacus


def _rows(key):
    return [r for r in REFERENCE["grid"] if key in r]


def test_rdp_agrees_with_opacus_at_integer_orders():
    """Both libraries compute the sampled Gaussian's RDP at an integer order by the same
    finite binomial sum and convert it to epsilon the same way: they agree to 1e-6 on the
    whole grid (to ~1e-12 in fact)."""
    orders = REFERENCE["rdp_integer_orders"]
    for r in _rows("rdp_integer_orders_epsilon"):
        ours = privacy.epsilon(r["noise_multiplier"], r["sample_rate"], r["steps"], r["delta"],
                               orders=orders)
        assert ours == pytest.approx(r["rdp_integer_orders_epsilon"], rel=1e-6, abs=1e-6), r


def test_rdp_against_opacus_at_its_default_orders():
    """At Opacus's default orders (fractional ones below 11), the two agree to 1e-6 where the
    optimal order is an integer; at a fractional optimal order dp_accounting's series
    (absolute binomial coefficients, another stopping rule) is an upper bound of Opacus's
    exact one, so fnn's epsilon is never below Opacus's."""
    orders = REFERENCE["rdp_orders"]
    agree = 0
    for r in REFERENCE["grid"]:
        ours = privacy.epsilon(r["noise_multiplier"], r["sample_rate"], r["steps"], r["delta"],
                               orders=orders)
        assert ours >= r["rdp_epsilon"] * (1 - 1e-9), r
        if float(r["rdp_order"]).is_integer():
            assert ours == pytest.approx(r["rdp_epsilon"], rel=1e-6), r
            agree += 1
    assert agree >= len(REFERENCE["grid"]) // 3


@pytest.mark.slow
def test_pld_against_opacus_prv():
    """Different numerical methods: fnn's PLD is 0.010 to 0.017 below Opacus's PRV upper
    estimate on the whole grid (checked here where PLD is quick: 100 steps)."""
    for r in REFERENCE["grid"]:
        if r["steps"] == 100 and r["sample_rate"] == 0.004:
            ours = privacy.epsilon(r["noise_multiplier"], r["sample_rate"], r["steps"],
                                   r["delta"], accountant="pld")
            assert 0.0099 < r["prv_epsilon"] - ours < 0.02, r


def test_calibration_against_opacus():
    """Opacus's bisection stops within 0.01 below the target; fnn's sigma spends within 1e-3
    of it, so it is at most Opacus's."""
    for c in REFERENCE["calibrations"]:
        args = (c["delta"], c["sample_rate"], c["steps"])
        ours = privacy.calibrate_noise(c["target_epsilon"], *args)
        assert ours <= c["rdp_noise_multiplier"] * (1 + 1e-9)
        assert ours == pytest.approx(c["rdp_noise_multiplier"], rel=0.02)


# --------------------------------------------------------------------------- sampling


def test_claim_is_the_accounting_of_the_sampling_plan():
    poisson = privacy.claim(1000, 50, 3, 1.2, 0.5, 1e-5, "pld", target_epsilon=4.0, overflows=2)
    q, steps = 0.05, 60  # sampling_plan: B / N, 3 epochs of 1000 // 50 steps
    assert poisson["epsilon"] == privacy.epsilon(1.2, q, steps, 1e-5, "pld")
    assert (poisson["sample_rate"], poisson["steps"], poisson["expected_batch"]) == (q, steps, 50)
    assert poisson["max_batch"] == privacy.max_batch(1000, q) > 50
    assert (poisson["sampling"], poisson["overflows"], poisson["target_epsilon"]) == (
        "poisson", 2, 4.0)
    assert (poisson["clip_norm"], poisson["noise_multiplier"]) == (0.5, 1.2)
    full = privacy.claim(1000, None, 3, 1.2, 0.5, 1e-5)
    assert (full["sampling"], full["sample_rate"], full["steps"], full["max_batch"]) == (
        "full batch", 1.0, 3, 1000)
    assert json.loads(json.dumps(full, allow_nan=False)) == full


def test_max_batch_is_the_binomial_tail():
    from scipy.stats import binom

    for n, q in ((60000, 1024 / 60000), (4000, 256 / 4000), (100, 0.1)):
        m = privacy.max_batch(n, q)
        assert binom.sf(m, n, q) <= privacy.OVERFLOW < binom.sf(m - 1, n, q)
    assert privacy.max_batch(50, 1.0) == 50


_sample = jax.jit(jax.vmap(privacy.poisson_sample, in_axes=(0, None, None, None)),
                  static_argnums=(1, 2, 3))


def test_poisson_sample_is_a_poisson_sample():
    """Over 4000 draws: each example joins with probability q, independently (the count is
    Binomial(n, q)); the sampled rows come first, are distinct, and the mask marks them."""
    n, q, m, draws = 50, 0.2, 50, 4000
    s = _sample(jax.random.split(jax.random.key(0), draws), n, q, m)
    counts = np.asarray(s.count)
    assert abs(counts.mean() - n * q) < 5 * math.sqrt(n * q * (1 - q) / draws)
    assert counts.var() == pytest.approx(n * q * (1 - q), rel=0.1)
    joined = np.zeros((draws, n))
    for d, (idx, mask) in enumerate(zip(np.asarray(s.indices), np.asarray(s.mask),
                                        strict=True)):
        assert mask.sum() == counts[d] and mask[: counts[d]].all()
        assert len(set(idx[mask])) == counts[d]
        joined[d, idx[mask]] = 1
    per_example = joined.mean(axis=0)
    assert np.abs(per_example - q).max() < 5 * math.sqrt(q * (1 - q) / draws)
    # pairs join independently: the correlation of two examples' indicators is ~0
    assert abs(np.corrcoef(joined[:, 0], joined[:, 1])[0, 1]) < 5 / math.sqrt(draws)


def test_overflow_keeps_a_uniformly_random_subset():
    n, q, m, draws = 20, 0.5, 4, 4000  # nearly every draw overflows
    s = _sample(jax.random.split(jax.random.key(1), draws), n, q, m)
    over = np.asarray(s.count) > m
    assert over.mean() > 0.99
    idx, mask = np.asarray(s.indices)[over], np.asarray(s.mask)[over]
    assert mask.all()
    assert all(len(set(row)) == m for row in idx)
    kept = np.bincount(idx.ravel(), minlength=n) / len(idx)
    # each example is kept with the same probability, about m / n
    assert np.abs(kept - m / n).max() < 5 * math.sqrt(m / n / len(idx))


# --------------------------------------------------------------------------- the step

NET = fnn.MLP((3, 5, 4), "tanh")
_dp_gradient = jax.jit(fnn.dp_gradient)  # one program per shape: eager float64 is slow


def _batch(key, n, dtype):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, 3), dtype), jax.random.randint(ky, (n,), 0, 4)


def test_masked_clipped_sum_equals_the_unpadded_one(x64):
    """Float64: what the padding rows hold changes nothing, bitwise (a masked row's scaled
    deltas are exactly zero), and the padded sum is the unpadded one up to the order in which
    XLA sums a longer contraction (measured: 1e-14 relative)."""
    params = fnn.init(jax.random.key(0), NET, dtype=jnp.float64)
    x, y = _batch(jax.random.key(1), 7, jnp.float64)
    mask, key, d = jnp.arange(12) < 7, jax.random.key(3), 9.5  # d: the expected batch qN

    def padded(pad_key, scale):
        pad_x, pad_y = _batch(pad_key, 5, jnp.float64)
        return _dp_gradient(NET, params, jnp.concatenate([x, scale * pad_x]),
                            jnp.concatenate([y, pad_y]), 0.3, 0.0, key, mask=mask,
                            expected_batch=d)

    chex.assert_trees_all_equal(padded(jax.random.key(2), 1.0), padded(jax.random.key(4), 1e3))
    unpadded = _dp_gradient(NET, params, x, y, 0.3, 0.0, key, expected_batch=d)
    chex.assert_trees_all_close(padded(jax.random.key(2), 1.0), unpadded, rtol=1e-13,
                                atol=1e-18)
    # and it is the clipped sum over d: the clipped mean times N / d
    mean = jax.jit(fnn.clipped_grad)(NET, params, x, y, 0.3)
    chex.assert_trees_all_close(unpadded, jax.tree.map(lambda g: g * 7 / d, mean), rtol=1e-12)
    with pytest.raises(ValueError, match="mask must have shape"):
        fnn.dp_gradient(NET, params, x, y, 0.3, 0.0, key, mask=mask)


def test_dp_noise_is_jax_random_normal_bitwise():
    """dp_noise draws with an unrolled Threefry (fused by XLA:CPU): the same numbers as
    jax.random.normal with the same key's split, for typed and raw keys."""
    from fnn.per_example import dp_noise

    like = ({"W": jnp.zeros((3, 700)), "b": jnp.zeros(3)}, {"W": jnp.zeros((2, 3), jnp.float16)})

    @jax.jit
    def reference(key):
        leaves, treedef = jax.tree.flatten(like)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, a.shape, a.dtype)
                                            for k, a in zip(keys, leaves, strict=True)])

    for key in (jax.random.key(3), jax.random.PRNGKey(4)):
        chex.assert_trees_all_equal(jax.jit(dp_noise)(key, like, 0.5), reference(key))


def test_noise_on_the_clipped_sum_has_std_sigma_c():
    """(noisy - clean) * d over 20 keys and all 49 entries: mean 0, standard deviation
    sigma * C (a chi-square bound), and Gaussian (kurtosis 3)."""
    params = fnn.init(jax.random.key(0), NET)
    x, y = _batch(jax.random.key(1), 8, jnp.float32)
    mask, sigma, clip, d = jnp.arange(8) < 6, 2.0, 0.5, 6.4
    dp = jax.jit(lambda k, s: fnn.dp_gradient(NET, params, x, y, clip, s, k, mask=mask,
                                              expected_batch=d))
    clean = dp(jax.random.key(0), 0.0)
    noise = np.concatenate([
        np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(dp(k, sigma)),
                                                       jax.tree.leaves(clean), strict=True)])
        for k in jax.random.split(jax.random.key(5), 20)]) * d
    n = noise.size
    assert abs(noise.mean()) < 5 * sigma * clip / math.sqrt(n)
    assert noise.std() == pytest.approx(sigma * clip, rel=5 * math.sqrt(2 / n))
    kurtosis = np.mean(noise**4) / noise.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=5 * math.sqrt(24 / n))


def test_dp_epoch_steps_are_poisson_sampled_as_documented(x64):
    """One epoch of one step (N < 2B) equals the step written out: the documented keys, the
    Poisson sample, the masked clipped sum over B, the noise."""
    params = fnn.init(jax.random.key(0), NET, dtype=jnp.float64)
    x, y = _batch(jax.random.key(1), 30, jnp.float64)
    sgd, dp, b, key = optax.sgd(0.1), training.DP(0.5, 1.3), 16, jax.random.key(7)
    new, _, m = training.train_epoch(NET, sgd, params, sgd.init(params), x, y, key,
                                     batch_size=b, dp=dp)
    rows = privacy.max_batch(30, b / 30)
    s = jax.jit(privacy.poisson_sample, static_argnums=(1, 2, 3))(
        jax.random.split(jax.random.fold_in(key, 2), 1)[0], 30, b / 30, rows)
    noise_key = jax.random.split(jax.random.fold_in(key, 1), 1)[0]
    g = _dp_gradient(NET, params, x[s.indices], y[s.indices], 0.5, 1.3, noise_key,
                     mask=s.mask, expected_batch=b)
    chex.assert_trees_all_close(new, jax.tree.map(lambda p, g: p - 0.1 * g, params, g),
                                rtol=1e-12)
    assert int(m["sampled"]) == int(s.count) and int(m["overflows"]) == 0
    assert int(m["steps"]) == 1


def test_dp_fit_records_the_samples():
    x, y = _batch(jax.random.key(1), 400, jnp.float32)
    adam = optax.adam(0.05)
    state = training.init_state(jax.random.key(0), NET, adam)
    result = training.fit(NET, adam, state, (x, y), epochs=3, batch_size=40,
                          dp=training.DP(1.0, 0.8))
    sampled = [r["dp_sampled"] for r in result.history]
    assert [r["dp_overflows"] for r in result.history] == [0, 0, 0]
    # 10 steps of Binomial(400, 0.1) each epoch: mean 400, standard deviation 19
    assert all(abs(s - 400) < 5 * 19 for s in sampled) and len(set(sampled)) > 1
    assert privacy.sampling_plan(400, 40, 3) == (0.1, 30)


@pytest.mark.slow
def test_dp_accuracy_experiment_runs(tmp_path, capsys):
    """experiments/dp_accuracy.py --smoke: one fnn train run at epsilon 8 on digits."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "dp_accuracy.py"
    spec = importlib.util.spec_from_file_location("_dp_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--smoke", "--no-opacus", "--out", str(tmp_path)])
    (run,) = report["runs"]["fnn"]["8.0"]
    assert 8 - 1e-3 <= run["epsilon"] <= 8 and run["overflows"] == 0
    assert 0.1 < run["test_accuracy"] <= 1
    assert json.loads((tmp_path / "dp_accuracy.json").read_text())["smoke"] is True
    assert "| 8 | " in capsys.readouterr().out
