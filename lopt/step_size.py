"""The step size of a learned rule whose learning rate is outside it, and the one function that
applies it.

A rule such as ``normalized`` gives a direction ``d`` (the gradient's sign, unit RMS per tensor):
``lopt.scale_by_rule(theta, rule)``, like optax's ``scale_by_*``. ``with_step_size`` turns it into
an optimizer in AdamW's form::

    update = -lr(t) * (d + weight_decay * params)
           = optax.chain(rule, optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))

``lr(t)`` is ``StepSize.schedule`` over the run's ``num_steps``. ``lopt.pretrained``, ``lopt.load``,
meta-training's inner step and the evaluation's learning-rate grid all build their optimizer with
``with_step_size``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt import schedules


class StepSize(NamedTuple):
    """A learned rule's learning rate, its schedule and its decoupled weight decay.

    A ``NamedTuple``: hashable (a static argument of ``jax.jit``) and built without checks, so
    ``learning_rate`` may be a traced scalar (an evaluation's grid of learning rates);
    ``check`` validates concrete values.

    Attributes:
      learning_rate: the peak learning rate (float or traced scalar), or an optax schedule
        ``count -> lr`` used as it is (``schedule`` and ``warmup_fraction`` then do nothing).
      schedule: ``"cosine"`` (warm-up, then cosine decay to 0 at ``num_steps``) or ``"constant"``.
      warmup_fraction: fraction of ``num_steps`` spent warming up (``cosine``).
      weight_decay: decoupled weight decay, multiplied by the learning rate.
    """

    learning_rate: float | jax.Array | optax.Schedule = 1e-3
    schedule: str = "cosine"
    warmup_fraction: float = schedules.DEFAULT_WARMUP_FRACTION
    weight_decay: float = 0.0

    def check(self) -> StepSize:
        """``self``, after raising ``ValueError`` (starting with the bad field's name) for a value
        out of range."""
        lr = self.learning_rate
        if not callable(lr) and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning_rate must be positive and finite, got {lr}")
        schedules.check(self.schedule, horizon=True, decay=False)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        return self

    @property
    def needs_horizon(self) -> bool:
        """Whether the schedule depends on the run's length (``cosine``)."""
        return not callable(self.learning_rate) and self.schedule in schedules.NEEDS_HORIZON

    def check_horizon(self, num_steps: int | jax.Array | None) -> None:
        """Raise ``ValueError`` when the schedule needs the run's length and ``num_steps`` is
        ``None`` or below 1."""
        if num_steps is None and self.needs_horizon:
            raise ValueError(
                "the cosine schedule decays to 0 at the end of training and needs num_steps, the "
                "number of steps the run will take (or use schedule='constant')"
            )
        if isinstance(num_steps, int) and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 (the run's length), got {num_steps}")

    def learning_rates(self, num_steps: int | jax.Array | None) -> optax.Schedule:
        """The schedule ``count -> lr`` for a run of ``num_steps`` steps (traced or not)."""
        if callable(self.learning_rate):
            return self.learning_rate
        return schedules.make_schedule(
            self.schedule, self.learning_rate, num_steps, self.warmup_fraction
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON data (a schedule ``learning_rate`` has none)."""
        if callable(self.learning_rate):
            raise ValueError("a step size whose learning_rate is a schedule cannot be saved")
        return {
            "learning_rate": float(self.learning_rate),
            "schedule": self.schedule,
            "warmup_fraction": float(self.warmup_fraction),
            "weight_decay": float(self.weight_decay),
        }


class StepSizeState(NamedTuple):
    """``with_step_size``'s state.

    Attributes:
      rule: the rule's state.
      num_steps: ``[]`` int32, the run's length the schedule is relative to.
      scale: the state of ``chain(add_decayed_weights, scale_by_learning_rate)`` (its count).
    """

    rule: Any
    num_steps: jax.Array
    scale: Any


def with_step_size(
    rule: optax.GradientTransformation,
    step_size: StepSize,
    num_steps: int | jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``rule`` (a direction, e.g. ``lopt.scale_by_rule``) as an optimizer:
    ``-lr(t) * (d + weight_decay * params)``, ``lr`` following ``step_size`` over ``num_steps``.

    ``num_steps`` (a Python or traced int) is needed by ``init`` for the ``cosine`` schedule and
    kept in the state, so ``update`` does not read it: meta-training builds the transform again at
    each step without knowing the horizon. ``update`` requires ``params``.
    """
    rule = optax.with_extra_args_support(rule)

    def scale(horizon: jax.Array) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(step_size.weight_decay),
            optax.scale_by_learning_rate(step_size.learning_rates(horizon)),
        )

    def init_fn(params: Any) -> StepSizeState:
        step_size.check_horizon(num_steps)
        horizon = jnp.asarray(1 if num_steps is None else num_steps, jnp.int32)
        return StepSizeState(rule.init(params), horizon, scale(horizon).init(params))

    def update_fn(
        updates: Any, state: StepSizeState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, StepSizeState]:
        if params is None:
            raise ValueError("with_step_size needs the params: call update(grads, state, params)")
        direction, rule_state = rule.update(updates, state.rule, params, **extra_args)
        updates, scale_state = scale(state.num_steps).update(direction, state.scale, params)
        return updates, StepSizeState(rule_state, state.num_steps, scale_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
