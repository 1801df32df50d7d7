"""Periodic held-out evaluation during meta-training: the current optimizer trains a few tasks of a
held-out suite for a short horizon, and the figures go to the metrics.

Each task gets one jitted function of theta (compiled once, at its first use): ``num_steps`` inner
steps in a ``lax.scan`` from the task's fixed held-out initialisation and minibatch keys, so the
figures of two evaluations differ only through theta.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import lopt
from lopt.base import LearnedOptimizer
from meta_train.evaluation import inner_training
from tasks import registry


class HeldOutEval(NamedTuple):
    """One held-out task and its jitted ``run(theta) -> {"train_loss", "test_loss", ...}``."""

    name: str
    num_steps: int
    run: Callable[[Any], dict[str, jax.Array]]


def train_curve(
    optimizer: LearnedOptimizer,
    theta: Any,
    family: Any,
    config: Any,
    num_steps: int,
    key: jax.Array,
    step_size: lopt.StepSize | None = None,
) -> tuple[Any, jax.Array]:
    """Train ``family.task(config)`` with ``optimizer`` (and its ``step_size``) for
    ``num_steps``: final params and the ``[num_steps]`` training losses (not jitted itself)."""
    task = family.task(config)
    init_key, data_key = inner_training.split_seed(key)
    params = task.init(init_key)
    transform = inner_training.learned_transform(optimizer, theta, step_size, num_steps)
    keys = jax.random.split(data_key, num_steps)
    params, _, losses = inner_training.train(
        task, transform.update, params, transform.init(params), keys
    )
    return params, losses


def make_held_out_evals(
    optimizer: LearnedOptimizer,
    suite: str,
    num_tasks: int,
    num_steps: int,
    seed: int = 0,
    step_size: lopt.StepSize | None = None,
) -> list[HeldOutEval]:
    """One ``HeldOutEval`` per task; ``num_steps`` 0 means each task's own horizon.

    ``train_loss`` is the mean training loss of the last tenth of the steps (one minibatch loss is
    noisy); ``test_loss`` (and ``test_accuracy`` for classifiers) come from ``task.evaluate`` on
    the test split.
    """
    evals = []
    for held_out in registry.get_suite(suite, num_tasks):
        steps = num_steps or held_out.num_steps
        key = jax.random.fold_in(jax.random.key(seed), len(evals))

        def run(theta, family, steps=steps, config=held_out.config, key=key):
            params, losses = train_curve(optimizer, theta, family, config, steps, key, step_size)
            tail = max(1, steps // 10)
            metrics = family.task(config).evaluate(params, "test")
            figures = {"train_loss": jnp.mean(losses[-tail:])}
            figures |= {f"test_{name}": value for name, value in metrics.items()}
            return figures

        bound = functools.partial(jax.jit(run), family=held_out.family)
        evals.append(HeldOutEval(held_out.name, steps, bound))
    return evals


def run_held_out_evals(evals: list[HeldOutEval], theta: Any) -> dict[str, float]:
    """``{"eval/<task>/<figure>": value}`` for every task."""
    theta = jax.device_get(theta)  # run on the default device, not replicated over the mesh
    scalars = {}
    for held_out in evals:
        for name, value in held_out.run(theta).items():
            scalars[f"eval/{held_out.name}/{name}"] = float(value)
    return scalars
