"""Quadratic and noisy quadratic task families, with exact gradients and minimisers.

For a dynamic configuration ``(log_scales s, centre c, noise_std nu)`` of dimension ``d`` the
minibatch loss of parameters ``x`` is a quadratic around a noisy target ``c + nu * z``:

    loss(x, key) = 0.5 * mean_i exp(s_i) * (x_i - c_i - nu * z_i)^2,   z ~ N(0, I) drawn from key.

Its expectation over ``z`` (``exact_loss``) and the expectation of its gradient (``exact_grad``)
are known in closed form:

    E loss = 0.5 * mean_i exp(s_i) * ((x_i - c_i)^2 + nu^2),
    E grad_i = exp(s_i) * (x_i - c_i) / d,

so the minimiser is ``c`` whatever the noise. With ``nu = 0`` (the ``quadratic`` family) the
minibatch loss is the exact loss. The scales are log-uniform with condition number at most
``max_condition``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tasks.base import Params, Task, TaskFamily, sample_seed, split_index


class QuadraticConfig(NamedTuple):
    """Dynamic configuration of a quadratic task.

    Attributes:
      log_scales: ``[dim]`` float32 log curvatures ``s``.
      centre: ``[dim]`` float32 minimiser ``c``.
      noise_std: ``[]`` float32 standard deviation ``nu`` of the target noise.
      init_seed: ``[]`` uint32, folded into the key of ``init``.
      data_seed: ``[]`` uint32, folded into the key of every noise draw.
    """

    log_scales: jax.Array
    centre: jax.Array
    noise_std: jax.Array
    init_seed: jax.Array
    data_seed: jax.Array


class QuadraticTask(Task):
    """One quadratic; see the module docstring for the loss."""

    def __init__(self, family: QuadraticFamily, config: QuadraticConfig):
        self.family = family
        self.config = config

    @property
    def scales(self) -> jax.Array:
        """``[dim]`` curvatures ``exp(s)``."""
        return jnp.exp(self.config.log_scales)

    def init(self, key: jax.Array) -> Params:
        key = jax.random.fold_in(key, self.config.init_seed)
        x = self.family.init_std * jax.random.normal(key, (self.family.dim,), jnp.float32)
        return {"x": x}

    def _noisy_loss(self, params: Params, key: jax.Array) -> jax.Array:
        key = jax.random.fold_in(key, self.config.data_seed)
        noise = self.config.noise_std * jax.random.normal(key, (self.family.dim,), jnp.float32)
        residual = params["x"] - self.config.centre - noise
        return 0.5 * jnp.mean(self.scales * residual**2)

    def loss(self, params: Params, key: jax.Array) -> jax.Array:
        return self._noisy_loss(params, key)

    def eval_loss(self, params: Params, key: jax.Array, split: str = "outer_valid") -> jax.Array:
        # Every split draws its own noise stream; the train split's is the one ``loss`` sees.
        index = split_index(split)
        return self._noisy_loss(params, key if index == 0 else jax.random.fold_in(key, index))

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        split_index(split)
        return {"loss": self.exact_loss(params)}

    def exact_loss(self, params: Params) -> jax.Array:
        """``E_z loss(params)``: the loss averaged over the target noise."""
        gap = params["x"] - self.config.centre
        return 0.5 * jnp.mean(self.scales * (gap**2 + self.config.noise_std**2))

    def exact_grad(self, params: Params) -> Params:
        """``E_z grad loss(params)`` (equal to ``jax.grad(exact_loss)``), a tree like params."""
        return {"x": self.scales * (params["x"] - self.config.centre) / self.family.dim}

    def minimiser(self) -> Params:
        """The parameters minimising ``exact_loss``."""
        return {"x": self.config.centre}

    def minimum_loss(self) -> jax.Array:
        """``exact_loss(minimiser())``: the noise floor ``0.5 * nu^2 * mean(exp(s))``."""
        return 0.5 * self.config.noise_std**2 * jnp.mean(self.scales)


class QuadraticFamily(TaskFamily):
    """Quadratics of static dimension ``dim`` (see the module docstring).

    Attributes:
      dim: number of parameters.
      max_condition: the scales are ``exp(U(-a, a))`` with ``a = log(max_condition) / 2``.
      centre_std: the centre is ``N(0, centre_std^2 I)``.
      noise_range: ``(low, high)`` of the log-uniform target noise; ``(0, 0)`` for no noise.
      init_std: the initial parameters are ``N(0, init_std^2 I)``.
      family_name: ``"quadratic"`` or ``"noisy_quadratic"`` (prefix of ``name``).
    """

    dim: int = struct.field(pytree_node=False, default=16)
    max_condition: float = struct.field(pytree_node=False, default=100.0)
    centre_std: float = struct.field(pytree_node=False, default=1.0)
    noise_range: tuple[float, float] = struct.field(pytree_node=False, default=(0.0, 0.0))
    init_std: float = struct.field(pytree_node=False, default=1.0)
    family_name: str = struct.field(pytree_node=False, default="quadratic")

    def __post_init__(self):
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not self.max_condition >= 1.0:
            raise ValueError(f"max_condition must be >= 1, got {self.max_condition!r}")
        low, high = self.noise_range
        if not (0.0 <= low <= high) or (low == 0.0 and high > 0.0):
            raise ValueError(
                f"noise_range must be (0, 0) or 0 < low <= high, got {self.noise_range!r}"
            )

    @property
    def name(self) -> str:
        return f"{self.family_name}_d{self.dim}"

    @property
    def _log_scale_bound(self) -> float:
        return 0.5 * math.log(self.max_condition)

    def sample(self, key: jax.Array) -> QuadraticConfig:
        scale_key, centre_key, noise_key, init_key, data_key = jax.random.split(key, 5)
        bound = self._log_scale_bound
        low, high = self.noise_range
        if high > 0.0:
            log_noise = jax.random.uniform(
                noise_key, (), minval=math.log(low), maxval=math.log(high)
            )
            noise_std = jnp.exp(log_noise)
        else:
            noise_std = jnp.zeros((), jnp.float32)
        return QuadraticConfig(
            log_scales=jax.random.uniform(scale_key, (self.dim,), minval=-bound, maxval=bound),
            centre=self.centre_std * jax.random.normal(centre_key, (self.dim,), jnp.float32),
            noise_std=noise_std,
            init_seed=sample_seed(init_key),
            data_seed=sample_seed(data_key),
        )

    def default_config(self) -> QuadraticConfig:
        """Scales spread evenly over the full condition range, centre at the origin, the
        geometric mean of the noise range, seeds 0."""
        bound = self._log_scale_bound
        low, high = self.noise_range
        return QuadraticConfig(
            log_scales=jnp.linspace(-bound, bound, self.dim, dtype=jnp.float32),
            centre=jnp.zeros((self.dim,), jnp.float32),
            noise_std=jnp.asarray(math.sqrt(low * high), jnp.float32),
            init_seed=jnp.zeros((), jnp.uint32),
            data_seed=jnp.zeros((), jnp.uint32),
        )

    def task(self, config: QuadraticConfig) -> QuadraticTask:
        return QuadraticTask(self, config)


def quadratic_family(
    dim: int = 16, max_condition: float = 100.0, centre_std: float = 1.0, init_std: float = 1.0
) -> QuadraticFamily:
    """Noise-free quadratics: the minibatch loss is the exact loss."""
    return QuadraticFamily(
        dim=dim, max_condition=max_condition, centre_std=centre_std, init_std=init_std
    )


def noisy_quadratic_family(
    dim: int = 16,
    max_condition: float = 100.0,
    noise_range: tuple[float, float] = (0.1, 1.0),
    centre_std: float = 1.0,
    init_std: float = 1.0,
) -> QuadraticFamily:
    """Quadratics with a noisy target per minibatch (unbiased gradient noise)."""
    return QuadraticFamily(
        dim=dim,
        max_condition=max_condition,
        centre_std=centre_std,
        noise_range=tuple(noise_range),
        init_std=init_std,
        family_name="noisy_quadratic",
    )
