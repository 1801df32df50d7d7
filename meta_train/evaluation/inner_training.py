"""Inner training: a task's parameters trained by an optimizer, one minibatch per step.

The one definition of an inner step, shared by meta-training (``meta_train.unrolled_tasks``), the
periodic held-out evaluation (``held_out``) and the held-out benchmark (``evaluate``), so that an
optimizer meets the same training loop everywhere it is trained or judged.

The optimizer is an update function in optax's ``GradientTransformationExtraArgs`` convention,
``update(grads, state, params, value=loss) -> (updates, state)``: an optax transform's ``update``,
or a learned optimizer's with theta bound (``learned_transform``).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

import lopt
from lopt.base import LearnedOptimizer, LearnedRule
from tasks.base import Task


def split_seed(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init key, data key)`` of a training run's seed: its initialisation and its minibatches."""
    init_key, data_key = jax.random.split(key)
    return init_key, data_key


def learned_transform(
    optimizer: LearnedOptimizer,
    theta: Any,
    step_size: lopt.StepSize | None = None,
    num_steps: int | jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` with meta-parameters ``theta`` as an optax transform: a rule with the learning
    rate outside it (``LearnedRule``) inside ``lopt.with_step_size(..., step_size, num_steps)``,
    any other optimizer's own ``init``/``update``.

    ``num_steps`` (the horizon, traced or not) is only read by ``init``: the state keeps it, so
    meta-training builds the transform again at each step without it. Not ``lopt.to_optax``:
    meta-training has no use for its past-the-horizon warning (a host callback).
    """
    if isinstance(optimizer, LearnedRule):
        if step_size is None:
            raise ValueError(
                f"{type(optimizer).__name__} has the learning rate outside it and needs a "
                "step_size (lopt.StepSize)"
            )
        return lopt.with_step_size(lopt.scale_by_rule(theta, optimizer), step_size, num_steps)

    def update(
        grads: Any, state: Any, params: Any = None, *, value: Any = None, **extra_args: Any
    ) -> tuple[Any, Any]:
        del extra_args
        return optimizer.update(theta, state, grads, params, value)

    return optax.GradientTransformationExtraArgs(
        lambda params: optimizer.init(theta, params, num_steps), update
    )


def train_step(
    task: Task,
    update: optax.TransformUpdateExtraArgsFn,
    params: Any,
    opt_state: Any,
    key: jax.Array,
) -> tuple[Any, Any, jax.Array]:
    """One step: the minibatch loss at ``key`` and its gradient, then the optimizer's update.

    Returns the new params and optimizer state and the loss *before* the update.
    """
    loss, grads = jax.value_and_grad(task.loss)(params, key)
    updates, opt_state = update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state, loss


def train(
    task: Task,
    update: optax.TransformUpdateExtraArgsFn,
    params: Any,
    opt_state: Any,
    keys: jax.Array,
) -> tuple[Any, Any, jax.Array]:
    """``train_step`` once per minibatch key of ``keys`` (``[num_steps]``) in a ``lax.scan``:
    final params and optimizer state, and the ``[num_steps]`` losses."""

    def step(carry: tuple[Any, Any], key: jax.Array) -> tuple[tuple[Any, Any], jax.Array]:
        params, opt_state, loss = train_step(task, update, *carry, key)
        return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), keys)
    return params, opt_state, losses
