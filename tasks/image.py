"""Image (and vector) classification families: MLPs and small conv nets.

A family holds a ``tasks.datasets.Dataset`` (device-resident splits) as a pytree leaf and its
architecture as static fields. Its dynamic configuration (``ClassifierConfig``) is

- ``init_seed``: folded into the key of ``init``,
- ``data_seed``: folded into the key of every minibatch draw,
- ``init_scale``: multiplies the initial weights, log-uniform in ``init_scale_range``,
- ``label_perm``: a permutation of the classes applied to the labels inside jit,

so it can be sampled per particle inside jit and vmapped. Parameters are plain nested dicts of
float32 arrays. Losses are the mean softmax cross-entropy of a minibatch of ``batch_size``
examples drawn with replacement by ``jax.random.randint``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tasks import datasets
from tasks.base import Params, Task, TaskFamily, sample_seed

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}
# Variance gain of the initial weights per activation (He for ReLU-like, LeCun for tanh).
_INIT_GAIN = {"relu": 2.0, "gelu": 2.0, "tanh": 1.0}
# Examples per chunk when ``evaluate`` runs over a whole split.
EVAL_CHUNK = 1024


class ClassifierConfig(NamedTuple):
    """Dynamic configuration of a classification task (see the module docstring).

    Attributes:
      init_seed: ``[]`` uint32.
      data_seed: ``[]`` uint32.
      init_scale: ``[]`` float32.
      label_perm: ``[num_classes]`` int32 permutation of the classes.
    """

    init_seed: jax.Array
    data_seed: jax.Array
    init_scale: jax.Array
    label_perm: jax.Array


def standard_normals(key: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """Float32 ``N(0, 1)`` arrays of the given shapes from a single flat draw.

    One flat draw, sliced and reshaped, compiles much faster on XLA:CPU than a draw of a
    multi-dimensional shape such as ``(3, 3, 8, 16)``.
    """
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return [
        flat[start : start + size].reshape(shape)
        for start, size, shape in zip(offsets, sizes, shapes, strict=True)
    ]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy: ``logits [..., C]``, int ``labels [...]`` -> ``[...]``."""
    label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - label_logits


def classification_metrics(
    logits_fn: Callable[[jax.Array], jax.Array],
    inputs: jax.Array,
    labels: jax.Array,
    chunk_size: int = EVAL_CHUNK,
) -> dict[str, jax.Array]:
    """Mean cross-entropy and accuracy of ``logits_fn`` over all ``inputs [n, ...]``.

    The examples are processed ``chunk_size`` at a time (``lax.map``) so memory stays bounded;
    the last chunk is padded and the padding masked out.
    """
    num = inputs.shape[0]
    chunk = min(chunk_size, num)
    num_chunks = -(-num // chunk)
    pad = num_chunks * chunk - num
    mask = jnp.arange(num_chunks * chunk) < num
    inputs = jnp.pad(inputs, [(0, pad)] + [(0, 0)] * (inputs.ndim - 1))
    labels = jnp.pad(labels, [(0, pad)] + [(0, 0)] * (labels.ndim - 1))

    def chunk_sums(args):
        x, y, m = args
        logits = logits_fn(x)
        m = jnp.broadcast_to(m.reshape(m.shape + (1,) * (y.ndim - 1)), y.shape)
        loss = jnp.sum(jnp.where(m, cross_entropy(logits, y), 0.0))
        correct = jnp.sum(jnp.where(m, jnp.argmax(logits, axis=-1) == y, False))
        return loss, correct

    def chunked(a):
        return a.reshape((num_chunks, chunk, *a.shape[1:]))

    losses, corrects = jax.lax.map(chunk_sums, (chunked(inputs), chunked(labels), chunked(mask)))
    count = num * math.prod(labels.shape[1:])
    return {"loss": jnp.sum(losses) / count, "accuracy": jnp.sum(corrects) / count}


def conv2d_same(inputs: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """'SAME' 2-D convolution as one matmul over image patches (im2col).

    ``inputs [B, H, W, C]``, ``kernel [k, k, C, C_out]`` -> ``[B, ceil(H/s), ceil(W/s), C_out]``,
    equal to ``lax.conv_general_dilated(..., "SAME")`` in NHWC/HWIO. Patches are strided slices, so
    the forward pass, its gradient and their vmap over particles are matmuls, slices and pads,
    which XLA:CPU compiles and runs faster than (grouped) convolutions.
    """
    k = kernel.shape[0]
    _, height, width, channels = inputs.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + k - height, 0)
    pad_w = max((out_w - 1) * stride + k - width, 0)
    padded = jnp.pad(
        inputs, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    patches = jnp.concatenate(
        [
            padded[:, i : i + span_h : stride, j : j + span_w : stride, :]
            for i in range(k)
            for j in range(k)
        ],
        axis=-1,
    )
    return patches @ kernel.reshape(k * k * channels, -1)


class ClassifierTask(Task):
    """A classifier on its family's dataset; the family supplies ``init_params`` and ``apply``."""

    def __init__(self, family: _ClassifierFamily, config: ClassifierConfig):
        self.family = family
        self.config = config

    def init(self, key: jax.Array) -> Params:
        return self.family.init_params(jax.random.fold_in(key, self.config.init_seed), self.config)

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        """Logits ``[batch, num_classes]`` of ``inputs [batch, *input_shape]``."""
        return self.family.apply(params, inputs)

    def _batch_loss(self, params: Params, key: jax.Array, split: str) -> jax.Array:
        inputs, labels = self.family.data.split(split)
        key = jax.random.fold_in(key, self.config.data_seed)
        index = jax.random.randint(key, (self.family.batch_size,), 0, inputs.shape[0])
        # randint keeps the indices in bounds, so the gathers need no clamping.
        batch_inputs = inputs.at[index].get(mode="promise_in_bounds")
        batch_labels = labels.at[index].get(mode="promise_in_bounds")
        logits = self.apply(params, batch_inputs)
        return jnp.mean(cross_entropy(logits, self.config.label_perm[batch_labels]))

    def loss(self, params: Params, key: jax.Array) -> jax.Array:
        return self._batch_loss(params, key, "train")

    def eval_loss(self, params: Params, key: jax.Array, split: str = "outer_valid") -> jax.Array:
        return self._batch_loss(params, key, split)

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        inputs, labels = self.family.data.split(split)
        return classification_metrics(
            functools.partial(self.apply, params), inputs, self.config.label_perm[labels]
        )


class _ClassifierFamily(TaskFamily):
    """Shared sampling and validation of the classification families."""

    def _validate_common(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; use one of {', '.join(ACTIVATIONS)}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        low, high = self.init_scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"init_scale_range must satisfy 0 < low <= high, got {low, high}")

    def sample(self, key: jax.Array) -> ClassifierConfig:
        init_key, data_key, scale_key, perm_key = jax.random.split(key, 4)
        low, high = self.init_scale_range
        log_scale = jax.random.uniform(scale_key, (), minval=math.log(low), maxval=math.log(high))
        classes = jnp.arange(self.data.num_classes, dtype=jnp.int32)
        perm = jax.random.permutation(perm_key, classes) if self.permute_labels else classes
        return ClassifierConfig(
            init_seed=sample_seed(init_key),
            data_seed=sample_seed(data_key),
            init_scale=jnp.exp(log_scale),
            label_perm=perm,
        )

    def default_config(self) -> ClassifierConfig:
        return ClassifierConfig(
            init_seed=jnp.zeros((), jnp.uint32),
            data_seed=jnp.zeros((), jnp.uint32),
            init_scale=jnp.ones((), jnp.float32),
            label_perm=jnp.arange(self.data.num_classes, dtype=jnp.int32),
        )

    def task(self, config: ClassifierConfig) -> ClassifierTask:
        return ClassifierTask(self, config)

    @property
    def _suffix(self) -> str:
        return f"{self.activation}_b{self.batch_size}"


class ImageMLPFamily(_ClassifierFamily):
    """MLPs on a dataset's flattened inputs.

    Attributes:
      data: a ``tasks.datasets.Dataset`` (pytree of device arrays).
      hidden: widths of the hidden layers, e.g. ``(32, 32)``.
      activation: one of ``ACTIVATIONS``.
      batch_size: minibatch size of ``loss``.
      init_scale_range: ``(low, high)`` of the log-uniform initial-weight multiplier.
      permute_labels: whether ``sample`` draws a random label permutation.
    """

    data: Any
    hidden: tuple[int, ...] = struct.field(pytree_node=False, default=(32, 32))
    activation: str = struct.field(pytree_node=False, default="relu")
    batch_size: int = struct.field(pytree_node=False, default=128)
    init_scale_range: tuple[float, float] = struct.field(pytree_node=False, default=(0.5, 2.0))
    permute_labels: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self):
        self._validate_common()
        if not all(isinstance(w, int) and w > 0 for w in self.hidden):
            raise ValueError(f"hidden must be a tuple of positive ints, got {self.hidden!r}")

    @property
    def name(self) -> str:
        widths = "x".join(map(str, self.hidden)) or "linear"
        return f"mlp_{self.data.name}_{widths}_{self._suffix}"

    def init_params(self, key: jax.Array, config: ClassifierConfig) -> Params:
        """Weights ``N(0, init_scale^2 gain / fan_in)`` (gain 2 for ReLU/GELU hidden layers, 1 for
        tanh and the output layer), zero biases."""
        sizes = (math.prod(self.data.input_shape), *self.hidden, self.data.num_classes)
        shapes = list(itertools.pairwise(sizes))
        gains = [_INIT_GAIN[self.activation]] * len(self.hidden) + [1.0]
        params = {}
        for i, (noise, (fan_in, fan_out), gain) in enumerate(
            zip(standard_normals(key, shapes), shapes, gains, strict=True)
        ):
            params[f"dense_{i}"] = {
                "w": config.init_scale * math.sqrt(gain / fan_in) * noise,
                "b": jnp.zeros((fan_out,), jnp.float32),
            }
        return params

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h = inputs.reshape(inputs.shape[0], -1)
        for i in range(len(self.hidden)):
            layer = params[f"dense_{i}"]
            h = act(h @ layer["w"] + layer["b"])
        out = params[f"dense_{len(self.hidden)}"]
        return h @ out["w"] + out["b"]


class ImageConvFamily(_ClassifierFamily):
    """Small conv nets: ``len(channels)`` 'SAME' convolutions with the given strides, each followed
    by the activation, then a global average pool and a dense layer to the classes.

    Attributes:
      data: a ``tasks.datasets.Dataset`` whose inputs are images ``[n, H, W, C]``.
      channels: output channels of the conv layers, e.g. ``(8, 16)``.
      strides: stride of each conv layer (defaults to 2 for every layer).
      kernel_size: side of the square kernels.
      activation, batch_size, init_scale_range, permute_labels: as for ``ImageMLPFamily``.
    """

    data: Any
    channels: tuple[int, ...] = struct.field(pytree_node=False, default=(8, 16))
    strides: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    kernel_size: int = struct.field(pytree_node=False, default=3)
    activation: str = struct.field(pytree_node=False, default="relu")
    batch_size: int = struct.field(pytree_node=False, default=128)
    init_scale_range: tuple[float, float] = struct.field(pytree_node=False, default=(0.5, 2.0))
    permute_labels: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self):
        self._validate_common()
        if len(self.data.input_shape) != 3:
            raise ValueError(
                f"conv nets need image inputs [H, W, C]; dataset {self.data.name!r} has input "
                f"shape {self.data.input_shape}. Use an MLP family for vector data."
            )
        if not self.channels or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(
                f"channels must be a non-empty tuple of positive ints: {self.channels}"
            )
        if len(self.layer_strides) != len(self.channels):
            raise ValueError(
                f"strides {self.strides} must have one entry per conv layer ({len(self.channels)})"
            )

    @property
    def layer_strides(self) -> tuple[int, ...]:
        return (2,) * len(self.channels) if self.strides is None else tuple(self.strides)

    @property
    def name(self) -> str:
        height, width, _ = self.data.input_shape
        widths = "x".join(map(str, self.channels))
        return f"conv_{self.data.name}{height}x{width}_c{widths}_{self._suffix}"

    def init_params(self, key: jax.Array, config: ClassifierConfig) -> Params:
        """Conv kernels ``N(0, init_scale^2 gain / (k^2 c_in))``, head ``N(0, init_scale^2 / c)``,
        zero biases."""
        k = self.kernel_size
        in_channels = (self.data.input_shape[-1], *self.channels[:-1])
        shapes = [
            (k, k, c_in, c_out) for c_in, c_out in zip(in_channels, self.channels, strict=True)
        ]
        shapes.append((self.channels[-1], self.data.num_classes))
        noises = standard_normals(key, shapes)
        gain = _INIT_GAIN[self.activation]
        params = {}
        for i, (noise, shape) in enumerate(zip(noises[:-1], shapes[:-1], strict=True)):
            params[f"conv_{i}"] = {
                "w": config.init_scale * math.sqrt(gain / (k * k * shape[2])) * noise,
                "b": jnp.zeros((shape[3],), jnp.float32),
            }
        params["head"] = {
            "w": config.init_scale * math.sqrt(1.0 / self.channels[-1]) * noises[-1],
            "b": jnp.zeros((self.data.num_classes,), jnp.float32),
        }
        return params

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h = inputs
        for i, stride in enumerate(self.layer_strides):
            layer = params[f"conv_{i}"]
            h = act(conv2d_same(h, layer["w"], stride) + layer["b"])
        pooled = jnp.mean(h, axis=(1, 2))
        return pooled @ params["head"]["w"] + params["head"]["b"]


def _load_data(
    dataset: str,
    image_size: int | None,
    grayscale: bool,
    split_seed: int,
    data_dir: str | None,
    train_size: int | None,
    label_noise: float,
) -> datasets.Dataset:
    """``datasets.load_dataset`` with the data options of ``mlp_family`` and ``conv_family``."""
    return datasets.load_dataset(
        dataset,
        data_dir=data_dir,
        split_seed=split_seed,
        image_size=image_size,
        grayscale=grayscale,
        train_size=train_size,
        label_noise=label_noise,
    )


def mlp_family(
    dataset: str = "digits",
    hidden: tuple[int, ...] = (32, 32),
    activation: str = "relu",
    batch_size: int = 128,
    image_size: int | None = None,
    grayscale: bool = False,
    split_seed: int = 0,
    data_dir: str | None = None,
    init_scale_range: tuple[float, float] = (0.5, 2.0),
    permute_labels: bool = True,
    train_size: int | None = None,
    label_noise: float = 0.0,
) -> ImageMLPFamily:
    """An MLP family on a built-in or prepared TFDS dataset (``image_size`` downsamples;
    ``train_size`` and ``label_noise`` as in ``tasks.datasets.load_dataset``)."""
    data = _load_data(dataset, image_size, grayscale, split_seed, data_dir, train_size, label_noise)
    return ImageMLPFamily(
        data=data,
        hidden=tuple(hidden),
        activation=activation,
        batch_size=batch_size,
        init_scale_range=tuple(init_scale_range),
        permute_labels=permute_labels,
    )


def conv_family(
    dataset: str = "digits",
    channels: tuple[int, ...] = (8, 16),
    strides: tuple[int, ...] | None = None,
    kernel_size: int = 3,
    activation: str = "relu",
    batch_size: int = 128,
    image_size: int | None = None,
    grayscale: bool = False,
    split_seed: int = 0,
    data_dir: str | None = None,
    init_scale_range: tuple[float, float] = (0.5, 2.0),
    permute_labels: bool = True,
    train_size: int | None = None,
    label_noise: float = 0.0,
) -> ImageConvFamily:
    """A conv-net family on a built-in or prepared TFDS image dataset (data options as in
    ``mlp_family``)."""
    data = _load_data(dataset, image_size, grayscale, split_seed, data_dir, train_size, label_noise)
    return ImageConvFamily(
        data=data,
        channels=tuple(channels),
        strides=None if strides is None else tuple(strides),
        kernel_size=kernel_size,
        activation=activation,
        batch_size=batch_size,
        init_scale_range=tuple(init_scale_range),
        permute_labels=permute_labels,
    )
