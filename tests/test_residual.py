"""Residual LayerNorm MLPs (tasks.residual): LayerNorm maths and invariances, shapes, training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adam_steps import adam_run

from meta_train.es.compile_options import FAST_COMPILE
from tasks import registry, residual

jit_unoptimised = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def test_layer_norm_normalises_and_is_invariant():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 16)), jnp.float32)
    identity = residual.layer_norm_params(16)
    y = residual.layer_norm(x, identity)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-3)
    # Invariant to a per-example shift and positive scale of its input.
    shifted = 5.0 * x + jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)
    np.testing.assert_allclose(residual.layer_norm(shifted, identity), y, rtol=1e-4, atol=1e-4)
    # The learned scale and bias act per feature, after normalising.
    params = {
        "scale": jnp.asarray(rng.normal(size=16), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=16), jnp.float32),
    }
    np.testing.assert_allclose(
        residual.layer_norm(x, params), params["scale"] * y + params["bias"], rtol=1e-5, atol=1e-5
    )


@pytest.fixture(scope="module")
def family() -> residual.ResidualMLPFamily:
    return registry.get_family("resmlp_mnist1d", width=16, num_blocks=2, batch_size=64)


def test_param_shapes(family):
    params = family.task(family.default_config()).init(jax.random.key(0))
    block = {
        "norm": {"scale": (16,), "bias": (16,)},
        "dense_0": {"w": (16, 32), "b": (32,)},
        "dense_1": {"w": (32, 16), "b": (16,)},
    }
    assert jax.tree.map(lambda a: a.shape, params) == {
        "embed": {"w": (40, 16), "b": (16,)},
        "block_0": block,
        "block_1": block,
        "norm": {"scale": (16,), "bias": (16,)},
        "head": {"w": (16, 10), "b": (10,)},
    }
    assert family.name == "resmlp_mnist1d_w16_k2_e2_relu_b64"


def test_scale_invariance_of_the_embedding(family):
    """Scaling the embedding layer and every block's output layer by c > 0 scales the residual
    stream by c, which the LayerNorms undo: the logits are unchanged (up to LayerNorm's eps)."""
    params = family.task(family.default_config()).init(jax.random.key(0))
    inputs = family.data.test_x[:8]
    c = 7.0
    scaled = dict(params)
    scaled["embed"] = jax.tree.map(lambda a: c * a, params["embed"])
    for k in range(family.num_blocks):
        block = dict(params[f"block_{k}"])
        block["dense_1"] = jax.tree.map(lambda a: c * a, block["dense_1"])
        scaled[f"block_{k}"] = block
    np.testing.assert_allclose(
        family.apply(scaled, inputs), family.apply(params, inputs), rtol=1e-4, atol=1e-4
    )
    # Scaling only the head does change the logits (a sanity check that the test can fail).
    head_scaled = {**params, "head": jax.tree.map(lambda a: c * a, params["head"])}
    assert np.abs(family.apply(head_scaled, inputs) - family.apply(params, inputs)).max() > 1e-2


def test_finite_losses_metrics_and_adam_lowers_the_loss(family):
    losses, eval_loss, metrics = jax.device_get(adam_run(family, jax.random.key(0), "inner_valid"))
    assert np.all(np.isfinite(losses)) and np.isfinite(eval_loss)
    assert set(metrics) == {"loss", "accuracy"}
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    assert metrics["accuracy"] > 0.2  # chance is 0.1


def test_options_are_checked():
    with pytest.raises(ValueError, match="num_blocks must be a positive int"):
        registry.get_family("resmlp_mnist1d", num_blocks=0)
    with pytest.raises(ValueError, match="unknown activation"):
        registry.get_family("resmlp_mnist1d", activation="swish")
