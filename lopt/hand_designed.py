"""Hand-designed optimizers whose hyperparameters are theta: baselines, and hyperparameter
optimisation as a special case of meta-training.

Parameterisation (unconstrained, so evolution strategies can perturb it freely):

    lr = exp(log_lr),  beta = sigmoid(logit_beta),  eps = exp(log_eps),
    schedule "inverse_time":  lr_t = lr / (1 + t / exp(log_decay_steps)) ** decay_power

``initial_learning_rate`` only seeds theta's ``log_lr``: once theta is meta-trained, the learning
rate is theta's.

``learnable`` names the entries of theta; the others stay fixed at the values of the fields (so a
schedule search can learn ``("log_lr", "decay_power")`` alone).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt import features as feats
from lopt import flat, schedules
from lopt.base import LearnedOptimizer


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class AdamState(NamedTuple):
    """``step``: ``[]`` int32 updates done; ``mu``, ``nu``: float32 trees like the params."""

    step: jax.Array
    mu: Any
    nu: Any


class SGDMState(NamedTuple):
    """``step``: ``[]`` int32 updates done; ``momentum``: float32 tree like the params."""

    step: jax.Array
    momentum: Any


def _zeros_like_f32(params: Any) -> Any:
    flat.layout_of(params)  # rejects non-float leaves with a clear message
    return optax.tree.zeros_like(params, jnp.float32)


def _chain_update(
    tx: optax.GradientTransformation, inner_state: Any, grads: Any, params: Any
) -> tuple[Any, Any]:
    """One step of ``tx = chain(inner, scale_by_learning_rate)`` (as ``optax.adam``/``optax.sgd``
    build it) from ``inner``'s state: ``(updates cast to the params' dtypes, new inner state)``.

    Gradients enter in float32 so low-precision params keep float32 moments."""
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)  # scalars too
    updates, (inner_state, _) = tx.update(grads, (inner_state, optax.EmptyState()))
    return optax.tree.cast_like(updates, params), inner_state


@dataclasses.dataclass(frozen=True)
class _Learnable(LearnedOptimizer):
    """Shared plumbing: theta from the fields, the learning-rate schedule."""

    uses_horizon = False

    def unconstrained_values(self) -> dict[str, float]:
        """Every possible theta entry, at the value the fields give."""
        values = {"log_lr": math.log(self.initial_learning_rate)}
        if self.schedule == "inverse_time":
            values["log_decay_steps"] = math.log(self.decay_steps)
            values["decay_power"] = float(self.decay_power)
        return values

    def _check(self) -> None:
        feats.freeze_sequences(self)
        # No horizon: these optimizers cannot follow the cosine schedule.
        schedules.check(self.schedule, horizon=False, decay=True)
        feats.check_positive("initial_learning_rate", (self.initial_learning_rate,))
        feats.check_positive("decay_steps", (self.decay_steps,))
        if self.learnable is not None:
            if not self.learnable:
                raise ValueError("learnable must name at least one entry (or be None for all)")
            unknown = set(self.learnable) - set(self.unconstrained_values())
            if unknown:
                raise ValueError(
                    f"learnable names {sorted(unknown)} that {type(self).__name__} with "
                    f"schedule={self.schedule!r} does not have; choose from "
                    f"{sorted(self.unconstrained_values())}"
                )

    def init_meta_params(self, key: jax.Array) -> dict:
        """theta: the ``learnable`` entries (all by default) as float32 scalars."""
        del key
        names = self.unconstrained_values() if self.learnable is None else self.learnable
        return {name: jnp.asarray(self.unconstrained_values()[name], jnp.float32) for name in names}

    def values(self, theta: dict) -> dict[str, jax.Array]:
        """The unconstrained values: learnable ones from theta, the rest from the fields."""
        return {**self.unconstrained_values(), **theta}

    def learning_rate_at(self, values: dict, step: jax.Array) -> jax.Array:
        """The learning rate for update number ``step`` (0-based)."""
        lr = jnp.exp(values["log_lr"])
        if self.schedule == "constant":
            return lr
        return schedules.make_schedule(
            self.schedule,
            lr,
            decay_steps=jnp.exp(values["log_decay_steps"]),
            decay_power=values["decay_power"],
        )(step)


@dataclasses.dataclass(frozen=True)
class LearnableAdam(_Learnable):
    """``optax.adam`` with learnable log lr, logit betas, log epsilon, and schedule."""

    architecture = "adam"

    initial_learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"
    decay_steps: float = 100.0
    decay_power: float = 1.0
    learnable: tuple[str, ...] | None = None

    def __post_init__(self):
        feats.check_decays("b1", (self.b1,))
        feats.check_decays("b2", (self.b2,))
        feats.check_positive("b1 and b2", (self.b1, self.b2))
        feats.check_positive("eps", (self.eps,))
        self._check()

    def unconstrained_values(self) -> dict[str, float]:
        return {
            **super().unconstrained_values(),
            "logit_b1": _logit(self.b1),
            "logit_b2": _logit(self.b2),
            "log_eps": math.log(self.eps),
        }

    def init(self, theta: dict, params: Any, num_steps: jax.Array | int) -> AdamState:
        del theta, num_steps
        zeros = _zeros_like_f32(params)
        return AdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(
        self,
        theta: dict,
        state: AdamState,
        grads: Any,
        params: Any,
        loss: jax.Array | None = None,
    ) -> tuple[Any, AdamState]:
        del loss
        values = self.values(theta)
        # optax accepts traced hyperparameters, so theta flows (and differentiates) through it.
        tx = optax.adam(
            self.learning_rate_at(values, state.step),
            b1=jax.nn.sigmoid(values["logit_b1"]),
            b2=jax.nn.sigmoid(values["logit_b2"]),
            eps=jnp.exp(values["log_eps"]),
        )
        updates, adam = _chain_update(tx, optax.ScaleByAdamState(*state), grads, params)
        return updates, AdamState(adam.count, adam.mu, adam.nu)


@dataclasses.dataclass(frozen=True)
class LearnableSGDM(_Learnable):
    """``optax.sgd(lr, momentum)`` (heavy ball: ``m <- g + beta m``, ``update = -lr m``) with
    learnable log lr, logit momentum, and schedule."""

    architecture = "sgdm"

    initial_learning_rate: float = 0.1
    momentum: float = 0.9
    schedule: str = "constant"
    decay_steps: float = 100.0
    decay_power: float = 1.0
    learnable: tuple[str, ...] | None = None

    def __post_init__(self):
        feats.check_decays("momentum", (self.momentum,))
        feats.check_positive("momentum", (self.momentum,))
        self._check()

    def unconstrained_values(self) -> dict[str, float]:
        return {**super().unconstrained_values(), "logit_momentum": _logit(self.momentum)}

    def init(self, theta: dict, params: Any, num_steps: jax.Array | int) -> SGDMState:
        del theta, num_steps
        return SGDMState(jnp.zeros((), jnp.int32), _zeros_like_f32(params))

    def update(
        self,
        theta: dict,
        state: SGDMState,
        grads: Any,
        params: Any,
        loss: jax.Array | None = None,
    ) -> tuple[Any, SGDMState]:
        del loss
        values = self.values(theta)
        tx = optax.sgd(
            self.learning_rate_at(values, state.step),
            momentum=jax.nn.sigmoid(values["logit_momentum"]),
        )
        updates, trace = _chain_update(tx, optax.TraceState(state.momentum), grads, params)
        return updates, SGDMState(state.step + 1, trace.trace)
