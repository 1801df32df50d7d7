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

# Slow tier (meta-gradient compiles of every architecture); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

NUM_STEPS = 20
# One instance per code path (the learnable baselines' plain Adam path is checked against optax).
OPTIMIZERS = {
    "mlp": lopt.MLPOptimizer(),
    "mlp_adam_loss": lopt.MLPOptimizer(hidden_sizes=(8,), base="adam", use_loss=True),
    "lstm": lopt.LSTMOptimizer(hidden_size=4),
    "lstm_per_tensor": lopt.LSTMOptimizer(hidden_size=4, per_tensor=True, tensor_hidden_size=3),
    "normalized": lopt.NormalizedOptimizer(adam_for_vectors=True, mup_base_fan_in=2),
    "adam_inverse_time": lopt.LearnableAdam(schedule="inverse_time", decay_steps=3.0),
    "sgdm": lopt.LearnableSGDM(),
}


def make_params():
    """Nested dicts, a list, a scalar and a bfloat16 leaf (few leaves: compile time grows with
    their number)."""
    rng = np.random.default_rng(1)
    return {
        "dense": {
            "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.zeros((4,), jnp.bfloat16),
        },
        "layers": [jnp.float32(0.5)],
    }


def quadratic_loss(params):
    """A loss whose gradient reaches every leaf."""
    leaves = [jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(params)]
    return sum(jnp.sum(jnp.square(leaf - 0.3)) for leaf in leaves)


# Every class and option (MLP: Adam base and loss; LSTM: per-tensor), without repeating the plain
# variants whose code these include: the meta-gradient compile is this file's largest cost.
META_GRADIENT_CASES = [
    "mlp_adam_loss",
    "lstm_per_tensor",
    "normalized",
    "adam_inverse_time",
    "sgdm",
]


def max_update_bound(optimizer, grads):
    """Largest elementwise update an untrained optimizer may take on its first step."""
    if isinstance(optimizer, lopt.LearnableSGDM):
        return optimizer.initial_learning_rate * max(np.abs(g).max() for g in grads) * 1.01
    if isinstance(optimizer, lopt.LearnableAdam):
        return optimizer.initial_learning_rate * 1.01
    if isinstance(optimizer, lopt.NormalizedOptimizer):
        # A direction of unit RMS per tensor (the learning rate is outside the rule): no entry
        # exceeds sqrt(size).
        return np.sqrt(max(g.size for g in grads)) * 1.01
    if getattr(optimizer, "base", "none") == "adam":
        return optimizer.initial_learning_rate * 1.2  # Adam's step plus a correction starting small
    # Normalised features are O(1), so the network's output is too; the step is step_mult times it.
    return 20 * optimizer.step_mult


def float32_leaves(tree):
    """Leaves as float32 numpy arrays (checks in numpy: no eager jax op to compile)."""
    return [np.asarray(leaf, np.float32) for leaf in jax.tree.leaves(tree)]


# XLA compiles have a large fixed cost here, so each jitted function below serves every optimizer
# at once: one compile instead of one per optimizer.
@jax.jit
def step_all(thetas, states, params):
    """One training step of every optimizer: ``{name: (grads, updates, new_state, new_params)}``."""
    out = {}
    for name, optimizer in OPTIMIZERS.items():
        loss, grads = jax.value_and_grad(quadratic_loss)(params[name])
        updates, state = optimizer.update(thetas[name], states[name], grads, params[name], loss)
        out[name] = (grads, updates, state, optax.apply_updates(params[name], updates))
    return out


@jax.jit
def ravel_round_trip(trees):
    """``(flat, unravel(flat))`` for each tree."""
    results = []
    for tree in trees:
        flat, unravel = ravel_pytree(tree)
        results.append((flat, unravel(flat)))
    return results


@pytest.fixture(scope="module")
def initial():
    """``(thetas, states, params)`` keyed by optimizer name."""
    thetas = {name: opt.init_meta_params(jax.random.key(0)) for name, opt in OPTIMIZERS.items()}
    params = {name: make_params() for name in OPTIMIZERS}
    states = {
        name: opt.init(thetas[name], params[name], NUM_STEPS) for name, opt in OPTIMIZERS.items()
    }
    return thetas, states, params


@pytest.fixture(scope="module")
def first_step(initial):
    return step_all(*initial)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_has_params_structure_dtypes_and_small_finite_values(initial, first_step, name):
    _, states, params = initial
    grads, updates, new_state, _ = first_step[name]
    assert jax.tree.structure(updates) == jax.tree.structure(params[name])
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params[name]), strict=True):
        assert u.dtype == p.dtype and u.shape == jnp.shape(p)
    values = float32_leaves(updates)
    assert all(np.all(np.isfinite(u)) for u in values)
    largest = max(np.abs(u).max() for u in values)
    assert 0 < largest <= max_update_bound(OPTIMIZERS[name], float32_leaves(grads))
    assert jax.tree.structure(new_state) == jax.tree.structure(states[name])


def test_state_and_theta_round_trip_through_ravel(initial, first_step):
    thetas, _, params = initial
    states = {name: first_step[name][2] for name in OPTIMIZERS}
    (_, restored), (flat_thetas, restored_thetas) = ravel_round_trip((states, thetas))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert flat_thetas.dtype == jnp.float32
    for a, b in zip(jax.tree.leaves(restored_thetas), jax.tree.leaves(thetas), strict=True):
        assert np.array_equal(a, b)
    expected = step_all(thetas, states, params)
    got = step_all(thetas, restored, params)
    for name in OPTIMIZERS:
        for a, b in zip(
            float32_leaves(got[name][1]), float32_leaves(expected[name][1]), strict=True
        ):
            assert np.array_equal(a, b)


def meta_loss(optimizer, theta, params, num_steps):
    """Mean loss of steps 2 and 3 of a three-step ``lax.scan`` unroll, and the final params."""

    def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(quadratic_loss)(params)
        updates, state = optimizer.update(theta, state, grads, params, loss)
        return (optax.apply_updates(params, updates), state), loss

    state = optimizer.init(theta, params, num_steps)
    (final, _), losses = jax.lax.scan(step, (params, state), None, length=3)
    return jnp.mean(losses[1:]), final


@pytest.fixture(scope="module")
def meta_gradients(initial):
    """For each of ``META_GRADIENT_CASES``, ``jax.grad`` of ``meta_loss`` vmapped over two
    perturbed thetas with traced horizons: ``(thetas, horizons, {name: (meta_grads, final)})``."""
    thetas, _, params = initial
    rng = np.random.default_rng(2)
    perturbed = jax.tree.map(
        lambda x: np.stack([x, x + 0.01 * rng.normal(size=x.shape)]).astype(np.float32), thetas
    )
    horizons = np.array([NUM_STEPS, 2 * NUM_STEPS], np.int32)

    @jax.jit
    def all_meta_gradients(thetas, horizons):
        out = {}
        for name in META_GRADIENT_CASES:
            optimizer = OPTIMIZERS[name]
            grad_fn = jax.grad(functools.partial(meta_loss, optimizer), has_aux=True)
            out[name] = jax.vmap(grad_fn, in_axes=(0, None, 0))(
                thetas[name], params[name], horizons
            )
        return out

    return perturbed, horizons, all_meta_gradients(perturbed, horizons)


@pytest.mark.parametrize("name", META_GRADIENT_CASES)
def test_meta_gradient_under_vmap_and_scan_is_finite_and_nonzero(meta_gradients, name):
    _, _, results = meta_gradients
    meta_grads, _ = results[name]
    flat_grads = np.concatenate([g.reshape(2, -1) for g in float32_leaves(meta_grads)], axis=1)
    assert np.all(np.isfinite(flat_grads))
    assert np.all(np.abs(flat_grads).max(axis=1) > 0)


def test_vmap_and_scan_match_jitted_steps_one_by_one(initial, meta_gradients):
    """The params unrolled in the vmapped scan equal those of steps taken one call at a time."""
    _, _, params = initial
    thetas, horizons, results = meta_gradients
    for i in range(2):
        theta_i = jax.tree.map(lambda x, i=i: x[i], thetas)
        current = params
        states = {
            name: opt.init(theta_i[name], params[name], int(horizons[i]))
            for name, opt in OPTIMIZERS.items()
        }
        for _ in range(3):
            out = step_all(theta_i, states, current)
            states = {name: out[name][2] for name in OPTIMIZERS}
            current = {name: out[name][3] for name in OPTIMIZERS}
        for name in META_GRADIENT_CASES:
            finals = float32_leaves(results[name][1])
            for got, want in zip(finals, jax.tree.leaves(current[name]), strict=True):
                tol = 1e-2 if want.dtype == jnp.bfloat16 else 1e-5
                np.testing.assert_allclose(
                    got[i], np.asarray(want, np.float32), rtol=tol, atol=tol, err_msg=name
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
    optimizer = OPTIMIZERS["mlp"]
    theta = optimizer.init_meta_params(jax.random.key(0))
    params = {
        "a": np.linspace(-1.0, 1.0, 6, dtype=np.float32),
        "b": np.linspace(0.5, 2.0, 5, dtype=np.float32),
    }
    grads = [
        {"a": np.cos(3.0 * k + params["a"]), "b": np.sin(2.0 * k + params["b"])} for k in range(3)
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


OPTAX_EQUIVALENTS = {
    "adam": (
        lopt.LearnableAdam(initial_learning_rate=3e-3, b1=0.8, b2=0.99, eps=1e-6),
        optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
    ),
    "adam_inverse_time": (
        lopt.LearnableAdam(schedule="inverse_time", decay_steps=2.0, decay_power=0.7),
        optax.adam(lambda count: 1e-3 / (1.0 + count / 2.0) ** 0.7),
    ),
    "sgdm_inverse_time": (
        lopt.LearnableSGDM(
            initial_learning_rate=0.05, momentum=0.8, schedule="inverse_time", decay_steps=3.0
        ),
        optax.sgd(lambda count: 0.05 / (1.0 + count / 3.0), momentum=0.8),
    ),
}


@pytest.fixture(scope="module")
def optax_comparison():
    """Six steps of each learnable baseline and its optax equivalent on the same gradients (of
    varying scale): ``{name: [(updates, optax_updates) per step]}``."""
    params = {
        "w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
        "b": np.ones(4, np.float32),
    }

    @jax.jit
    def step(thetas, states, grads):
        out = {}
        for name, (optimizer, reference) in OPTAX_EQUIVALENTS.items():
            state, ref_state = states[name]
            updates, state = optimizer.update(thetas[name], state, grads, params)
            expected, ref_state = reference.update(grads, ref_state, params)
            out[name] = (updates, expected, (state, ref_state))
        return out

    thetas = {name: opt.init_meta_params(None) for name, (opt, _) in OPTAX_EQUIVALENTS.items()}
    states = {
        name: (opt.init(thetas[name], params, 10), reference.init(params))
        for name, (opt, reference) in OPTAX_EQUIVALENTS.items()
    }
    history = {name: [] for name in OPTAX_EQUIVALENTS}
    for k in range(6):
        grads = jax.tree.map(lambda p, k=k: np.sin(p * (k + 1.0)) * 10.0 ** (k % 3 - 1), params)
        out = step(thetas, states, grads)
        for name, (updates, expected, state) in out.items():
            history[name].append((float32_leaves(updates), float32_leaves(expected)))
            states[name] = state
    return history


@pytest.mark.parametrize("name", list(OPTAX_EQUIVALENTS))
def test_learnable_baseline_reproduces_its_optax_equivalent(optax_comparison, name):
    for updates, expected in optax_comparison[name]:
        # optax takes 1 - b2 in float64 but b2**t in float32: a 6e-6 relative gap at b2 = 0.999.
        for got, want in zip(updates, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_learnable_entries_restrict_theta():
    optimizer = lopt.LearnableSGDM(schedule="inverse_time", learnable=("log_lr", "decay_power"))
    theta = optimizer.init_meta_params(None)
    assert sorted(theta) == ["decay_power", "log_lr"]
    params = {"w": np.ones((2,), np.float32)}
    state = optimizer.init(theta, params, 10)
    doubled = {**theta, "log_lr": np.float32(theta["log_lr"] + np.log(2.0))}
    update = jax.jit(optimizer.update)
    small, _ = update(theta, state, params, params)
    large, _ = update(doubled, state, params, params)
    np.testing.assert_allclose(large["w"], 2 * small["w"], rtol=1e-6)


def test_bad_input_gives_clear_errors():
    optimizer = lopt.MLPOptimizer(hidden_sizes=(4,))
    theta = {}  # every error below comes before theta is used
    params = {"w": np.ones((3,), np.float32)}
    state = optimizer.init(theta, params, 5)
    with pytest.raises(TypeError, match=r"\['step'\] has dtype int32"):
        optimizer.init(theta, {"w": jnp.ones(2), "step": jnp.int32(0)}, 5)
    with pytest.raises(ValueError, match="grads has structure"):
        optimizer.update(theta, state, {"v": jnp.ones((3,))}, params)
    with pytest.raises(ValueError, match="grads has leaf shapes"):
        optimizer.update(theta, state, {"w": jnp.ones((4,))}, params)
    with pytest.raises(ValueError, match=r"sizes \(3,\) but params have \(4,\): call init"):
        optimizer.update(theta, state, {"w": jnp.ones((4,))}, {"w": jnp.ones((4,))})
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        optimizer.init(theta, params, 0)
    with pytest.raises(ValueError, match="params has no array leaves"):
        optimizer.init(theta, {}, 5)
    with_loss = lopt.MLPOptimizer(hidden_sizes=(4,), use_loss=True)
    with pytest.raises(ValueError, match="use_loss=True and needs the loss"):
        with_loss.update(theta, state, params, params)
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
