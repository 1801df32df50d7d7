"""Unrolled systems: what the particle engine steps and the estimators differentiate.

A system is anything with a state that ``theta`` drives step by step and a per-step loss: training
a task with a learned optimizer, training a task with a hand-designed optimizer whose
hyperparameters are theta, or a plain dynamical system (influence balancing, a user's simulator).
The engine never looks inside the state.
"""

from __future__ import annotations

import abc
from typing import Any

import jax

State = Any
Config = Any
MetaParams = Any


class UnrolledSystem(abc.ABC):
    """The interface the particle engine uses. Every method must be pure and vmappable."""

    @abc.abstractmethod
    def sample_config(self, key: jax.Array) -> Config:
        """A fresh dynamic configuration for a new inner problem (pytree of arrays)."""

    @abc.abstractmethod
    def init_state(
        self, theta: MetaParams, key: jax.Array, config: Config, horizon: jax.Array
    ) -> State:
        """The state at step 0 of an inner problem that will run ``horizon`` steps."""

    @abc.abstractmethod
    def step(
        self, theta: MetaParams, state: State, key: jax.Array, config: Config
    ) -> tuple[State, jax.Array]:
        """One inner step: ``(new_state, meta_loss)``; the meta-loss is a float32 scalar."""
