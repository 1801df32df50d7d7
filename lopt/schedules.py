"""Learning-rate schedules shared by the learned rules and the tuned baselines.

One source of truth: meta-training applies ``warmup_cosine`` inside the jitted inner step (with
the inner problem's horizon, a traced integer), and the exported optax chain and the baselines
use the very same function with a concrete horizon. optax's own schedules check their step counts
in Python, so they cannot take a traced horizon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine")
DEFAULT_WARMUP_FRACTION = 0.05


def warmup_cosine(
    learning_rate: float | jax.Array,
    num_steps: int | jax.Array,
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
) -> optax.Schedule:
    """``lr(t) = learning_rate * min(1, (t + 1) / W) * (1 + cos(pi * min(t / T, 1))) / 2``.

    ``T = num_steps`` (Python or traced int), ``W = max(1, warmup_fraction * T)``. The first
    update (``t = 0``) already moves the params, and the rate reaches 0 at ``t = T``.
    """

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.float32)
        total = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
        warmup = jnp.maximum(warmup_fraction * total, 1.0)
        ramp = jnp.minimum(1.0, (t + 1.0) / warmup)
        decay = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / total, 1.0)))
        return learning_rate * ramp * decay

    return schedule


def make_schedule(
    name: str,
    learning_rate: float | jax.Array,
    num_steps: int | jax.Array | None,
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
) -> optax.Schedule:
    """The schedule called ``name`` (one of ``SCHEDULES``); ``cosine`` needs ``num_steps``."""
    if name == "constant":
        return lambda count: (
            jnp.asarray(learning_rate, jnp.float32) * jnp.ones_like(jnp.asarray(count, jnp.float32))
        )
    if name == "cosine":
        if num_steps is None:
            raise ValueError(
                "the cosine schedule decays to 0 at the end of training and needs num_steps, "
                "the number of steps the run will take"
            )
        return warmup_cosine(learning_rate, num_steps, warmup_fraction)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
