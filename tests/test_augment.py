"""Task augmentation by reparameterized weights (tasks.augment)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import SAMPLED_SEED_END, augment, quadratic, registry

LEVELS = augment.LEVELS


@pytest.fixture(scope="module")
def digits_family():
    return registry.get_family("mlp_digits", hidden=(8,), batch_size=16)


def scaled_config(family: augment.ReparameterizedFamily, seed: int) -> augment.ReparamConfig:
    """The base default configuration with scales drawn by ``sample``."""
    scales = family.sample(jax.random.key(seed)).scales
    return augment.ReparamConfig(base=family.base.default_config(), scales=scales)


@pytest.mark.parametrize("level", LEVELS)
def test_same_function_at_init_and_after_a_step(digits_family, level):
    family = augment.reparameterize(digits_family, level)
    base_task = digits_family.task(digits_family.default_config())
    task = family.task(scaled_config(family, 1))
    init_key, loss_key = jax.random.key(2), jax.random.key(3)
    base_params, params = base_task.init(init_key), task.init(init_key)

    # The scales are far from 1 somewhere, so equal losses are not an accident of s = 1.
    scales = jax.tree.leaves(task.scales)
    assert max(float(jnp.max(jnp.abs(jnp.log(s)))) for s in scales) > 1.0
    np.testing.assert_allclose(
        task.loss(params, loss_key), base_task.loss(base_params, loss_key), rtol=1e-5
    )
    np.testing.assert_allclose(
        task.eval_loss(params, loss_key, "test"),
        base_task.eval_loss(base_params, loss_key, "test"),
        rtol=1e-5,
    )
    for metric, value in base_task.evaluate(base_params).items():
        np.testing.assert_allclose(task.evaluate(params)[metric], value, rtol=1e-5)

    # grad w' = s * grad w, leaf by leaf.
    grads = jax.grad(task.loss)(params, loss_key)
    base_grads = jax.grad(base_task.loss)(base_params, loss_key)
    jax.tree.map(
        lambda g, s, bg: np.testing.assert_allclose(g, s * bg, rtol=1e-4, atol=1e-7),
        grads,
        task.scales,
        base_grads,
    )


@pytest.mark.parametrize("level", LEVELS)
def test_scale_shapes_per_level(digits_family, level):
    family = augment.reparameterize(digits_family, level)
    scales = family.sample(jax.random.key(0)).scales
    params = digits_family.task(digits_family.default_config()).init(jax.random.key(0))
    assert jax.tree.structure(scales) == jax.tree.structure(params)
    leaves = jax.tree.leaves(scales)
    for scale, param in zip(leaves, jax.tree.leaves(params), strict=True):
        assert scale.dtype == param.dtype
        assert scale.shape == (param.shape if level == "parameter" else ())
    distinct = len(np.unique(np.concatenate([np.ravel(s) for s in leaves])))
    expected = {"global": 1, "tensor": len(leaves), "parameter": sum(p.size for p in leaves)}
    assert distinct == expected[level]


def test_default_config_is_the_base_task(digits_family):
    family = augment.reparameterize(digits_family, "parameter")
    config = family.default_config()
    assert all(np.all(s == 1.0) for s in jax.tree.leaves(config.scales))
    key = jax.random.key(0)
    params = family.task(config).init(key)
    base_params = digits_family.task(digits_family.default_config()).init(key)
    jax.tree.map(np.testing.assert_array_equal, params, base_params)


@pytest.mark.parametrize("level", LEVELS)
def test_sample_is_jittable_and_vmappable(level):
    family = augment.reparameterize(quadratic.quadratic_family(dim=4), level)
    configs = jax.jit(jax.vmap(family.sample))(jax.random.split(jax.random.key(0), 3))
    one = family.sample(jax.random.key(5))
    assert jax.tree.structure(configs) == jax.tree.structure(one)
    for batched, single in zip(jax.tree.leaves(configs), jax.tree.leaves(one), strict=True):
        assert batched.shape == (3, *single.shape)

    def init_and_loss(config, key):
        task = family.task(config)
        return task.loss(task.init(key), key)

    losses = jax.jit(jax.vmap(init_and_loss))(configs, jax.random.split(jax.random.key(1), 3))
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))


def assert_log_uniform(scales: np.ndarray, low: float, high: float) -> None:
    """``scales`` lie in ``[low, high]`` and ``u = log(s)`` mapped to ``[0, 1]`` is uniform: its
    mean, variance and decile counts match, within about four standard errors."""
    n = scales.size
    assert scales.min() >= low * (1 - 1e-5) and scales.max() <= high * (1 + 1e-5)
    u = (np.log(scales) - math.log(low)) / (math.log(high) - math.log(low))
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 4 * math.sqrt(1 / 180 / n)
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - n / 10) < 4 * math.sqrt(n * 0.09))


def test_scales_are_log_uniform_in_range():
    # One draw of 2000 per-parameter scales, in the default range.
    family = augment.reparameterize(quadratic.quadratic_family(dim=2000), "parameter")
    scales = np.asarray(family.sample(jax.random.key(0)).scales["x"])
    assert_log_uniform(scales, *augment.DEFAULT_SCALE_RANGE)
    # 2000 draws of the global scale, in another range.
    low, high = 1e-2, 1e4
    family = augment.reparameterize(quadratic.quadratic_family(dim=4), "global", (low, high))
    configs = jax.vmap(family.sample)(jax.random.split(jax.random.key(1), 2000))
    assert_log_uniform(np.asarray(configs.scales["x"]), low, high)


def test_name_held_out_config_and_errors(digits_family):
    family = augment.reparameterize(digits_family, "tensor")
    assert family.name == f"{digits_family.name}_reparam_tensor"
    config = registry.held_out_config(family, 3)
    assert int(config.base.init_seed) == int(config.base.data_seed) == SAMPLED_SEED_END + 3
    assert all(np.all(s == 1.0) for s in jax.tree.leaves(config.scales))
    with pytest.raises(ValueError, match="level"):
        augment.reparameterize(digits_family, "layer")
    with pytest.raises(ValueError, match="scale_range"):
        augment.reparameterize(digits_family, "global", (1.0, 0.1))
    with pytest.raises(TypeError, match="TaskFamily"):
        augment.reparameterize("mlp_digits")
