"""The one inner-training step: the loss before the update, optax and learned optimizers alike,
and the scan equal to its steps one by one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from meta_train.evaluation import inner_training
from tasks.base import Task


class NoisyBowl(Task):
    """``0.5 * ||w - noise(key)||^2`` from ``w = 1``: each minibatch key moves the minimum."""

    def init(self, key):
        return {"w": jnp.ones((3,))}

    def loss(self, params, key):
        return 0.5 * jnp.sum((params["w"] - 0.1 * jax.random.normal(key, (3,))) ** 2)

    def eval_loss(self, params, key, split="outer_valid"):
        return self.loss(params, key)

    def evaluate(self, params, split="test"):
        return {"loss": self.loss(params, jax.random.key(0))}


def test_train_step_reports_the_loss_before_a_plain_sgd_update():
    task, params, key = NoisyBowl(), NoisyBowl().init(None), jax.random.key(1)
    tx = optax.sgd(0.5)
    new_params, _, loss = inner_training.train_step(task, tx.update, params, tx.init(params), key)
    loss_before, grads = jax.value_and_grad(task.loss)(params, key)
    np.testing.assert_array_equal(loss, loss_before)
    np.testing.assert_allclose(new_params["w"], params["w"] - 0.5 * grads["w"], rtol=1e-6)


def test_learned_transform_is_the_rule_with_theta_in_optax_order():
    task, params, key = NoisyBowl(), NoisyBowl().init(None), jax.random.key(2)
    optimizer = lopt.get_optimizer("mlp")
    theta = optimizer.init_meta_params(jax.random.key(0))
    state = optimizer.init(theta, params, 10)
    loss, grads = jax.value_and_grad(task.loss)(params, key)
    expected = optimizer.update(theta, state, grads, params, loss)
    transform = inner_training.learned_transform(optimizer, theta, num_steps=10)
    jax.tree.map(np.testing.assert_array_equal, transform.init(params), state)
    got = transform.update(grads, state, params, value=loss)
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_learned_transform_of_a_rule_is_its_step_size_around_its_direction():
    """Meta-training's inner step of the normalized rule: the one composition ``with_step_size``,
    with the horizon given to ``init`` only (the step reads it from the state)."""
    task, params, key = NoisyBowl(), NoisyBowl().init(None), jax.random.key(2)
    optimizer = lopt.get_optimizer("normalized")
    theta = optimizer.init_meta_params(jax.random.key(0))
    step_size = lopt.StepSize(3e-2, "cosine", 0.1, 1e-2)
    expected_tx = lopt.to_optax(optimizer, theta, 10, step_size)
    transform = inner_training.learned_transform(optimizer, theta, step_size, jnp.int32(10))
    state, expected_state = transform.init(params), expected_tx.init(params)
    for step in range(3):
        loss, grads = jax.value_and_grad(task.loss)(params, jax.random.fold_in(key, step))
        # Built again without the horizon, as the engine's step does.
        got, state = inner_training.learned_transform(optimizer, theta, step_size).update(
            grads, state, params, value=loss
        )
        expected, expected_state = expected_tx.update(grads, expected_state, params)
        jax.tree.map(np.testing.assert_array_equal, got, expected)
        params = optax.apply_updates(params, got)
    with pytest.raises(ValueError, match="step_size"):
        inner_training.learned_transform(optimizer, theta)


def test_train_is_its_steps_one_by_one():
    task, params = NoisyBowl(), NoisyBowl().init(None)
    tx = optax.adam(0.1)
    keys = jax.random.split(jax.random.key(3), 5)
    final, _, losses = inner_training.train(task, tx.update, params, tx.init(params), keys)

    state, stepped = tx.init(params), []
    for key in keys:
        params, state, loss = inner_training.train_step(task, tx.update, params, state, key)
        stepped.append(loss)
    np.testing.assert_allclose(losses, stepped, rtol=1e-6)
    np.testing.assert_allclose(final["w"], params["w"], rtol=1e-6)
