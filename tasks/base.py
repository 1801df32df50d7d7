"""Task and TaskFamily: the training problems that learned optimizers are meta-trained on.

A ``TaskFamily`` is a distribution over tasks. Its *static* configuration (fields declared with
``flax.struct.field(pytree_node=False)``: widths, depth, dataset name, batch size) fixes shapes, so
a new static configuration means a new compile. Its *dynamic* configuration is a pytree of arrays
drawn by ``sample(key)`` (init seed, data seed, init scale, label permutation, ...): it can be
vmapped per particle and resampled inside jit whenever a particle's inner problem restarts.

Families are pytrees (``flax.struct.PyTreeNode``) whose array leaves are the device-resident data,
so a family is passed to jitted functions as an argument (data are buffers, not compile-time
constants) and vmapped code builds ``family.task(config)`` with the family unbatched and the
config batched.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Params = Any
DynamicConfig = Any

SPLITS = ("train", "inner_valid", "outer_valid", "test")


def split_index(split: str) -> int:
    """Position of ``split`` in ``SPLITS``; a clear error for anything else."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


# Families draw their dynamic seeds from [0, SAMPLED_SEED_END); held-out suites use seeds at or
# above it, so meta-training can never sample a held-out task's dynamic configuration.
SAMPLED_SEED_END = 2**31


def sample_seed(key: jax.Array) -> jax.Array:
    """A ``[]`` uint32 seed, uniform in ``[0, SAMPLED_SEED_END)``."""
    return jax.random.bits(key, (), jnp.uint32) >> 1


class Task(abc.ABC):
    """One concrete training problem: a family together with one dynamic configuration."""

    @abc.abstractmethod
    def init(self, key: jax.Array) -> Params:
        """Fresh parameters (a pytree of float arrays)."""

    @abc.abstractmethod
    def loss(self, params: Params, key: jax.Array) -> jax.Array:
        """Scalar training loss on a minibatch that ``key`` draws from the train split."""

    @abc.abstractmethod
    def eval_loss(self, params: Params, key: jax.Array, split: str = "outer_valid") -> jax.Array:
        """Scalar loss on a minibatch drawn by ``key`` from ``split`` (one of ``SPLITS``)."""

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        """Metrics on a whole split: ``{"loss": ...}`` and, for classifiers, ``"accuracy"``.

        The default estimates the loss from one minibatch of the split; tasks with data override
        it to use every example.
        """
        return {"loss": self.eval_loss(params, jax.random.key(0), split)}


class TaskFamily(struct.PyTreeNode, abc.ABC):
    """A distribution over tasks; see the module docstring for static versus dynamic."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short identifier that includes the static configuration, e.g. ``mlp_digits_64x2``."""

    @abc.abstractmethod
    def sample(self, key: jax.Array) -> DynamicConfig:
        """A dynamic configuration (pytree of arrays, vmappable); call it inside jit."""

    @abc.abstractmethod
    def default_config(self) -> DynamicConfig:
        """A deterministic dynamic configuration (seed 0, unit init scale, identity labels)."""

    @abc.abstractmethod
    def task(self, config: DynamicConfig) -> Task:
        """The task for one dynamic configuration."""
