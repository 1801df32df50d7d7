"""Every registered architecture's meta-gradient against central finite differences.

The meta-loss is the mean inner loss over a short unroll of a tiny least-squares problem trained by
the optimizer from a fixed theta; ``jax.grad`` of it in float64 must match
``(L(theta + eps v) - L(theta - eps v)) / (2 eps)`` along a few random unit directions ``v``.
A control checks that the comparison fails when a ``stop_gradient`` cuts the rule's state.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import lopt
from lopt import registry
from meta_train.es.compile_options import FAST_COMPILE

# Slow tier: one XLA compile per architecture, ~27 s of CPU in all (a test takes 2-7 s).
pytestmark = pytest.mark.slow

ARCHITECTURES = [name for name in lopt.architecture_names() if name not in registry.PRESETS]
NUM_STEPS = 8
NUM_DIRECTIONS = 3
# Central differences err by eps^2 L''' / 6 (truncation) plus the rounding of L over eps. Every
# rule takes the gradients in float32 (lopt.features and the hand-designed baselines cast them), so
# L carries float32 rounding (~1e-8 here) that, divided by eps, dominates below eps ~ 1e-4
# (measured |fd - ad| / |grad|: up to 1e-3 at eps = 1e-5, <= 2e-5 at eps = 1e-3, where the
# truncation is ~1e-6). theta, params and the state are float64, so nothing else rounds as much.
EPS = 1e-3
# 40x the worst error measured at EPS (2e-5, SGD with momentum; the others <= 1.2e-6); the
# cut-gradient control misses by 0.24-0.92.
RTOL = 1e-3


def inner_loss(params: dict) -> jax.Array:
    """``mean((x @ w + b - y)**2)`` on fixed data: smooth, with nonzero gradients throughout."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def meta_loss(optimizer: lopt.LearnedOptimizer, theta: dict, cut_state: bool) -> jax.Array:
    """Mean inner loss over ``NUM_STEPS`` updates (float64 under x64), all parameters nonzero so
    the normalized rule's RMS divisions stay smooth; ``cut_state`` stops gradients through the
    rule's state, a deliberately wrong meta-gradient."""
    params = {
        "w": jnp.asarray(np.linspace(-1.0, 1.0, 6).reshape(3, 2) + 0.1),
        "b": jnp.asarray([0.3, -0.2]),
    }
    # float64 state, so the scan carry keeps its dtypes once float64 theta enters the update.
    state = jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        optimizer.init(theta, params, NUM_STEPS),
    )

    def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(inner_loss)(params)
        updates, state = optimizer.update(theta, state, grads, params, loss)
        if cut_state:
            state = jax.lax.stop_gradient(state)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, state), length=NUM_STEPS)
    return (jnp.sum(losses) + inner_loss(params)) / (NUM_STEPS + 1)


@functools.cache
def derivatives(name: str, cut_state: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """``(autodiff, finite-difference)`` directional derivatives ``[NUM_DIRECTIONS]`` of the
    meta-loss of architecture ``name`` at its initial theta, and the gradient's norm."""
    optimizer = lopt.get_optimizer(name)
    with jax.enable_x64(True):
        theta = jax.tree.map(
            lambda t: jnp.asarray(t, jnp.float64), optimizer.init_meta_params(jax.random.key(0))
        )
        flat_theta, unravel = ravel_pytree(theta)
        directions = np.random.default_rng(1).normal(size=(NUM_DIRECTIONS, flat_theta.size))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)

        # Compiling dominates (a few runs of a tiny problem), so one program serves both: the
        # gradient at theta and the losses at theta +- eps v (stop_gradient leaves values alone).
        # Unoptimised code compiles faster.
        @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
        def losses_and_grads(points):
            loss = lambda flat: meta_loss(optimizer, unravel(flat), cut_state)
            return jax.vmap(jax.value_and_grad(loss))(points)

        shifts = EPS * np.concatenate([np.zeros((1, flat_theta.size)), directions, -directions])
        losses, grads = losses_and_grads(flat_theta + shifts)
        grad, losses = grads[0], losses[1:]
        finite_differences = (losses[:NUM_DIRECTIONS] - losses[NUM_DIRECTIONS:]) / (2 * EPS)
        return directions @ np.asarray(grad), np.asarray(finite_differences), np.linalg.norm(grad)


def relative_errors(name: str, cut_state: bool = False) -> np.ndarray:
    """``|fd - ad| / |grad|`` per direction: FD errors scale with the problem, not with ``v . grad``
    (which a random direction can make arbitrarily small)."""
    autodiff, finite_differences, grad_norm = derivatives(name, cut_state)
    assert grad_norm > 0 and np.all(np.isfinite(finite_differences))
    return np.abs(finite_differences - autodiff) / grad_norm


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_meta_gradient_matches_finite_differences(name):
    np.testing.assert_array_less(relative_errors(name), RTOL)


def test_check_catches_a_gradient_cut_through_the_rule_state():
    # SGD with momentum: the momentum carries most of how theta shapes later steps.
    assert relative_errors("sgdm", cut_state=True).max() > 10 * RTOL
