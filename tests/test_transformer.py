"""The causal transformer LM family (tasks.transformer): shapes, causality, metrics, training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adam_steps import adam_run

from meta_train.es.compile_options import FAST_COMPILE
from tasks import registry, transformer

jit_unoptimised = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def family() -> transformer.TransformerLMFamily:
    return registry.get_family(
        "lm_markov_transformer", width=16, num_blocks=2, num_heads=2, seq_len=12, batch_size=16
    )


def test_param_shapes(family):
    params = family.task(family.default_config()).init(jax.random.key(0))
    block = {
        "norm_attn": {"scale": (16,), "bias": (16,)},
        "attn": {"qkv": {"w": (16, 48), "b": (48,)}, "out": {"w": (16, 16), "b": (16,)}},
        "norm_mlp": {"scale": (16,), "bias": (16,)},
        "mlp": {"dense_0": {"w": (16, 64), "b": (64,)}, "dense_1": {"w": (64, 16), "b": (16,)}},
    }
    assert jax.tree.map(lambda a: a.shape, params) == {
        "embed": (32, 16),
        "position": (12, 16),
        "block_0": block,
        "block_1": block,
        "norm": {"scale": (16,), "bias": (16,)},
        "out": {"w": (16, 32), "b": (32,)},
    }
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert family.name == "tfm_markov32_w16_k2_h2_l12_b16"


def test_causal_and_position_dependent(family):
    """Changing token t changes the logits at positions >= t only; the learned positions make
    the same token at two positions give different logits."""
    params = family.task(family.default_config()).init(jax.random.key(0))
    # Trained-looking params: perturb the zero biases and unit LayerNorms too.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten(
        [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )
    tokens = jax.random.randint(jax.random.key(2), (3, 12), 0, 32)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 32)
    apply = jax.jit(family.apply)
    before, after = apply(params, tokens), apply(params, changed)
    assert before.shape == (3, 12, 32)
    np.testing.assert_array_equal(before[:, :7], after[:, :7])
    assert np.all(np.abs(before[:, 7:] - after[:, 7:]).max(axis=-1) > 1e-4)
    # A prefix gives the same logits as the full window (positions are absolute).
    np.testing.assert_allclose(apply(params, tokens[:, :5]), before[:, :5], rtol=1e-5, atol=1e-5)
    same = jnp.full((1, 12), 3)
    logits = apply(params, same)
    assert np.abs(logits[0, 0] - logits[0, 5]).max() > 1e-3


def test_attention_matches_a_direct_loop():
    """``causal_self_attention`` against per-position softmax attention written out by hand."""
    rng = np.random.default_rng(0)
    width, heads, length = 8, 2, 5
    params = {
        "qkv": {"w": rng.normal(size=(width, 3 * width)), "b": rng.normal(size=3 * width)},
        "out": {"w": rng.normal(size=(width, width)), "b": rng.normal(size=width)},
    }
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = rng.normal(size=(1, length, width)).astype(np.float32)
    got = transformer.causal_self_attention(params, jnp.asarray(x), heads)

    qkv = x[0] @ np.asarray(params["qkv"]["w"]) + np.asarray(params["qkv"]["b"])
    q, k, v = np.split(qkv, 3, axis=-1)
    head = width // heads
    mixed = np.zeros((length, width))
    for h in range(heads):
        cols = slice(h * head, (h + 1) * head)
        for t in range(length):
            scores = k[: t + 1, cols] @ q[t, cols] / np.sqrt(head)
            weights = np.exp(scores - scores.max())
            mixed[t, cols] = (weights / weights.sum()) @ v[: t + 1, cols]
    want = mixed @ np.asarray(params["out"]["w"]) + np.asarray(params["out"]["b"])
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def test_finite_losses_metrics_and_adam_lowers_the_loss(family):
    """One jitted run: finite train and eval losses, whole-split metrics like the LSTM LM's, and
    40 Adam steps lower the training loss well below its start."""

    losses, eval_loss, metrics = jax.device_get(adam_run(family, jax.random.key(0), "test"))
    assert np.all(np.isfinite(losses)) and np.isfinite(eval_loss)
    assert set(metrics) == {"loss", "accuracy"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    # Below uniform guessing: the model learned the chain's transitions, not noise.
    assert metrics["loss"] < np.log(32)


def test_options_are_checked():
    with pytest.raises(ValueError, match="must divide width"):
        registry.get_family("lm_markov_transformer", width=10, num_heads=3)
    with pytest.raises(ValueError, match="num_blocks must be a positive int"):
        registry.get_family("lm_markov_transformer", num_blocks=0)
    with pytest.raises(ValueError, match="seq_len=20000"):
        registry.get_family("lm_markov_transformer", seq_len=20000)
