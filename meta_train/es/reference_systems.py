"""Unrolled systems whose gradients are known, for testing estimators.

- ``LinearQuadraticSystem``: linear dynamics, quadratic loss; every per-step loss is quadratic in
  theta, so ES estimates are exact in expectation and ``exact_gradient`` (``jax.grad`` of the full
  unroll) is the truth the statistical tests compare against.
- ``IndependentGradientSystem``: no memory; each step's loss depends only on that step's theta,
  so per-step gradient contributions are independent of one another (PES's variance grows with
  the number of windows here, ES-Single's does not).

Both are ``flax.struct.PyTreeNode``s: array fields are pytree leaves, the rest static.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

from meta_train.es.system import UnrolledSystem


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
