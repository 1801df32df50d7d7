"""Learning-rate schedules: the one module that names them, for the learned rules' step size, the
tuned baselines and the learnable hand-designed baselines.

``SCHEDULES``:

- ``constant``: ``lr``;
- ``cosine``: warm-up, then cosine decay to 0 at ``num_steps`` (``warmup_cosine``); needs the run's
  length;
- ``inverse_time``: ``lr / (1 + t / decay_steps) ** decay_power``; needs a decay, which only the
  learnable baselines (``lopt.LearnableAdam`` / ``LearnableSGDM``) have, as theta.

Meta-training applies ``warmup_cosine`` inside the jitted inner step (with the inner problem's
horizon, a traced integer), and the exported optax transforms and the baselines use the very same
function with a concrete horizon. optax's own schedules check their step counts in Python, so they
cannot take a traced horizon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "inverse_time")
NEEDS_HORIZON = ("cosine",)
NEEDS_DECAY = ("inverse_time",)
DEFAULT_WARMUP_FRACTION = 0.05


def available(*, horizon: bool, decay: bool) -> tuple[str, ...]:
    """The schedules whose parameters a caller can supply: ``horizon`` (the run's length) and
    ``decay`` (``decay_steps``, ``decay_power``)."""
    return tuple(
        name
        for name in SCHEDULES
        if (horizon or name not in NEEDS_HORIZON) and (decay or name not in NEEDS_DECAY)
    )


def check(name: str, *, horizon: bool, decay: bool) -> None:
    """Raise ``ValueError`` starting ``schedule`` unless ``available(...)`` holds ``name``."""
    choices = available(horizon=horizon, decay=decay)
    if name not in choices:
        raise ValueError(f"schedule must be one of {choices}, got {name!r}")


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


def inverse_time(
    learning_rate: float | jax.Array, decay_steps: float | jax.Array, decay_power: float | jax.Array
) -> optax.Schedule:
    """``lr(t) = learning_rate / (1 + t / decay_steps) ** decay_power`` (all may be traced)."""

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count).astype(jnp.float32)
        return learning_rate / (1.0 + t / decay_steps) ** decay_power

    return schedule


def make_schedule(
    name: str,
    learning_rate: float | jax.Array,
    num_steps: int | jax.Array | None = None,
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
    decay_steps: float | jax.Array | None = None,
    decay_power: float | jax.Array = 1.0,
) -> optax.Schedule:
    """The schedule called ``name`` (one of ``SCHEDULES``); ``cosine`` needs ``num_steps``,
    ``inverse_time`` needs ``decay_steps``."""
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
    if name == "inverse_time":
        if decay_steps is None:
            raise ValueError("the inverse_time schedule needs decay_steps")
        return inverse_time(learning_rate, decay_steps, decay_power)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
