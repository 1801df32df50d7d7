"""The per-parameter MLP learned optimizer (in the spirit of Metz et al.'s small_fc_lopt).

One small MLP, shared by all parameters, maps each parameter's normalised features (see
``lopt.features``) to ``(direction, magnitude)``. It runs tensor by tensor, in one pass over the
tensor's gradient, parameter and moments (``MLPOptimizer.fused``); per-step context (time, loss)
is folded into the first layer's bias and the per-tensor normalisation into its weights, so neither
costs anything per parameter.

With ``base="adam"`` the network's output is a correction added to an Adam step whose log learning
rate is learned too:

    update = -exp(log_lr) * (adam_direction + direction * exp(exp_mult * magnitude))

and the output layer starts ``correction_init_scale`` times smaller than usual, so the untrained
optimizer is (almost) Adam and meta-training learns the correction.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt import features as feats
from lopt import flat
from lopt.base import LearnedOptimizer

BASES = ("none", "adam")
# Networks with at most this many weights run fused (``MLPOptimizer.fused``): (8, 8) has 152.
MAX_FUSED_WEIGHTS = 256


class MLPOptState(NamedTuple):
    """State of ``MLPOptimizer`` for one inner training.

    Attributes:
      step: ``[]`` int32, updates done so far.
      num_steps: ``[]`` int32, the horizon the time features are relative to.
      momenta: per tensor, ``[size_i, num_decays]`` float32 gradient moving averages.
      second_moment: per tensor, ``[size_i]`` float32 moving average of squared gradients.
      loss_ema: ``[]`` float32 moving average of the loss (used with ``use_loss``).
    """

    step: jax.Array
    num_steps: jax.Array
    momenta: tuple[jax.Array, ...]
    second_moment: tuple[jax.Array, ...]
    loss_ema: jax.Array


@dataclasses.dataclass(frozen=True)
class MLPOptimizer(feats.FeatureFields, LearnedOptimizer):
    """Per-parameter MLP optimizer; the fields are its hyperparameters.

    Attributes:
      hidden_sizes: widths of the hidden ReLU layers ((8, 8) or (4,) for large models).
      momentum_decays: decays of the gradient momenta fed as features.
      rms_decay: decay of the squared-gradient moving average (Adam's beta2 for ``base="adam"``).
      time_scales: absolute step scales tau of the ``tanh(t / tau - 1)`` features.
      fraction_scales: scales tau of the ``tanh(fraction_done / tau - 1)`` features.
      exp_mult, step_mult: output scales of ``direction * exp(exp_mult * mag) * step_mult``.
      use_loss: feed the relative change of the loss (then ``update`` needs the loss).
      base: ``"none"`` (the network's step alone) or ``"adam"`` (Adam step plus learned correction).
      initial_learning_rate: seeds theta["log_lr"], the Adam base step's learned log learning rate.
      base_beta1: Adam's beta1; must be one of ``momentum_decays``.
      base_epsilon: Adam's epsilon.
      correction_init_scale: initial scale of the output layer with ``base="adam"``.
    """

    architecture = "mlp"

    hidden_sizes: tuple[int, ...] = (32, 32)
    momentum_decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    time_scales: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    fraction_scales: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    use_loss: bool = False
    base: str = "none"
    initial_learning_rate: float = 1e-3
    base_beta1: float = 0.9
    base_epsilon: float = 1e-8
    correction_init_scale: float = 0.01

    def __post_init__(self):
        feats.freeze_sequences(self)
        if any(int(h) != h or h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")
        feats.check_config(self.feature_config)
        if self.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {self.base!r}")
        if self.base == "adam":
            if self.base_beta1 not in self.momentum_decays:
                raise ValueError(
                    f"base='adam' reuses the momentum with decay base_beta1={self.base_beta1}; "
                    f"add it to momentum_decays={self.momentum_decays}"
                )
            feats.check_positive("initial_learning_rate", (self.initial_learning_rate,))

    @functools.partial(jax.jit, static_argnums=0)
    def init_meta_params(self, key: jax.Array) -> dict:
        """theta: ``{"layer_i": {"w", "b"}, "context_w": [num_context, width_1]}`` and, with
        ``base="adam"``, ``"log_lr": []``."""
        widths = (self.num_features, *self.hidden_sizes, 2)
        num_layers = len(widths) - 1
        output_scale = self.correction_init_scale if self.base == "adam" else 1.0
        num_context = feats.num_context_features(self.feature_config)
        shapes = [*itertools.pairwise(widths), (num_context, widths[1])]
        scales = [1.0] * (num_layers - 1) + [output_scale, 1.0]
        *weights, context_w = feats.scaled_normals(key, shapes, scales)
        theta = {
            f"layer_{i}": {"w": w, "b": jnp.zeros((w.shape[1],), jnp.float32)}
            for i, w in enumerate(weights)
        }
        theta["context_w"] = context_w
        if self.base == "adam":
            theta["log_lr"] = jnp.asarray(math.log(self.initial_learning_rate), jnp.float32)
        return theta

    def init(self, theta: dict, params: Any, num_steps: jax.Array | int) -> MLPOptState:
        del theta
        momenta, second_moment = feats.init_moments(
            flat.layout_of(params), len(self.momentum_decays)
        )
        return MLPOptState(
            step=jnp.zeros((), jnp.int32),
            num_steps=feats.horizon(num_steps),
            momenta=momenta,
            second_moment=second_moment,
            loss_ema=jnp.zeros((), jnp.float32),
        )

    @property
    def fused(self) -> bool:
        """Whether the network runs as per-column arithmetic (``feats.dense``), one fused loop per
        tensor, rather than as matmuls over blocks of rows (``feats.map_row_blocks``).

        The fused loop is the faster of the two (no ``[rows, width]`` intermediates at all), but
        XLA compiles it in time and memory that grow with the number of weights times the number
        of tensors, so only networks up to ``MAX_FUSED_WEIGHTS`` weights run fused; wider ones use
        the blocked matmuls.
        """
        widths = (self.num_features, *self.hidden_sizes, 2)
        return sum(a * b for a, b in itertools.pairwise(widths)) <= MAX_FUSED_WEIGHTS

    def apply_network(self, theta: dict, features: jax.Array, context: jax.Array) -> jax.Array:
        """``[N, 2]`` network output for ``features[N, num_features]`` and ``context[C]``."""
        scales = jnp.ones((features.shape[1],), jnp.float32)
        if self.fused:
            columns = [features[:, k] for k in range(features.shape[1])]
            return jnp.stack(self._network(theta, columns, scales, context), axis=1)
        return feats.map_row_blocks(
            lambda x: (self._network(theta, x, scales, context),), (features,)
        )[0]

    def _network(
        self,
        theta: dict,
        x: jax.Array | list[jax.Array],
        scales: jax.Array,
        context: jax.Array,
    ) -> jax.Array | list[jax.Array]:
        """The MLP on features ``x``, each first multiplied by ``scales[F]``: ``x[n, F]`` gives
        ``[n, 2]``, a list of ``F`` columns ``[n]`` gives the columns ``[direction, magnitude]``
        (per-column arithmetic, ``feats.dense``). The scales fold into the first layer
        (``(x * s) @ W = x @ (s[:, None] * W)``) and the context enters as its bias, so nothing
        per parameter is spent on either."""
        dense = feats.dense if isinstance(x, list) else lambda x, w, b: x @ w + b
        num_layers = len(self.hidden_sizes) + 1
        first = theta["layer_0"]
        bias = first["b"] + context @ theta["context_w"]
        x = dense(x, scales[:, None] * first["w"], bias)
        for i in range(1, num_layers):
            layer = theta[f"layer_{i}"]
            x = dense(jax.tree.map(jax.nn.relu, x), layer["w"], layer["b"])
        return x

    def update(
        self,
        theta: dict,
        state: MLPOptState,
        grads: Any,
        params: Any,
        loss: jax.Array | None = None,
    ) -> tuple[Any, MLPOptState]:
        inputs = feats.prepare_inputs(
            self.feature_config, "MLPOptimizer", state, grads, params, loss
        )
        step = state.step + 1

        def rows(g, p, m, v, scales):
            """The update of rows of one tensor (all of it when fused)."""
            columns = feats.columns(g, p, m, v)
            if self.fused:
                direction, magnitude = self._network(theta, columns, scales, inputs.context)
            else:
                x = jnp.stack(columns, axis=1)
                direction, magnitude = self._network(theta, x, scales, inputs.context).T
            if self.base == "none":
                return feats.scaled_step(direction, magnitude, self.exp_mult, self.step_mult)
            base = feats.adam_direction(
                m[:, self.momentum_decays.index(self.base_beta1)],
                v,
                step,
                self.base_beta1,
                self.rms_decay,
                self.base_epsilon,
            )
            correction = feats.scaled_step(direction, magnitude, self.exp_mult, 1.0)
            return -jnp.exp(theta["log_lr"]) * (base + correction)

        pieces = []
        for tensor, scales in zip(inputs.tensors, inputs.scales, strict=True):
            if self.fused:
                pieces.append(rows(*tensor, scales))
            else:
                blocked = feats.map_row_blocks(lambda *t, s=scales: (rows(*t, s),), tensor)
                pieces.append(blocked[0])
        new_state = MLPOptState(
            step, state.num_steps, inputs.momenta, inputs.second_moment, inputs.loss_ema
        )
        return feats.tree_of(inputs.layout, pieces), new_state
