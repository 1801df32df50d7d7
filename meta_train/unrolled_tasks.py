"""Training tasks as unrolled systems for the particle engine.

- ``TaskTrainingSystem``: trains ``family.task(config)`` with a ``LearnedOptimizer`` whose
  meta-parameters are theta; hand-designed learnable optimizers (Adam, SGD-M) make it
  hyperparameter optimisation.
- ``InfluenceBalancingSystem``: ``tasks.dynamical.InfluenceBalancing`` (theta a scalar, optimum
  -1/6, infinite horizon: use a horizon longer than the run and ``stagger=False``).

Systems with known gradients, for the estimators' tests, are in ``meta_train.es.reference_systems``.
Both are ``flax.struct.PyTreeNode``s: array fields are pytree leaves (passed through ``jax.jit`` as
buffers), the rest static.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

import lopt
from lopt.base import LearnedOptimizer, LearnedRule
from meta_train.es.system import UnrolledSystem
from meta_train.evaluation import inner_training
from tasks.base import TaskFamily
from tasks.dynamical import InfluenceBalancing

META_LOSSES = ("train", "reeval", "outer_valid")
META_LOSS_SCALES = ("none", "initial")
# Floor of the initial-loss scale, so a problem that starts at (almost) zero loss cannot blow up.
MIN_LOSS_SCALE = 1e-3


def step_size_of(optimizer: LearnedOptimizer, section: Any) -> lopt.StepSize | None:
    """The step size a config's ``optimizer`` section (keys ``lopt.StepSize._fields``) sets for
    ``optimizer``, checked; ``None`` for an optimizer that learns its own (the keys are unused)."""
    if not isinstance(optimizer, LearnedRule):
        return None
    return lopt.StepSize(**{field: section[field] for field in lopt.StepSize._fields}).check()


class TrainingState(NamedTuple):
    """``params``: the task's parameters; ``opt_state``: the learned optimizer's state;
    ``loss_scale``: ``[]`` what each meta-loss of this inner problem is divided by."""

    params: Any
    opt_state: Any
    loss_scale: jax.Array


class TaskTrainingSystem(struct.PyTreeNode, UnrolledSystem):
    """Train ``family.task(config)`` with ``optimizer`` (meta-parameters theta).

    The meta-loss of a step is, by ``meta_loss``: ``"train"`` the step's training loss (before
    the update); ``"reeval"`` the same minibatch re-evaluated after the update; ``"outer_valid"`` a
    fresh minibatch of the outer-valid split after the update. With ``meta_loss_scale="initial"``
    it is divided by the problem's loss at initialisation (one minibatch, the same for both twins),
    so problems and families whose losses differ in scale weigh alike in the estimate.
    ``train_loss_weight`` = w mixes the step's training loss in: ``(1 - w) * meta_loss + w * train``
    (``meta_loss`` ``"reeval"`` or ``"outer_valid"``; both scaled alike). ``step_size``: the
    learning rate, schedule and weight decay around a rule with the learning rate outside it
    (``None`` for optimizers that learn their own).
    """

    family: TaskFamily
    optimizer: LearnedOptimizer = struct.field(pytree_node=False)
    meta_loss: str = struct.field(pytree_node=False, default="train")
    meta_loss_scale: str = struct.field(pytree_node=False, default="none")
    train_loss_weight: float = struct.field(pytree_node=False, default=0.0)
    step_size: lopt.StepSize | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}")
        if self.meta_loss_scale not in META_LOSS_SCALES:
            raise ValueError(
                f"meta_loss_scale must be one of {META_LOSS_SCALES}, got {self.meta_loss_scale!r}"
            )
        if not 0.0 <= self.train_loss_weight <= 1.0:
            raise ValueError(f"train_loss_weight must lie in [0, 1], got {self.train_loss_weight}")
        if self.train_loss_weight and self.meta_loss == "train":
            raise ValueError(
                "train_loss_weight mixes the training loss into another meta-loss; with "
                "meta_loss='train' it must be 0 (or choose meta_loss 'reeval' / 'outer_valid')"
            )
        if not isinstance(self.optimizer, LearnedOptimizer):
            raise TypeError(
                "optimizer must be a lopt.base.LearnedOptimizer (e.g. lopt.get_optimizer('mlp')),"
                f" got {type(self.optimizer).__name__}"
            )
        if (self.step_size is not None) != isinstance(self.optimizer, LearnedRule):
            raise ValueError(
                "step_size goes with a rule that has the learning rate outside it, and only "
                f"with one: {type(self.optimizer).__name__} got step_size={self.step_size}"
            )
        if self.step_size is not None:
            self.step_size.check()

    def sample_config(self, key: jax.Array) -> Any:
        return self.family.sample(key)

    def init_state(self, theta: Any, key: jax.Array, config: Any, horizon: jax.Array) -> Any:
        task = self.family.task(config)
        params = task.init(key)
        if self.meta_loss_scale == "initial":
            # Not differentiated: the scale only sets units, it is not part of the objective.
            initial = jax.lax.stop_gradient(task.loss(params, jax.random.fold_in(key, 1)))
            loss_scale = jnp.maximum(jnp.asarray(initial, jnp.float32), MIN_LOSS_SCALE)
        else:
            loss_scale = jnp.ones((), jnp.float32)
        transform = inner_training.learned_transform(self.optimizer, theta, self.step_size, horizon)
        return TrainingState(params, transform.init(params), loss_scale)

    def step(
        self, theta: Any, state: TrainingState, key: jax.Array, config: Any
    ) -> tuple[TrainingState, jax.Array]:
        task = self.family.task(config)
        batch_key, meta_key = jax.random.split(key)
        update = inner_training.learned_transform(self.optimizer, theta, self.step_size).update
        params, opt_state, loss = inner_training.train_step(
            task, update, state.params, state.opt_state, batch_key
        )
        if self.meta_loss == "train":
            meta_loss = loss
        elif self.meta_loss == "reeval":
            meta_loss = task.loss(params, batch_key)
        else:
            meta_loss = task.eval_loss(params, meta_key, "outer_valid")
        if self.train_loss_weight:
            w = self.train_loss_weight
            meta_loss = (1.0 - w) * jnp.asarray(meta_loss, jnp.float32) + w * loss
        meta_loss = jnp.asarray(meta_loss, jnp.float32) / state.loss_scale
        return TrainingState(params, opt_state, state.loss_scale), meta_loss


class InfluenceBalancingSystem(struct.PyTreeNode, UnrolledSystem):
    """``tasks.dynamical.InfluenceBalancing`` as an unrolled system; theta is a scalar."""

    dynamics: InfluenceBalancing = struct.field(pytree_node=False, default=InfluenceBalancing())

    def init_theta(self) -> jax.Array:
        """theta = 0.5, the starting point of the PES and ES-Single papers."""
        return jnp.asarray(0.5, jnp.float32)

    def sample_config(self, key: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def init_state(self, theta: Any, key: jax.Array, config: jax.Array, horizon) -> jax.Array:
        return self.dynamics.initial_state()

    def step(
        self, theta: Any, state: jax.Array, key: jax.Array, config: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        state = self.dynamics.step(ravel_pytree(theta)[0], state)
        return state, self.dynamics.loss(state)
