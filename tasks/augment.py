"""Task augmentation by reparameterized weights: a family wrapper any ``TaskFamily`` can use.

``reparameterize(family, level)`` wraps a family so that each sampled task trains ``w' = w / s``
in place of the base task's parameters ``w``, with positive scales ``s`` drawn log-uniform in
``scale_range``:

    init'(key) = init(key) / s,    loss'(w', key) = loss(w' * s, key),

and the same for ``eval_loss`` and ``evaluate``. The function computed is unchanged, but the
optimizer sees gradients ``dL/dw' = s * dL/dw`` and parameters ``w / s``, so a learned rule that
is meta-trained on it cannot rely on the raw scale of either (Celo2, Moudgil et al. 2026).

Levels of ``s``: ``"global"`` (one scalar shared by every tensor), ``"tensor"`` (one scalar per
tensor) and ``"parameter"`` (one per element).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tasks.base import DynamicConfig, Params, Task, TaskFamily

LEVELS = ("global", "tensor", "parameter")
DEFAULT_SCALE_RANGE = (1e-3, 1e3)


class ReparamConfig(NamedTuple):
    """Dynamic configuration of a reparameterized task.

    Attributes:
      base: the wrapped family's dynamic configuration.
      scales: a pytree shaped like the params: float32 ``[]`` leaves for the ``"global"`` (all
        equal) and ``"tensor"`` levels, leaves of the parameter's shape for ``"parameter"``.
    """

    base: DynamicConfig
    scales: Params


def _scale(tree: Params, scales: Params, divide: bool) -> Params:
    """``tree / scales`` (``divide``) or ``tree * scales``, leaf by leaf, broadcasting scalars."""
    if divide:
        return jax.tree.map(lambda x, s: x / s, tree, scales)
    return jax.tree.map(lambda x, s: x * s, tree, scales)


class ReparameterizedTask(Task):
    """The base task in the coordinates ``w' = w / s`` (see the module docstring)."""

    def __init__(self, base: Task, scales: Params):
        self.base = base
        self.scales = scales

    def base_params(self, params: Params) -> Params:
        """The base task's parameters ``w = w' * s`` of reparameterized ``params``."""
        return _scale(params, self.scales, divide=False)

    def init(self, key: jax.Array) -> Params:
        return _scale(self.base.init(key), self.scales, divide=True)

    def loss(self, params: Params, key: jax.Array) -> jax.Array:
        return self.base.loss(self.base_params(params), key)

    def eval_loss(self, params: Params, key: jax.Array, split: str = "outer_valid") -> jax.Array:
        return self.base.eval_loss(self.base_params(params), key, split)

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        return self.base.evaluate(self.base_params(params), split)


class ReparameterizedFamily(TaskFamily):
    """``base`` with its parameters reparameterized by log-uniform scales at ``level``.

    Attributes:
      base: the wrapped ``TaskFamily`` (a pytree field: its data stay device buffers).
      level: one of ``LEVELS``.
      scale_range: ``(low, high)`` of the log-uniform scales, ``0 < low <= high``.
    """

    base: TaskFamily
    level: str = struct.field(pytree_node=False, default="global")
    scale_range: tuple[float, float] = struct.field(pytree_node=False, default=DEFAULT_SCALE_RANGE)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(
                f"unknown reparameterization level {self.level!r}; use one of {LEVELS}"
            )
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {(low, high)}")

    @property
    def name(self) -> str:
        return f"{self.base.name}_reparam_{self.level}"

    def _param_shapes(self) -> Params:
        """``jax.ShapeDtypeStruct`` of each parameter (shapes do not depend on the config)."""
        task = self.base.task(self.base.default_config())
        return jax.eval_shape(task.init, jax.random.key(0))

    def _draw_scales(self, key: jax.Array) -> Params:
        """Log-uniform scales, from one flat draw (multi-dimensional draws compile slowly on
        XLA:CPU), sliced and reshaped into the params' structure."""
        leaves, treedef = jax.tree.flatten(self._param_shapes())
        if self.level == "global":
            sizes = [1] * len(leaves)
            shapes = [()] * len(leaves)
            count = 1
        else:
            shapes = [() if self.level == "tensor" else leaf.shape for leaf in leaves]
            sizes = [math.prod(shape) for shape in shapes]
            count = sum(sizes)
        low, high = self.scale_range
        flat = jnp.exp(
            jax.random.uniform(
                key, (count,), jnp.float32, minval=math.log(low), maxval=math.log(high)
            )
        )
        if self.level == "global":
            return treedef.unflatten([flat[0].astype(leaf.dtype) for leaf in leaves])
        scales, start = [], 0
        for leaf, size, shape in zip(leaves, sizes, shapes, strict=True):
            scales.append(flat[start : start + size].reshape(shape).astype(leaf.dtype))
            start += size
        return treedef.unflatten(scales)

    def _unit_scales(self) -> Params:
        shapes = self._param_shapes()
        if self.level == "parameter":
            return jax.tree.map(lambda leaf: jnp.ones(leaf.shape, leaf.dtype), shapes)
        return jax.tree.map(lambda leaf: jnp.ones((), leaf.dtype), shapes)

    def sample(self, key: jax.Array) -> ReparamConfig:
        base_key, scale_key = jax.random.split(key)
        return ReparamConfig(base=self.base.sample(base_key), scales=self._draw_scales(scale_key))

    def default_config(self) -> ReparamConfig:
        """The base family's default configuration with unit scales (the base task itself)."""
        return ReparamConfig(base=self.base.default_config(), scales=self._unit_scales())

    def task(self, config: ReparamConfig) -> ReparameterizedTask:
        return ReparameterizedTask(self.base.task(config.base), config.scales)


def reparameterize(
    family: TaskFamily,
    level: str = "global",
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
) -> ReparameterizedFamily:
    """``family`` with task augmentation by reparameterized weights at ``level`` (one of
    ``LEVELS``), scales log-uniform in ``scale_range``."""
    if not isinstance(family, TaskFamily):
        raise TypeError(f"reparameterize wraps a TaskFamily, got {type(family).__name__}")
    return ReparameterizedFamily(
        base=family, level=level, scale_range=tuple(float(s) for s in scale_range)
    )
