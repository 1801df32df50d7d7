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
      momenta: ``[num_params, num_decays]`` updated momenta (new state).
      second_moment: ``[num_params]`` updated second moment (new state).
      loss_ema: ``[]`` updated loss moving average (new state).
    """

    layout: flat.FlatLayout
    features: jax.Array
    tensor_mean_squares: jax.Array
    context: jax.Array
    momenta: jax.Array
    second_moment: jax.Array
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


def num_param_features(config: FeatureConfig) -> int:
    return len(config.momentum_decays) + NUM_EXTRA_PARAM_FEATURES


def num_context_features(config: FeatureConfig) -> int:
    return len(config.time_scales) + len(config.fraction_scales) + int(config.use_loss)


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


def update_moments(
    config: FeatureConfig, momenta: jax.Array, second_moment: jax.Array, grads: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``m[N, D] <- b m + (1 - b) g`` for each decay b, ``v[N] <- r v + (1 - r) g**2``."""
    decays = jnp.asarray(config.momentum_decays, jnp.float32)
    momenta = decays * momenta + (1.0 - decays) * grads[:, None]
    rms_decay = config.rms_decay
    second_moment = rms_decay * second_moment + (1.0 - rms_decay) * jnp.square(grads)
    return momenta, second_moment


def time_features(config: FeatureConfig, step: jax.Array, num_steps: jax.Array) -> list[jax.Array]:
    """``tanh(t / tau - 1)`` per absolute time scale and ``tanh(f / tau - 1)`` per fraction."""
    t = step.astype(jnp.float32)
    fraction = t / jnp.maximum(num_steps, 1).astype(jnp.float32)
    absolute = [jnp.tanh(t / tau - 1.0) for tau in config.time_scales]
    relative = [jnp.tanh(fraction / tau - 1.0) for tau in config.fraction_scales]
    return absolute + relative


def loss_feature(
    step: jax.Array, loss: jax.Array, loss_ema: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(tanh((loss - ema) / |ema|), new_ema)``; the moving average starts at the first loss."""
    loss = jnp.asarray(loss, jnp.float32)
    previous = jnp.where(step == 0, loss, loss_ema)
    feature = jnp.tanh((loss - previous) / (jnp.abs(previous) + 1e-8))
    return feature, LOSS_EMA_DECAY * previous + (1.0 - LOSS_EMA_DECAY) * loss


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
    layout = flat.layout_of(params)
    flat.check_same_structure(layout, grads, "grads")
    if state.momenta.shape[0] != layout.num_params:
        raise ValueError(
            f"the optimizer state was initialised for {state.momenta.shape[0]} parameters but "
            f"params have {layout.num_params}: call init with these params"
        )
    g = flat.flatten(grads)
    p = flat.flatten(params)
    momenta, second_moment = update_moments(config, state.momenta, state.second_moment, g)
    rms = jnp.sqrt(second_moment)
    raw = jnp.concatenate(
        [
            g[:, None],
            p[:, None],
            momenta,
            rms[:, None],
            (g * jax.lax.rsqrt(second_moment + RMS_EPS))[:, None],
        ],
        axis=1,
    )
    mean_squares = flat.per_tensor_mean_square(layout, raw)
    features = flat.per_tensor_scale(layout, raw, jax.lax.rsqrt(mean_squares + NORM_EPS))
    context = time_features(config, state.step, state.num_steps)
    loss_ema = state.loss_ema
    if config.use_loss:
        feature, loss_ema = loss_feature(state.step, loss, state.loss_ema)
        context.append(feature)
    return Inputs(
        layout,
        features,
        mean_squares,
        jnp.stack(context) if context else jnp.zeros((0,), jnp.float32),
        momenta,
        second_moment,
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
