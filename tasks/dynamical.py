"""Influence balancing: a linear dynamical system where truncated gradients point the wrong way.

From Tallec & Ollivier (2017, UORO) as used by the PES paper (Vicol et al., 2021) and the
ES-Single paper (Vicol et al., 2023). The state ``s`` has ``n`` entries (23 by default) and evolves
under one scalar parameter ``theta``:

    s_{t+1} = A s_t + theta * v,     A = 0.5 I + 0.5 U  (U the superdiagonal shift),
    v = (+1, ..., +1, -1, ..., -1)   (``num_positive`` ones, then minus ones),
    loss_{t+1} = 0.5 * (s_{t+1}[0] - 1) ** 2,   s_0 = (1, ..., 1).

``theta`` pushes the first coordinate up at once but, through the chain of later coordinates,
pushes it down in the long run. A gradient through a short window sees only the first effect and
moves theta the wrong way; the long-run (steady-state) loss is minimised at ``optimum()``, which is
-1/6 for the default sizes. The horizon is infinite: inner problems never restart.

Plain JAX/numpy, no meta-training imports; ``meta_train.unrolled_tasks.InfluenceBalancingSystem``
wraps it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class InfluenceBalancing:
    """Influence balancing with ``state_dim`` states, the first ``num_positive`` pushed up."""

    state_dim: int = 23
    num_positive: int = 10

    def __post_init__(self):
        if self.state_dim < 1:
            raise ValueError(f"state_dim must be >= 1, got {self.state_dim}")
        if not 0 <= self.num_positive <= self.state_dim:
            raise ValueError(
                f"num_positive must lie in [0, state_dim={self.state_dim}], got {self.num_positive}"
            )

    def transition_matrix(self) -> np.ndarray:
        """``A``: ``[n, n]``, 0.5 on the diagonal and on the superdiagonal."""
        n = self.state_dim
        return 0.5 * (np.eye(n, dtype=np.float32) + np.eye(n, k=1, dtype=np.float32))

    def influence(self) -> np.ndarray:
        """``v``: ``[n]``, +1 on the first ``num_positive`` entries and -1 on the rest."""
        signs = np.full(self.state_dim, -1.0, np.float32)
        signs[: self.num_positive] = 1.0
        return signs

    def initial_state(self) -> jax.Array:
        """``s_0``: ``[n]`` ones."""
        return jnp.ones(self.state_dim, jnp.float32)

    def step(self, theta: jax.Array, state: jax.Array) -> jax.Array:
        """``s_{t+1} = A s_t + theta v`` for a scalar (or one-entry) ``theta``."""
        theta = jnp.reshape(theta, ())
        return jnp.asarray(self.transition_matrix()) @ state + theta * jnp.asarray(self.influence())

    def loss(self, state: jax.Array) -> jax.Array:
        """``0.5 (s[0] - 1)^2``: a float32 scalar."""
        return 0.5 * (state[0] - 1.0) ** 2

    def steady_state(self, theta: float) -> np.ndarray:
        """The fixed point ``s* = (I - A)^{-1} theta v`` (A's eigenvalues are 0.5, so it exists)."""
        n = self.state_dim
        return np.linalg.solve(np.eye(n) - self.transition_matrix(), theta * self.influence())

    def optimum(self) -> float:
        """The theta whose steady state has ``s*[0] = 1``: the minimiser of the long-run loss."""
        return 1.0 / float(self.steady_state(1.0)[0])

    def steady_state_gradient(self, theta: float) -> float:
        """d/dtheta of the steady-state loss ``0.5 (s*[0] - 1)^2`` (``s*[0]`` is linear in it)."""
        slope = float(self.steady_state(1.0)[0])
        return slope * (slope * theta - 1.0)
