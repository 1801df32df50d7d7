"""The particle engine: resets, staggering, non-finite losses, the psum path, the systems."""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lopt.base import LearnedOptimizer
from meta_train import unrolled_tasks
from meta_train.es import engine, estimators, reference_systems
from meta_train.es.compile_options import FAST_COMPILE
from meta_train.es.system import UnrolledSystem
from tasks import quadratic
from tasks.dynamical import InfluenceBalancing

# Slow tier (statistical and invariance runs of the engine); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

# These programs are tiny and run for milliseconds: compiled with FAST_COMPILE.
UNROLL = jax.jit(engine.unroll_window, static_argnums=(1,), compiler_options=FAST_COMPILE)
WINDOW_STEP = jax.jit(engine.window_step, static_argnums=(1, 4), compiler_options=FAST_COMPILE)
SIGMA = 0.3


def run_windows(system, config, theta, num_windows, seed=1):
    """``(history, outputs)``: the particles before each window (and after the last) and each
    window's per-pair outputs, as numpy trees."""
    particles, _ = engine.init_particles(
        system, config, theta, jax.random.key(seed), compiler_options=FAST_COMPILE
    )
    history, outputs = [jax.device_get(particles)], []
    for _ in range(num_windows):
        particles, out = UNROLL(system, config, theta, particles)
        history.append(jax.device_get(particles))
        outputs.append(jax.device_get(out))
    return history, outputs


# Resets: a memoryless quadratic whose state counts the steps taken, horizons sampled in [3, 7]
# and windows of 3 steps, so a window holds at most one reset.
RESET_THETA = jnp.asarray([0.2, -0.1])
RESET_WINDOWS = 6


@pytest.fixture(scope="module")
def counter_system():
    return reference_systems.IndependentGradientSystem.create([1.0, 3.0], [0.5, 0.5])


def reset_config(estimator, resample_every=1, num_pairs=64):
    return engine.EngineConfig(
        num_pairs=num_pairs,
        window=3,
        sigma=SIGMA,
        horizon=(3, 7),
        stagger=True,
        estimator=estimator,
        resample_every=resample_every,
    )


@pytest.fixture(scope="module")
def reset_runs(counter_system):
    return {
        (estimator, every): run_windows(
            counter_system, reset_config(estimator, every), RESET_THETA, RESET_WINDOWS
        )
        for estimator, every in (("es_single", 1), ("pes", 1))
    }


def test_staggered_particles_really_advanced(counter_system):
    config = reset_config("es_single")
    particles, burn_in = engine.init_particles(
        counter_system, config, RESET_THETA, jax.random.key(3), compiler_options=FAST_COMPILE
    )
    step, horizon = np.asarray(particles.step), np.asarray(particles.horizon)
    assert np.all((step >= 0) & (step < horizon))
    assert len(np.unique(step)) == 7  # every offset in [0, 7) is taken
    assert len(np.unique(horizon)) == 5  # horizons sampled in [3, 7]
    assert burn_in == step.max()
    shapes = engine.particles_shape(counter_system, config, RESET_THETA)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == jax.tree.map(
        lambda x: (x.shape, x.dtype), particles
    )
    # The state counts the steps each twin really ran.
    np.testing.assert_array_equal(np.asarray(particles.state), np.stack([step, step], 1))


def resets_of(outputs):
    return np.asarray(outputs.resets)


def test_es_single_noise_changes_exactly_at_resets(reset_runs):
    history, outputs = reset_runs["es_single", 1]
    total_resets = 0
    for before, after, out in zip(history[:-1], history[1:], outputs, strict=True):
        reset = resets_of(out) > 0
        eps_changed = np.any(before.noise.eps != after.noise.eps, axis=1)
        horizon_changed = before.horizon != after.horizon
        np.testing.assert_array_equal(eps_changed, reset)
        assert not np.any(horizon_changed & ~reset)
        np.testing.assert_array_equal(after.noise.xi, after.noise.eps)
        total_resets += reset.sum()
    assert 0 < total_resets < len(outputs) * len(reset)


def test_es_single_split_window_weights(counter_system, reset_runs):
    """A window crossing a reset weights its m steps before by the old eps and the K - m after
    by the new one: g_j = [m eps1 (eps1.a) + (K-m) eps2 (eps2.a)] / (sigma^2 K), every loss
    counted once (count = K), none from the reset itself."""
    history, outputs = reset_runs["es_single", 1]
    a = np.asarray(counter_system.gradient(RESET_THETA))
    for before, after, out in zip(history[:-1], history[1:], outputs, strict=True):
        np.testing.assert_array_equal(out.count, 3)
        steps_before = np.where(resets_of(out) > 0, before.horizon - before.step, 3)
        old, new = before.noise.eps, after.noise.eps
        expected = (
            steps_before[:, None] * old * (old @ a)[:, None]
            + (3 - steps_before)[:, None] * new * (new @ a)[:, None]
        ) / (SIGMA**2 * 3)
        np.testing.assert_allclose(out.grad, expected, rtol=1e-4, atol=1e-5)


def test_pes_accumulator_cleared_at_resets(reset_runs):
    history, outputs = reset_runs["pes", 1]
    for before, after, out in zip(history[:-1], history[1:], outputs, strict=True):
        reset = resets_of(out) > 0
        np.testing.assert_array_equal(after.noise.xi[reset], after.noise.eps[reset])
        kept = ~reset & (before.noise.windows >= 1)  # fresh noise drawn at this window start
        np.testing.assert_allclose(
            after.noise.xi[kept] - before.noise.xi[kept], after.noise.eps[kept], atol=1e-5
        )
        assert reset.any() and kept.any()


def test_gpes_with_m_1_is_pes():
    noise = estimators.Noise(jnp.ones(2), jnp.ones(2), jnp.ones((), jnp.int32))
    fresh = jnp.full(2, 3.0)
    pes = estimators.noise_at_window_start("pes", 1, noise, fresh)
    gpes = estimators.noise_at_window_start("gpes", 1, noise, fresh)
    jax.tree.map(np.testing.assert_array_equal, pes, gpes)


def test_gpes_redraw_schedule():
    """M = 2: an eps serves two windows (lockstep T = 8, K = 1, no reset in 6 windows)."""
    noise = estimators.Noise(jnp.ones(2), jnp.ones(2), jnp.zeros((), jnp.int32))
    draws = []
    for window in range(6):
        fresh = jnp.full(2, float(window + 2))
        noise = estimators.noise_at_window_start("gpes", 2, noise, fresh)
        draws.append(float(noise.eps[0]))
    assert draws == [1.0, 1.0, 4.0, 4.0, 6.0, 6.0]
    np.testing.assert_allclose(noise.xi, 1.0 + 4.0 + 6.0)


class ExplodingSystem(struct.PyTreeNode, UnrolledSystem):
    """Loss ``sum(theta^2)``, times NaN at a problem's second step; the state counts steps."""

    def sample_config(self, key):
        return jnp.zeros(())

    def init_state(self, theta, key, config, horizon):
        return jnp.zeros(())

    def step(self, theta, state, key, config):
        state = state + 1.0
        blow_up = jnp.where(state == 2.0, jnp.nan, 1.0)
        return state, jnp.sum(theta**2) * blow_up


@pytest.mark.parametrize("estimator", ["es_single", "tbptt"])
def test_nonfinite_losses_masked_counted_and_reset(estimator):
    """Window of 3 from step 0: steps 1 (fine), 2 (NaN: masked, reset), then step 1 of a new
    problem (fine, new noise). The estimate stays finite and only holds the finite steps."""
    system, theta, num_pairs = ExplodingSystem(), jnp.asarray([0.5, -1.0]), 4
    config = engine.EngineConfig(num_pairs, 3, SIGMA, 10, stagger=False, estimator=estimator)
    particles, burn_in = engine.init_particles(
        system, config, theta, jax.random.key(0), compiler_options=FAST_COMPILE
    )
    assert burn_in == 0 and np.all(np.asarray(particles.step) == 0)  # lockstep
    after, estimate = WINDOW_STEP(system, config, theta, particles)
    diagnostics = jax.device_get(estimate.diagnostics)
    assert np.all(np.isfinite(estimate.grad)) and np.isfinite(estimate.meta_loss)
    assert diagnostics["masked_fraction"] == pytest.approx(1 / 3)
    assert diagnostics["num_resets"] == num_pairs
    np.testing.assert_array_equal(after.step, 1)
    if estimator == "tbptt":
        # The NaN step poisons each pair's backward pass: the pair is dropped and counted again.
        assert diagnostics["nonfinite_count"] == 2 * num_pairs
        np.testing.assert_array_equal(estimate.grad, 0.0)
        return
    assert diagnostics["nonfinite_count"] == num_pairs
    old, new = np.asarray(particles.noise.eps), np.asarray(after.noise.eps)
    assert not np.any(old == new)
    # loss diff (theta + e)^2 - (theta - e)^2 = 4 theta . e; two unmasked steps.
    t = np.asarray(theta)
    per_pair = (old * (4 * old @ t)[:, None] + new * (4 * new @ t)[:, None]) / (2 * SIGMA**2 * 2)
    np.testing.assert_allclose(estimate.grad, per_pair.mean(0), rtol=1e-5)
    assert float(estimate.meta_loss) == pytest.approx(
        np.mean([np.sum((t + s * e) ** 2) for e in (*old, *new) for s in (1, -1)]), rel=1e-5
    )


def sharded_window_step(system, config, theta, particles):
    """``engine.window_step`` under shard_map, the pairs split over 4 devices, theta replicated."""
    mesh = jax.make_mesh((4,), ("pairs",), axis_types=(jax.sharding.AxisType.Explicit,))
    step = jax.jit(
        jax.shard_map(
            lambda s, th, p: engine.window_step(s, config, th, p, axis_name="pairs"),
            mesh=mesh,
            in_specs=(P(), P(), P("pairs")),
            out_specs=(P("pairs"), P()),
        ),
        compiler_options=FAST_COMPILE,
    )
    return step(system, theta, jax.device_put(particles, NamedSharding(mesh, P("pairs"))))


@pytest.mark.parametrize("estimator", ["es_single", "tes", "tbptt"])
def test_shard_map_matches_one_device(estimator):
    """Pairs split over 4 forced CPU devices give the one-device estimate (psum of the sums).
    TBPTT checks that the gradient of the replicated theta is not summed over devices twice."""
    assert jax.device_count() >= 4
    system = reference_systems.LinearQuadraticSystem.create(jax.random.key(0))
    theta = {"b": jnp.asarray(-0.2), "w": jnp.asarray([0.3])}
    config = engine.EngineConfig(16, 2, SIGMA, (2, 6), stagger=False, estimator=estimator)
    particles, _ = engine.init_particles(
        system, config, theta, jax.random.key(1), compiler_options=FAST_COMPILE
    )
    expected_particles, expected = WINDOW_STEP(system, config, theta, particles)
    got_particles, got = sharded_window_step(system, config, theta, particles)
    for name in ("b", "w"):
        np.testing.assert_allclose(got.grad[name], expected.grad[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.meta_loss, expected.meta_loss, rtol=1e-6)
    for key, value in expected.diagnostics.items():
        np.testing.assert_allclose(got.diagnostics[key], value, rtol=1e-5, atol=1e-6)
    jax.tree.map(assert_same_up_to_roundoff, got_particles, expected_particles)


@pytest.mark.parametrize("estimator", ["es_single", "pes", "tes", "tbptt"])
def test_pairs_per_chunk_does_not_change_results(counter_system, estimator):
    """Chunked pairs (lax.map over chunks, a real reset branch with chunks of one) reproduce the
    all-at-once run: staggered burn-in, windows crossing resets, estimates and particles."""
    config = reset_config(estimator, num_pairs=8)
    expected = run_windows(counter_system, config, RESET_THETA, 3)
    for chunk in (1, 3):
        chunked = dataclasses.replace(config, pairs_per_chunk=chunk)
        got = run_windows(counter_system, chunked, RESET_THETA, 3)
        assert sum(resets_of(out).sum() for out in got[1]) > 0
        jax.tree.map(assert_same_up_to_roundoff, got, expected)


def test_chunks_of_one_pair_under_shard_map(counter_system):
    """The real reset branch also runs under shard_map with varying-type checks on."""
    config = dataclasses.replace(reset_config("es_single", num_pairs=8), pairs_per_chunk=1)
    particles, _ = engine.init_particles(
        counter_system, config, RESET_THETA, jax.random.key(2), compiler_options=FAST_COMPILE
    )
    lockstep = dataclasses.replace(config, pairs_per_chunk=None)
    expected_particles, expected = WINDOW_STEP(counter_system, lockstep, RESET_THETA, particles)
    got_particles, got = sharded_window_step(counter_system, config, RESET_THETA, particles)
    assert int(jnp.sum(got_particles.step == 0)) > 0  # some pair reset in this window
    np.testing.assert_allclose(got.grad, expected.grad, rtol=1e-5, atol=1e-6)
    jax.tree.map(assert_same_up_to_roundoff, got_particles, expected_particles)


def assert_same_up_to_roundoff(actual, desired):
    """Integers and keys exactly; floats up to summation order (kernels differ by batch size)."""
    if jnp.issubdtype(desired.dtype, jnp.floating):
        np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(actual, desired)


def test_sampled_horizons_are_log_uniform():
    keys = jax.random.split(jax.random.key(0), 20000)
    horizons = np.asarray(jax.vmap(lambda k: engine.sample_horizon(k, (4, 64)))(keys))
    assert horizons.min() == 4 and horizons.max() == 64
    # P(T < 16) = (log 16 - log 4) / (log 65 - log 4) under log-uniform sampling.
    p = (math.log(16) - math.log(4)) / (math.log(65) - math.log(4))
    fraction = np.mean(horizons < 16)
    assert abs(fraction - p) < 4 * math.sqrt(p * (1 - p) / len(horizons))


def test_influence_balancing_es_single_long_run_gradient():
    """At theta = 0.5, in the steady state, the long-run gradient is +24 (theta* = -1/6 lies
    below), which ES-Single recovers from windows of one step."""
    dynamics = InfluenceBalancing()
    assert dynamics.optimum() == pytest.approx(-1 / 6)
    system = unrolled_tasks.InfluenceBalancingSystem()
    theta = system.init_theta()
    truth = dynamics.steady_state_gradient(0.5)
    assert truth == pytest.approx(24.0)
    config = engine.EngineConfig(256, 1, 0.1, 10**6, stagger=False)
    particles, _ = engine.init_particles(
        system, config, theta, jax.random.key(2), compiler_options=FAST_COMPILE
    )
    for _ in range(120):  # the chain settles to float precision well within 120 steps
        particles, outputs = UNROLL(system, config, theta, particles)
    grads = np.asarray(outputs.grad)[:, 0]
    assert abs(grads.mean() - truth) < 4 * grads.std(ddof=1) / math.sqrt(len(grads))


@dataclasses.dataclass(frozen=True)
class LearnableSGD(LearnedOptimizer):
    """SGD with theta = {"log_lr"}; its state records the horizon it was initialised with."""

    architecture = "test_sgd"
    uses_horizon = False

    def init_meta_params(self, key):
        return {"log_lr": jnp.asarray(math.log(0.05), jnp.float32)}

    def init(self, theta, params, num_steps):
        return jnp.asarray(num_steps, jnp.int32)

    def update(self, theta, state, grads, params, loss=None):
        lr = jnp.exp(theta["log_lr"])
        return jax.tree.map(lambda g: -lr * g, grads), state


@pytest.fixture(scope="module")
def quadratic_family():
    return quadratic.noisy_quadratic_family(dim=4, max_condition=10.0, noise_range=(0.1, 0.3))


@pytest.mark.parametrize("meta_loss", ["train", "reeval", "outer_valid"])
def test_task_training_system_step(quadratic_family, meta_loss):
    optimizer = LearnableSGD()
    system = unrolled_tasks.TaskTrainingSystem(quadratic_family, optimizer, meta_loss)
    theta = optimizer.init_meta_params(None)
    config = quadratic_family.sample(jax.random.key(0))
    state = system.init_state(theta, jax.random.key(1), config, jnp.asarray(17))
    assert int(state.opt_state) == 17
    key = jax.random.key(2)
    step = jax.jit(type(system).step, compiler_options=FAST_COMPILE)
    new_state, loss = step(system, theta, state, key, config)
    task = quadratic_family.task(config)
    batch_key, meta_key = jax.random.split(key)
    grads = jax.grad(task.loss)(state.params, batch_key)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, state.params, grads)
    np.testing.assert_allclose(new_state.params["x"], params["x"], rtol=1e-5)
    expected = {
        "train": task.loss(state.params, batch_key),
        "reeval": task.loss(params, batch_key),
        "outer_valid": task.eval_loss(params, meta_key, "outer_valid"),
    }[meta_loss]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert loss.dtype == jnp.float32


def test_train_loss_weight_mixes_the_training_loss_in(quadratic_family):
    optimizer = LearnableSGD()
    theta = optimizer.init_meta_params(None)
    config = quadratic_family.sample(jax.random.key(0))
    key = jax.random.key(2)

    def meta_loss(kind, weight=0.0):
        system = unrolled_tasks.TaskTrainingSystem(
            quadratic_family, optimizer, kind, train_loss_weight=weight
        )
        state = system.init_state(theta, jax.random.key(1), config, jnp.asarray(17))
        return float(system.step(theta, state, key, config)[1])

    train, valid = meta_loss("train"), meta_loss("outer_valid")
    assert train != pytest.approx(valid, rel=1e-3)  # else the mix below proves nothing
    assert meta_loss("outer_valid", 0.25) == pytest.approx(0.75 * valid + 0.25 * train, rel=1e-5)
    with pytest.raises(ValueError, match="meta_loss='train'"):
        unrolled_tasks.TaskTrainingSystem(
            quadratic_family, optimizer, "train", train_loss_weight=0.5
        )
    with pytest.raises(ValueError, match=r"train_loss_weight must lie in \[0, 1\]"):
        unrolled_tasks.TaskTrainingSystem(
            quadratic_family, optimizer, "outer_valid", train_loss_weight=1.5
        )


def test_hyperparameter_optimisation_gradient_sign(quadratic_family):
    """Too small a learning rate: ES-Single says increase it (d loss / d log_lr < 0)."""
    optimizer = LearnableSGD()
    system = unrolled_tasks.TaskTrainingSystem(quadratic_family, optimizer, "train")
    theta = optimizer.init_meta_params(None)
    config = engine.EngineConfig(256, 5, 0.1, 20, stagger=False)
    particles, _ = engine.init_particles(
        system, config, theta, jax.random.key(0), compiler_options=FAST_COMPILE
    )
    _, outputs = UNROLL(system, config, theta, particles)
    grads = np.asarray(outputs.grad)[:, 0]
    assert grads.mean() < -4 * grads.std(ddof=1) / math.sqrt(len(grads))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown estimator"):
        engine.EngineConfig(4, 2, 0.1, 10, estimator="es")
    with pytest.raises(ValueError, match="full_es"):
        engine.EngineConfig(4, 2, 0.1, 10, estimator="full_es")
    with pytest.raises(ValueError, match="T_min <= T_max"):
        engine.EngineConfig(4, 2, 0.1, (10, 5))
    with pytest.raises(ValueError, match="sigma"):
        engine.EngineConfig(4, 2, 0.0, 10)
    with pytest.raises(ValueError, match="num_pairs"):
        engine.EngineConfig(0, 2, 0.1, 10)
    with pytest.raises(ValueError, match="gpes"):
        engine.EngineConfig(4, 2, 0.1, 10, estimator="pes", resample_every=3)
    with pytest.raises(ValueError, match="unknown shaping 'rank'; choose one of"):
        engine.EngineConfig(4, 2, 0.1, 10, shaping="rank")
    with pytest.raises(ValueError, match="'tbptt' has none"):
        engine.EngineConfig(4, 2, 0.1, 10, estimator="tbptt", shaping="sign")
    assert engine.EngineConfig(4, 2, 0.1, [5, 9]).horizon == (5, 9)  # lists from configs
    with pytest.raises(ValueError, match="meta_loss"):
        family = quadratic.quadratic_family(dim=2)
        unrolled_tasks.TaskTrainingSystem(family, LearnableSGD(), "valid")
    config = engine.EngineConfig(2, 2, 0.1, 5, stagger=False)
    with pytest.raises(ValueError, match=r"floating-point.*\['steps'\]: int32"):
        engine.init_particles(
            ExplodingSystem(), config, {"steps": jnp.ones(2, jnp.int32)}, jax.random.key(0)
        )


class BadSystem(struct.PyTreeNode, UnrolledSystem):
    """``step`` returns a vector loss, or a state unlike ``init_state``'s."""

    mistake: str = struct.field(pytree_node=False)

    def sample_config(self, key):
        return jnp.zeros(())

    def init_state(self, theta, key, config, horizon):
        return jnp.zeros(3)

    def step(self, theta, state, key, config):
        if self.mistake == "vector loss":
            return state, state
        return state[:2], jnp.sum(state)


@pytest.mark.parametrize(
    ("mistake", "error", "match"),
    [("vector loss", ValueError, "scalar loss"), ("state shape", TypeError, "same structure")],
)
def test_bad_system_gives_clear_error(mistake, error, match):
    system, theta = BadSystem(mistake), jnp.zeros(2)
    config = engine.EngineConfig(2, 2, 0.1, 5, stagger=False)
    particles = jax.eval_shape(lambda: engine._init(system, config, theta, jax.random.key(0))[0])
    with pytest.raises(error, match=match):
        jax.eval_shape(lambda p: engine.window_step(system, config, theta, p), particles)


def test_unhashable_plain_system_is_refused():
    @dataclasses.dataclass
    class Mutable(UnrolledSystem):
        scale: Any = 1.0

        def sample_config(self, key):
            return jnp.zeros(())

        def init_state(self, theta, key, config, horizon):
            return jnp.zeros(())

        def step(self, theta, state, key, config):
            return state, jnp.sum(theta**2)

    config = engine.EngineConfig(2, 2, 0.1, 5, stagger=False)
    with pytest.raises(TypeError, match="must be a pytree"):
        engine.init_particles(Mutable(), config, jnp.zeros(2), jax.random.key(0))
