"""A user's own task: a flax model (``flax.nnx`` or ``flax.linen``) and arrays as a ``TaskFamily``.

``from_flax(model, x, y, loss=...)`` splits the arrays four ways (``tasks.SPLITS``; ``x_test`` /
``y_test`` become the test split when given, else 20% of the examples are held out) and returns a
``FlaxTaskFamily`` whose dynamic configuration is two seeds:

- ``init_seed``: folded into the key that initialises the model's parameters,
- ``data_seed``: folded into the key of every minibatch draw,

so meta-training samples them per particle and held-out suites use seeds it never draws
(``tasks.held_out_tasks``). Parameters are the model's ``nnx.Param`` variables (``flax.nnx``) or
its ``"params"`` collection (``flax.linen``) as plain nested dicts of arrays; every other variable
(RNG streams, batch statistics) keeps its value at initialisation, so the forward pass must not
need to update it. Inputs and targets are used as given (no standardisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx, struct

from tasks.base import Params, Task, TaskFamily, sample_seed
from tasks.datasets import Dataset
from tasks.datasets.preprocessing import split_indices
from tasks.image import EVAL_CHUNK, cross_entropy

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``(outputs - targets)^2``; the task's loss is its mean."""
    return jnp.square(outputs - targets)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": squared_error}


class FlaxConfig(NamedTuple):
    """Dynamic configuration of a ``FlaxTaskFamily``: two ``[]`` uint32 seeds."""

    init_seed: jax.Array
    data_seed: jax.Array


class FlaxTask(Task):
    """The family's model on its data with one ``FlaxConfig``."""

    def __init__(self, family: FlaxTaskFamily, config: FlaxConfig):
        self.family = family
        self.config = config

    def init(self, key: jax.Array) -> Params:
        return self.family.init_fn(jax.random.fold_in(key, self.config.init_seed))

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        """The model's outputs for ``inputs [batch, ...]``."""
        return self.family.apply_fn(params, self.family.state, inputs)

    def _batch_loss(self, params: Params, key: jax.Array, split: str) -> jax.Array:
        inputs, targets = self.family.data.split(split)
        key = jax.random.fold_in(key, self.config.data_seed)
        index = jax.random.randint(key, (self.family.batch_size,), 0, inputs.shape[0])
        outputs = self.apply(params, inputs[index])
        return jnp.mean(self.family.loss_fn(outputs, targets[index]))

    def loss(self, params: Params, key: jax.Array) -> jax.Array:
        return self._batch_loss(params, key, "train")

    def eval_loss(self, params: Params, key: jax.Array, split: str = "outer_valid") -> jax.Array:
        return self._batch_loss(params, key, split)

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        """Mean loss over the whole split (and accuracy for cross-entropy), ``EVAL_CHUNK``
        examples at a time."""
        inputs, targets = self.family.data.split(split)

        def one(example):
            x, y = example
            outputs = self.apply(params, x[None])
            metrics = {"loss": jnp.mean(self.family.loss_fn(outputs, y[None]))}
            if self.family.classify:
                metrics["accuracy"] = jnp.mean(jnp.argmax(outputs, axis=-1) == y[None])
            return metrics

        per_example = jax.lax.map(one, (inputs, targets), batch_size=EVAL_CHUNK)
        return jax.tree.map(jnp.mean, per_example)


class FlaxTaskFamily(TaskFamily):
    """A flax model on fixed data; build it with ``from_flax``.

    Attributes:
      data: a ``tasks.datasets.Dataset`` of the four splits (targets float for regression).
      state: the model's non-parameter variables at initialisation (a pytree, maybe empty).
      init_fn: ``key -> params``.
      apply_fn: ``(params, state, inputs [batch, ...]) -> outputs``.
      loss_fn: ``(outputs, targets) -> losses`` (any shape; the loss is their mean).
      classify: whether ``evaluate`` also reports accuracy (argmax of the last axis).
      batch_size: minibatch size of ``loss``.
      family_name: the family's ``name``.
    """

    data: Dataset
    state: Any
    init_fn: Callable[[jax.Array], Params] = struct.field(pytree_node=False)
    apply_fn: Callable[[Params, Any, jax.Array], jax.Array] = struct.field(pytree_node=False)
    loss_fn: LossFn = struct.field(pytree_node=False)
    classify: bool = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)
    family_name: str = struct.field(pytree_node=False)

    @property
    def name(self) -> str:
        return self.family_name

    def sample(self, key: jax.Array) -> FlaxConfig:
        init_key, data_key = jax.random.split(key)
        return FlaxConfig(sample_seed(init_key), sample_seed(data_key))

    def default_config(self) -> FlaxConfig:
        zero = jnp.zeros((), jnp.uint32)
        return FlaxConfig(zero, zero)

    def task(self, config: FlaxConfig) -> FlaxTask:
        return FlaxTask(self, config)


def _nnx_functions(build: Callable[[nnx.Rngs], nnx.Module]):
    """``(init_fn, apply_fn, state, model name)`` of an nnx model built by ``build(rngs)``."""
    model = build(nnx.Rngs(0))
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"from_flax: the model function returned a {type(model).__name__}, not an "
            "nnx.Module; pass e.g. lambda rngs: MyModel(..., rngs=rngs)"
        )
    graphdef, _, state = nnx.split(model, nnx.Param, ...)

    def init_fn(key):
        return nnx.to_pure_dict(nnx.split(build(nnx.Rngs(key)), nnx.Param, ...)[1])

    def apply_fn(params, state, inputs):
        return nnx.merge(graphdef, params, state)(inputs)

    return init_fn, apply_fn, state, type(model).__name__


def _linen_functions(model: linen.Module, example: np.ndarray):
    """``(init_fn, apply_fn, state, model name)`` of a linen model, initialised on ``example``."""
    variables = dict(model.init(jax.random.key(0), example))
    if "params" not in variables:
        raise TypeError(f"from_flax: {type(model).__name__} has no 'params' collection to train")
    state = {key: value for key, value in variables.items() if key != "params"}

    def init_fn(key):
        return dict(model.init(key, example)["params"])

    def apply_fn(params, state, inputs):
        return model.apply({"params": params, **state}, inputs)

    return init_fn, apply_fn, state, type(model).__name__


def from_flax(
    model: linen.Module | Callable[[nnx.Rngs], nnx.Module],
    x_train: Any,
    y_train: Any,
    x_test: Any = None,
    y_test: Any = None,
    *,
    loss: str | LossFn = "cross_entropy",
    batch_size: int = 128,
    name: str | None = None,
    split_seed: int = 0,
) -> FlaxTaskFamily:
    """A ``FlaxTaskFamily`` that trains ``model`` on the arrays (see the module docstring).

    ``model``: a ``flax.linen`` module, or a function ``rngs -> nnx.Module`` (e.g.
    ``lambda rngs: MLP(16, rngs=rngs)``: each task builds its model from its own seed).
    ``x_train [n, ...]``, ``y_train [n, ...]``: inputs and targets (int class labels for
    cross-entropy; for ``"mse"`` targets shaped like the model's output per example, or
    ``[n]`` for an output of one value). ``loss``: ``"cross_entropy"`` (logits, last axis),
    ``"mse"``, or a function ``(outputs, targets) -> losses`` whose mean is the loss (targets
    are float32 except for cross-entropy).
    ``split_seed`` chooses the inner_valid and outer_valid examples (10% each of train).
    """
    if isinstance(model, nnx.Module):
        raise TypeError(
            "from_flax needs a function that builds the nnx model from nnx.Rngs, not a built "
            "model, so each task initialises it from its own seed: pass "
            f"lambda rngs: {type(model).__name__}(..., rngs=rngs)"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)} or a function")
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    if len(x_train) != len(y_train):
        raise ValueError(f"x_train has {len(x_train)} examples but y_train has {len(y_train)}")
    has_test = x_test is not None
    if has_test:
        x_test, y_test = np.asarray(x_test), np.asarray(y_test)
        if len(x_test) != len(y_test):
            raise ValueError(f"x_test has {len(x_test)} examples but y_test has {len(y_test)}")
    else:
        x_test, y_test = x_train, y_train
    indices = split_indices(len(y_train), len(y_test) if has_test else None, split_seed)

    classify = loss == "cross_entropy"
    as_input = lambda x: x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
    as_target = lambda y: y.astype(np.int32 if classify else np.float32)
    x_train, x_test = as_input(x_train), as_input(x_test)
    y_train, y_test = as_target(y_train), as_target(y_test)

    if isinstance(model, linen.Module):
        init_fn, apply_fn, state, model_name = _linen_functions(model, x_train[:1])
    elif callable(model):
        init_fn, apply_fn, state, model_name = _nnx_functions(model)
    else:
        raise TypeError(
            f"from_flax needs a linen module or a function rngs -> nnx.Module, got {model!r}"
        )
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss

    params = jax.eval_shape(init_fn, jax.random.key(0))
    outputs = jax.eval_shape(apply_fn, params, state, x_train[:2])
    if loss == "mse" and y_train.shape[1:] != outputs.shape[1:]:
        if y_train[0].size != np.prod(outputs.shape[1:], dtype=int):
            raise ValueError(
                f"mse targets have shape {y_train.shape[1:]} per example but the model outputs "
                f"{outputs.shape[1:]}"
            )
        y_train = y_train.reshape(len(y_train), *outputs.shape[1:])
        y_test = y_test.reshape(len(y_test), *outputs.shape[1:])
    if classify and outputs.shape[:-1] != y_train[:2].shape:
        raise ValueError(
            f"cross_entropy needs logits [batch, ..., classes] for labels {y_train.shape[1:]} per "
            f"example; the model outputs {outputs.shape[1:]}"
        )

    def pair(x, y, part):
        return jnp.asarray(x[part]), jnp.asarray(y[part])

    train_x, train_y = pair(x_train, y_train, indices.train)
    inner_x, inner_y = pair(x_train, y_train, indices.inner_valid)
    outer_x, outer_y = pair(x_train, y_train, indices.outer_valid)
    test_x, test_y = pair(x_test, y_test, indices.test)
    loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "loss")
    name = name or f"{model_name.lower()}_{loss_name}_b{batch_size}"
    data = Dataset(
        train_x, train_y, inner_x, inner_y, outer_x, outer_y, test_x, test_y,
        name=name,
        num_classes=int(outputs.shape[-1]) if classify else 0,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
    )  # fmt: skip
    return FlaxTaskFamily(
        data, state, init_fn, apply_fn, loss_fn, classify, batch_size, family_name=name
    )
