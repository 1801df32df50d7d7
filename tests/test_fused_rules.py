"""The per-parameter MLP and LSTM rules, as they now run (per tensor: one fused loop of per-column
arithmetic, or matmuls over cache-sized blocks of rows), compute the same function of theta as
their first form (frozen here): the normalised ``[N, F]`` feature matrix of all parameters through
the networks as matmuls. Random (full-scale) theta, every option that changes the network, both
forms of the MLP, several steps of a model with a tensor of more than one block of rows and
tensors that differ in scale."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import features as feats
from lopt import flat


def reference_features(config, state, grads, params, loss):
    """The first form of ``feats.prepare_inputs``: ``(layout, features [N, F], mean squares
    [T, F], context, tensors, loss_ema)``."""
    layout, tensors = feats.updated_tensors(config, state, grads, params)
    blocks, mean_squares = [], []
    for g, p, m, v in tensors:
        inv_rms = jax.lax.rsqrt(v + 1e-12)
        mean_square = jnp.concatenate(
            [
                jnp.stack([jnp.mean(jnp.square(g)), jnp.mean(jnp.square(p))]),
                jnp.mean(jnp.square(m), axis=0),
                jnp.stack([jnp.mean(v), jnp.mean(jnp.square(g * inv_rms))]),
            ]
        )
        block = [g[:, None], p[:, None], m, jnp.sqrt(v)[:, None], (g * inv_rms)[:, None]]
        blocks.append(jnp.concatenate(block, axis=1) * jax.lax.rsqrt(mean_square + 1e-12))
        mean_squares.append(mean_square)
    context = feats.time_features(config, state.step, state.num_steps)
    loss_ema = state.loss_ema
    if config.use_loss:
        feature, loss_ema = feats.loss_feature(state.step, loss, state.loss_ema)
        context = jnp.concatenate([context, feature[None]])
    features = jnp.concatenate(blocks)
    return layout, features, jnp.stack(mean_squares), context, tensors, loss_ema


def reference_mlp_update(rule, theta, state, grads, params, loss):
    """The MLP rule's first form: ``(updates, new_state)``."""
    config = rule.feature_config
    layout, features, _, context, tensors, loss_ema = reference_features(
        config, state, grads, params, loss
    )
    x = features @ theta["layer_0"]["w"] + theta["layer_0"]["b"] + context @ theta["context_w"]
    for i in range(1, len(rule.hidden_sizes) + 1):
        x = jax.nn.relu(x) @ theta[f"layer_{i}"]["w"] + theta[f"layer_{i}"]["b"]
    step = state.step + 1
    if rule.base == "adam":
        index = rule.momentum_decays.index(rule.base_beta1)
        direction = feats.adam_direction(
            jnp.concatenate([m[:, index] for _, _, m, _ in tensors]),
            jnp.concatenate([v for _, _, _, v in tensors]),
            step,
            rule.base_beta1,
            rule.rms_decay,
            rule.base_epsilon,
        )
        correction = x[:, 0] * jnp.exp(rule.exp_mult * x[:, 1])
        updates = -jnp.exp(theta["log_lr"]) * (direction + correction)
    else:
        updates = x[:, 0] * jnp.exp(rule.exp_mult * x[:, 1]) * rule.step_mult
    new_state = lopt.mlp.MLPOptState(
        step,
        state.num_steps,
        tuple(m for _, _, m, _ in tensors),
        tuple(v for _, _, _, v in tensors),
        loss_ema,
    )
    return flat.unflatten(layout, updates), new_state


def reference_lstm_update(rule, theta, state, grads, params, loss):
    """The LSTM rule's first form: ``(updates, new_state)``."""
    config = rule.feature_config
    layout, features, mean_squares, context, tensors, loss_ema = reference_features(
        config, state, grads, params, loss
    )
    cell = theta["cell"]
    gates = features @ cell["w_x"] + (cell["b"] + context @ theta["context_w"])
    tensor_hidden, tensor_cell = state.tensor_hidden, state.tensor_cell
    if rule.per_tensor:
        log_scales = 0.1 * jnp.log(mean_squares + 1e-30)
        tensor_in = jnp.concatenate(
            [log_scales, jnp.broadcast_to(context, (layout.num_tensors, context.shape[0]))], axis=1
        )
        tensor_theta = theta["tensor_cell"]
        tensor_hidden, tensor_cell = lopt.lstm.lstm_cell(
            tensor_in @ tensor_theta["w_x"]
            + tensor_theta["b"]
            + tensor_hidden @ tensor_theta["w_h"],
            tensor_cell,
        )
        tensor_gates = tensor_hidden @ theta["tensor_to_gates"]
        gates = gates + jnp.concatenate(
            [
                jnp.broadcast_to(tensor_gates[i], (size, gates.shape[1]))
                for i, size in enumerate(layout.sizes)
            ]
        )
    i, f, g, o = jnp.split(gates + state.hidden @ cell["w_h"], 4, axis=-1)
    new_cell = jax.nn.sigmoid(f) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(new_cell)
    out = hidden @ theta["out"]["w"] + theta["out"]["b"]
    updates = out[:, 0] * jnp.exp(rule.exp_mult * out[:, 1]) * rule.step_mult
    new_state = lopt.lstm.LSTMOptState(
        state.step + 1,
        state.num_steps,
        tuple(m for _, _, m, _ in tensors),
        tuple(v for _, _, _, v in tensors),
        loss_ema,
        hidden,
        new_cell,
        tensor_hidden,
        tensor_cell,
    )
    return flat.unflatten(layout, updates), new_state


RULES = {
    "mlp": (lopt.MLPOptimizer(use_loss=True), reference_mlp_update),
    "mlp_small": (lopt.MLPOptimizer(hidden_sizes=(8, 8)), reference_mlp_update),
    "mlp_adam": (lopt.MLPOptimizer(base="adam", use_loss=True), reference_mlp_update),
    "lstm": (lopt.LSTMOptimizer(use_loss=True), reference_lstm_update),
    "lstm_per_tensor": (lopt.LSTMOptimizer(per_tensor=True), reference_lstm_update),
}


def full_scale_theta(rule, key):
    """A trained-looking theta: every weight redrawn at unit scale (no small output layer), and a
    random bias everywhere."""
    theta = rule.init_meta_params(key)
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    redrawn = [
        jax.random.normal(k, leaf.shape, jnp.float32) / max(leaf.shape[0], 1) ** 0.5
        if leaf.ndim == 2
        else leaf + 0.3 * jax.random.normal(k, leaf.shape, jnp.float32)
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, redrawn)


def max_relative_error(got, expected):
    """Per leaf, ``max |got - expected|`` over the RMS of ``expected``; the largest over leaves."""
    errors = []
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if b.size:
            errors.append(np.max(np.abs(a - b)) / (np.sqrt(np.mean(b**2)) + 1e-30))
    return max(errors)


@pytest.mark.parametrize("name", list(RULES))
def test_update_equals_the_first_form(name):
    rule, reference = RULES[name]
    assert feats.ROW_BLOCK < 2400
    if name.startswith("mlp"):
        assert rule.fused == (name == "mlp_small")  # both forms of the MLP are covered
    theta = full_scale_theta(rule, jax.random.key(7))
    rng = np.random.default_rng(5)
    widths = (24, 100, 16, 3)  # 2400 rows: two blocks of feats.ROW_BLOCK and a remainder
    params = {
        f"layer_{i}": {
            "w": jnp.asarray(rng.normal(size=(a, b)) / a**0.5, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(b,)) * 10.0 ** (i - 1), jnp.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(widths))
    }
    params["empty"] = jnp.zeros((0,), jnp.float32)
    state = rule.init(theta, params, 50)
    fused = jax.jit(rule.update)
    frozen = jax.jit(functools.partial(reference, rule))
    for step in range(5):
        # Gradients whose scale differs by tensor and drifts over the steps.
        grads = jax.tree.map(
            lambda p: jnp.asarray(
                rng.normal(size=p.shape) * 10.0 ** rng.uniform(-4, 0), jnp.float32
            ),
            params,
        )
        loss = jnp.asarray(1.0 / (step + 1), jnp.float32)
        expected, expected_state = frozen(theta, state, grads, params, loss)
        updates, state = fused(theta, state, grads, params, loss)
        assert max_relative_error(updates, expected) <= 2e-5
        assert max_relative_error(state, expected_state) <= 2e-5
        params = optax.apply_updates(params, jax.tree.map(lambda u: 30.0 * u, updates))
        state = expected_state  # both forms continue from the same state


def test_the_comparison_sees_a_change_of_theta():
    """Control: the tolerance is far below what a small change of theta does to the update."""
    rule, reference = RULES["lstm"]
    theta = full_scale_theta(rule, jax.random.key(7))
    nudged = jax.tree.map(lambda x: x, theta)
    nudged["cell"] = dict(nudged["cell"], w_h=theta["cell"]["w_h"] * 1.01)
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)}
    state = rule.init(theta, params, 50)
    grads = {"w": jnp.ones((6, 5), jnp.float32)}
    state = rule.update(theta, state, grads, params, 1.0)[1]  # a nonzero hidden state
    expected, _ = reference(rule, theta, state, grads, params, 1.0)
    updates, _ = rule.update(nudged, state, grads, params, 1.0)
    assert max_relative_error(updates, expected) > 1e-3


@pytest.mark.parametrize("hidden_sizes", [(8, 8), (32, 32)])
def test_apply_network_is_the_mlp_on_the_feature_matrix(hidden_sizes):
    rule = lopt.MLPOptimizer(hidden_sizes=hidden_sizes)
    theta = full_scale_theta(rule, jax.random.key(1))
    features = jax.random.normal(jax.random.key(2), (1500, rule.num_features), jnp.float32)
    context = jax.random.normal(jax.random.key(3), (len(theta["context_w"]),), jnp.float32)
    x = features @ theta["layer_0"]["w"] + theta["layer_0"]["b"] + context @ theta["context_w"]
    for i in (1, 2):
        x = jax.nn.relu(x) @ theta[f"layer_{i}"]["w"] + theta[f"layer_{i}"]["b"]
    np.testing.assert_allclose(
        rule.apply_network(theta, features, context), x, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("n", [0, 1, 1023, 1025, 300_001])
def test_means_are_float64_accurate_whatever_the_length(n):
    """``feats.means`` (one variadic reduction over blocks of partial sums) keeps float32 means
    within 1e-6 of float64's; one running sum over 300k elements misses by ~1e-4."""
    rng = np.random.default_rng(n)
    arrays = [rng.normal(size=n) ** 2 * 1e-6, rng.uniform(size=n) * 1e3]
    got = np.asarray(feats.means([jnp.asarray(a, jnp.float32) for a in arrays]))
    expected = [a.astype(np.float32).astype(np.float64).mean() if n else 0.0 for a in arrays]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "num_blocks, remainder",
    [(2 * feats.BLOCKS_PER_ITERATION + 3, 5), (3, 0), (0, 7), (0, 0)],
)
def test_map_row_blocks_equals_the_function_on_all_rows(num_blocks, remainder):
    # Iterations of BLOCKS_PER_ITERATION blocks, fewer blocks than that, rows short of one block.
    n = num_blocks * feats.ROW_BLOCK + remainder
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    h = jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)

    def rows(x, h):
        return jnp.tanh(x @ w), h * x[:, :1]

    got = jax.jit(lambda x, h: feats.map_row_blocks(rows, (x, h)))(x, h)
    expected = rows(x, h)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
