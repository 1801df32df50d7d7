"""Inputs and outputs shared by the per-parameter learned optimizers (MLP and LSTM).

Per parameter (rows of a ``[num_params, num_features]`` matrix, each column normalised per tensor
as ``x / sqrt(mean_tensor(x**2) + eps)``):

    g, p, m_b for b in momentum_decays, sqrt(v), g / sqrt(v + eps)

with ``m_b <- b m_b + (1 - b) g`` and ``v <- rms_decay v + (1 - rms_decay) g**2``. No bias
correction is needed: it is one scalar for all parameters, which the per-tensor normalisation
removes.

Per step (the same for every parameter, so they enter the network as a bias of its first layer,
never as columns of the big matrix): ``tanh(t / tau - 1)`` over absolute time scales tau,
``tanh(f / tau - 1)`` over fractions tau of training done ``f = t / num_steps``, and optionally the
relative change of the loss against its moving average.

Output: two numbers per parameter, ``direction`` and ``magnitude``, giving the step
``direction * exp(exp_mult * magnitude) * step_mult``; with ``exp_mult = step_mult = 1e-3``
(Metz et al.) an untrained network takes small steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt import flat

NORM_EPS = 1e-12
RMS_EPS = 1e-12
LOSS_EMA_DECAY = 0.9
NUM_EXTRA_PARAM_FEATURES = 4  # g, p, sqrt(v), g / sqrt(v)


class FeatureConfig(NamedTuple):
    """The hyperparameters of the features (a subset of an optimizer's fields)."""

    momentum_decays: tuple[float, ...]
    rms_decay: float
    time_scales: tuple[float, ...]
    fraction_scales: tuple[float, ...]
    use_loss: bool


class Inputs(NamedTuple):
    """What a per-parameter network sees at one step.

    Attributes:
      layout: static layout of the params.
      features: ``[num_params, num_features]`` normalised per-parameter features.
      tensor_mean_squares: ``[num_tensors, num_features]`` the per-tensor normalisers.
      context: ``[num_context]`` per-step features (time, optionally loss).
      momenta: ``[size_i, num_decays]`` per tensor, updated momenta (new state).
      second_moment: ``[size_i]`` per tensor, updated second moment (new state).
      loss_ema: ``[]`` updated loss moving average (new state).
    """

    layout: flat.FlatLayout
    features: jax.Array
    tensor_mean_squares: jax.Array
    context: jax.Array
    momenta: tuple[jax.Array, ...]
    second_moment: tuple[jax.Array, ...]
    loss_ema: jax.Array


def freeze_sequences(obj: Any) -> None:
    """Turn list-valued dataclass fields into tuples (JSON and ml_collections give lists), so the
    frozen dataclass stays hashable."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, list):
            object.__setattr__(obj, field.name, tuple(value))


def check_decays(name: str, decays: Sequence[float]) -> None:
    if not all(0.0 <= d < 1.0 for d in decays):
        raise ValueError(f"{name} must lie in [0, 1), got {decays}")


def check_positive(name: str, values: Sequence[float]) -> None:
    if not all(v > 0 for v in values):
        raise ValueError(f"{name} must be positive, got {values}")


def check_config(config: FeatureConfig) -> None:
    """Raise ``ValueError`` naming the first out-of-range feature hyperparameter."""
    check_decays("momentum_decays", config.momentum_decays)
    check_decays("rms_decay", (config.rms_decay,))
    check_positive("time_scales", config.time_scales)
    check_positive("fraction_scales", config.fraction_scales)


def num_param_features(config: FeatureConfig) -> int:
    return len(config.momentum_decays) + NUM_EXTRA_PARAM_FEATURES


def num_context_features(config: FeatureConfig) -> int:
    return len(config.time_scales) + len(config.fraction_scales) + int(config.use_loss)


class FeatureFields:
    """Mixin for optimizer dataclasses that have the fields of ``FeatureConfig``.

    It declares no fields itself, so the dataclass keeps its own field order (constructor and
    ``hyperparameters()``).
    """

    @property
    def feature_config(self) -> FeatureConfig:
        """The hyperparameters the features depend on."""
        return FeatureConfig(*(getattr(self, name) for name in FeatureConfig._fields))

    @property
    def num_features(self) -> int:
        """Columns of the per-parameter feature matrix."""
        return num_param_features(self.feature_config)


def horizon(num_steps: jax.Array | int) -> jax.Array:
    """``num_steps`` (a Python int or a traced integer scalar) as an int32 scalar, checked >= 1
    when it is concrete."""
    if isinstance(num_steps, int) and num_steps < 1:
        raise ValueError(f"num_steps must be >= 1 (the inner training horizon), got {num_steps}")
    return jnp.asarray(num_steps, jnp.int32)


def scaled_normals(
    key: jax.Array, shapes: Sequence[tuple[int, int]], scales: Sequence[float]
) -> list[jax.Array]:
    """Matrices ``[fan_in, fan_out] ~ N(0, scale**2 / fan_in)``, cut from one normal draw (one
    random kernel to compile, not one per shape)."""
    sizes = [fan_in * fan_out for fan_in, fan_out in shapes]
    draws = jax.random.normal(key, (sum(sizes),), jnp.float32)
    matrices, offset = [], 0
    for (fan_in, fan_out), size, scale in zip(shapes, sizes, scales, strict=True):
        block = draws[offset : offset + size].reshape(fan_in, fan_out)
        matrices.append(block * (scale / max(fan_in, 1) ** 0.5))
        offset += size
    return matrices


def init_moments(
    layout: flat.FlatLayout, num_decays: int
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Zero momenta ``[size_i, num_decays]`` and second moments ``[size_i]``, one per tensor."""
    momenta = tuple(jnp.zeros((size, num_decays), jnp.float32) for size in layout.sizes)
    second_moment = tuple(jnp.zeros((size,), jnp.float32) for size in layout.sizes)
    return momenta, second_moment


def update_moments(
    config: FeatureConfig, momentum: jax.Array, second_moment: jax.Array, grads: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One tensor: ``m[n, D] <- b m + (1 - b) g`` per decay b; ``v[n] <- r v + (1 - r) g**2``."""
    decays = jnp.asarray(config.momentum_decays, jnp.float32)
    momentum = decays * momentum + (1.0 - decays) * grads[:, None]
    rms_decay = config.rms_decay
    second_moment = rms_decay * second_moment + (1.0 - rms_decay) * jnp.square(grads)
    return momentum, second_moment


def flat_momentum(momenta: tuple[jax.Array, ...], index: int) -> jax.Array:
    """``[num_params]``: the momentum with decay number ``index`` of every tensor."""
    return jnp.concatenate([m[:, index] for m in momenta])


def time_features(config: FeatureConfig, step: jax.Array, num_steps: jax.Array) -> jax.Array:
    """``[T]``: ``tanh(t / tau - 1)`` per absolute time scale, then ``tanh(f / tau - 1)`` per
    fraction scale, with ``f = t / num_steps`` (one vector op, not one op per feature)."""
    t = step.astype(jnp.float32)
    fraction = t / jnp.maximum(num_steps, 1).astype(jnp.float32)
    numerators = jnp.concatenate(
        [
            jnp.full((len(config.time_scales),), t),
            jnp.full((len(config.fraction_scales),), fraction),
        ]
    )
    scales = jnp.asarray((*config.time_scales, *config.fraction_scales), jnp.float32)
    return jnp.tanh(numerators / scales - 1.0)


def loss_feature(
    step: jax.Array, loss: jax.Array, loss_ema: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(tanh((loss - ema) / |ema|), new_ema)``; the moving average starts at the first loss."""
    loss = jnp.asarray(loss, jnp.float32)
    previous = jnp.where(step == 0, loss, loss_ema)
    feature = jnp.tanh((loss - previous) / (jnp.abs(previous) + 1e-8))
    return feature, LOSS_EMA_DECAY * previous + (1.0 - LOSS_EMA_DECAY) * loss


def updated_tensors(
    config: FeatureConfig, state: Any, grads: Any, params: Any
) -> tuple[flat.FlatLayout, list[tuple[jax.Array, jax.Array, jax.Array, jax.Array]]]:
    """``(layout, [(g, p, m, v)] per tensor)``: flat float32 gradient and parameter, and the
    moments of ``state`` (fields ``momenta, second_moment``) updated with the gradient. Checks
    that the gradients and the state match the params."""
    layout = flat.layout_of(params)
    flat.check_same_structure(layout, grads, "grads")
    state_sizes = tuple(v.shape[0] for v in state.second_moment)
    if state_sizes != layout.sizes:
        raise ValueError(
            f"the optimizer state was initialised for tensors of sizes {state_sizes} but params "
            f"have {layout.sizes}: call init with these params"
        )
    tensors = []
    for grad, param, m_old, v_old in zip(
        jax.tree.leaves(grads),
        jax.tree.leaves(params),
        state.momenta,
        state.second_moment,
        strict=True,
    ):
        g = jnp.ravel(jnp.asarray(grad, jnp.float32))
        p = jnp.ravel(jnp.asarray(param, jnp.float32))
        tensors.append((g, p, *update_moments(config, m_old, v_old, g)))
    return layout, tensors


def prepare_inputs(
    config: FeatureConfig,
    optimizer_name: str,
    state: Any,
    grads: Any,
    params: Any,
    loss: jax.Array | None,
) -> Inputs:
    """Update the accumulators in ``state`` (fields ``step, num_steps, momenta, second_moment,
    loss_ema``) with ``grads`` and build the network's inputs."""
    if config.use_loss and loss is None:
        raise ValueError(
            f"{optimizer_name} was built with use_loss=True and needs the loss: pass "
            "update(..., loss=loss), or value=loss to the optax transform"
        )
    layout, tensors = updated_tensors(config, state, grads, params)
    # Tensor by tensor, on per-tensor state: the mean squares are reduced straight from g, p, m
    # and v (sqrt(v)**2 = v, (g / sqrt(v))**2 = g**2 / v), so XLA never materialises an
    # unnormalised [N, F] matrix (nor slices of one): the normalised matrix is written once, by
    # the final concatenation.
    blocks, mean_squares, momenta, second_moment = [], [], [], []
    for g_i, p_i, m_i, v_i in tensors:
        momenta.append(m_i)
        second_moment.append(v_i)
        size = g_i.shape[0]
        inv_rms_i = jax.lax.rsqrt(v_i + RMS_EPS)
        mean_square = jnp.concatenate(
            [
                jnp.stack([jnp.mean(jnp.square(g_i)), jnp.mean(jnp.square(p_i))]),
                jnp.mean(jnp.square(m_i), axis=0),
                jnp.stack([jnp.mean(v_i), jnp.mean(jnp.square(g_i * inv_rms_i))]),
            ]
        )
        if not size:
            mean_square = jnp.zeros_like(mean_square)
        scale = jax.lax.rsqrt(mean_square + NORM_EPS)
        block = [
            g_i[:, None],
            p_i[:, None],
            m_i,
            jnp.sqrt(v_i)[:, None],
            (g_i * inv_rms_i)[:, None],
        ]
        blocks.append(jnp.concatenate(block, axis=1) * scale)
        mean_squares.append(mean_square)
    features = jnp.concatenate(blocks)
    mean_squares = jnp.stack(mean_squares)
    context = time_features(config, state.step, state.num_steps)
    loss_ema = state.loss_ema
    if config.use_loss:
        feature, loss_ema = loss_feature(state.step, loss, state.loss_ema)
        context = jnp.concatenate([context, feature[None]])
    return Inputs(
        layout,
        features,
        mean_squares,
        context,
        tuple(momenta),
        tuple(second_moment),
        loss_ema,
    )


def scaled_step(out: jax.Array, exp_mult: float, step_mult: float) -> jax.Array:
    """``[N]`` step from ``out[N, 2] = (direction, magnitude)``."""
    return out[:, 0] * jnp.exp(exp_mult * out[:, 1]) * step_mult


def adam_direction(
    momentum: jax.Array,
    second_moment: jax.Array,
    step: jax.Array,
    beta1: float,
    beta2: float,
    eps: float,
) -> jax.Array:
    """Adam's bias-corrected ``m_hat / (sqrt(v_hat) + eps)`` after ``step`` updates (step >= 1)."""
    t = step.astype(jnp.float32)
    m_hat = momentum / (1.0 - beta1**t)
    v_hat = second_moment / (1.0 - beta2**t)
    return m_hat / (jnp.sqrt(v_hat) + eps)
