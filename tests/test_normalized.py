"""The normalized rule: its invariances, its optax forms (rule alone, chain with the learning rate
outside, injected hyperparameters) and their agreement with the update meta-training uses, and
the export round trip."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import least_squares
import numpy as np
import optax
import pytest

import lopt
from lopt import features as feats
from lopt import flat, normalized

RULE = lopt.NormalizedOptimizer()
STEP = lopt.StepSize(learning_rate=1e-2)


def make_params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    }


def gradient_sequence(num_steps: int):
    rng = np.random.default_rng(1)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        }
        for _ in range(num_steps)
    ]


@functools.partial(jax.jit, static_argnames="rule")
def directions(theta, params, grads_list, grad_scale, param_scale, rule=RULE):
    """``rule``'s directions over a sequence of gradients, with tensor ``w``'s gradients scaled
    by ``grad_scale`` and its parameter by ``param_scale``."""
    params = {"w": params["w"] * param_scale, "b": params["b"]}
    state = rule.init(theta, params, 10)
    out = []
    for grads in grads_list:
        grads = {"w": grads["w"] * grad_scale, "b": grads["b"]}
        d, state = rule.direction(theta, state, grads, params)
        out.append(d)
    return out


@pytest.fixture(scope="module")
def theta():
    # A trained-looking theta: a random MLP of full scale, not the small-output initialisation.
    optimizer = dataclasses.replace(RULE, output_init_scale=1.0)
    return optimizer.init_meta_params(jax.random.key(3))


@pytest.mark.parametrize("grad_scale, param_scale", [(1e3, 1.0), (1e-3, 1.0), (1.0, 50.0)])
def test_direction_is_invariant_to_rescaling_a_tensor(theta, grad_scale, param_scale):
    grads = gradient_sequence(4)
    reference = directions(theta, make_params(), grads, 1.0, 1.0)
    scaled = directions(theta, make_params(), grads, grad_scale, param_scale)
    for a, b in zip(reference, scaled, strict=True):
        np.testing.assert_allclose(a["w"], b["w"], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(a["b"], b["b"], rtol=1e-6, atol=1e-7)


def test_direction_has_unit_rms_per_tensor_and_changes_with_theta(theta):
    d = directions(theta, make_params(), gradient_sequence(2), 1.0, 1.0)[-1]
    for leaf in jax.tree.leaves(d):
        assert float(jnp.sqrt(jnp.mean(leaf**2))) == pytest.approx(1.0, rel=1e-5)
    other = RULE.init_meta_params(jax.random.key(4))
    d_other = directions(other, make_params(), gradient_sequence(2), 1.0, 1.0)[-1]
    assert not np.allclose(d["w"], d_other["w"], atol=1e-3)


def test_untrained_rule_starts_as_normalized_momentum_over_rms():
    """The skip path starts at m_0.9 / sqrt(v): at the first step m = 0.1 g and v = 0.05 g^2,
    so the direction is sign(g) up to the small MLP, which therefore agrees in sign mostly."""
    theta = RULE.init_meta_params(jax.random.key(0))
    grads = gradient_sequence(1)
    d = directions(theta, make_params(), grads, 1.0, 1.0)[0]
    agreement = np.mean(np.sign(d["w"]) == np.sign(grads[0]["w"]))
    assert agreement > 0.9


def test_mup_multiplier_and_adam_for_vectors():
    rule = lopt.NormalizedOptimizer(mup_base_fan_in=32, adam_for_vectors=True)
    assert rule.mup_multiplier((512, 512)) == pytest.approx(32 / 512)
    assert rule.mup_multiplier((3, 3, 16, 8)) == pytest.approx(32 / 144)
    assert rule.mup_multiplier((8, 8)) == 1.0  # narrower than the base: capped at 1
    assert rule.mup_multiplier((512,)) == 1.0
    theta = rule.init_meta_params(jax.random.key(0))
    params = make_params()
    grads = gradient_sequence(1)[0]
    d, _ = rule.direction(theta, rule.init(theta, params, 10), grads, params)
    # Adam's first bias-corrected step is g / |g| (up to epsilon): sign(g).
    np.testing.assert_allclose(d["b"], np.sign(grads["b"]), rtol=1e-5)


def reference_direction(rule, theta, state, grads, params):
    """The rule as first written (frozen here): the per-tensor normalized ``[N, F]`` feature
    matrix, concatenated over tensors, through the MLP as matmuls, then (with ``orthogonalize``,
    matrices through ``lopt.normalized.orthogonalized``, tested on its own) normalized per
    tensor."""
    config = feats.FeatureConfig(rule.momentum_decays, rule.rms_decay, (), (), False)
    layout, tensors = feats.updated_tensors(config, state, grads, params)
    blocks = []
    for g, p, m, v in tensors:
        inv_rms = jax.lax.rsqrt(v + 1e-30)
        columns = jnp.concatenate(
            [
                g[:, None],
                p[:, None],
                jnp.sqrt(v)[:, None],
                (g * inv_rms)[:, None],
                m,
                m * inv_rms[:, None],
            ],
            axis=1,
        )
        blocks.append(columns * jax.lax.rsqrt(jnp.mean(jnp.square(columns), axis=0) + 1e-30))
    features = jnp.concatenate(blocks)
    x = features
    for i in range(len(rule.hidden_sizes) + 1):
        x = x @ theta[f"layer_{i}"]["w"] + theta[f"layer_{i}"]["b"]
        x = jax.nn.relu(x) if i < len(rule.hidden_sizes) else x
    raw = x[:, 0] + features @ theta["skip"]
    step = state.step + 1
    pieces = []
    for offset, size, shape, (_, _, m, v) in zip(
        layout.offsets, layout.sizes, layout.shapes, tensors, strict=True
    ):
        if rule.adam_for_vectors and len(shape) < 2:
            d = feats.adam_direction(m[:, 0], v, step, 0.9, rule.rms_decay, 1e-8)
        else:
            d = raw[offset : offset + size]
            if rule.orthogonalize and len(shape) >= 2:
                d = normalized.orthogonalized(d.reshape(-1, shape[-1])).reshape(-1)
            d = d * jax.lax.rsqrt(jnp.mean(jnp.square(d)) + 1e-30) * rule.mup_multiplier(shape)
        pieces.append(d)
    return flat.unflatten(layout, jnp.concatenate(pieces))


@pytest.mark.parametrize("adam_for_vectors", [False, True])
@pytest.mark.parametrize("orthogonalize", [False, True])
def test_direction_equals_the_reference_on_the_shipped_weights(adam_for_vectors, orthogonalize):
    """The fused network computes the same function of theta: the shipped weights give the
    reference's directions, to float32 rounding, over several steps of a random MLP."""
    rule, theta, _ = lopt.load_optimizer(lopt.pretrained_path())
    rule = dataclasses.replace(rule, adam_for_vectors=adam_for_vectors, orthogonalize=orthogonalize)
    rng = np.random.default_rng(5)
    widths = (48, 64, 16, 3)  # fan-ins above the μP base of 32 and below it
    params = [
        {
            "w": jnp.asarray(rng.normal(size=(a, b)) / a**0.5, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(b,)), jnp.float32),
        }
        for a, b in itertools.pairwise(widths)
    ]
    state = rule.init(theta, params, 10)
    direction = jax.jit(rule.direction)
    reference = jax.jit(functools.partial(reference_direction, rule))
    for _ in range(4):
        grads = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-2, jnp.float32), params
        )
        expected = reference(theta, state, grads, params)
        d, state = direction(theta, state, grads, params)
        for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(expected), strict=True):
            rms = float(jnp.sqrt(jnp.mean(jnp.square(b))))
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * rms
        params = jax.tree.map(lambda p, u: p - 1e-2 * u, params, d)


def train_losses(transform, num_steps: int = 60):
    """Losses of a small least-squares problem trained with ``transform``."""
    return least_squares.train_losses(transform, make_params(), 2, num_steps, offset=0.3)


def test_update_equals_the_optax_chain_with_the_learning_rate_outside():
    theta = RULE.init_meta_params(jax.random.key(0))
    step = STEP._replace(weight_decay=0.1)
    chain = optax.chain(
        lopt.scale_by_rule(theta, RULE),
        optax.add_decayed_weights(step.weight_decay),
        optax.scale_by_learning_rate(step.learning_rates(30)),
    )
    full = lopt.to_optax(RULE, theta, 30, step)
    np.testing.assert_allclose(train_losses(chain, 30), train_losses(full, 30), rtol=1e-5)


@pytest.mark.parametrize("schedule, weight_decay", [("cosine", 0.1), ("constant", 0.0)])
def test_step_size_is_minus_lr_of_t_times_direction_plus_decay(theta, schedule, weight_decay):
    """``with_step_size(scale_by_rule(...))`` is what the rule with its learning rate inside
    computed: ``-lr(t) * (d + wd * p)`` from the rule's own direction, ``lr`` the warm-up-cosine
    (or constant) schedule at the update count ``t`` (here in float64, so to float32 rounding)."""
    num_steps, lr = 12, 3e-2
    step_size = lopt.StepSize(lr, schedule, 0.25, weight_decay)
    tx = jax.jit(lopt.with_step_size(lopt.scale_by_rule(theta, RULE), step_size, num_steps).update)
    params = make_params()
    state = lopt.with_step_size(lopt.scale_by_rule(theta, RULE), step_size, num_steps).init(params)
    rule_state = RULE.init(theta, params)
    direction = jax.jit(RULE.direction)
    for t, grads in enumerate(gradient_sequence(num_steps + 2)):
        d, rule_state = direction(theta, rule_state, grads, params)
        rate = lr
        if schedule == "cosine":
            warmup = max(0.25 * num_steps, 1.0)
            rate *= min(1.0, (t + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(t / num_steps, 1)))
        expected = jax.tree.map(lambda d, p, rate=rate: -rate * (d + weight_decay * p), d, params)
        updates, state = tx(grads, state, params)
        for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, updates)


def test_rule_composes_with_scale_by_learning_rate_and_a_schedule():
    theta = RULE.init_meta_params(jax.random.key(0))
    schedule = optax.cosine_decay_schedule(0.05, 60)
    tx = optax.chain(lopt.scale_by_rule(theta, RULE), optax.scale_by_learning_rate(schedule))
    losses = train_losses(tx)
    assert losses[-1] < 0.1 * losses[0]


def test_inject_hyperparams_changes_the_learning_rate_mid_run():
    theta = RULE.init_meta_params(jax.random.key(0))

    def constant_step(learning_rate):
        rule = lopt.scale_by_rule(theta, RULE)
        return lopt.with_step_size(rule, lopt.StepSize(learning_rate, "constant"))

    tx = optax.inject_hyperparams(constant_step)(learning_rate=0.05)
    params = make_params()
    state = tx.init(params)
    grads = gradient_sequence(1)[0]
    updates, state = tx.update(grads, state, params)
    assert float(jnp.abs(updates["w"]).max()) > 0
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    updates, _ = tx.update(grads, state, params)
    assert float(jnp.abs(updates["w"]).max()) == 0.0


def test_export_round_trip_and_learning_rate_arguments(tmp_path):
    theta = RULE.init_meta_params(jax.random.key(5))
    path = tmp_path / "export"
    lopt.save(path, RULE, theta, {"num_steps": 500}, step_size=STEP)
    assert lopt.load_step_size(path) == STEP
    expected = train_losses(lopt.to_optax(RULE, theta, 60, STEP))
    np.testing.assert_allclose(train_losses(lopt.load(path, num_steps=60)), expected, rtol=1e-6)
    # A different peak learning rate goes through the rule's own schedule.
    faster = STEP._replace(learning_rate=3e-2)
    np.testing.assert_allclose(
        train_losses(lopt.load(path, num_steps=60, learning_rate=3e-2)),
        train_losses(lopt.to_optax(RULE, theta, 60, faster)),
        rtol=1e-6,
    )
    constant = train_losses(lopt.load(path, learning_rate=optax.constant_schedule(1e-2)))
    assert constant[-1] < constant[0]
    with pytest.raises(ValueError, match="needs num_steps"):
        lopt.load(path)
    rule = lopt.load_rule(path)
    d, _ = rule.update(gradient_sequence(1)[0], rule.init(make_params()), make_params())
    assert float(jnp.sqrt(jnp.mean(d["w"] ** 2))) == pytest.approx(1.0, rel=1e-5)


def test_a_format_1_export_loads_to_the_same_updates(tmp_path):
    """Format 1 (the shipped normalized-v1/v2) kept the step size among the rule's
    hyperparameters: the same export rewritten so loads to the same optimizer and updates."""
    import json

    from lopt import export

    theta = RULE.init_meta_params(jax.random.key(6))
    step = STEP._replace(weight_decay=1e-3)
    new, old = tmp_path / "new", tmp_path / "old"
    lopt.save(new, RULE, theta, {"num_steps": 500}, step_size=step)
    lopt.save(old, RULE, theta, {"num_steps": 500}, step_size=step)
    config = json.loads((old / export.CONFIG_FILE).read_text())
    config["hyperparameters"] |= config.pop(export.STEP_SIZE_KEY)
    config["format_version"] = 1
    config[export.FINGERPRINT_KEY] = export.fingerprint(config)
    (old / export.CONFIG_FILE).write_text(json.dumps(config))
    assert lopt.load_optimizer(old)[0] == RULE and lopt.load_step_size(old) == step
    np.testing.assert_array_equal(
        train_losses(lopt.load(old, num_steps=30), 30),
        train_losses(lopt.load(new, num_steps=30), 30),
    )


def test_learning_rate_is_refused_for_rules_that_learn_their_step(tmp_path):
    mlp = lopt.MLPOptimizer(hidden_sizes=(4,))
    path = tmp_path / "mlp"
    lopt.save(path, mlp, mlp.init_meta_params(jax.random.key(0)), {"num_steps": 10})
    with pytest.raises(ValueError, match="takes no learning_rate"):
        lopt.load(path, learning_rate=1e-3)
    with pytest.raises(ValueError, match="no direction-only form"):
        lopt.load_rule(path)


def test_running_past_the_horizon_warns_once():
    mlp = lopt.MLPOptimizer(hidden_sizes=(4,))
    tx = lopt.to_optax(mlp, mlp.init_meta_params(jax.random.key(0)), 3)
    with pytest.warns(UserWarning, match="past num_steps=3") as record:
        train_losses(tx, 8)
        jax.effects_barrier()
    assert len(record) == 1


def test_no_past_horizon_warning_under_vmap_with_batched_steps(recwarn):
    """Under vmap with a per-run step, lax.cond runs both branches: only a step past the horizon
    may warn (runs at steps 0 and 1 of 10, three updates each)."""
    mlp = lopt.MLPOptimizer(hidden_sizes=(4,))
    tx = lopt.to_optax(mlp, mlp.init_meta_params(jax.random.key(0)), 10)
    params = jnp.ones((2, 4))
    state = jax.vmap(tx.init)(params)
    state = state._replace(inner=state.inner._replace(step=jnp.arange(2, dtype=jnp.int32)))

    def three_updates(p, s):
        for _ in range(3):
            updates, s = tx.update(p, s, p)
            p = optax.apply_updates(p, updates)
        return p

    jax.block_until_ready(jax.jit(jax.vmap(three_updates))(params, state))
    jax.effects_barrier()
    assert not [w for w in recwarn if "past num_steps" in str(w.message)]


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="momentum_decays"):
        lopt.NormalizedOptimizer(momentum_decays=(0.5, 0.99))
    with pytest.raises(ValueError, match="learning_rate"):
        lopt.StepSize(learning_rate=float("inf")).check()
    with pytest.raises(ValueError, match="schedule"):
        lopt.StepSize(schedule="linear").check()
    rule = lopt.scale_by_rule(RULE.init_meta_params(jax.random.key(0)), RULE)
    with pytest.raises(ValueError, match=r"needs\s+num_steps"):
        lopt.with_step_size(rule, STEP).init(make_params())


# The step gain (step_gain=True): min(1, r ** alpha), r = RMS(m_hat) / long-run gradient RMS.

GAIN_RULE = dataclasses.replace(RULE, step_gain=True, adam_for_vectors=True)


def _gain_directions(theta, grads_list, params):
    state = GAIN_RULE.init(theta, params, 10)
    out = []
    for grads in grads_list:
        d, state = GAIN_RULE.direction(theta, state, grads, params)
        out.append(d)
    return out


def test_gain_at_exponent_zero_is_the_rule_without_gain(theta):
    # A theta without gain_exponent (normalized-v1's) plus gain_exponent = 0 is the same rule.
    plain = dataclasses.replace(GAIN_RULE, step_gain=False)
    gain_theta = {**theta, "gain_exponent": jnp.zeros((), jnp.float32)}
    params, grads_list = make_params(), gradient_sequence(5)
    state = plain.init(theta, params, 10)
    for grads, with_gain in zip(
        grads_list, _gain_directions(gain_theta, grads_list, params), strict=True
    ):
        d, state = plain.direction(theta, state, grads, params)
        np.testing.assert_array_equal(d["w"], with_gain["w"])
    assert GAIN_RULE.init_meta_params(jax.random.key(0))["gain_exponent"] == 0.0


def test_gain_shrinks_the_step_when_the_gradient_falls_below_its_long_run_size(theta):
    gain_theta = {**theta, "gain_exponent": jnp.ones((), jnp.float32)}
    params = make_params()
    # 20 steps of a steady gradient, then the same gradient 100x smaller (a fitted training set).
    steady = gradient_sequence(1) * 20
    small = [jax.tree.map(lambda g: g * 1e-2, steady[0])] * 20
    rms = [
        float(jnp.sqrt(jnp.mean(d["w"] ** 2)))
        for d in _gain_directions(gain_theta, steady + small, params)
    ]
    assert rms[19] == pytest.approx(1.0, rel=1e-4)  # steady: r = 1, gain 1
    # After the drop the momentum decays towards the 100x smaller gradient while u remembers the
    # large one: the gain falls well below 1 (alpha = 1: the gain is r itself).
    assert rms[-1] < 0.2
    # A negative exponent never grows the step past unit RMS.
    grow = {**theta, "gain_exponent": -jnp.ones((), jnp.float32)}
    assert all(
        float(jnp.sqrt(jnp.mean(d["w"] ** 2))) <= 1.0 + 1e-5
        for d in _gain_directions(grow, steady + small, params)
    )


@pytest.mark.parametrize("grad_scale", [1e-3, 1e3])
def test_gain_is_invariant_to_rescaling_the_gradient(theta, grad_scale):
    gain_theta = {**theta, "gain_exponent": jnp.asarray(0.7, jnp.float32)}
    params, grads_list = make_params(), gradient_sequence(6)
    grads_list = grads_list[:3] + [jax.tree.map(lambda g: g * 0.1, g) for g in grads_list[3:]]
    scaled = [jax.tree.map(lambda g: g * grad_scale, g) for g in grads_list]
    for a, b in zip(
        _gain_directions(gain_theta, grads_list, params),
        _gain_directions(gain_theta, scaled, params),
        strict=True,
    ):
        np.testing.assert_allclose(a["w"], b["w"], rtol=2e-4, atol=1e-6)


# orthogonalize=True: a matrix's raw direction orthogonalized by Newton–Schulz before its RMS.
ORTHO_RULE = dataclasses.replace(RULE, orthogonalize=True)


def _ortho_directions(theta, grad_scale):
    return directions(theta, make_params(), gradient_sequence(3), grad_scale, 1.0, ORTHO_RULE)[-1]


def test_orthogonalize_evens_a_matrix_directions_singular_values(theta):
    ortho = _ortho_directions(theta, 1.0)
    plain = directions(theta, make_params(), gradient_sequence(3), 1.0, 1.0)[-1]
    spread = {
        name: np.linalg.svd(np.asarray(d["w"]), compute_uv=False)
        for name, d in (("ortho", ortho), ("plain", plain))
    }
    # ~U V^T: singular values within a factor 2 (1.4 here); the plain rule's fail that (3.4).
    assert spread["ortho"].max() / spread["ortho"].min() < 2.0
    assert spread["plain"].max() / spread["plain"].min() > 2.0
    assert float(jnp.sqrt(jnp.mean(ortho["w"] ** 2))) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(ortho["b"], plain["b"], rtol=1e-5, atol=1e-6)  # vectors as before
    # Still invariant to rescaling the gradient.
    np.testing.assert_allclose(_ortho_directions(theta, 1e3)["w"], ortho["w"], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("shape", [(7, 4), (4, 7)])
def test_newton_schulz_maps_each_singular_value_by_the_quintic(shape):
    """On ``M = U S V^T`` the iteration keeps ``U`` and ``V`` and maps each singular value by the
    scalar quintic from ``s / ||S||_F``, tall or wide (float64 on the host as the reference)."""
    rng = np.random.default_rng(11)
    k = min(shape)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
    s = np.array([3.0, 1.0, 0.3, 0.05])
    matrix = (u * s) @ v.T
    x = s / np.sqrt(np.sum(s**2))
    c0, c1, c2 = normalized.NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(normalized.NEWTON_SCHULZ_STEPS):
        x = c0 * x + c1 * x**3 + c2 * x**5
    assert np.all((x > 0.5) & (x < 1.5))  # the quintic's band around 1
    expected = (u * x) @ v.T
    got = normalized.orthogonalized(jnp.asarray(matrix, jnp.float32))
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_factored_second_moment_is_exact_on_a_rank_one_moment():
    a, b = jnp.arange(1.0, 7.0), jnp.arange(1.0, 6.0) ** 2
    v = jnp.outer(a, b)
    np.testing.assert_allclose(
        normalized.factored_second_moment(v.reshape(-1), (6, 5)), v.reshape(-1), rtol=1e-6
    )
    bumped = v.at[0, 0].add(10.0)  # not rank one: only approximated
    assert not np.allclose(
        normalized.factored_second_moment(bumped.reshape(-1), (6, 5)), bumped.reshape(-1)
    )
    np.testing.assert_array_equal(normalized.factored_second_moment(b, (5,)), b)  # vectors: v


@pytest.mark.parametrize("grad_scale", [1e3, 1e-3])
def test_extra_features_are_invariant_to_rescaling_the_gradient(grad_scale):
    rule = dataclasses.replace(RULE, extra_features=True, output_init_scale=1.0)
    assert rule.num_features == RULE.num_features + 3
    theta = rule.init_meta_params(jax.random.key(3))

    def run(scale):
        params = make_params()
        state = rule.init(theta, params)
        for grads in gradient_sequence(3):
            d, state = rule.direction(
                theta, state, jax.tree.map(lambda g: g * scale, grads), params
            )
        return d

    reference, scaled = run(1.0), run(grad_scale)
    for name in ("w", "b"):
        np.testing.assert_allclose(scaled[name], reference[name], rtol=2e-4, atol=2e-5)
    # The extra columns reach the output: zeroing their first-layer weights changes it.
    cut = {**theta, "layer_0": {**theta["layer_0"], "w": theta["layer_0"]["w"].at[-3:].set(0.0)}}
    params = make_params()
    d_cut, _ = rule.direction(cut, rule.init(cut, params), gradient_sequence(1)[0], params)
    d_full, _ = rule.direction(theta, rule.init(theta, params), gradient_sequence(1)[0], params)
    assert not np.allclose(d_cut["w"], d_full["w"], atol=1e-3)


@pytest.mark.parametrize("extra_features", [False, True])
def test_fused_mean_squares_are_the_columns_mean_squares(extra_features):
    """The one-reduction mean squares (written from g, p, m, v so XLA never stores a column) are
    those of the feature columns the network reads, extra features included."""
    rule = dataclasses.replace(RULE, extra_features=extra_features)
    rng = np.random.default_rng(7)
    shape = (12, 7)
    g, p = (jnp.asarray(rng.normal(size=shape).ravel(), jnp.float32) for _ in range(2))
    momenta = [jnp.asarray(rng.normal(size=g.shape), jnp.float32) for _ in rule.momentum_decays]
    v = jnp.asarray(rng.uniform(0.1, 2.0, size=g.shape), jnp.float32)
    factored = normalized.factored_second_moment(v, shape) if extra_features else None
    columns, fused = rule._features(g, p, momenta, v, factored)
    assert len(columns) == rule.num_features
    expected = jnp.stack([jnp.mean(jnp.square(c)) for c in columns])
    np.testing.assert_allclose(fused, expected, rtol=1e-5)
