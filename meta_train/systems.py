"""Unrolled systems for the particle engine: task training, and small systems with known gradients.

- ``TaskTrainingSystem``: trains ``family.task(config)`` with a ``LearnedOptimizer`` whose
  meta-parameters are theta; hand-designed learnable optimizers (Adam, SGD-M) make it
  hyperparameter optimisation.
- ``LinearQuadraticSystem``: linear dynamics, quadratic loss; every per-step loss is quadratic in
  theta, so ES estimates are exact in expectation and ``exact_gradient`` (``jax.grad`` of the full
  unroll) is the truth the statistical tests compare against.
- ``IndependentGradientSystem``: no memory; each step's loss depends only on that step's theta,
  so per-step gradient contributions are independent of one another (PES's variance grows with
  the number of windows here, ES-Single's does not).
- ``InfluenceBalancingSystem``: ``tasks.dynamical.InfluenceBalancing`` (theta a scalar, optimum
  -1/6, infinite horizon: use a horizon longer than the run and ``stagger=False``).

All are ``flax.struct.PyTreeNode``s: array fields are pytree leaves (passed through ``jax.jit`` as
buffers), the rest static.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from lopt.base import LearnedOptimizer
from meta_train.system import UnrolledSystem
from tasks.base import TaskFamily
from tasks.dynamical import InfluenceBalancing

META_LOSSES = ("train", "reeval", "outer_valid")
META_LOSS_SCALES = ("none", "initial")
# Floor of the initial-loss scale, so a problem that starts at (almost) zero loss cannot blow up.
MIN_LOSS_SCALE = 1e-3


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
    """

    family: TaskFamily
    optimizer: LearnedOptimizer = struct.field(pytree_node=False)
    meta_loss: str = struct.field(pytree_node=False, default="train")
    meta_loss_scale: str = struct.field(pytree_node=False, default="none")

    def __post_init__(self):
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}")
        if self.meta_loss_scale not in META_LOSS_SCALES:
            raise ValueError(
                f"meta_loss_scale must be one of {META_LOSS_SCALES}, got {self.meta_loss_scale!r}"
            )
        if not isinstance(self.optimizer, LearnedOptimizer):
            raise TypeError(
                "optimizer must be a lopt.base.LearnedOptimizer (e.g. lopt.get_optimizer('mlp')),"
                f" got {type(self.optimizer).__name__}"
            )

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
        return TrainingState(params, self.optimizer.init(theta, params, horizon), loss_scale)

    def step(
        self, theta: Any, state: TrainingState, key: jax.Array, config: Any
    ) -> tuple[TrainingState, jax.Array]:
        task = self.family.task(config)
        batch_key, meta_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(task.loss)(state.params, batch_key)
        updates, opt_state = self.optimizer.update(
            theta, state.opt_state, grads, state.params, loss
        )
        params = optax.apply_updates(state.params, updates)
        if self.meta_loss == "train":
            meta_loss = loss
        elif self.meta_loss == "reeval":
            meta_loss = task.loss(params, batch_key)
        else:
            meta_loss = task.eval_loss(params, meta_key, "outer_valid")
        meta_loss = jnp.asarray(meta_loss, jnp.float32) / state.loss_scale
        return TrainingState(params, opt_state, state.loss_scale), meta_loss


def _flat(theta: Any) -> jax.Array:
    return ravel_pytree(theta)[0]


class LinearQuadraticSystem(struct.PyTreeNode, UnrolledSystem):
    """Linear dynamics driven by theta, quadratic per-step loss:

        s_0 = c + D theta,   c ~ N(init_mean, init_scale^2 I)       (c is the dynamic config)
        s_{t+1} = A s_t + B theta + noise_scale * w_t,   w_t ~ N(0, I)
        loss_{t+1} = 0.5 ||s_{t+1} - target||^2

    theta is any pytree of ``P`` entries (flattened with ``ravel_pytree``). ``s_t`` is affine in
    theta, c and w, so each loss is quadratic in theta and its gradient affine in (c, w): the
    expected gradient is the gradient at ``c = init_mean``, ``w = 0``, which ``exact_gradient``
    computes by ``jax.grad`` through the whole unroll.
    """

    transition: jax.Array  # A: [d, d]
    control: jax.Array  # B: [d, P]
    init_control: jax.Array  # D: [d, P]
    target: jax.Array  # [d]
    init_mean: jax.Array  # [d]
    init_scale: jax.Array  # []
    noise_scale: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(
        cls,
        key: jax.Array,
        state_dim: int = 3,
        theta_dim: int = 2,
        spectral_radius: float = 0.8,
        init_scale: float = 0.5,
        noise_scale: float = 0.1,
    ) -> LinearQuadraticSystem:
        """A random system whose transition matrix has the given spectral radius (< 1: stable)."""
        keys = jax.random.split(key, 5)
        raw = jax.random.normal(keys[0], (state_dim, state_dim))
        radius = jnp.max(jnp.abs(jnp.linalg.eigvals(raw)))
        return cls(
            transition=(spectral_radius / radius * raw).astype(jnp.float32),
            control=jax.random.normal(keys[1], (state_dim, theta_dim)) / np.sqrt(theta_dim),
            init_control=0.5 * jax.random.normal(keys[2], (state_dim, theta_dim)),
            target=jax.random.normal(keys[3], (state_dim,)),
            init_mean=jax.random.normal(keys[4], (state_dim,)),
            init_scale=jnp.asarray(init_scale, jnp.float32),
            noise_scale=float(noise_scale),
        )

    def sample_config(self, key: jax.Array) -> jax.Array:
        return self.init_mean + self.init_scale * jax.random.normal(key, self.init_mean.shape)

    def init_state(self, theta: Any, key: jax.Array, config: jax.Array, horizon) -> jax.Array:
        return config + self.init_control @ _flat(theta)

    def _advance(self, theta: Any, state: jax.Array, noise: jax.Array) -> jax.Array:
        return self.transition @ state + self.control @ _flat(theta) + self.noise_scale * noise

    def step(
        self, theta: Any, state: jax.Array, key: jax.Array, config: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        noise = jax.random.normal(key, state.shape) if self.noise_scale else jnp.zeros_like(state)
        state = self._advance(theta, state, noise)
        return state, 0.5 * jnp.sum((state - self.target) ** 2)

    def unroll_loss(self, theta: Any, horizon: int) -> jax.Array:
        """Mean over the ``horizon`` steps of one inner problem of the loss, at the mean initial
        condition and zero noise (the expected objective's gradient equals this one's)."""

        def body(state, _):
            state = self._advance(theta, state, jnp.zeros_like(state))
            return state, 0.5 * jnp.sum((state - self.target) ** 2)

        _, losses = jax.lax.scan(
            body, self.init_state(theta, None, self.init_mean, horizon), None, length=horizon
        )
        return jnp.mean(losses)

    def exact_gradient(self, theta: Any, horizon: int) -> Any:
        """d/d theta of the expected mean per-step loss of an inner problem of ``horizon`` steps."""
        return jax.grad(self.unroll_loss)(theta, horizon)


class IndependentGradientSystem(struct.PyTreeNode, UnrolledSystem):
    """No memory: ``loss_t = 0.5 sum_i h_i (theta_i - target_i - noise_scale * z_{t,i})^2``.

    Each step's loss depends on theta only through that step, so the gradient contributions of
    different steps (and windows) are independent. The expected gradient of every step, window or
    inner problem is ``h * (theta - target)`` (``gradient``). The state counts the steps taken
    (float32), which lets tests see how far a particle really ran.
    """

    curvature: jax.Array  # h: [P]
    target: jax.Array  # [P]
    noise_scale: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(
        cls, curvature: Any, target: Any, noise_scale: float = 0.0
    ) -> IndependentGradientSystem:
        return cls(
            curvature=jnp.asarray(curvature, jnp.float32),
            target=jnp.asarray(target, jnp.float32),
            noise_scale=float(noise_scale),
        )

    def sample_config(self, key: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def init_state(self, theta: Any, key: jax.Array, config: jax.Array, horizon) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def step(
        self, theta: Any, state: jax.Array, key: jax.Array, config: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        residual = _flat(theta) - self.target
        if self.noise_scale:  # static: a noise-free system draws nothing
            residual = residual - self.noise_scale * jax.random.normal(key, self.target.shape)
        return state + 1.0, 0.5 * jnp.sum(self.curvature * residual**2)

    def gradient(self, theta: Any) -> jax.Array:
        """The exact expected gradient (flat, ``[P]``)."""
        return self.curvature * (_flat(theta) - self.target)


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
        state = self.dynamics.step(_flat(theta), state)
        return state, self.dynamics.loss(state)
