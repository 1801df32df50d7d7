"""Statistical tests of the gradient estimators (fixed seeds; tolerances from standard errors).

Unbiasedness is checked on ``LinearQuadraticSystem``, where every per-step loss is quadratic in
theta, so the antithetic ES estimates are exactly unbiased (no smoothing bias) and the truth is
``jax.grad`` of the full unroll. The objective is the mean per-step loss of one inner problem of
``T`` steps. Lockstep particles run windows covering a whole number of inner problems and each
pair's estimates are averaged over those windows; staggered particles (uniform offsets) are
unbiased for it window by window. A z-score beyond ``Z_AGREE`` standard errors means disagreement;
the biased estimators must miss the truth by more than ``Z_BIASED``.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from meta_train import engine, estimators, systems

Z_AGREE = 4.0  # two-sided P(|z| > 4) = 6e-5 per coordinate
Z_BIASED = 10.0
NUM_PAIRS = 4096
SIGMA = 0.3

# Tiny programs that run for milliseconds: compile without backend optimisation (most of the
# compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
UNROLL = jax.jit(engine.unroll_window, static_argnums=(1,), compiler_options=FAST_COMPILE)


def mean_and_se(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its standard error."""
    return samples.mean(0), samples.std(0, ddof=1) / math.sqrt(samples.shape[0])


def run_windows(system, config, theta, num_windows, seed=1):
    """Per-pair estimates ``[num_windows, N, P]`` and the particles before each window."""
    particles, _ = engine.init_particles(
        system, config, theta, jax.random.key(seed), compiler_options=FAST_COMPILE
    )
    history, grads = [], []
    for _ in range(num_windows):
        history.append(particles)
        particles, outputs = UNROLL(system, config, theta, particles)
        grads.append(np.asarray(outputs.grad))
    history.append(particles)
    return np.stack(grads), history


@pytest.fixture(scope="module")
def lq():
    system = systems.LinearQuadraticSystem.create(jax.random.key(0))
    theta = {"b": jnp.asarray(-0.2), "w": jnp.asarray([0.3])}
    return system, theta


def lq_config(estimator, horizon=5, window=2, stagger=False):
    return engine.EngineConfig(
        num_pairs=NUM_PAIRS,
        window=window,
        sigma=SIGMA,
        horizon=horizon,
        stagger=stagger,
        estimator=estimator,
    )


# Lockstep T=5, K=2: five windows cover two inner problems; the third window holds the last step
# of the first problem and the first step of the second (a reset inside a window).
LOCKSTEP_WINDOWS = 5


@pytest.fixture(scope="module")
def lockstep_runs(lq):
    system, theta = lq
    runs = {}
    for estimator in ("es_single", "pes", "tes", "tbptt"):
        grads, _ = run_windows(system, lq_config(estimator), theta, LOCKSTEP_WINDOWS)
        runs[estimator] = grads.mean(0)
    return runs


def z_scores(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    mean, se = mean_and_se(samples)
    return (mean - truth) / se


def flat_truth(system, theta, horizon):
    return np.asarray(ravel_pytree(system.exact_gradient(theta, horizon))[0])


@pytest.mark.parametrize("estimator", ["es_single", "pes"])
def test_unbiased_lockstep_with_resets_inside_windows(lq, lockstep_runs, estimator):
    system, theta = lq
    z = z_scores(lockstep_runs[estimator], flat_truth(system, theta, 5))
    assert np.all(np.abs(z) < Z_AGREE), z


def test_full_es_unbiased(lq):
    system, theta = lq
    grads, _ = run_windows(system, lq_config("full_es", horizon=5, window=5), theta, 1)
    z = z_scores(grads[0], flat_truth(system, theta, 5))
    assert np.all(np.abs(z) < Z_AGREE), z


@pytest.mark.parametrize("estimator", ["es_single", "pes"])
def test_unbiased_staggered_single_window(lq, estimator):
    """Offsets uniform in [0, T): every step of the problem is equally likely in a window, and a
    window can cross a reset (T=8, K=3)."""
    system, theta = lq
    config = lq_config(estimator, horizon=8, window=3, stagger=True)
    grads, history = run_windows(system, config, theta, 1)
    assert len(np.unique(np.asarray(history[0].step))) == 8
    z = z_scores(grads[0], flat_truth(system, theta, 8))
    assert np.all(np.abs(z) < Z_AGREE), z


def truncated_reference(system, theta, horizon, window, num_windows, first_window_sees_init):
    """Expected truncated gradient: per window, ``jax.grad`` of the mean window loss with the
    state entering the window held fixed (mean initial condition, no noise), averaged over the
    lockstep windows. A reset inside a window re-initialises from theta (D theta), which the
    gradient sees; ``first_window_sees_init`` adds the first problem's initialisation too (TES
    keeps the noise that was drawn with the initialisation for the first window)."""
    loss = lambda state: 0.5 * jnp.sum((state - system.target) ** 2)
    init = lambda th: system.init_state(th, None, system.init_mean, horizon)
    state, step, grads = init(theta), 0, []
    for index in range(num_windows):

        def window_loss(th, state=state, step=step, index=index):
            if index == 0 and first_window_sees_init:
                state = init(th)
            losses = []
            for _ in range(window):
                state = system._advance(th, state, jnp.zeros_like(state))
                losses.append(loss(state))
                step += 1
                if step == horizon:
                    state, step = init(th), 0
            return jnp.mean(jnp.stack(losses)), (state, step)

        grad, (state, step) = jax.grad(window_loss, has_aux=True)(theta)
        grads.append(ravel_pytree(grad)[0])
    return np.asarray(jnp.mean(jnp.stack(grads), axis=0))


def test_truncated_es_and_tbptt_biased(lq, lockstep_runs):
    """Both miss the full-unroll gradient by many standard errors, and each matches the exact
    truncated gradient it estimates (which shows the bias is truncation, not a bookkeeping bug)."""
    system, theta = lq
    truth = flat_truth(system, theta, 5)
    for estimator, sees_init in (("tes", True), ("tbptt", False)):
        samples = lockstep_runs[estimator]
        assert np.max(np.abs(z_scores(samples, truth))) > Z_BIASED, estimator
        reference = truncated_reference(system, theta, 5, 2, LOCKSTEP_WINDOWS, sees_init)
        mean, se = mean_and_se(samples)
        tolerance = Z_AGREE * se + 1e-4 * np.abs(reference)  # float32 roundoff for TBPTT
        np.testing.assert_array_less(np.abs(mean - reference), tolerance, err_msg=estimator)


def test_factor_two(lq, lockstep_runs):
    """The estimate's projection on the true gradient has mean 1; halving or doubling it (the
    ``2 sigma^2`` versus ``sigma^2`` of the paper's equation 4) is rejected by far."""
    system, theta = lq
    truth = flat_truth(system, theta, 5)
    projections = lockstep_runs["es_single"] @ truth / (truth @ truth)
    mean, se = mean_and_se(projections)
    assert abs(mean - 1.0) < Z_AGREE * se
    for wrong_scale in (0.5, 2.0):
        assert abs(wrong_scale * mean - 1.0) > Z_BIASED * wrong_scale * se


# Variance: a memoryless quadratic, P = 3, no noise. Per pair, with u = eps / sigma and a the
# (constant) per-step gradient, ES-Single's window estimate is u (u . a): trace of covariance
# (P + 1) ||a||^2 in every window. PES's at window w is (u_1 + ... + u_w)(u_w . a): trace
# (P + 1 + (w - 1) P) ||a||^2, growing with the number of windows.
VARIANCE_HORIZON = 8
CURVATURE = (1.0, 2.0, 0.5)
TARGET = (0.5, -0.5, 1.0)
VARIANCE_THETA = jnp.asarray([0.0, 0.3, -0.4])


@pytest.fixture(scope="module")
def memoryless():
    return systems.IndependentGradientSystem.create(CURVATURE, TARGET)


def variance_config(estimator, window):
    return engine.EngineConfig(
        num_pairs=NUM_PAIRS,
        window=window,
        sigma=SIGMA,
        horizon=VARIANCE_HORIZON,
        stagger=False,
        estimator=estimator,
    )


@pytest.fixture(scope="module")
def variance_runs(memoryless):
    runs = {}
    for estimator, window in (("es_single", VARIANCE_HORIZON), ("es_single", 1), ("pes", 1)):
        config = variance_config(estimator, window)
        runs[estimator, window] = run_windows(
            memoryless, config, VARIANCE_THETA, VARIANCE_HORIZON // window
        )
    return runs


def trace_and_se(samples: np.ndarray) -> tuple[float, float]:
    """Trace of the covariance of ``[N, P]`` samples and its standard error."""
    squared = np.sum((samples - samples.mean(0)) ** 2, axis=1)
    return float(squared.mean() * len(squared) / (len(squared) - 1)), float(
        squared.std(ddof=1) / math.sqrt(len(squared))
    )


def test_es_single_estimate_is_the_formula(memoryless, variance_runs):
    """Deterministic: g_j = eps_j (L+ - L-) / (2 sigma^2) with L+ - L- = 2 eps_j . a exactly."""
    grads, history = variance_runs["es_single", 1]
    eps = np.asarray(history[0].noise.eps)
    a = np.asarray(memoryless.gradient(VARIANCE_THETA))
    expected = eps * (eps @ a)[:, None] / SIGMA**2
    np.testing.assert_allclose(grads[0], expected, rtol=1e-4, atol=1e-5)


def test_es_single_variance_flat_and_matches_theory(memoryless, variance_runs):
    a = np.asarray(memoryless.gradient(VARIANCE_THETA))
    theory = (len(a) + 1) * (a @ a)
    for (estimator, window), (grads, _) in variance_runs.items():
        if estimator != "es_single":
            continue
        for per_window in grads:
            trace, se = trace_and_se(per_window)
            assert abs(trace - theory) < Z_AGREE * se, (window, trace, theory, se)


def test_pes_variance_grows_with_windows(memoryless, variance_runs):
    a = np.asarray(memoryless.gradient(VARIANCE_THETA))
    num_params = len(a)
    grads, _ = variance_runs["pes", 1]
    traces = []
    for index, per_window in enumerate(grads):
        trace, se = trace_and_se(per_window)
        theory = (num_params + 1 + index * num_params) * (a @ a)
        assert abs(trace - theory) < Z_AGREE * se, (index + 1, trace, theory, se)
        traces.append((trace, se))
    (first, first_se), (last, last_se) = traces[0], traces[-1]
    assert last - first > Z_BIASED * math.hypot(first_se, last_se)


def test_pes_noise_accumulates_per_window(variance_runs):
    """Lockstep PES: xi after window w is the sum of w draws, each the eps of its window."""
    _, history = variance_runs["pes", 1]
    for before, after in itertools.pairwise(history[1:-1]):
        np.testing.assert_allclose(
            np.asarray(after.noise.xi) - np.asarray(before.noise.xi),
            np.asarray(after.noise.eps),
            atol=1e-5,
        )
        assert not np.allclose(np.asarray(after.noise.eps), np.asarray(before.noise.eps))


def test_estimators_table_is_complete():
    assert set(estimators.ESTIMATORS) == {"es_single", "pes", "tes", "full_es", "tbptt", "gpes"}
