"""Statistical tests of the gradient estimators (fixed seeds; tolerances from standard errors).

Unbiasedness is checked on ``LinearQuadraticSystem``, where every per-step loss is quadratic in
theta, so the antithetic ES estimates are exactly unbiased (no smoothing bias) and the truth is
``jax.grad`` of the full unroll. The objective is the mean per-step loss of one inner problem of
``T`` steps. Lockstep particles run windows covering a whole number of inner problems and each
pair's estimates are averaged over those windows; staggered particles (uniform offsets) are
unbiased for it window by window. A z-score beyond ``Z_AGREE`` standard errors means disagreement;
the biased estimators must miss the truth by more than ``Z_BIASED``.
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from meta_train.es import engine, estimators, reference_systems
from meta_train.es.compile_options import FAST_COMPILE

# Slow tier (statistical tests with thousands of pairs); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

Z_AGREE = 4.0  # two-sided P(|z| > 4) = 6e-5 per coordinate
Z_BIASED = 10.0
NUM_PAIRS = 4096
SIGMA = 0.3

# Tiny programs that run for milliseconds: compiled with FAST_COMPILE.
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
    system = reference_systems.LinearQuadraticSystem.create(jax.random.key(0))
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


def _lq_loss(system, state):
    return 0.5 * jnp.sum((state - system.target) ** 2)


def window_from(system, theta, state, step, horizon, window):
    """A lockstep window of ``LinearQuadraticSystem`` at the mean initial condition and zero noise:
    ``(mean window loss, (state, step) leaving it)``, entering with ``(state, step)``. A problem
    at step 0 is initialised under ``theta``, in the window that runs its first step (also after
    a reset inside the window), which is the engine's rule for TBPTT and TES."""
    init = lambda: system.init_state(theta, None, system.init_mean, horizon)
    if step == 0:
        state = init()
    losses = []
    for _ in range(window):
        state = system._advance(theta, state, jnp.zeros_like(state))
        losses.append(_lq_loss(system, state))
        step += 1
        if step == horizon:
            state, step = init(), 0
    return jnp.mean(jnp.stack(losses)), (state, step)


def truncated_reference(system, theta, horizon, window, num_windows):
    """``[num_windows, P]``: the exact truncated gradient of each lockstep window, ``jax.grad`` of
    its mean loss with the state entering it held fixed (``window_from``)."""
    state, step, grads = None, 0, []
    for _ in range(num_windows):
        loss = lambda th, state=state, step=step: window_from(
            system, th, state, step, horizon, window
        )
        grad, (state, step) = jax.grad(loss, has_aux=True)(theta)
        grads.append(ravel_pytree(grad)[0])
    return np.asarray(jnp.stack(grads))


def test_truncated_es_and_tbptt_biased(lq, lockstep_runs):
    """Both miss the full-unroll gradient by many standard errors, and each matches the exact
    truncated gradient it estimates (which shows the bias is truncation, not a bookkeeping bug).
    TES's shared state is the ``+eps`` twin's, affine in the earlier windows' noise, so its mean
    is the unperturbed trajectory's and the reference holds in expectation."""
    system, theta = lq
    truth = flat_truth(system, theta, 5)
    reference = truncated_reference(system, theta, 5, 2, LOCKSTEP_WINDOWS).mean(0)
    for estimator in ("tes", "tbptt"):
        samples = lockstep_runs[estimator]
        assert np.max(np.abs(z_scores(samples, truth))) > Z_BIASED, estimator
        mean, se = mean_and_se(samples)
        tolerance = Z_AGREE * se + 1e-4 * np.abs(reference)  # float32 roundoff for TBPTT
        np.testing.assert_array_less(np.abs(mean - reference), tolerance, err_msg=estimator)


# A deterministic LinearQuadraticSystem (no initial or process noise): TBPTT's estimate is one
# number per window, and TES's randomness is its own noise alone.
@pytest.fixture(scope="module")
def deterministic_lq():
    system = reference_systems.LinearQuadraticSystem.create(
        jax.random.key(0), init_scale=0.0, noise_scale=0.0
    )
    theta = {"b": jnp.asarray(-0.2), "w": jnp.asarray([0.3])}
    return system, theta


@pytest.mark.parametrize(
    ("horizon", "window"),
    [(4, 2), (5, 2), (4, 4)],
    ids=["resets-on-window-boundaries", "resets-inside-windows", "window-is-the-problem"],
)
def test_tbptt_sees_init_state_wherever_the_reset_falls(deterministic_lq, horizon, window):
    """``init_state`` depends on theta (``D theta``). TBPTT differentiates it in the window that
    runs the problem's first step whether the reset fell on a window boundary (T=4, K=2) or
    inside a window (T=5, K=2): each window's estimate is the exact truncated gradient, and with
    K = T it is the full gradient. Dropping ``d init / d theta`` misses the reference by
    ``D``'s contribution, far above float32 roundoff."""
    system, theta = deterministic_lq
    num_windows = 2 * horizon // math.gcd(horizon, window)
    config = engine.EngineConfig(8, window, SIGMA, horizon, stagger=False, estimator="tbptt")
    grads, _ = run_windows(system, config, theta, num_windows)
    reference = truncated_reference(system, theta, horizon, window, num_windows)
    np.testing.assert_allclose(grads, np.broadcast_to(reference[:, None], grads.shape), rtol=1e-4)
    if window == horizon:
        np.testing.assert_allclose(reference[0], flat_truth(system, theta, horizon), rtol=1e-5)
    without_init = dataclasses.replace(system, init_control=jnp.zeros_like(system.init_control))
    dropped = truncated_reference(without_init, theta, horizon, window, num_windows)
    assert np.max(np.abs(dropped - reference)) > 1e-2 * np.max(np.abs(reference))


# TES in lockstep, T = 6, K = 2: windows 0 and 3 start a problem, windows 1 and 2 enter with the
# state the +eps twin reached under the earlier windows' noise.
TES_HORIZON, TES_WINDOW, TES_WINDOWS = 6, 2, 4


@pytest.fixture(scope="module")
def tes_runs(deterministic_lq):
    system, theta = deterministic_lq
    config = lq_config("tes", horizon=TES_HORIZON, window=TES_WINDOW)
    return run_windows(system, config, theta, TES_WINDOWS)


def plus_twin_gradient(system, theta, earlier_eps):
    """The truncated gradient ``G`` of window ``w = len(earlier_eps)`` (TES lockstep, T = 6,
    K = 2) from the state the +eps twin reached running windows ``0..w-1`` under ``theta + eps_i``
    (``earlier_eps``: ``[w, P]``)."""
    flat, unravel = ravel_pytree(theta)
    state, step = None, 0
    for eps in earlier_eps:
        _, (state, step) = window_from(
            system, unravel(flat + eps), state, step, TES_HORIZON, TES_WINDOW
        )
    loss = lambda th: window_from(system, th, state, step, TES_HORIZON, TES_WINDOW)[0]
    return ravel_pytree(jax.grad(loss)(theta))[0]


def test_tes_twins_start_each_window_from_the_plus_twins_state(deterministic_lq, tes_runs):
    """learned_optimization's TruncatedES: both twins enter window 1 with the state the +eps twin
    left, so with a quadratic window loss each pair's estimate is exactly ``eps (eps . G) /
    sigma^2``, ``G`` the truncated gradient from that state (twins keeping their own diverged
    states would add a term driven by the earlier noise)."""
    system, theta = deterministic_lq
    grads, history = tes_runs
    entering = np.asarray(history[1].state)[:, 0]  # the +eps twin after window 0
    eps = np.asarray(history[2].noise.eps)  # window 1's noise (no reset at its end)
    flat, unravel = ravel_pytree(theta)

    def gradient_from(state):
        loss = lambda th: window_from(system, th, state, TES_WINDOW, TES_HORIZON, TES_WINDOW)[0]
        return ravel_pytree(jax.grad(loss)(unravel(flat)))[0]

    G = np.asarray(jax.vmap(gradient_from)(jnp.asarray(entering)))
    expected = eps * np.sum(eps * G, axis=1, keepdims=True) / SIGMA**2
    np.testing.assert_allclose(grads[1], expected, rtol=1e-3, atol=1e-4)


def test_tes_per_window_mean_and_variance_match_closed_form(deterministic_lq, tes_runs):
    """Per window, with ``u = eps / sigma`` independent of the entering state, TES's estimate is
    ``g = u (u . G)`` with ``G`` affine in the earlier windows' noise: ``E g = G(0)`` and
    ``tr Cov g = (P + 2) (|G(0)|^2 + tr Cov G) - |G(0)|^2``, ``tr Cov G = sigma^2 ||dG/d eps||^2``.
    Windows 0 and 3 start a problem (``Cov G = 0``), windows 1 and 2 carry earlier noise."""
    system, theta = deterministic_lq
    grads, _ = tes_runs
    num_params = grads.shape[-1]
    for index in range(TES_WINDOWS):
        earlier = jnp.zeros((index, num_params))
        g0 = np.asarray(plus_twin_gradient(system, theta, earlier))
        jacobian = jax.jacobian(lambda e: plus_twin_gradient(system, theta, e))(earlier)
        cov_trace = SIGMA**2 * float(np.sum(np.asarray(jacobian) ** 2))
        assert (cov_trace > 0) == (index in (1, 2)), (index, cov_trace)
        theory = (num_params + 2) * (g0 @ g0 + cov_trace) - g0 @ g0
        trace, se = trace_and_se(grads[index])
        assert abs(trace - theory) < Z_AGREE * se, (index, trace, theory, se)
        assert np.all(np.abs(z_scores(grads[index], g0)) < Z_AGREE), index


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
    return reference_systems.IndependentGradientSystem.create(CURVATURE, TARGET)


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


def test_sign_shaping_is_the_formula_scale_free_and_estimates_the_descent_direction(
    memoryless, variance_runs
):
    """With L+ - L- = 2 eps . a: g_j = u_j sign(u_j . a), u = eps / sigma; its mean is
    sqrt(2 / pi) a / |a| (u is standard normal), whatever the loss scale."""
    config = dataclasses.replace(variance_config("es_single", 1), shaping="sign")
    grads, history = run_windows(memoryless, config, VARIANCE_THETA, 1)
    u = np.asarray(history[0].noise.eps) / SIGMA
    a = np.asarray(memoryless.gradient(VARIANCE_THETA))
    np.testing.assert_allclose(grads[0], u * np.sign(u @ a)[:, None], rtol=1e-4, atol=1e-5)
    direction = math.sqrt(2 / math.pi) * a / np.linalg.norm(a)
    z = z_scores(grads[0], direction)
    assert np.all(np.abs(z) < Z_AGREE), z
    # Positive control: the unshaped estimate (same particles) has mean a, not the direction.
    unshaped, _ = variance_runs["es_single", 1]
    assert np.max(np.abs(z_scores(unshaped[0], direction))) > Z_BIASED
    # A loss ten times steeper gives the same shaped votes (the unshaped estimate grows tenfold).
    steeper = reference_systems.IndependentGradientSystem.create(
        tuple(10 * c for c in CURVATURE), TARGET
    )
    steep_grads, _ = run_windows(steeper, config, VARIANCE_THETA, 1)
    np.testing.assert_allclose(steep_grads[0], grads[0], rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("estimator", estimators.ESTIMATORS)
def test_every_listed_estimator_gives_an_estimate_and_the_trainer_accepts_it(lq, estimator):
    """Each name in ``ESTIMATORS`` is implemented by the engine (a window traces to an estimate
    shaped like theta, nothing compiled) and selectable in the trainer's config."""
    from meta_train import config_flags

    system, theta = lq
    config = engine.EngineConfig(2, 4, 0.1, 4, stagger=False, estimator=estimator)
    particles = engine.particles_shape(system, config, theta)
    _, estimate = jax.eval_shape(lambda p: engine.window_step(system, config, theta, p), particles)
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    assert shapes(estimate.grad) == shapes(jax.eval_shape(lambda: theta))
    assert estimator in config_flags.ESTIMATORS
