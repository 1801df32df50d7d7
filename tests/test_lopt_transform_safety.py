"""The optax transform of a learned optimizer: what a non-finite gradient entry does, compared with
``optax.adam`` (documented in ``lopt.to_optax``), the ``optax.apply_if_finite`` remedy, and params
other than those ``init`` saw refused even when their sizes match."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt

PARAMS = {"a": jnp.ones(6), "b": jnp.ones((2, 3))}


def nan_pattern(tx, steps=3):
    """Per step, per tensor, which update entries are NaN; step 0's gradient has one NaN at a[2]."""
    state = tx.init(PARAMS)
    patterns = []
    for step in range(steps):
        grads = {"a": jnp.arange(6.0) + 1, "b": jnp.full((2, 3), 0.5)}
        if step == 0:
            grads["a"] = grads["a"].at[2].set(jnp.nan)
        updates, state = jax.jit(tx.update)(grads, state, PARAMS)
        patterns.append({k: np.isnan(np.asarray(v)).ravel().tolist() for k, v in updates.items()})
    return patterns


def learned(architecture):
    optimizer = lopt.get_optimizer(architecture)
    return lopt.to_optax(optimizer, optimizer.init_meta_params(jax.random.key(0)), 10)


ONE_ENTRY = {"a": [False, False, True, False, False, False], "b": [False] * 6}


@pytest.mark.parametrize("architecture", ["adam", "sgdm"])
def test_hand_designed_rules_confine_a_nan_to_its_entry_like_optax_adam(architecture):
    assert nan_pattern(optax.adam(1e-3)) == [ONE_ENTRY] * 3
    assert nan_pattern(learned(architecture)) == [ONE_ENTRY] * 3


@pytest.mark.parametrize("architecture", ["mlp", "lstm"])
def test_per_parameter_networks_spread_a_nan_over_its_tensor_for_good(architecture):
    """As documented in ``lopt.to_optax``: features are normalised per tensor, so the whole tensor
    and its moments go NaN; the other tensor is untouched."""
    whole_tensor = {"a": [True] * 6, "b": [False] * 6}
    assert nan_pattern(learned(architecture)) == [whole_tensor] * 3


@pytest.mark.parametrize("architecture", ["mlp", "lstm"])
def test_apply_if_finite_skips_the_step_and_keeps_the_state_clean(architecture):
    patterns = nan_pattern(optax.apply_if_finite(learned(architecture), max_consecutive_errors=5))
    clean = {"a": [False] * 6, "b": [False] * 6}
    assert patterns == [clean] * 3


@pytest.mark.parametrize(
    "other",
    [{"b": jnp.ones((2, 3))}, {"a": jnp.ones((3, 2))}, {"a": jnp.ones(6), "c": jnp.ones(1)}],
)
def test_update_refuses_params_other_than_those_init_saw(other):
    tx = learned("mlp")
    state = tx.init({"a": jnp.ones(6)})
    grads = jax.tree.map(jnp.ones_like, other)
    with pytest.raises(ValueError, match="but the state was initialised for"):
        tx.update(grads, state, other)
    with pytest.raises(ValueError, match="but the state was initialised for"):
        jax.jit(tx.update)(grads, state, other)
    updates, _ = tx.update({"a": jnp.ones(6)}, state, {"a": jnp.ones(6)})
    assert np.all(np.isfinite(np.asarray(updates["a"])))
