"""Untrained optimizers on a toy regression (a small tanh MLP fitting a sine of a projection):
the Adam-base MLP optimizer trains like Adam, the plain MLP optimizer takes small, sane steps."""

import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

import lopt

# The toy is the one benchmarks/optimizer_step.py reports on; the repository root holds it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks.optimizer_step import toy_loss, toy_problem

NUM_STEPS = 150


SEEDS = (0, 1)


def train(tx, params, x, y):
    """Losses and per-step updates of ``NUM_STEPS`` steps of ``tx`` (one scan)."""

    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(toy_loss)(params, x, y)
        updates, state = tx.update(grads, state, params, value=value)
        return (optax.apply_updates(params, updates), state), (value, updates)

    _, (losses, updates) = jax.lax.scan(step, (params, tx.init(params)), None, NUM_STEPS)
    return losses, updates


@pytest.fixture(scope="module")
def runs():
    """Adam and untrained learned optimizers on each seed of the toy (vmapped over seeds)."""
    problems = [toy_problem(seed) for seed in SEEDS]
    params, x, y = jax.tree.map(lambda *leaves: np.stack(leaves), *problems)
    transforms = {"adam": optax.adam(1e-3)}
    for name in ("mlp_adam", "mlp"):
        optimizer = lopt.get_optimizer(name)
        theta = optimizer.init_meta_params(jax.random.key(0))
        transforms[name] = lopt.to_optax(optimizer, theta, NUM_STEPS)
    # One compile for all of them: XLA's fixed cost per compile dominates here.
    train_all = jax.jit(
        jax.vmap(lambda p, x, y: {name: train(tx, p, x, y) for name, tx in transforms.items()})
    )
    runs = jax.tree.map(np.asarray, train_all(params, x, y))
    return {
        (name, seed): jax.tree.map(lambda r, i=i: r[i], runs[name])
        for name in transforms
        for i, seed in enumerate(SEEDS)
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_untrained_adam_base_variant_trains_like_adam(runs, seed):
    adam_losses, adam_updates = runs["adam", seed]
    losses, updates = runs["mlp_adam", seed]
    assert float(adam_losses[-1]) < 0.7 * float(adam_losses[0])  # the toy does train
    # The correction starts at about correction_init_scale (1%) of Adam's step.
    np.testing.assert_allclose(losses[-1], adam_losses[-1], rtol=0.02)
    for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(adam_updates), strict=True):
        difference = np.linalg.norm(got[0] - want[0]) / np.linalg.norm(want[0])
        assert difference < 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_untrained_mlp_optimizer_takes_small_bounded_steps(runs, seed):
    """Steps are about step_mult (1e-3) per parameter: normalised features keep the network's
    output O(1), whatever the gradient scale."""
    losses, updates = runs["mlp", seed]
    flat = np.concatenate([u.reshape(NUM_STEPS, -1) for u in jax.tree.leaves(updates)], axis=1)
    rms_per_step = np.sqrt(np.mean(np.square(flat), axis=1))
    assert np.all(np.isfinite(losses))
    assert rms_per_step.min() > 1e-5
    assert rms_per_step.max() < 1e-2
    assert np.abs(flat).max() < 2e-2
