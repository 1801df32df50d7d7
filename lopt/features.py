"""Inputs and outputs shared by the per-parameter learned optimizers (MLP and LSTM).

Per parameter (columns ``[size_i]`` per tensor, ``columns``; each normalised per tensor as
``x / sqrt(mean_tensor(x**2) + eps)``, a scale the networks fold into their first layer):

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
from collections.abc import Callable, Sequence
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
      tensors: per tensor, ``(g, p, m, v)``: flat float32 gradient and parameter ``[size_i]``,
        updated momenta ``[size_i, num_decays]`` and second moment ``[size_i]`` (the new state);
        ``columns(*tensors[i])`` are its feature columns, not yet normalised.
      scales: ``[num_tensors, num_features]`` the normalisers ``rsqrt(mean square + eps)``: the
        network's features are ``columns[i][k] * scales[i, k]``.
      tensor_mean_squares: ``[num_tensors, num_features]`` the per-tensor mean squares.
      context: ``[num_context]`` per-step features (time, optionally loss).
      loss_ema: ``[]`` updated loss moving average (new state).
    """

    layout: flat.FlatLayout
    tensors: tuple[tuple[jax.Array, jax.Array, jax.Array, jax.Array], ...]
    scales: jax.Array
    tensor_mean_squares: jax.Array
    context: jax.Array
    loss_ema: jax.Array

    @property
    def momenta(self) -> tuple[jax.Array, ...]:
        return tuple(m for _, _, m, _ in self.tensors)

    @property
    def second_moment(self) -> tuple[jax.Array, ...]:
        return tuple(v for _, _, _, v in self.tensors)


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


MEAN_BLOCK = 1024  # elements per partial sum of ``means``


def means(arrays: Sequence[jax.Array]) -> jax.Array:
    """``[len(arrays)]``: the mean of each ``[n]`` array (0 where ``n = 0``), in one variadic
    reduction to partial sums of ``MEAN_BLOCK`` elements, then a sum of those.

    The rules normalize each feature column by its RMS over the tensor. Written as the means of
    expressions in g, p, m and v that no network column shares, one loop computes them all; a
    column shared by a reduction and the network would instead be stored by XLA and read twice
    (the normalized rule's update on a 1M-parameter tensor: 30.7 -> 20.0 ms). The partial sums
    keep float32 accurate: one running sum over 800k elements is off by about 4e-4.
    """
    n = arrays[0].shape[0]
    block = min(n, MEAN_BLOCK) or 1
    rows = -(-n // block)
    blocks = tuple(jnp.pad(a, (0, rows * block - n)).reshape(rows, block) for a in arrays)
    partial_sums = jax.lax.reduce(
        blocks,
        tuple(jnp.zeros((), b.dtype) for b in blocks),
        lambda xs, ys: tuple(x + y for x, y in zip(xs, ys, strict=True)),
        (1,),
    )
    return jnp.stack([jnp.sum(s) for s in partial_sums]) / max(n, 1)


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
    # and v (sqrt(v)**2 = v, (g / sqrt(v))**2 = g**2 / v), never from the columns the network
    # reads (``means``). Nothing [num_params]-sized is built here: the networks run per tensor,
    # in one pass reading g, p, m and v.
    mean_squares = []
    for g_i, p_i, m_i, v_i in tensors:
        g2 = g_i * g_i
        momenta = [m_i[:, b] for b in range(m_i.shape[1])]
        mean_squares.append(
            means([g2, p_i * p_i, *(m_b * m_b for m_b in momenta), v_i, g2 / (v_i + RMS_EPS)])
        )
    mean_squares = jnp.stack(mean_squares)
    context = time_features(config, state.step, state.num_steps)
    loss_ema = state.loss_ema
    if config.use_loss:
        feature, loss_ema = loss_feature(state.step, loss, state.loss_ema)
        context = jnp.concatenate([context, feature[None]])
    return Inputs(
        layout,
        tuple(tensors),
        jax.lax.rsqrt(mean_squares + NORM_EPS),
        mean_squares,
        context,
        loss_ema,
    )


def columns(g: jax.Array, p: jax.Array, m: jax.Array, v: jax.Array) -> list[jax.Array]:
    """The ``num_features`` feature columns ``[n]`` of one tensor (or block of rows), not yet
    normalised: ``g, p, m_b..., sqrt(v), g / sqrt(v + eps)``."""
    momenta = [m[:, b] for b in range(m.shape[1])]
    return [g, p, *momenta, jnp.sqrt(v), g * jax.lax.rsqrt(v + RMS_EPS)]


def dense(
    inputs: Sequence[jax.Array], w: jax.Array, b: jax.Array | Sequence[jax.Array]
) -> list[jax.Array]:
    """``inputs @ w + b`` on columns: ``[sum_k inputs[k] * w[k, j] + b[j] for j]``, each ``[n]``
    (``b[j]`` a scalar or a column).

    Written as per-column scalar arithmetic, not as ``[n, I] @ [I, O]``: XLA fuses a whole network
    of such layers into one loop over the parameters, where the skinny matmuls are memory-bound
    (they write and read an ``[n, O]`` matrix per layer; memory-bound, so slower on CPU)."""
    return [
        sum((x_k * w[k, j] for k, x_k in enumerate(inputs)), start=b[j]) for j in range(w.shape[1])
    ]


ROW_BLOCK = 1024  # rows per block of map_row_blocks: [1024, 64] float32 gates are 256 KiB
# Blocks per iteration of map_row_blocks (vectorised together): one block's matmuls are too small
# for XLA to split over the cores. On the 2-core CPU, the (32, 32) MLP rule's update on 1.07M
# parameters: 88 ms one block at a time, 47 ms with 16 (the LSTM's: 267 -> 227 ms); 32 blocks
# (57 ms) or one block of 16k rows (58 ms) are slower.
BLOCKS_PER_ITERATION = 16


def map_row_blocks(
    fn: Callable[..., tuple[jax.Array, ...]], arrays: Sequence[jax.Array]
) -> tuple[jax.Array, ...]:
    """``fn(*arrays)`` for a row-wise ``fn`` (row ``r`` of every output depends only on row ``r``
    of every input ``arrays[i][n, ...]``), run over blocks of ``ROW_BLOCK`` rows,
    ``BLOCKS_PER_ITERATION`` at a time (``lax.map``), then the remaining rows, so that the
    ``[rows, width]`` intermediates of ``fn``'s skinny matmuls stay small: over all ``n`` rows at
    once each would make a round trip through memory. Equal to ``fn(*arrays)`` up to float
    rounding."""
    n = arrays[0].shape[0]
    full = n // ROW_BLOCK * ROW_BLOCK
    parts = []
    if full:
        blocks = [x[:full].reshape(full // ROW_BLOCK, ROW_BLOCK, *x.shape[1:]) for x in arrays]
        out = jax.lax.map(lambda xs: fn(*xs), blocks, batch_size=BLOCKS_PER_ITERATION)
        parts.append([o.reshape(full, *o.shape[2:]) for o in out])
    if full < n or not full:  # the remaining rows (an empty tensor: none at all)
        parts.append(fn(*(x[full:] for x in arrays)))
    return tuple(
        jnp.concatenate(outs) if len(parts) > 1 else outs[0] for outs in zip(*parts, strict=True)
    )


def tree_of(layout: flat.FlatLayout, pieces: Sequence[jax.Array]) -> Any:
    """The params-shaped tree of the per-tensor ``pieces[size_i]``, reshaped and cast to the leaf
    dtypes."""
    leaves = [
        piece.reshape(shape).astype(dtype)
        for piece, shape, dtype in zip(pieces, layout.shapes, layout.dtypes, strict=True)
    ]
    return jax.tree.unflatten(layout.treedef, leaves)


def scaled_step(
    direction: jax.Array, magnitude: jax.Array, exp_mult: float, step_mult: float
) -> jax.Array:
    """``[N]`` step ``direction * exp(exp_mult * magnitude) * step_mult`` from the network's two
    output columns ``[N]``."""
    return direction * jnp.exp(exp_mult * magnitude) * step_mult


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
