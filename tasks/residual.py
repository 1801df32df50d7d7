"""Residual MLP classifiers with layer normalisation, and the ``layer_norm`` the transformer uses.

The network (pre-LayerNorm residual blocks, as in a transformer's MLP sublayer)::

    h_0 = x W_in + b_in                                      x flattened, [batch, d_in]
    h_{k+1} = h_k + act(LN_k(h_k) W_k1 + b_k1) W_k2 + b_k2    k = 0 .. num_blocks - 1
    logits = LN(h_K) W_head + b_head

``LN(h) = scale * (h - mean(h)) / sqrt(var(h) + eps) + bias`` over the feature axis, with a learned
``scale`` and ``bias`` per feature. Unlike the plain MLPs of ``tasks.image``, such a network is
invariant to the scale of the weights feeding each LayerNorm, so gradients of those weights shrink
as the weights grow: an optimizer meets effective learning rates that drift over a run.

The family reuses ``tasks.image``'s classification machinery (``ClassifierTask``: minibatches,
labels permuted inside jit, whole-split ``evaluate``) and its dynamic configuration.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from tasks import datasets
from tasks.base import Params
from tasks.image import (
    _INIT_GAIN,
    ACTIVATIONS,
    ClassifierConfig,
    _ClassifierFamily,
    standard_normals,
)

LAYER_NORM_EPS = 1e-5


def layer_norm(x: jax.Array, params: Params, eps: float = LAYER_NORM_EPS) -> jax.Array:
    """``params["scale"] * (x - mean) / sqrt(var + eps) + params["bias"]`` over the last axis.

    ``x [..., d]``; ``params``: ``{"scale": [d], "bias": [d]}``.
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return params["scale"] * (x - mean) * jax.lax.rsqrt(var + eps) + params["bias"]


def layer_norm_params(width: int) -> Params:
    """Identity LayerNorm parameters: unit scale, zero bias (``[width]`` each)."""
    return {"scale": jnp.ones((width,), jnp.float32), "bias": jnp.zeros((width,), jnp.float32)}


class ResidualMLPFamily(_ClassifierFamily):
    """Residual MLPs with LayerNorm on a dataset's flattened inputs (see the module docstring).

    Attributes:
      data: a ``tasks.datasets.Dataset``.
      width: width of the residual stream.
      num_blocks: residual blocks.
      expansion: each block's hidden width is ``expansion * width``.
      activation, batch_size, init_scale_range, permute_labels: as for ``ImageMLPFamily``.
    """

    data: Any
    width: int = struct.field(pytree_node=False, default=64)
    num_blocks: int = struct.field(pytree_node=False, default=2)
    expansion: int = struct.field(pytree_node=False, default=2)
    activation: str = struct.field(pytree_node=False, default="relu")
    batch_size: int = struct.field(pytree_node=False, default=128)
    init_scale_range: tuple[float, float] = struct.field(pytree_node=False, default=(0.5, 2.0))
    permute_labels: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self):
        self._validate_common()
        for field in ("width", "num_blocks", "expansion"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")

    @property
    def name(self) -> str:
        return (
            f"resmlp_{self.data.name}_w{self.width}_k{self.num_blocks}_e{self.expansion}"
            f"_{self._suffix}"
        )

    def init_params(self, key: jax.Array, config: ClassifierConfig) -> Params:
        """Weights ``N(0, init_scale^2 gain / fan_in)`` (activation gain for each block's first
        layer, 1 elsewhere), each block's second layer also divided by ``sqrt(num_blocks)`` so the
        residual stream's variance stays O(1) with depth; zero biases; identity LayerNorms."""
        d_in, width = math.prod(self.data.input_shape), self.width
        num_classes = self.data.num_classes
        hidden = self.expansion * width
        shapes = [(d_in, width)]
        for _ in range(self.num_blocks):
            shapes += [(width, hidden), (hidden, width)]
        shapes.append((width, num_classes))
        noises = iter(standard_normals(key, shapes))
        scale = config.init_scale

        def dense(fan_in: int, fan_out: int, gain: float) -> Params:
            return {
                "w": scale * math.sqrt(gain / fan_in) * next(noises),
                "b": jnp.zeros((fan_out,), jnp.float32),
            }

        params = {"embed": dense(d_in, width, 1.0)}
        for k in range(self.num_blocks):
            params[f"block_{k}"] = {
                "norm": layer_norm_params(width),
                "dense_0": dense(width, hidden, _INIT_GAIN[self.activation]),
                "dense_1": dense(hidden, width, 1.0 / self.num_blocks),
            }
        params["norm"] = layer_norm_params(width)
        params["head"] = dense(width, num_classes, 1.0)
        return params

    def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
        """Logits ``[batch, num_classes]`` of ``inputs [batch, *input_shape]``."""
        act = ACTIVATIONS[self.activation]
        h = inputs.reshape(inputs.shape[0], -1) @ params["embed"]["w"] + params["embed"]["b"]
        for k in range(self.num_blocks):
            block = params[f"block_{k}"]
            u = act(layer_norm(h, block["norm"]) @ block["dense_0"]["w"] + block["dense_0"]["b"])
            h = h + u @ block["dense_1"]["w"] + block["dense_1"]["b"]
        return layer_norm(h, params["norm"]) @ params["head"]["w"] + params["head"]["b"]


def residual_mlp_family(
    dataset: str = "mnist1d",
    width: int = 64,
    num_blocks: int = 2,
    expansion: int = 2,
    activation: str = "relu",
    batch_size: int = 128,
    split_seed: int = 0,
    data_dir: str | None = None,
    init_scale_range: tuple[float, float] = (0.5, 2.0),
    permute_labels: bool = True,
    train_size: int | None = None,
    label_noise: float = 0.0,
) -> ResidualMLPFamily:
    """A residual LayerNorm MLP family on a built-in or prepared dataset (inputs flattened;
    ``train_size`` and ``label_noise`` as in ``tasks.datasets.load_dataset``)."""
    data = datasets.load_dataset(
        dataset,
        data_dir=data_dir,
        split_seed=split_seed,
        train_size=train_size,
        label_noise=label_noise,
    )
    return ResidualMLPFamily(
        data=data,
        width=width,
        num_blocks=num_blocks,
        expansion=expansion,
        activation=activation,
        batch_size=batch_size,
        init_scale_range=tuple(init_scale_range),
        permute_labels=permute_labels,
    )
