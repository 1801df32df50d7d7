"""The coordinate-wise LSTM learned optimizer (Andrychowicz et al. 2016), optionally conditioned by
a per-tensor LSTM (as in Metz et al.'s RNN-MLP optimizer).

One LSTM cell, shared by all parameters, carries a small hidden state per parameter. Its input is
the per-parameter features of ``lopt.features`` (the same as the MLP optimizer's); the per-step
context enters as a bias of the gates. It runs tensor by tensor over cache-sized blocks of rows
(``features.map_row_blocks``): one pass over the tensor's features and hidden state. A linear
read-out of the hidden state gives ``(direction, magnitude)`` and the step
``direction * exp(exp_mult * magnitude) * step_mult``.

With ``per_tensor=True`` a second LSTM runs over one row per tensor, whose input is the log of the
tensor's feature normalisers (how large its gradients, parameters and momenta are) and the
context; a linear map of its hidden state is added to the gates of every parameter of that tensor.

The hidden states are part of the optimizer state (``LSTMOptState``), so they travel with the optax
state through jit, checkpoints and exports.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt import features as feats
from lopt import flat
from lopt.base import LearnedOptimizer

# Tensor-LSTM inputs are log mean squares (about -60 to 20); this brings them to order one.
LOG_FEATURE_SCALE = 0.1
LOG_FLOOR = 1e-30


class LSTMOptState(NamedTuple):
    """State of ``LSTMOptimizer`` for one inner training.

    Attributes:
      step, num_steps, momenta, second_moment, loss_ema: as in ``MLPOptState``.
      hidden, cell: ``[num_params, hidden_size]`` float32 per-parameter LSTM state.
      tensor_hidden, tensor_cell: ``[num_tensors, tensor_hidden_size]`` float32 per-tensor LSTM
        state, or ``None`` without ``per_tensor``.
    """

    step: jax.Array
    num_steps: jax.Array
    momenta: tuple[jax.Array, ...]
    second_moment: tuple[jax.Array, ...]
    loss_ema: jax.Array
    hidden: jax.Array
    cell: jax.Array
    tensor_hidden: jax.Array | None
    tensor_cell: jax.Array | None


def lstm_cell_shapes(input_size: int, hidden_size: int) -> list[tuple[int, int]]:
    """Shapes of ``w_x`` and ``w_h``; gates are ordered (input, forget, cell, output)."""
    return [(input_size, 4 * hidden_size), (hidden_size, 4 * hidden_size)]


def lstm_cell_params(w_x: jax.Array, w_h: jax.Array) -> dict:
    """``{"w_x": [I, 4H], "w_h": [H, 4H], "b": [4H]}``; the forget bias starts at 1 so the cell
    remembers by default."""
    hidden_size = w_h.shape[0]
    b = jnp.zeros((4 * hidden_size,), jnp.float32).at[hidden_size : 2 * hidden_size].set(1.0)
    return {"w_x": w_x, "w_h": w_h, "b": b}


def lstm_gates(
    i: jax.Array, f: jax.Array, g: jax.Array, o: jax.Array, cell: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One LSTM step from the gate pre-activations (input, forget, cell, output) and ``cell``, all
    of one shape: ``(hidden, cell)``, with ``cell' = sigmoid(f) cell + sigmoid(i) tanh(g)``,
    ``hidden = sigmoid(o) tanh(cell')``."""
    cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(cell), cell


def lstm_cell(gates: jax.Array, cell: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``lstm_gates`` on ``gates [..., 4H]`` (e.g. ``x @ w_x + h @ w_h + b``) and ``cell [..., H]``.

    Callers form ``gates`` themselves: the learned optimizer adds context and per-tensor terms."""
    return lstm_gates(*jnp.split(gates, 4, axis=-1), cell)


@dataclasses.dataclass(frozen=True)
class LSTMOptimizer(feats.FeatureFields, LearnedOptimizer):
    """Coordinate-wise LSTM optimizer; the fields are its hyperparameters.

    Attributes:
      hidden_size: per-parameter LSTM width.
      per_tensor: add the per-tensor LSTM that conditions the per-parameter one.
      tensor_hidden_size: per-tensor LSTM width.
      momentum_decays, rms_decay, time_scales, fraction_scales, exp_mult, step_mult, use_loss:
        as in ``MLPOptimizer``.
    """

    architecture = "lstm"

    hidden_size: int = 16
    per_tensor: bool = False
    tensor_hidden_size: int = 16
    momentum_decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    time_scales: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    fraction_scales: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    use_loss: bool = False

    def __post_init__(self):
        feats.freeze_sequences(self)
        for name in ("hidden_size", "tensor_hidden_size"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        feats.check_config(self.feature_config)

    @functools.partial(jax.jit, static_argnums=0)
    def init_meta_params(self, key: jax.Array) -> dict:
        """theta: ``{"cell", "context_w": [C, 4H], "out": {"w": [H, 2], "b": [2]}}`` plus, with
        ``per_tensor``, ``"tensor_cell"`` and ``"tensor_to_gates": [Ht, 4H]``."""
        num_context = feats.num_context_features(self.feature_config)
        gates = 4 * self.hidden_size
        shapes = [
            *lstm_cell_shapes(self.num_features, self.hidden_size),
            (num_context, gates),
            (self.hidden_size, 2),
        ]
        if self.per_tensor:
            tensor_inputs = self.num_features + num_context
            shapes += [
                *lstm_cell_shapes(tensor_inputs, self.tensor_hidden_size),
                (self.tensor_hidden_size, gates),
            ]
        w_x, w_h, context_w, out_w, *tensor_weights = feats.scaled_normals(
            key, shapes, [1.0] * len(shapes)
        )
        theta = {
            "cell": lstm_cell_params(w_x, w_h),
            "context_w": context_w,
            "out": {"w": out_w, "b": jnp.zeros((2,), jnp.float32)},
        }
        if self.per_tensor:
            tensor_w_x, tensor_w_h, to_gates = tensor_weights
            theta["tensor_cell"] = lstm_cell_params(tensor_w_x, tensor_w_h)
            theta["tensor_to_gates"] = to_gates
        return theta

    def init(self, theta: dict, params: Any, num_steps: jax.Array | int) -> LSTMOptState:
        del theta
        layout = flat.layout_of(params)
        zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
        tensor_state = (
            zeros(layout.num_tensors, self.tensor_hidden_size) if self.per_tensor else None
        )
        momenta, second_moment = feats.init_moments(layout, len(self.momentum_decays))
        return LSTMOptState(
            step=jnp.zeros((), jnp.int32),
            num_steps=feats.horizon(num_steps),
            momenta=momenta,
            second_moment=second_moment,
            loss_ema=zeros(),
            hidden=zeros(layout.num_params, self.hidden_size),
            cell=zeros(layout.num_params, self.hidden_size),
            tensor_hidden=tensor_state,
            tensor_cell=tensor_state,
        )

    def update(
        self,
        theta: dict,
        state: LSTMOptState,
        grads: Any,
        params: Any,
        loss: jax.Array | None = None,
    ) -> tuple[Any, LSTMOptState]:
        inputs = feats.prepare_inputs(
            self.feature_config, "LSTMOptimizer", state, grads, params, loss
        )
        cell_theta = theta["cell"]
        gate_bias = cell_theta["b"] + inputs.context @ theta["context_w"]
        tensor_hidden, tensor_cell = state.tensor_hidden, state.tensor_cell
        if self.per_tensor:
            log_scales = LOG_FEATURE_SCALE * jnp.log(inputs.tensor_mean_squares + LOG_FLOOR)
            context = jnp.broadcast_to(
                inputs.context, (inputs.layout.num_tensors, inputs.context.shape[0])
            )
            tensor_in = jnp.concatenate([log_scales, context], axis=1)
            tensor_theta = theta["tensor_cell"]
            tensor_hidden, tensor_cell = lstm_cell(
                tensor_in @ tensor_theta["w_x"]
                + tensor_theta["b"]
                + tensor_hidden @ tensor_theta["w_h"],
                tensor_cell,
            )
            gate_biases = gate_bias + tensor_hidden @ theta["tensor_to_gates"]
        else:
            gate_biases = jnp.broadcast_to(
                gate_bias, (inputs.layout.num_tensors, gate_bias.shape[0])
            )
        pieces, hidden, cell = [], [], []
        for offset, size, (g, p, m, v), scales, bias in zip(
            inputs.layout.offsets,
            inputs.layout.sizes,
            inputs.tensors,
            inputs.scales,
            gate_biases,
            strict=True,
        ):
            w_x = scales[:, None] * cell_theta["w_x"]  # the normalisation, folded into w_x

            def rows(g, p, m, v, h, c, w_x=w_x, bias=bias):
                x = jnp.stack(feats.columns(g, p, m, v), axis=1)
                h, c = lstm_cell(x @ w_x + h @ cell_theta["w_h"] + bias, c)
                out = h @ theta["out"]["w"] + theta["out"]["b"]
                return feats.scaled_step(out[:, 0], out[:, 1], self.exp_mult, self.step_mult), h, c

            rows_i = slice(offset, offset + size)
            update, hidden_i, cell_i = feats.map_row_blocks(
                rows, (g, p, m, v, state.hidden[rows_i], state.cell[rows_i])
            )
            pieces.append(update)
            hidden.append(hidden_i)
            cell.append(cell_i)
        new_state = LSTMOptState(
            state.step + 1,
            state.num_steps,
            inputs.momenta,
            inputs.second_moment,
            inputs.loss_ema,
            jnp.concatenate(hidden),
            jnp.concatenate(cell),
            tensor_hidden,
            tensor_cell,
        )
        return feats.tree_of(inputs.layout, pieces), new_state
