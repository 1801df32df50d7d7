"""The learned-optimizer interface: pure functions around a meta-parameter pytree theta.

An optimizer object holds only hyperparameters (hashable, so it can be a static argument of
``jax.jit``); everything that changes lives in theta (meta-parameters, what meta-training learns)
or in the optimizer state (per inner training). ``update`` returns updates that are *added* to the
params, as in optax.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax

MetaParams = Any
Params = Any
OptState = Any


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer(abc.ABC):
    """Base class; subclasses are frozen dataclasses whose fields are their hyperparameters.

    ``architecture`` names the class in ``lopt.registry`` so that ``lopt.load`` can rebuild it from
    ``hyperparameters()``.
    """

    architecture = "base"
    # Whether updates depend on the horizon ``num_steps`` given to ``init`` (time features).
    uses_horizon = True

    @abc.abstractmethod
    def init_meta_params(self, key: jax.Array) -> MetaParams:
        """Initial theta: a plain pytree of float32 arrays."""

    @abc.abstractmethod
    def init(self, theta: MetaParams, params: Params, num_steps: jax.Array | int) -> OptState:
        """State for training ``params`` for ``num_steps`` steps (the horizon of time features)."""

    @abc.abstractmethod
    def update(
        self,
        theta: MetaParams,
        state: OptState,
        grads: Params,
        params: Params,
        loss: jax.Array | None = None,
    ) -> tuple[Params, OptState]:
        """``(updates, new_state)``; updates have the structure and dtypes of ``params``."""

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(self)(**h)`` rebuilds the optimizer."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LearnedRule(LearnedOptimizer):
    """A rule with the learning rate outside it: ``update`` returns a direction with the
    gradient's sign (as optax's ``scale_by_*`` transforms do), not a step. The learning rate, its
    schedule and weight decay are applied around it by ``lopt.with_step_size``; adding the
    direction itself to the params would ascend."""

    uses_horizon = False
