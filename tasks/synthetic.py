"""Synthetic Gaussian-mixture classification: MLPs on data generated inside jit (no files).

Each class is a mixture of ``components`` isotropic unit-variance Gaussians in ``dim`` dimensions.
The component means are ``separation * z / sqrt(dim)`` with ``z ~ N(0, I)``, so each mean has
norm about ``separation``; they are drawn from the task's dynamic ``data_seed``, so every sampled
task is a new problem. Training minibatches are fresh draws from the mixture (no finite train
set); ``eval_loss`` draws a minibatch from a stream of its own per split, and ``evaluate`` uses a
fixed set of ``eval_size`` examples per split and data seed.

The dynamic configuration is ``tasks.image.ClassifierConfig`` (init seed, data seed, init scale,
label permutation) and the network is ``tasks.image.ImageMLPFamily``'s, so everything that works
on an MLP classifier (held-out configurations, per-layer shapes) works here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from tasks.base import Params, split_index
from tasks.image import (
    ClassifierConfig,
    ClassifierTask,
    ImageMLPFamily,
    classification_metrics,
    cross_entropy,
)

# Tags folded into the keys, so the means, the minibatches and the fixed evaluation sets of one
# data seed are independent streams.
_MEANS_TAG, _EVAL_TAG = 1, 2


class MixtureSpec(struct.PyTreeNode):
    """The static shape of a Gaussian mixture; stands in for a dataset in ``ImageMLPFamily``.

    Attributes:
      dim: input dimension.
      num_classes: number of classes.
      components: Gaussians per class.
      separation: typical norm of a component mean, in units of the unit noise std.
      eval_size: examples in each split's fixed evaluation set.
    """

    dim: int = struct.field(pytree_node=False)
    num_classes: int = struct.field(pytree_node=False)
    components: int = struct.field(pytree_node=False)
    separation: float = struct.field(pytree_node=False)
    eval_size: int = struct.field(pytree_node=False)

    @property
    def name(self) -> str:
        return f"gmm_d{self.dim}_c{self.num_classes}_k{self.components}_s{self.separation:g}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def means(self, data_seed: jax.Array) -> jax.Array:
        """``[num_classes, components, dim]`` component means of data seed ``data_seed``."""
        key = jax.random.fold_in(jax.random.key(_MEANS_TAG), data_seed)
        shape = (self.num_classes, self.components, self.dim)
        # One flat draw, reshaped: multi-dimensional draws compile slowly on XLA:CPU.
        z = jax.random.normal(key, (self.num_classes * self.components * self.dim,), jnp.float32)
        return self.separation / jnp.sqrt(float(self.dim)) * z.reshape(shape)

    def draw(self, means: jax.Array, key: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
        """``num`` examples of the mixture with ``means``: inputs ``[num, dim]``, labels
        ``[num]`` int32 (classes and components uniform)."""
        class_key, component_key, noise_key = jax.random.split(key, 3)
        labels = jax.random.randint(class_key, (num,), 0, self.num_classes)
        components = jax.random.randint(component_key, (num,), 0, self.components)
        noise = jax.random.normal(noise_key, (num * self.dim,), jnp.float32).reshape(num, self.dim)
        return means[labels, components] + noise, labels


class MixtureTask(ClassifierTask):
    """An MLP on one Gaussian mixture (see the module docstring)."""

    def means(self) -> jax.Array:
        """``[num_classes, components, dim]`` component means of this task's data seed."""
        return self.family.data.means(self.config.data_seed)

    def _batch_loss(self, params: Params, key: jax.Array, split: str) -> jax.Array:
        # The train split's stream is the one ``loss`` sees; every other split has its own.
        index = split_index(split)
        key = jax.random.fold_in(key, self.config.data_seed)
        key = key if index == 0 else jax.random.fold_in(key, index)
        inputs, labels = self.family.data.draw(self.means(), key, self.family.batch_size)
        logits = self.apply(params, inputs)
        return jnp.mean(cross_entropy(logits, self.config.label_perm[labels]))

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        spec = self.family.data
        key = jax.random.fold_in(jax.random.key(_EVAL_TAG), self.config.data_seed)
        inputs, labels = spec.draw(
            self.means(), jax.random.fold_in(key, split_index(split)), spec.eval_size
        )
        return classification_metrics(
            functools.partial(self.apply, params), inputs, self.config.label_perm[labels]
        )


class GMMFamily(ImageMLPFamily):
    """MLPs on Gaussian mixtures; ``data`` is a ``MixtureSpec`` (see ``ImageMLPFamily`` for the
    other attributes)."""

    def task(self, config: ClassifierConfig) -> MixtureTask:
        return MixtureTask(self, config)


def gmm_family(
    dim: int = 16,
    num_classes: int = 4,
    components: int = 2,
    separation: float = 3.0,
    hidden: tuple[int, ...] = (32, 32),
    activation: str = "relu",
    batch_size: int = 128,
    eval_size: int = 2048,
    init_scale_range: tuple[float, float] = (0.5, 2.0),
    permute_labels: bool = True,
) -> GMMFamily:
    """An MLP family on Gaussian-mixture classification (see the module docstring)."""
    for option, value in (
        ("dim", dim),
        ("num_classes", num_classes),
        ("components", components),
        ("eval_size", eval_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option} must be a positive int, got {value!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not separation > 0:
        raise ValueError(f"separation must be positive, got {separation!r}")
    spec = MixtureSpec(
        dim=dim,
        num_classes=num_classes,
        components=components,
        separation=float(separation),
        eval_size=eval_size,
    )
    return GMMFamily(
        data=spec,
        hidden=tuple(hidden),
        activation=activation,
        batch_size=batch_size,
        init_scale_range=tuple(init_scale_range),
        permute_labels=permute_labels,
    )
