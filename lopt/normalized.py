"""A normalized learned update rule with the learning rate outside it (after Celo2 and μLO).

A tiny MLP shared by all parameters maps each parameter's features to one number; per tensor, that
output is normalized to unit RMS. The rule has no learned step size and no step-count or horizon
feature: it is a direction, like any optax ``scale_by_*`` transform (``lopt.scale_by_rule``), and
the learning rate, its schedule and weight decay are applied outside it (``lopt.with_step_size``)::

    d = direction(theta, grads, state)             # unit RMS per tensor, gradient sign
    update = -lr(t) * (mup(d) + weight_decay * params)

Meta-training, evaluation and ``lopt.load`` compose it the same way, so meta-training sees exactly
what a user runs.

Features per parameter (each column normalized by its RMS over the tensor, so the rule is
invariant to rescaling a tensor's gradient):

    g, p, m_b for b in momentum_decays, sqrt(v), g / sqrt(v), m_b / sqrt(v) for each b

with ``m_b <- b m_b + (1 - b) g`` and ``v <- rms_decay v + (1 - rms_decay) g**2``; with
``extra_features`` (Celo2's), three more: ``clip(g / sqrt(v), -1, 1)``, ``1 / sqrt(v)`` and
``g / sqrt(v_hat)`` with Adafactor's factored second moment ``v_hat = r c^T / mean(r)`` (``r``,
``c``: the row and column means of ``v`` of the tensor as ``[prod(shape[:-1]), shape[-1]]``; for
vectors ``v_hat = v``). The network is
an MLP plus a linear skip connection from the features to the output; the skip starts as the
``m_{0.9} / sqrt(v)`` column and the MLP's output layer starts small, so the untrained rule is a
per-tensor-normalized Adam-like step and meta-training learns the rest.

Options: ``adam_for_vectors`` gives tensors with fewer than two dimensions (biases, scales) a
bias-corrected Adam direction instead of the learned one (Celo2 does this); ``mup_base_fan_in > 0``
multiplies the direction of every matrix (ndim >= 2, fan-in = product of all but the last dim) by
``min(1, mup_base_fan_in / fan_in)``, the μP scaling that μLO uses so a rule meta-trained at one
width transfers to wider networks (capped at 1: narrower layers keep the unscaled step).
``orthogonalize=True`` replaces each matrix's raw network output ``D`` (reshaped to
``[prod(shape[:-1]), shape[-1]]``) by its orthogonalization ``~ U V^T`` (``D = U S V^T``; five
Newton–Schulz iterations, as Muon has them) before the RMS normalization, as Celo2
does: every direction in a matrix's row and column space gets a step of the same size.

``step_gain=True`` lets the step shrink without giving up scale invariance. A unit-RMS direction
takes full-size steps even once the training loss is ~0 (only the schedule slows it), which grows
margins and the test loss on small data. With the option, each learned tensor's direction is
multiplied by a gain in (0, 1]::

    r = RMS(m_hat_0.9) / sqrt(u_hat),   u <- gain_decay u + (1 - gain_decay) mean(g**2)
    gain = min(1, r ** alpha)          (alpha = theta["gain_exponent"], a scalar, starts at 0)

``m_hat`` and ``u_hat`` are bias-corrected, so r = 1 at the first step; r falls when the
gradient shrinks below its long-run size (a fitted training set) or its momentum cancels (noise).
Both are ratios of gradient quantities, so rescaling the gradient leaves the gain unchanged. At
``alpha = 0`` the gain is exactly 1: a theta without ``gain_exponent`` (``normalized-v1``) starts
a gain run at its own function (``meta_train``'s ``init_from``).
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
from lopt.base import LearnedRule

# Tiny next to any mean square of float32 gradients that matter, so a gradient scaled by 1e-6
# still gives the same features (the MLP and LSTM rules use 1e-12, which 1e-3-sized gradients
# times (1 - 0.999) already reach).
FEATURE_EPS = 1e-30
DIRECTION_EPS = 1e-30
ADAM_EPS = 1e-8
SKIP_DECAY = 0.9  # the momentum whose m / sqrt(v) column the skip connection starts from


class NormalizedOptState(NamedTuple):
    """State of ``NormalizedOptimizer`` for one inner training.

    Attributes:
      step: ``[]`` int32, updates done so far.
      momenta: per tensor, ``[size_i, num_decays]`` float32 gradient moving averages.
      second_moment: per tensor, ``[size_i]`` float32 moving average of squared gradients.
      long_run_mean_square: per tensor, ``[]`` float32 moving average (decay ``gain_decay``) of
        the tensor's mean squared gradient; empty without ``step_gain``.
    """

    step: jax.Array
    momenta: tuple[jax.Array, ...]
    second_moment: tuple[jax.Array, ...]
    long_run_mean_square: tuple[jax.Array, ...] = ()


@dataclasses.dataclass(frozen=True)
class NormalizedOptimizer(LearnedRule):
    """Per-parameter MLP rule with per-tensor normalized input features and output direction;
    ``update`` is the direction (``LearnedRule``).

    Attributes:
      hidden_sizes: widths of the hidden ReLU layers (Celo2: two layers of 8).
      momentum_decays: decays of the gradient momenta fed as features; must contain 0.9.
      rms_decay: decay of the squared-gradient moving average.
      adam_for_vectors: Adam's direction for tensors with ``ndim < 2``.
      mup_base_fan_in: 0 (off) or the fan-in at which the μP multiplier of matrices is 1.
      output_init_scale: initial scale of the MLP's output layer (the skip path starts at 1).
      step_gain: multiply each learned tensor's direction by the gain of the module docstring.
      gain_decay: decay of the long-run mean squared gradient the gain compares against.
      orthogonalize: orthogonalize each matrix's direction (module docstring).
      extra_features: append the three features of the module docstring.
    """

    architecture = "normalized"

    hidden_sizes: tuple[int, ...] = (8, 8)
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decay: float = 0.95
    adam_for_vectors: bool = False
    mup_base_fan_in: int = 0
    output_init_scale: float = 0.1
    step_gain: bool = False
    gain_decay: float = 0.999
    orthogonalize: bool = False
    extra_features: bool = False

    def __post_init__(self):
        feats.freeze_sequences(self)
        if any(int(h) != h or h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")
        feats.check_decays("momentum_decays", self.momentum_decays)
        feats.check_decays("rms_decay", (self.rms_decay,))
        if SKIP_DECAY not in self.momentum_decays:
            raise ValueError(
                f"momentum_decays={self.momentum_decays} must contain {SKIP_DECAY}: the skip "
                "connection and the Adam direction of vectors use that momentum"
            )
        if int(self.mup_base_fan_in) != self.mup_base_fan_in or self.mup_base_fan_in < 0:
            raise ValueError(
                f"mup_base_fan_in must be 0 (off) or a positive fan-in, got {self.mup_base_fan_in}"
            )
        feats.check_positive("output_init_scale", (self.output_init_scale,))
        feats.check_decays("gain_decay", (self.gain_decay,))

    @property
    def num_features(self) -> int:
        """Columns of the feature matrix: g, p, sqrt(v), g/sqrt(v), m_b and m_b/sqrt(v) per b, and
        the three extra features when on."""
        return 4 + 2 * len(self.momentum_decays) + (3 if self.extra_features else 0)

    @property
    def momentum_feature(self) -> int:
        """The column of ``m_{0.9}``, whose RMS the gain compares against the long run."""
        return 4 + self.momentum_decays.index(SKIP_DECAY)

    @property
    def skip_feature(self) -> int:
        """The column of ``m_{0.9} / sqrt(v)``, where the skip connection starts."""
        return 4 + len(self.momentum_decays) + self.momentum_decays.index(SKIP_DECAY)

    @functools.partial(jax.jit, static_argnums=0)
    def init_meta_params(self, key: jax.Array) -> dict:
        """theta: ``{"layer_i": {"w", "b"}, "skip": [num_features]}``, and ``"gain_exponent": []``
        (0: gain 1) with ``step_gain``."""
        widths = (self.num_features, *self.hidden_sizes, 1)
        num_layers = len(widths) - 1
        scales = [1.0] * (num_layers - 1) + [self.output_init_scale]
        weights = feats.scaled_normals(key, list(itertools.pairwise(widths)), scales)
        theta = {
            f"layer_{i}": {"w": w, "b": jnp.zeros((w.shape[1],), jnp.float32)}
            for i, w in enumerate(weights)
        }
        theta["skip"] = jax.nn.one_hot(self.skip_feature, self.num_features, dtype=jnp.float32)
        if self.step_gain:
            theta["gain_exponent"] = jnp.zeros((), jnp.float32)
        return theta

    def init(
        self, theta: dict, params: Any, num_steps: jax.Array | int | None = None
    ) -> NormalizedOptState:
        """The rule has no horizon: ``num_steps`` is ignored."""
        del theta, num_steps
        layout = flat.layout_of(params)
        momenta, second_moment = feats.init_moments(layout, len(self.momentum_decays))
        long_run = tuple(jnp.zeros((), jnp.float32) for _ in layout.sizes) if self.step_gain else ()
        return NormalizedOptState(
            step=jnp.zeros((), jnp.int32),
            momenta=momenta,
            second_moment=second_moment,
            long_run_mean_square=long_run,
        )

    def apply_network(self, theta: dict, features: jax.Array) -> jax.Array:
        """``[N]`` raw output for ``features[N, num_features]``: MLP plus linear skip."""
        return self._network(theta, [features[:, k] for k in range(features.shape[1])])

    def _network(
        self, theta: dict, columns: list[jax.Array], scales: jax.Array | None = None
    ) -> jax.Array:
        """``[n]`` raw output for the feature columns ``[n]``, each first multiplied by
        ``scales[F]`` (default 1).

        Each layer is written as sums of column * scalar weight, not as ``[n, F] @ [F, h]``: XLA
        fuses the whole network into one loop over the parameters, where the skinny matmuls are
        memory-bound (slower on CPU). The scales fold into the first layer and the skip
        (``(x * s) @ W = x @ (s[:, None] * W)``), so no scaled feature is ever stored.
        """
        first, skip = theta["layer_0"]["w"], theta["skip"]
        if scales is not None:
            first, skip = scales[:, None] * first, scales * skip
        num_layers = len(self.hidden_sizes) + 1
        x = columns
        for i in range(num_layers):
            w = first if i == 0 else theta[f"layer_{i}"]["w"]
            b = theta[f"layer_{i}"]["b"]
            x = [
                sum((x_k * w[k, j] for k, x_k in enumerate(x)), start=b[j])
                for j in range(w.shape[1])
            ]
            if i < num_layers - 1:
                x = [jax.nn.relu(x_j) for x_j in x]
        return sum((c * skip[k] for k, c in enumerate(columns)), start=x[0])

    def _features(
        self,
        grad: jax.Array,
        param: jax.Array,
        momenta: list[jax.Array],
        second_moment: jax.Array,
        factored: jax.Array | None,
    ) -> tuple[list[jax.Array], jax.Array]:
        """``(columns, mean_squares)``: the ``[n]`` feature columns of one tensor (module
        docstring), unnormalized, and ``[num_features]`` each one's mean square over the tensor.

        Each square is written from g, p, m and v rather than as the square of its column: a
        column read both by the reduction and by the network would be stored by XLA, where now
        each is computed inside the network's loop (``feats.means``).
        """
        inv_rms = jax.lax.rsqrt(second_moment + FEATURE_EPS)
        inv_v = 1.0 / (second_moment + FEATURE_EPS)
        g2 = grad * grad
        pairs = [  # (column, its square)
            (grad, g2),
            (param, param * param),
            (jnp.sqrt(second_moment), second_moment),
            (grad * inv_rms, g2 * inv_v),
            *((m_b, m_b * m_b) for m_b in momenta),
            *((m_b * inv_rms, m_b * m_b * inv_v) for m_b in momenta),
        ]
        if factored is not None:
            pairs += [
                (jnp.clip(grad * inv_rms, -1.0, 1.0), jnp.minimum(g2 * inv_v, 1.0)),
                (inv_rms, inv_v),
                (grad * jax.lax.rsqrt(factored + FEATURE_EPS), g2 / (factored + FEATURE_EPS)),
            ]
        columns, squares = zip(*pairs, strict=True)
        return list(columns), feats.means(squares)

    def _raw_direction(
        self,
        theta: dict,
        grad: jax.Array,
        param: jax.Array,
        momentum: jax.Array,
        second_moment: jax.Array,
        shape: tuple[int, ...],
    ) -> tuple[jax.Array, jax.Array]:
        """``([n] network output, [num_features] mean squares)`` of one tensor of ``shape``, its
        feature columns normalized by their RMS over the tensor."""
        momenta = [momentum[:, b] for b in range(momentum.shape[1])]
        factored = factored_second_moment(second_moment, shape) if self.extra_features else None
        columns, mean_squares = self._features(grad, param, momenta, second_moment, factored)
        raw = self._network(theta, columns, jax.lax.rsqrt(mean_squares + FEATURE_EPS))
        return raw, mean_squares

    def direction(
        self, theta: dict, state: NormalizedOptState, grads: Any, params: Any
    ) -> tuple[Any, NormalizedOptState]:
        """``(direction, new_state)``: the rule alone, with the gradient's sign (a descent step
        subtracts it), unit RMS per tensor before the μP multiplier."""
        config = feats.FeatureConfig(self.momentum_decays, self.rms_decay, (), (), False)
        layout, tensors = feats.updated_tensors(config, state, grads, params)
        step = state.step + 1
        skip_index = self.momentum_decays.index(SKIP_DECAY)
        long_run = state.long_run_mean_square or (None,) * len(tensors)
        leaves, new_long_run = [], []
        for (g, p, m, v), u, shape, dtype in zip(
            tensors, long_run, layout.shapes, layout.dtypes, strict=True
        ):
            momentum_square = None  # a learned tensor's mean(m_0.9**2), for the gain
            if not g.shape[0]:
                d, mean_square_grad = g, None  # empty: no RMS to normalize by
            elif self.adam_for_vectors and len(shape) < 2:
                # Per tensor, so the network never runs on tensors whose output would be dropped.
                d = feats.adam_direction(
                    m[:, skip_index], v, step, SKIP_DECAY, self.rms_decay, ADAM_EPS
                )
                mean_square_grad = jnp.mean(jnp.square(g))
            else:
                d, mean_squares = self._raw_direction(theta, g, p, m, v, shape)
                mean_square_grad = mean_squares[0]
                momentum_square = mean_squares[self.momentum_feature]
                if self.orthogonalize and len(shape) >= 2:
                    d = orthogonalized(d.reshape(-1, shape[-1])).reshape(-1)
                scale = jax.lax.rsqrt(jnp.mean(jnp.square(d)) + DIRECTION_EPS)
                d = d * (scale * self.mup_multiplier(shape))
            if self.step_gain:
                u = self._long_run(mean_square_grad, u)
                new_long_run.append(u)
                if momentum_square is not None:
                    d = d * self._gain(theta, momentum_square, u, step)
            leaves.append(d.reshape(shape).astype(dtype))
        return jax.tree.unflatten(layout.treedef, leaves), NormalizedOptState(
            step,
            tuple(m for _, _, m, _ in tensors),
            tuple(v for _, _, _, v in tensors),
            tuple(new_long_run),
        )

    def _long_run(self, mean_square_grad: jax.Array | None, long_run: jax.Array) -> jax.Array:
        """``u <- gain_decay u + (1 - gain_decay) mean(g**2)`` of one tensor (``None``: empty)."""
        if mean_square_grad is None:
            return long_run
        return self.gain_decay * long_run + (1 - self.gain_decay) * mean_square_grad

    def _gain(
        self, theta: dict, momentum_square: jax.Array, long_run: jax.Array, step: jax.Array
    ) -> jax.Array:
        """``min(1, r ** alpha)``, ``r**2 = mean(m_hat**2) / u_hat`` (module docstring), from
        ``momentum_square = mean(m_0.9**2)`` and ``long_run`` (u) already updated by this step's
        gradient."""
        t = step.astype(jnp.float32)
        log_r_squared = (
            jnp.log(momentum_square + FEATURE_EPS)
            - 2.0 * jnp.log1p(-(SKIP_DECAY**t))
            - jnp.log(long_run + FEATURE_EPS)
            + jnp.log1p(-(self.gain_decay**t))
        )
        return jnp.exp(jnp.minimum(0.0, 0.5 * theta["gain_exponent"] * log_r_squared))

    def mup_multiplier(self, shape: tuple[int, ...]) -> float:
        """``min(1, mup_base_fan_in / fan_in)`` for matrices when μP scaling is on, else 1."""
        if not self.mup_base_fan_in or len(shape) < 2:
            return 1.0
        return min(1.0, self.mup_base_fan_in / max(math.prod(shape[:-1]), 1))

    def update(
        self,
        theta: dict,
        state: NormalizedOptState,
        grads: Any,
        params: Any,
        loss: jax.Array | None = None,
    ) -> tuple[Any, NormalizedOptState]:
        """The direction (``direction``): with the gradient's sign, no step size."""
        del loss
        return self.direction(theta, state, grads, params)


# Muon's quintic Newton–Schulz coefficients (Jordan et al. 2024), tuned for the steepest slope at
# 0: five iterations send every singular value into about [0.5, 1.5] rather than to exactly 1.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5
NEWTON_SCHULZ_EPS = 1e-8


def orthogonalized(matrix: jax.Array) -> jax.Array:
    """``[a, b]`` -> ``[a, b]``: ``~ U V^T`` of ``matrix = U S V^T`` by quintic Newton–Schulz,
    ``X <- c0 X + (c1 A + c2 A^2) X`` with ``A = X X^T``, from ``X = matrix / ||matrix||_F`` (so
    every singular value starts in (0, 1]); run on the wide orientation, whose ``A`` is smaller."""
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / (jnp.linalg.norm(x) + NEWTON_SCHULZ_EPS)
    c0, c1, c2 = NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(NEWTON_SCHULZ_STEPS):
        a = x @ x.T
        x = c0 * x + (c1 * a + c2 * (a @ a)) @ x
    return x.T if tall else x


def factored_second_moment(second_moment: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``[n]``: Adafactor's rank-one ``r c^T / mean(r)`` of ``second_moment[n]`` seen as
    ``[prod(shape[:-1]), shape[-1]]`` (``r``, ``c``: its row and column means); a vector's own."""
    if len(shape) < 2:
        return second_moment
    v = second_moment.reshape(-1, shape[-1])
    rows, cols = jnp.mean(v, axis=1), jnp.mean(v, axis=0)
    return (rows[:, None] * cols[None, :] / (jnp.mean(rows) + FEATURE_EPS)).reshape(-1)
