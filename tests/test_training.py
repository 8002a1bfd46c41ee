"""Tests of fnn.training: the update rule, epochs, stopping rules, determinism, no retracing."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import backpropagation, data, training

# The custom_vjp object that attaches the hand-written backward pass to fnn.loss.
(_CUSTOM_LOSS,) = [v for v in vars(backpropagation).values() if isinstance(v, jax.custom_vjp)]
# Jitted once: eager JAX compiles every small op on its own, which is far slower.
_init = jax.jit(fnn.init, static_argnames=("scheme", "dtype"))
_forward = jax.jit(fnn.forward)
_loss = jax.jit(fnn.loss)  # the hand-written backward under jax.grad
_backprop = jax.jit(fnn.backprop)
_grad_autodiff = jax.jit(jax.grad(fnn.loss_autodiff, argnums=1))

# One optimizer object per configuration, shared by the tests: the optimizer is a static jit
# argument hashed by identity, so sharing it shares the compiled epochs.
ADAM = optax.adam(0.03)
SGD = optax.sgd(0.5)


@functools.cache
def _teacher_problem(seed=0, n=96, sizes=(4, 16, 3)):
    """Labels from a random 'teacher' network: learnable by a student of the same shape.

    Most tests share one shape (n=96, 4-16-3) so that they share compiled functions."""
    k_t, k_x, k_s = jax.random.split(jax.random.key(seed), 3)
    net = fnn.MLP(sizes, activation="tanh")
    teacher = _init(k_t, net)
    x = np.asarray(jax.random.normal(k_x, (n, sizes[0])))
    y = np.asarray(_forward(net, teacher, x)).argmax(axis=1).astype(np.int32)
    return net, _init(k_s, net), x, y  # NumPy data: slicing it compiles nothing


def _fit(net, params, optimizer, train, val=None, *, key, **kw):
    """fit from the initial state with these params and the run key derived from ``key``."""
    state = training.init_state(key, net, optimizer, params)
    return training.fit(net, optimizer, state, train, val, **kw)


def _np(tree):
    """The leaves as NumPy arrays: hand computations in NumPy compile nothing."""
    return jax.tree.map(np.asarray, tree)


def _assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        assert u.dtype == v.dtype
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ----------------------------------------------------------------------------- the update


def test_one_sgd_step_with_l2_is_the_lecture_update(x64):
    net = fnn.MLP((5, 7, 4, 3), activation="sigmoid")
    k_p, k_x, k_y = jax.random.split(jax.random.key(3), 3)
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + 0.1),
                          _init(k_p, net, dtype=jnp.float64))
    x = jax.random.normal(k_x, (6, 5), jnp.float64)
    y = jax.random.randint(k_y, (6,), 0, 3)
    lr, l2 = 0.3, 0.05
    bp = _backprop(net, params, x, y)  # the lecture's gradients (checked in test_gradients)
    P, G = _np(params), _np(bp.grads)
    sgd = optax.sgd(lr)
    new, _, m = training.train_step(net, sgd, params, sgd.init(params), (x, y), l2)
    for layer, p, g in zip(_np(new), P, G, strict=True):
        assert layer["W"].dtype == np.float64
        np.testing.assert_allclose(layer["W"], p["W"] - lr * (g["W"] + l2 * p["W"]),
                                   rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(layer["b"], p["b"] - lr * g["b"], rtol=1e-13, atol=1e-15)
    assert float(m["loss"]) == pytest.approx(float(bp.loss), rel=1e-13)
    reg = [{"W": g["W"] + l2 * p["W"], "b": g["b"]} for p, g in zip(P, G, strict=True)]
    assert float(m["grad_norm"]) == pytest.approx(
        math.sqrt(sum(np.sum(a**2) for a in jax.tree.leaves(reg))), rel=1e-12)
    # lambda never touches a bias: the bias update is the same with and without L2.
    plain, _, _ = training.train_step(net, sgd, params, sgd.init(params), (x, y), 0.0)
    for a, b in zip(new, plain, strict=True):
        np.testing.assert_array_equal(a["b"], b["b"])
        assert not np.array_equal(a["W"], b["W"])


def test_l2_gradient_adds_lambda_w_to_weights_only():
    net = fnn.MLP((3, 4, 2))
    params = _init(jax.random.key(0), net)
    grads = jax.tree.map(lambda a: jnp.asarray(np.ones(a.shape, np.float32)), params)
    out = jax.jit(training.l2_gradient)(grads, params, 0.25)
    for o, p in zip(_np(out), _np(params), strict=True):
        np.testing.assert_allclose(o["W"], 1.0 + 0.25 * p["W"], rtol=1e-6)
        np.testing.assert_array_equal(o["b"], np.ones_like(p["b"]))


def test_train_step_uses_the_hand_written_backward(monkeypatch):
    """Doubling the output of the custom_vjp's bwd rule doubles the SGD update."""
    net, params, x, y = _teacher_problem()
    calls = []
    original = _CUSTOM_LOSS.bwd

    def doubled(*args):
        calls.append(1)
        grads, dx, dy = original(*args)
        return jax.tree.map(lambda g: 2 * g, grads), dx, dy

    plain, _, _ = training.train_step(net, SGD, params, SGD.init(params), (x, y))
    monkeypatch.setattr(_CUSTOM_LOSS, "bwd", doubled)
    sgd = optax.sgd(0.5)  # a new static argument: traced anew, with the patched rule
    patched, _, _ = training.train_step(net, sgd, params, sgd.init(params), (x, y))
    assert calls, "train_step did not run the hand-written backward pass"
    P = _np(params)
    chex.assert_trees_all_close(jax.tree.map(lambda a, b: a - b, _np(patched), P),
                                jax.tree.map(lambda a, b: 2 * (a - b), _np(plain), P),
                                rtol=1e-5, atol=1e-7)


def test_any_optax_transformation_works():
    net, params, x, y = _teacher_problem()
    for opt in (optax.rmsprop(0.01), training.make_optimizer("nesterov", 0.1)):
        state = opt.init(params)
        loss0 = float(_loss(net, params, x, y))
        p = params
        for _ in range(20):
            p, state, _ = training.train_step(net, opt, p, state, (x, y), 1e-4)
        assert float(_loss(net, p, x, y)) < loss0


def test_make_optimizer_rejects_bad_input():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training.make_optimizer("lbfgs", 0.1)
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0, got -1\.0"):
        training.make_optimizer("sgd", -1.0)


# ----------------------------------------------------------------------------- epochs


def test_full_batch_mode_is_one_step_per_epoch():
    net, params, x, y = _teacher_problem()
    state = SGD.init(params)
    after_epoch, _, m = training.train_epoch(net, SGD, params, state, x, y, jax.random.key(0),
                                             batch_size=None)
    after_step, _, m_step = training.train_step(net, SGD, params, state, (x, y))
    assert int(m["steps"]) == 1
    chex.assert_trees_all_close(after_epoch, after_step, rtol=1e-6, atol=1e-7)
    assert float(m["loss"]) == pytest.approx(float(m_step["loss"]), rel=1e-6)
    # Through fit: three epochs are three full-batch steps, whatever the key.
    res = _fit(net, params, SGD, (x, y), epochs=3, batch_size=None, key=jax.random.key(1))
    p = params
    for _ in range(3):
        p, _, _ = training.train_step(net, SGD, p, state, (x, y))
    chex.assert_trees_all_close(res.state.params, p, rtol=1e-5, atol=1e-6)
    assert [h["steps"] for h in res.history] == [1, 1, 1]


def test_minibatch_epoch_drops_the_incomplete_last_batch():
    net, params, x, y = _teacher_problem()
    adam = optax.adam(0.01)
    res = _fit(net, params, adam, (x, y), epochs=3, batch_size=20, key=jax.random.key(0))
    assert [h["steps"] for h in res.history] == [4, 4, 4]  # 96 // 20, the last 16 dropped
    assert int(res.state.opt_state[0].count) == 12


def _equations(jaxpr, name):
    """Every equation of primitive ``name`` in ``jaxpr`` and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            found.append(eqn)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                found += _equations(inner, name)
    return found


def test_epoch_is_one_scan_over_a_permutation():
    net, params, x, y = _teacher_problem()
    sgd = optax.sgd(0.1)
    jaxpr = jax.make_jaxpr(
        lambda p, s, x, y, k: training.train_epoch(net, sgd, p, s, x, y, k, batch_size=8)
    )(params, sgd.init(params), x, y, jax.random.key(0))
    text = str(jaxpr)
    assert text.count("= scan[") == 1, "one epoch must be exactly one lax.scan"
    # The scan body hands out only each step's loss: no per-step gradient norm (the last step,
    # run after the scan, reports it), so XLA has no extra pass over the gradient per step.
    (scan,) = _equations(jaxpr.jaxpr, "scan")
    stacked = scan.outvars[scan.params["num_carry"]:]
    assert [v.aval.shape for v in stacked] == [(12 - 1,)]
    # The epoch is a permutation: same multiset of samples as SGD over that permutation by hand.
    key = jax.random.key(7)
    new, _, m = training.train_epoch(net, sgd, params, sgd.init(params), x, y, key,
                                     batch_size=8)
    order = np.asarray(jax.random.permutation(key, 96)).reshape(12, 8)
    p, s, losses = params, sgd.init(params), []
    for idx in order:
        p, s, mm = training.train_step(net, sgd, p, s, (x[idx], y[idx]))
        losses.append(float(mm["loss"]))
    chex.assert_trees_all_close(new, p, rtol=1e-5, atol=1e-6)
    assert float(m["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert float(m["grad_norm"]) == pytest.approx(float(mm["grad_norm"]), rel=1e-5)


def test_batch_size_validation():
    net, params, x, y = _teacher_problem()
    sgd = optax.sgd(0.1)
    for bad in (0, -3, 97, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            training.train_epoch(net, sgd, params, sgd.init(params), x, y, jax.random.key(0),
                                 batch_size=bad)


# ----------------------------------------------------------------------------- fit


def test_fit_lowers_the_loss_on_a_learnable_problem():
    net, params, x, y = _teacher_problem()
    before = training.evaluate(net, params, x[:80], y[:80])
    res = _fit(net, params, ADAM, (x[:80], y[:80]), (x[80:], y[80:]), epochs=30,
               batch_size=16, key=jax.random.key(1), l2=1e-3)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.3 * float(before["loss"])
    assert losses[-1] < losses[0]
    assert res.history[-1]["train_accuracy"] > 0.9
    assert res.history[-1]["val_accuracy"] >= 0.75  # 16 validation samples
    assert res.stopped_because == "epochs" and int(res.state.epoch) == 30
    assert len(res.history) == 30 and res.compile_time > 0
    for record in res.history:
        assert set(record) == {"epoch", "train_loss", "train_accuracy", "val_loss",
                               "val_accuracy", "step_grad_norm", "steps", "best_epoch", "time",
                               "stopped_because"}  # no full-batch gradient unless asked
    assert [h["stopped_because"] for h in res.history] == [None] * 29 + ["epochs"]
    # The best params are those of the lowest validation loss, whatever the last epoch.
    val = [h["val_loss"] for h in res.history]
    assert int(res.state.best_epoch) == 1 + int(np.argmin(val)) == res.history[-1]["best_epoch"]
    assert float(res.state.best_loss) == pytest.approx(min(val), rel=1e-5)


_TOY_NET = fnn.MLP((2, 32, 32, 2), activation="tanh")


@pytest.mark.parametrize("name, epochs", [("circle", 60), ("xor", 60), ("gaussians", 10),
                                          ("spiral", 300)])
def test_fit_learns_each_toy_set(name, epochs):
    """Full-batch gradient descent (the lecture's plain algorithm) on the Playground sets."""
    x, y = data.load_dataset(name, key=jax.random.key(0), n=400)
    mean, std = data.fit_standardize(x)
    x = data.standardize(x, mean, std)
    res = _fit(_TOY_NET, _init(jax.random.key(1), _TOY_NET), ADAM, (x, y), epochs=epochs,
               batch_size=None, key=jax.random.key(2))
    assert res.history[-1]["train_loss"] < 0.25 * res.history[0]["train_loss"]
    assert res.history[-1]["train_accuracy"] >= 0.97
    predicted = np.asarray(_forward(_TOY_NET, res.state.params, x)).argmax(axis=1)
    assert res.history[-1]["train_accuracy"] == pytest.approx(np.mean(predicted == y), abs=1e-6)


def _reference_run(epochs=20, l2=0.0, **kw):
    net, params, x, y = _teacher_problem()
    res = _fit(net, params, SGD, (x, y), epochs=epochs, batch_size=None, key=jax.random.key(0),
               l2=l2, **kw)
    return net, params, x, y, res


def test_stop_at_max_epochs():
    _, _, _, _, res = _reference_run(epochs=4)
    assert res.stopped_because == "epochs" and int(res.state.epoch) == 4
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]


def test_stop_when_the_loss_change_is_below_eps_loss():
    ref = _reference_run()[4]
    losses = [h["train_loss"] for h in ref.history]
    changes = np.abs(np.diff(losses))  # changes[i] = |L_{i+2} - L_{i+1}|
    eps = float(np.sort(changes)[len(changes) // 2])  # met at some epoch, not at the first
    expected = 2 + int(np.argmax(changes < eps))
    assert expected > 2
    res = _reference_run(eps_loss=eps)[4]
    assert res.stopped_because == "eps_loss"
    assert int(res.state.epoch) == expected == len(res.history)
    assert abs(res.history[-1]["train_loss"] - res.history[-2]["train_loss"]) < eps
    _assert_bitwise_equal(res.state.params, _reference_run(epochs=expected)[4].state.params)


def test_stop_when_the_full_batch_gradient_norm_is_below_eps_grad():
    l2 = 1e-3
    net, _, x, y, ref = _reference_run(l2=l2, diagnostics=True)
    norms = [h["grad_norm"] for h in ref.history]
    eps = float(np.median(norms))
    expected = 1 + int(np.argmax(np.asarray(norms) < eps))
    res = _reference_run(l2=l2, eps_grad=eps)[4]
    assert res.stopped_because == "eps_grad" and int(res.state.epoch) == expected
    # The norm checked is that of the full-batch gradient (L2 term included) at the end.
    g = _np(_grad_autodiff(net, res.state.params, x, y))
    g = [{"W": gl["W"] + l2 * p["W"], "b": gl["b"]} for gl, p in zip(g, _np(res.state.params),
                                                                       strict=True)]
    norm = math.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in jax.tree.leaves(g)))
    assert res.history[-1]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert norm < eps


def test_early_stopping_restores_the_best_params():
    # Random labels: the network can only memorise them, so the val loss soon rises.
    net, params, x, _ = _teacher_problem()
    y = np.random.default_rng(10).integers(0, 3, 96).astype(np.int32)
    seen = {}

    def callback(state, record):
        assert int(state.epoch) == record["epoch"]
        seen[record["epoch"]] = state.params

    res = _fit(net, params, ADAM, (x[:80], y[:80]), (x[80:], y[80:]), epochs=200,
               batch_size=16, key=jax.random.key(12), l2=1e-3, patience=4, callback=callback)
    val = [h["val_loss"] for h in res.history]
    best = int(res.state.best_epoch)
    assert res.stopped_because == "patience" == res.history[-1]["stopped_because"]
    assert best == 1 + int(np.argmin(val))
    assert int(res.state.epoch) == best + 4 < 200
    assert all(v >= val[best - 1] for v in val[best:])
    _assert_bitwise_equal(res.state.params, seen[best])  # restored: the callback saw them too
    _assert_bitwise_equal(res.state.best_params, seen[best])
    assert not np.array_equal(res.state.params[0]["W"], seen[best + 3][0]["W"])


def test_stop_when_the_loss_diverges():
    net = fnn.MLP((3, 8, 1), output="identity")
    k_x, k_p = jax.random.split(jax.random.key(13))
    x = 3 * jax.random.normal(k_x, (32, 3))
    y = jnp.asarray(np.asarray(x).sum(axis=1, keepdims=True))
    res = _fit(net, _init(k_p, net), optax.sgd(5.0), (x, y), epochs=500, batch_size=None,
               key=jax.random.key(0))
    assert res.stopped_because == "nonfinite" and int(res.state.epoch) < 500
    assert not math.isfinite(res.history[-1]["train_loss"])
    assert "train_accuracy" not in res.history[-1]  # no accuracy for regression


def test_fit_rejects_bad_arguments():
    net, params, x, y = _teacher_problem()
    kwargs = {"epochs": 2, "batch_size": 4, "key": jax.random.key(0)}
    with pytest.raises(ValueError, match="needs validation data"):
        _fit(net, params, SGD, (x, y), **kwargs, patience=3)
    for name, value, words in (("eps_loss", -1.0, "a finite number > 0 or None (off)"),
                               ("eps_grad", float("nan"), "a finite number > 0 or None (off)"),
                               ("l2", -0.1, "a finite number >= 0"),
                               ("patience", 0, "an integer >= 1 or None (off)")):
        with pytest.raises(ValueError, match=re.escape(f"{name} must be {words}, got {value}")):
            _fit(net, params, SGD, (x, y), (x, y), **{**kwargs, name: value})
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 1, got -1"):
        _fit(net, params, SGD, (x, y), **{**kwargs, "epochs": -1})
    with pytest.raises(ValueError, match=r"batch_size 97 exceeds the 96 training samples"):
        _fit(net, params, SGD, (x, y), **{**kwargs, "batch_size": 97})


# ----------------------------------------------------------------------------- determinism


def _mini_run(seed, epochs=4, state=None, **kw):
    net, params, x, y = _teacher_problem()
    state = training.init_state(jax.random.key(seed), net, ADAM, params) if state is None else (
        state)
    return training.fit(net, ADAM, state, (x[:80], y[:80]), (x[80:], y[80:]), epochs=epochs,
                        batch_size=16, l2=1e-3, **kw)


def test_same_seed_gives_bitwise_the_same_params():
    a, b, c = _mini_run(0), _mini_run(0), _mini_run(1)
    _assert_bitwise_equal(a.state.params, b.state.params)
    _assert_bitwise_equal(a.state.opt_state, b.state.opt_state)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert not np.array_equal(a.state.params[0]["W"], c.state.params[0]["W"])  # other shuffles


@pytest.mark.parametrize("patience", [None, 2])
def test_resumed_fit_equals_an_uninterrupted_one(patience, tmp_path):
    """A state saved after epoch 3 (through a checkpoint file), passed to fit again."""
    full = _mini_run(3, epochs=6, patience=patience)

    def save(state, record):
        if record["epoch"] == 3:
            fnn.save_checkpoint(tmp_path, state)

    _mini_run(3, epochs=6, patience=patience, callback=save)
    template = training.init_state(jax.random.key(99), *_teacher_problem()[:1], ADAM)
    saved = fnn.load_checkpoint(tmp_path, like=template)
    resumed = _mini_run(3, epochs=6, state=saved, patience=patience)
    assert resumed.stopped_because == full.stopped_because
    assert [h["epoch"] for h in resumed.history] == [4, 5, 6][:len(full.history) - 3]
    _assert_bitwise_equal(resumed.state, full.state)


def test_extending_a_run_equals_running_it_longer_at_once():
    """With a constant learning rate, fit to 3 then to 6 is fit to 6."""
    short = _mini_run(4, epochs=3)
    _assert_bitwise_equal(_mini_run(4, epochs=6, state=short.state).state,
                          _mini_run(4, epochs=6).state)
    done = _mini_run(4, epochs=3, state=short.state)  # nothing left to do
    assert done.history == [] and done.stopped_because == "epochs" and done.compile_time == 0
    _assert_bitwise_equal(done.state, short.state)


def test_no_retracing_across_epochs_and_resumes(monkeypatch):
    chex.clear_trace_counter()
    static = ("optimizer", "batch_size", "mesh", "dp", "with_grad", "with_layers")
    epoch = jax.jit(chex.assert_max_traces(training._fit_epoch.__wrapped__, n=1),
                    static_argnames=static)
    monkeypatch.setattr(training, "_fit_epoch", epoch)
    res = _mini_run(5, epochs=5, patience=10)
    more = _mini_run(5, epochs=7, state=res.state, patience=10)  # resuming: no new trace
    assert int(more.state.epoch) == 7


def test_diagnostics_record_per_layer_numbers():
    """fit(..., diagnostics=True): fnn.layer_diagnostics per layer and the full-batch norm."""
    from fnn import diagnostics

    net = fnn.MLP((2, 8, 6, 2), ("relu", "tanh"))
    x = jax.random.normal(jax.random.key(0), (64, 2))
    y = (x[:, 0] > 0).astype(jnp.int32)
    res = _fit(net, fnn.init(jax.random.key(1), net), SGD, (x, y), epochs=2, batch_size=16,
               key=jax.random.key(2), diagnostics=True)
    for record in res.history:
        layers = record["layers"]
        assert len(layers["delta_norm"]) == len(layers["grad_norm"]) == 3
        assert len(layers["dead_fraction"]) == len(layers["saturated_fraction"]) == 2
        assert record["grad_norm"] > 0
    expected = jax.jit(diagnostics.layer_diagnostics, static_argnums=0)(net, res.state.params,
                                                                          x, y)
    np.testing.assert_allclose(res.history[-1]["layers"]["grad_norm"], expected["grad_norm"],
                               rtol=1e-5)
    assert res.history[-1]["layers"]["saturated_fraction"][0] == 0.0  # relu never saturates


def test_history_numbers_are_rounded_to_float32_precision():
    res = _mini_run(6, epochs=1)
    for value in res.history[0].values():
        if isinstance(value, float):
            assert value == float(f"{value:.6g}")


def test_dp_step_is_the_noisy_clipped_update(x64):
    """train_step with DP: W - lr * dp_gradient(..., key) exactly, with the same key."""
    from fnn import training
    from fnn.per_example import dp_gradient

    net = fnn.MLP((3, 5, 2), "tanh")
    params = fnn.init(jax.random.key(0), net, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])
    sgd = optax.sgd(0.5)
    dp = training.DP(clip_norm=0.1, noise_multiplier=1.0)
    key = jax.random.key(3)
    new, _, m = training.train_step(net, sgd, params, sgd.init(params), (x, y), dp=dp, key=key)
    g = jax.jit(dp_gradient, static_argnums=0)(net, params, x, y, 0.1, 1.0, key)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, g)
    chex.assert_trees_all_close(new, expected, rtol=1e-12)
    loss = jax.jit(fnn.loss, static_argnums=0)(net, params, x, y)
    assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-12)
    with pytest.raises(ValueError, match="needs key="):
        training.train_step(net, sgd, params, sgd.init(params), (x, y), dp=dp)
    with pytest.raises(ValueError, match=r"clip_norm must be a finite number > 0, got 0"):
        training.train_step(net, sgd, params, sgd.init(params), (x, y), dp=training.DP(0),
                            key=key)


@pytest.mark.slow
@pytest.mark.in_process
def test_dp_fit_learns_and_is_deterministic():
    net = fnn.MLP((2, 8, 2), "tanh")
    x = jax.random.normal(jax.random.key(0), (128, 2))
    y = (x[:, 0] > 0).astype(jnp.int32)
    params = fnn.init(jax.random.key(1), net)
    adam = optax.adam(0.05)
    kw = dict(epochs=8, batch_size=32, key=jax.random.key(2))
    a = _fit(net, params, adam, (x, y), **kw, dp=training.DP(1.0, 0.5))
    b = _fit(net, params, adam, (x, y), **kw, dp=training.DP(1.0, 0.5))
    chex.assert_trees_all_equal(a.state.params, b.state.params)
    assert a.history[-1]["train_loss"] < 0.5 * a.history[0]["train_loss"]
    plain = _fit(net, params, adam, (x, y), **kw)
    assert not bool(jnp.all(plain.state.params[0]["W"] == a.state.params[0]["W"]))
