"""Every optimizer architecture: the update contract, jit/vmap/scan, state and theta round trips,
meta-gradients, per-tensor normalisation, agreement of the learnable baselines with optax, and
errors on bad input."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import lopt

NUM_STEPS = 20
# One instance per code path (the learnable baselines' plain Adam path is checked against optax).
OPTIMIZERS = {
    "mlp": lopt.MLPOptimizer(),
    "mlp_adam_loss": lopt.MLPOptimizer(hidden_sizes=(8,), base="adam", use_loss=True),
    "lstm": lopt.LSTMOptimizer(hidden_size=4),
    "lstm_per_tensor": lopt.LSTMOptimizer(hidden_size=4, per_tensor=True, tensor_hidden_size=3),
    "adam_inverse_time": lopt.LearnableAdam(schedule="inverse_time", decay_steps=3.0),
    "sgdm": lopt.LearnableSGDM(),
}


def make_params():
    """Nested dicts, a list, a scalar and a bfloat16 leaf."""
    rng = np.random.default_rng(1)
    return {
        "dense": {
            "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.zeros((4,), jnp.bfloat16),
        },
        "scale": jnp.float32(0.5),
        "layers": [jnp.asarray(rng.normal(size=(2,)), jnp.float32)],
    }


def quadratic_loss(params):
    """A loss whose gradient reaches every leaf."""
    leaves = [jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(params)]
    return sum(jnp.sum(jnp.square(leaf - 0.3)) for leaf in leaves)


loss_and_grad = jax.jit(jax.value_and_grad(quadratic_loss))
apply_updates = jax.jit(optax.apply_updates)


def max_update_bound(optimizer, grads):
    """Largest elementwise update an untrained optimizer may take on its first step."""
    if isinstance(optimizer, lopt.LearnableSGDM):
        return optimizer.learning_rate * max(float(jnp.max(jnp.abs(g))) for g in grads) * 1.01
    if isinstance(optimizer, lopt.LearnableAdam):
        return optimizer.learning_rate * 1.01
    if getattr(optimizer, "base", "none") == "adam":
        return optimizer.base_learning_rate * 1.2  # Adam's step plus a correction starting small
    # Normalised features are O(1), so the network's output is too; the step is step_mult times it.
    return 20 * optimizer.step_mult


# A meta-gradient per class (compiles are the cost of this file).
META_GRADIENT_CASES = ["mlp_adam_loss", "lstm_per_tensor", "adam_inverse_time", "sgdm"]


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def setup(request):
    return make_setup(request.param)


@functools.cache
def make_setup(name):
    """Optimizer, theta, params, grads, loss, jitted update and fresh state (built once)."""
    optimizer = OPTIMIZERS[name]
    params = make_params()
    theta = optimizer.init_meta_params(jax.random.key(0))
    loss, grads = loss_and_grad(params)
    update = jax.jit(optimizer.update)
    state = optimizer.init(theta, params, NUM_STEPS)
    return optimizer, theta, params, grads, loss, update, state


def test_update_has_params_structure_dtypes_and_small_finite_values(setup):
    optimizer, theta, params, grads, loss, update, state = setup
    updates, new_state = update(theta, state, grads, params, loss)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        assert u.dtype == p.dtype and u.shape == jnp.shape(p)
        assert bool(jnp.all(jnp.isfinite(u)))
    largest = max(float(jnp.max(jnp.abs(u.astype(jnp.float32)))) for u in jax.tree.leaves(updates))
    assert 0 < largest <= max_update_bound(optimizer, jax.tree.leaves(grads))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_state_and_theta_round_trip_through_ravel(setup):
    _, theta, params, grads, loss, update, state = setup
    _, state = update(theta, state, grads, params, loss)
    flat_state, unravel_state = ravel_pytree(state)
    restored = unravel_state(flat_state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    flat_theta, unravel_theta = ravel_pytree(theta)
    assert flat_theta.dtype == jnp.float32
    for a, b in zip(
        jax.tree.leaves(unravel_theta(flat_theta)), jax.tree.leaves(theta), strict=True
    ):
        assert np.array_equal(a, b)
    expected, _ = update(theta, state, grads, params, loss)
    got, _ = update(theta, restored, grads, params, loss)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", META_GRADIENT_CASES)
def test_meta_gradient_under_vmap_and_scan_is_finite_and_matches_a_python_loop(name):
    """``jax.grad`` through a three-step ``lax.scan`` unroll, vmapped over two perturbed thetas
    with traced horizons: meta-gradients are finite and non-zero, and the unrolled params equal
    those of jitted steps taken one by one."""
    optimizer, theta, params, _, _, update, _ = make_setup(name)
    flat_theta, unravel = ravel_pytree(theta)
    noise = 0.01 * jax.random.normal(jax.random.key(2), (2, flat_theta.size))
    thetas = jax.vmap(unravel)(flat_theta + noise)
    horizons = jnp.array([NUM_STEPS, 2 * NUM_STEPS], jnp.int32)

    def meta_loss(theta, num_steps):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(quadratic_loss)(params)
            updates, state = optimizer.update(theta, state, grads, params, loss)
            return (optax.apply_updates(params, updates), state), loss

        state = optimizer.init(theta, params, num_steps)
        (final, _), losses = jax.lax.scan(step, (params, state), None, length=3)
        return jnp.mean(losses[1:]), final

    meta_grads, finals = jax.jit(jax.vmap(lambda t, n: jax.grad(meta_loss, has_aux=True)(t, n)))(
        thetas, horizons
    )
    flat_grads = jax.vmap(lambda g: ravel_pytree(g)[0])(meta_grads)
    assert bool(jnp.all(jnp.isfinite(flat_grads)))
    assert bool(jnp.all(jnp.max(jnp.abs(flat_grads), axis=1) > 0))
    for i in range(2):
        theta_i = jax.tree.map(lambda x, i=i: x[i], thetas)
        p = params
        state = optimizer.init(theta_i, p, int(horizons[i]))
        for _ in range(3):
            loss, grads = loss_and_grad(p)
            updates, state = update(theta_i, state, grads, p, loss)
            p = apply_updates(p, updates)
        for got, want in zip(jax.tree.leaves(finals), jax.tree.leaves(p), strict=True):
            tol = 1e-2 if want.dtype == jnp.bfloat16 else 1e-5
            np.testing.assert_allclose(
                np.asarray(got[i], np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol
            )


@pytest.mark.parametrize("name", [*lopt.architecture_names(), "learnable_sgdm_schedule"])
def test_hyperparameters_rebuild_through_json_and_are_hashable(name):
    if name == "learnable_sgdm_schedule":
        optimizer = lopt.LearnableSGDM(schedule="inverse_time", learnable=["log_lr", "decay_power"])
    else:
        optimizer = lopt.get_optimizer(name)
    rebuilt = lopt.get_optimizer(
        optimizer.architecture, **json.loads(json.dumps(optimizer.hyperparameters()))
    )
    assert rebuilt == optimizer and hash(rebuilt) == hash(optimizer)


def test_per_tensor_normalisation_makes_each_tensor_scale_free():
    """Scaling one tensor's gradients by 1000 at every step leaves every update unchanged: each
    feature is normalised by its own tensor's scale (a global normaliser would change the other
    tensor's features)."""
    optimizer = lopt.MLPOptimizer(hidden_sizes=(8,))
    theta = optimizer.init_meta_params(jax.random.key(0))
    params = {"a": jnp.linspace(-1.0, 1.0, 6), "b": jnp.linspace(0.5, 2.0, 5)}
    grads = [
        {"a": jnp.cos(3.0 * k + params["a"]), "b": jnp.sin(2.0 * k + params["b"])} for k in range(3)
    ]
    update = jax.jit(optimizer.update)

    def run(scale_a):
        state = optimizer.init(theta, params, NUM_STEPS)
        for g in grads:
            updates, state = update(theta, state, {"a": scale_a * g["a"], "b": g["b"]}, params)
        return updates

    base, scaled = run(1.0), run(1000.0)
    for name in ("a", "b"):
        np.testing.assert_allclose(scaled[name], base[name], rtol=1e-4, atol=1e-9)


def test_learnable_adam_reproduces_optax_adam():
    optimizer = lopt.LearnableAdam(learning_rate=3e-3, b1=0.8, b2=0.99, eps=1e-6)
    reference = optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6)
    assert_matches_optax(optimizer, reference)


def test_learnable_adam_inverse_time_schedule_reproduces_optax_with_that_schedule():
    optimizer = lopt.LearnableAdam(schedule="inverse_time", decay_steps=2.0, decay_power=0.7)
    reference = optax.adam(lambda count: 1e-3 / (1.0 + count / 2.0) ** 0.7)
    assert_matches_optax(optimizer, reference)


def test_learnable_sgdm_reproduces_optax_sgd_with_momentum():
    optimizer = lopt.LearnableSGDM(
        learning_rate=0.05, momentum=0.8, schedule="inverse_time", decay_steps=3.0
    )
    reference = optax.sgd(lambda count: 0.05 / (1.0 + count / 3.0), momentum=0.8)
    assert_matches_optax(optimizer, reference)


def assert_matches_optax(optimizer, reference, num_updates=6):
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones((4,))}
    theta = optimizer.init_meta_params(jax.random.key(0))
    state, ref_state = optimizer.init(theta, params, 10), reference.init(params)
    for k in range(num_updates):
        grads = jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1.0)) * 10.0 ** (k % 3 - 1), params)
        updates, state = optimizer.update(theta, state, grads, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        # optax takes 1 - b2 in float64 but b2**t in float32: a 6e-6 relative gap at b2 = 0.999.
        for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)
        params = optax.apply_updates(params, updates)


def test_learnable_entries_restrict_theta():
    optimizer = lopt.LearnableSGDM(schedule="inverse_time", learnable=("log_lr", "decay_power"))
    theta = optimizer.init_meta_params(jax.random.key(0))
    assert sorted(theta) == ["decay_power", "log_lr"]
    params = {"w": jnp.ones((2,))}
    state = optimizer.init(theta, params, 10)
    doubled = {**theta, "log_lr": theta["log_lr"] + jnp.log(2.0)}
    small, _ = optimizer.update(theta, state, params, params)
    large, _ = optimizer.update(doubled, state, params, params)
    np.testing.assert_allclose(large["w"], 2 * small["w"], rtol=1e-6)


def test_bad_input_gives_clear_errors():
    optimizer = lopt.MLPOptimizer(hidden_sizes=(4,))
    theta = optimizer.init_meta_params(jax.random.key(0))
    params = {"w": jnp.ones((3,))}
    state = optimizer.init(theta, params, 5)
    with pytest.raises(TypeError, match=r"\['step'\] has dtype int32"):
        optimizer.init(theta, {"w": jnp.ones(2), "step": jnp.int32(0)}, 5)
    with pytest.raises(ValueError, match="grads has structure"):
        optimizer.update(theta, state, {"v": jnp.ones((3,))}, params)
    with pytest.raises(ValueError, match="grads has leaf shapes"):
        optimizer.update(theta, state, {"w": jnp.ones((4,))}, params)
    with pytest.raises(ValueError, match="initialised for 3 parameters but params have 4"):
        optimizer.update(theta, state, {"w": jnp.ones((4,))}, {"w": jnp.ones((4,))})
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        optimizer.init(theta, params, 0)
    with pytest.raises(ValueError, match="params has no array leaves"):
        optimizer.init(theta, {}, 5)
    with_loss = lopt.MLPOptimizer(hidden_sizes=(4,), use_loss=True)
    with pytest.raises(ValueError, match="use_loss=True and needs the loss"):
        with_loss.update(with_loss.init_meta_params(jax.random.key(0)), state, params, params)
    with pytest.raises(ValueError, match="hidden_sizes must be positive integers"):
        lopt.MLPOptimizer(hidden_sizes=(0,))
    with pytest.raises(ValueError, match="base must be one of"):
        lopt.MLPOptimizer(base="sgd")
    with pytest.raises(ValueError, match="add it to momentum_decays"):
        lopt.MLPOptimizer(base="adam", momentum_decays=(0.5, 0.99))
    with pytest.raises(ValueError, match="momentum_decays must lie in"):
        lopt.LSTMOptimizer(momentum_decays=(1.5,))
    with pytest.raises(ValueError, match=r"learnable names \['log_b1'\]"):
        lopt.LearnableAdam(learnable=("log_b1",))
    with pytest.raises(ValueError, match="schedule must be one of"):
        lopt.LearnableSGDM(schedule="cosine")
    with pytest.raises(lopt.registry.UnknownArchitectureError, match="unknown optimizer archi"):
        lopt.get_optimizer("transformer")
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['width'\] for architecture"):
        lopt.get_optimizer("mlp_small", width=3)
