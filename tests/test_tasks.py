"""Task families, the registry and the held-out suites.

Every family gets one jitted probe (init, losses under several keys and configs, a vmap over
sampled configs, and a short Adam run in a ``lax.scan``), compiled once and called twice.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import SAMPLED_SEED_END, datasets, language, registry
from tasks.image import ImageConvFamily, classification_metrics

ADAM_STEPS = 40
NUM_PARTICLES = 2


def upsampled_digits_28x28() -> datasets.Dataset:
    """Digits blown up 3x to 24x24 and zero-padded to 28x28: a real 28x28 image dataset."""
    digits = datasets.load_dataset("digits")

    def grow(x):
        x = jnp.repeat(jnp.repeat(x, 3, axis=1), 3, axis=2)
        return jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))

    arrays = {
        f"{split}_{part}": grow(value) if part == "x" else value
        for split in ("train", "inner_valid", "outer_valid", "test")
        for part, value in zip("xy", digits.split(split), strict=True)
    }
    return datasets.Dataset(
        **arrays, name="digits28", num_classes=10, input_shape=(28, 28, digits.input_shape[-1])
    )


# name -> (builder of the family, Adam learning rate, expected params shapes or None)
FAMILY_CASES = {
    "mlp_digits": (
        lambda: registry.get_family("mlp_digits"),
        1e-2,
        {"dense_0": (64, 32), "dense_1": (32, 32), "dense_2": (32, 10)},
    ),
    "mlp_mnist1d_gelu": (
        lambda: registry.get_family(
            "mlp_mnist1d", hidden=(16, 8), activation="gelu", batch_size=64
        ),
        1e-2,
        {"dense_0": (40, 16), "dense_1": (16, 8), "dense_2": (8, 10)},
    ),
    "conv_digits": (
        lambda: registry.get_family("conv_digits", batch_size=64),
        1e-2,
        {"conv_0": (3, 3, 1, 8), "conv_1": (3, 3, 8, 16), "head": (16, 10)},
    ),
    "conv_28x28_tanh": (
        lambda: ImageConvFamily(
            data=upsampled_digits_28x28(), channels=(4, 8), activation="tanh", batch_size=32
        ),
        3e-2,
        {"conv_0": (3, 3, 1, 4), "conv_1": (3, 3, 4, 8), "head": (8, 10)},
    ),
    "lm_markov_lstm": (
        lambda: registry.get_family("lm_markov", hidden=16, embed=8, seq_len=12, batch_size=16),
        3e-2,
        None,
    ),
    "lm_markov_gru": (
        lambda: registry.get_family(
            "lm_markov", cell="gru", hidden=16, embed=8, seq_len=12, batch_size=16
        ),
        3e-2,
        None,
    ),
    "quadratic": (lambda: registry.get_family("quadratic", dim=8), 5e-2, {"x": (8,)}),
    "noisy_quadratic": (lambda: registry.get_family("noisy_quadratic", dim=8), 5e-2, {"x": (8,)}),
}


def weight_shapes(params) -> dict:
    """``{layer: shape of its weight}`` of an MLP/conv (``w``) or quadratic (``x``) params."""
    return {k: (v["w"].shape if isinstance(v, dict) else v.shape) for k, v in params.items()}


def make_probe(learning_rate: float):
    """A jitted function of (family, key) exercising the whole family API at once, vmapped over
    ``NUM_PARTICLES`` sampled configurations as meta-training uses it."""
    adam = optax.adam(learning_rate)

    def particle(family, key):
        sample_key, init_key, other_key, adam_key = jax.random.split(key, 4)
        config = family.sample(sample_key)
        task = family.task(config)
        params = task.init(init_key)
        other_seed = family.task(config._replace(data_seed=config.data_seed + 1))

        def adam_step(carry, step_key):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, step_key)
            updates, state = adam.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (trained, _), losses = jax.lax.scan(
            adam_step, (params, adam.init(params)), jax.random.split(adam_key, ADAM_STEPS)
        )
        return {
            "config": config,
            "params": params,
            "params_other_key": task.init(other_key),
            "loss": task.loss(params, init_key),
            "loss_other_key": task.loss(params, other_key),
            "loss_other_data_seed": other_seed.loss(params, init_key),
            "eval_loss": task.eval_loss(params, init_key, "outer_valid"),
            "adam_losses": losses,
            "evaluate": task.evaluate(trained, "test"),
        }

    # Unoptimised XLA code halves the compile time of these tiny programs; results are the same.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def probe(family, key):
        keys = jax.random.split(key, NUM_PARTICLES)
        out = jax.vmap(particle, in_axes=(None, 0))(family, keys)
        first = jax.tree.map(lambda a: a[0], out)
        init_key = jax.random.split(keys[0], 4)[1]
        out["unbatched_loss"] = family.task(first["config"]).loss(first["params"], init_key)
        return out

    return probe


@pytest.fixture(scope="module", params=list(FAMILY_CASES))
def probed(request):
    build, learning_rate, shapes = FAMILY_CASES[request.param]
    family = build()
    probe = make_probe(learning_rate)
    key = jax.random.key(42)
    first = jax.device_get(probe(family, key))
    second = jax.device_get(probe(family, key))
    return family, shapes, first, second


def test_shapes_and_dtypes(probed):
    family, shapes, out, _ = probed
    params = jax.tree.map(lambda a: a[0], out["params"])
    assert isinstance(params, dict)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    if shapes is not None:
        assert weight_shapes(params) == shapes
    for name in ("loss", "loss_other_key", "eval_loss", "loss_other_data_seed"):
        assert out[name].shape == (NUM_PARTICLES,) and out[name].dtype == np.float32, name
        assert np.all(np.isfinite(out[name])), name
    assert out["unbatched_loss"].shape == () and out["adam_losses"].shape[1] == ADAM_STEPS
    assert np.all(np.isfinite(out["evaluate"]["loss"]))
    assert family.name and isinstance(hash(jax.tree.structure(family)), int)


def test_determinism(probed):
    """Same key: same params and the same minibatch (same loss); another key or data seed: not."""
    _, _, first, second = probed
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert any(
        np.any(a != b)
        for a, b in zip(
            jax.tree.leaves(first["params"]),
            jax.tree.leaves(first["params_other_key"]),
            strict=True,
        )
    )
    assert np.all(first["loss"] != first["loss_other_key"])
    assert np.all(first["loss"] != first["loss_other_data_seed"])


def test_vmap_over_configs(probed):
    """Particles get different configs and losses; particle 0 matches the unbatched loss."""
    _, _, out, _ = probed
    np.testing.assert_allclose(out["loss"][0], out["unbatched_loss"], rtol=1e-5)
    assert len(np.unique(out["loss"])) == NUM_PARTICLES
    assert len(np.unique(out["config"].init_seed)) == NUM_PARTICLES


def test_adam_lowers_training_loss(probed):
    _, _, out, _ = probed
    losses = out["adam_losses"]
    assert np.all(np.isfinite(losses))
    assert np.all(losses[:, -5:].mean(1) < 0.85 * losses[:, :5].mean(1)), losses


def test_quadratic_exact_gradient_and_minimiser():
    family = registry.get_family("quadratic", dim=8)
    task = family.task(family.sample(jax.random.key(0)))
    params = task.init(jax.random.key(1))
    exact = task.exact_grad(params)["x"]
    np.testing.assert_allclose(jax.grad(task.loss)(params, jax.random.key(2))["x"], exact, 1e-6)
    np.testing.assert_allclose(jax.grad(task.exact_loss)(params)["x"], exact, rtol=1e-6)
    np.testing.assert_allclose(task.loss(params, jax.random.key(3)), task.exact_loss(params))
    assert np.all(task.exact_grad(task.minimiser())["x"] == 0.0)
    assert task.exact_loss(task.minimiser()) == task.minimum_loss() == 0.0


def test_noisy_quadratic_gradient_is_unbiased():
    """The mean minibatch gradient matches ``exact_grad`` within 5 standard errors per coordinate.

    The gradient noise of coordinate i is ``-exp(s_i) nu z_i / d``, so its standard error over M
    draws is ``exp(s_i) nu / (d sqrt(M))``.
    """
    family = registry.get_family("noisy_quadratic", dim=8)
    task = family.task(family.sample(jax.random.key(0)))
    params = task.init(jax.random.key(1))
    num_draws = 4000
    grads = jax.jit(jax.vmap(lambda k: jax.grad(task.loss)(params, k)["x"]))(
        jax.random.split(jax.random.key(2), num_draws)
    )
    standard_error = task.scales * task.config.noise_std / (family.dim * math.sqrt(num_draws))
    z = (grads.mean(0) - task.exact_grad(params)["x"]) / standard_error
    assert np.all(np.abs(z) < 5.0), z
    losses = jax.vmap(lambda k: task.loss(params, k))(jax.random.split(jax.random.key(3), 4000))
    loss_error = 5.0 * losses.std() / math.sqrt(losses.shape[0])
    assert abs(losses.mean() - task.exact_loss(params)) < loss_error
    np.testing.assert_allclose(task.exact_loss(task.minimiser()), task.minimum_loss(), rtol=1e-6)


def test_markov_language_is_learnable_and_sampled_from_its_chain():
    """The chain's entropy rate is far below log(vocab), and the text's mean log-likelihood
    under the chain matches it within 5 standard errors."""
    vocab, branching = 32, 3
    transition = language.markov_chain(vocab, branching, seed=0)
    text = language.markov_text(vocab, branching, seed=0)
    assert text.entropy_rate < math.log(vocab) - 1.5
    tokens = np.asarray(text.train)
    probabilities = transition[tokens[:-1], tokens[1:]]
    assert np.all(probabilities > 0), "the text has a transition the chain forbids"
    surprise = -np.log(probabilities)
    assert abs(surprise.mean() - text.entropy_rate) < 5 * surprise.std() / math.sqrt(len(surprise))
    assert np.all(np.bincount(tokens, minlength=vocab) > 0)


def test_evaluate_covers_whole_split_with_padding_masked():
    family = registry.get_family("mlp_digits", hidden=(8,))
    task = family.task(family.sample(jax.random.key(0)))
    params = task.init(jax.random.key(1))
    inputs, labels = family.data.split("test")
    labels = task.config.label_perm[labels]
    logits = task.apply(params, inputs)
    expected_loss = np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    expected_accuracy = np.mean(np.argmax(logits, -1) == labels)
    for chunk_size in (7, inputs.shape[0], 4096):
        metrics = classification_metrics(
            lambda x: task.apply(params, x), inputs, labels, chunk_size
        )
        np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
        np.testing.assert_allclose(metrics["accuracy"], expected_accuracy, rtol=1e-6)


def test_label_permutation_is_applied():
    """Permuting the labels by p and the output units by p leaves the loss unchanged."""
    family = registry.get_family("mlp_digits", hidden=(8,))
    identity = family.default_config()
    perm = jnp.array([3, 0, 1, 2, 9, 8, 7, 6, 5, 4], jnp.int32)
    permuted = identity._replace(label_perm=perm)
    params = family.task(identity).init(jax.random.key(0))
    out = params["dense_1"]
    moved = {**params, "dense_1": {"w": out["w"].at[:, perm].set(out["w"]), "b": out["b"]}}
    key = jax.random.key(1)
    plain = family.task(identity).loss(params, key)
    np.testing.assert_allclose(family.task(permuted).loss(moved, key), plain, rtol=1e-5)
    assert abs(float(family.task(permuted).loss(params, key)) - float(plain)) > 1e-3


def _static_group(family) -> object:
    """What makes a compiled task group: the family's class and static fields (the treedef)."""
    return jax.tree.structure(family)


@pytest.fixture(scope="module")
def suites():
    return {name: registry.get_suite(name) for name in registry.suite_names()}


def test_suites_are_held_out(suites):
    assert {"default", "tiny", "shifts"} <= set(suites)
    assert 3 <= len(suites["default"]) <= 5
    assert len(suites["tiny"]) == 2
    meta_training_group = _static_group(registry.get_family(registry.DEFAULT_FAMILY))
    for name, tasks in suites.items():
        assert len({task.name for task in tasks}) == len(tasks), name
        for task in tasks:
            assert isinstance(task, registry.HeldOutTask)
            assert task.num_steps > 0
            assert _static_group(task.family) != meta_training_group, (name, task.name)
            assert int(task.config.init_seed) >= SAMPLED_SEED_END
            assert int(task.config.data_seed) >= SAMPLED_SEED_END


def test_sampled_seeds_never_reach_held_out_range():
    family = registry.get_family("quadratic", dim=2)
    configs = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 4096))
    for seeds in (configs.init_seed, configs.data_seed):
        assert seeds.dtype == jnp.uint32 and int(seeds.max()) < SAMPLED_SEED_END
        # Uniform over [0, 2^31): the top half of the range is hit about half the time.
        assert 0.4 < float(jnp.mean(seeds >= SAMPLED_SEED_END // 2)) < 0.6


def test_shifts_suite_covers_the_shifts():
    shifts = {entry.shift.split(" ")[0] for entry in registry.suite_entries("shifts")}
    assert {"width", "depth", "activation", "dataset", "architecture", "horizon"} <= shifts


def test_format_listing_names_everything():
    listing = registry.format_listing()
    for name in registry.family_names() + registry.suite_names():
        assert name in listing
    for entry in registry.suite_entries("default"):
        assert entry.name in listing and str(entry.num_steps) in listing
    assert "influence_balancing" in listing


def test_registry_errors_are_clear():
    with pytest.raises(KeyError, match=r"known families: .*mlp_digits"):
        registry.get_family("mlp_digitz")
    with pytest.raises(TypeError, match=r"no option 'widths'.*hidden"):
        registry.get_family("mlp_digits", widths=(8,))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        registry.get_family("mlp_digits", activation="swish")
    with pytest.raises(KeyError, match="known suites"):
        registry.get_suite("nope")
    with pytest.raises(ValueError, match="need image inputs"):
        registry.get_family("conv_digits", dataset="mnist1d")
    with pytest.raises(ValueError, match="unknown split"):
        registry.get_family("quadratic", dim=2).task(
            registry.get_family("quadratic", dim=2).default_config()
        ).evaluate({"x": jnp.zeros(2)}, "validation")


def test_missing_text_dataset_fails_fast_with_instructions():
    start = time.monotonic()
    with pytest.raises(language.TextDatasetNotFoundError, match="download_and_prepare"):
        language.tfds_text("tiny_shakespeare")
    assert time.monotonic() - start < 5.0
    assert language.load_text("auto").name.startswith("markov")


def test_tfds_text_source_maps_characters_to_tokens():
    import tensorflow_datasets as tfds

    texts = {"train": "to be or not to be", "validation": "that is", "test": "the question"}

    def as_data_source(self, split=None, **kwargs):
        return {name: [{"text": text.encode()}] for name, text in texts.items()}

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        data = language.tfds_text("tiny_shakespeare")
    vocab = sorted(set("".join(texts.values())))
    assert data.vocab_size == len(vocab)
    decoded = {split: "".join(vocab[t] for t in data.split(split)) for split in ("train", "test")}
    assert decoded == {"train": texts["train"], "test": texts["test"]}
    assert "".join(vocab[t] for t in [*data.inner_valid, *data.outer_valid]) == "that is"
    family = language.CharLMFamily(data=data, hidden=8, embed=4, seq_len=4, batch_size=2)
    task = family.task(family.default_config())
    assert np.isfinite(task.loss(task.init(jax.random.key(0)), jax.random.key(1)))
