"""Task families, the registry and the held-out suites.

Each family case gets one jitted probe (init, losses under several keys and configs, vmapped over
sampled configs, and a short Adam run in a ``lax.scan``), compiled once and called twice. Variants
that share a family's code (the GRU cell, conv nets on 28x28 images) get a lighter test of their
own. Compiling dominates the run time, so every test compiles one function, unoptimised.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_train.es.compile_options import FAST_COMPILE
from tasks import SAMPLED_SEED_END, datasets, image, language, registry
from tasks.image import ImageConvFamily, classification_metrics

ADAM_STEPS = 40
NUM_PARTICLES = 2

# Unoptimised XLA code halves the compile time of these tiny programs; the results are the same.
jit_unoptimised = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


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


def dense_shapes(sizes: tuple[int, ...]) -> dict:
    return {
        f"dense_{i}": {"w": (fan_in, fan_out), "b": (fan_out,)}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes))
    }


def conv_shapes(channels: tuple[int, ...], num_classes: int = 10) -> dict:
    shapes = {
        f"conv_{i}": {"w": (3, 3, c_in, c_out), "b": (c_out,)}
        for i, (c_in, c_out) in enumerate(itertools.pairwise(channels))
    }
    return shapes | {"head": {"w": (channels[-1], num_classes), "b": (num_classes,)}}


def lm_shapes(vocab: int, embed: int, hidden: int, gates: int) -> dict:
    return {
        "embed": (vocab, embed),
        "cell": {
            "w_x": (embed, gates * hidden),
            "w_h": (hidden, gates * hidden),
            "b": (gates * hidden,),
        },
        "out": {"w": (hidden, vocab), "b": (vocab,)},
    }


class Case(NamedTuple):
    build: Callable[[], Any]
    learning_rate: float  # of the Adam run
    shapes: dict  # of the params tree
    stochastic: bool = True  # whether the loss depends on the key (False: exact quadratic)


FAMILY_CASES = {
    "mlp_digits": Case(
        lambda: registry.get_family("mlp_digits"), 1e-2, dense_shapes((64, 32, 32, 10))
    ),
    "mlp_mnist1d_gelu": Case(
        lambda: registry.get_family(
            "mlp_mnist1d", hidden=(16, 8), activation="gelu", batch_size=64
        ),
        1e-2,
        dense_shapes((40, 16, 8, 10)),
    ),
    "conv_digits": Case(
        lambda: registry.get_family("conv_digits", batch_size=64), 1e-2, conv_shapes((1, 8, 16))
    ),
    "lm_markov_lstm": Case(
        lambda: registry.get_family("lm_markov", hidden=16, embed=8, seq_len=12, batch_size=16),
        3e-2,
        lm_shapes(32, 8, 16, 4),
    ),
    "quadratic": Case(
        lambda: registry.get_family("quadratic", dim=8), 5e-2, {"x": (8,)}, stochastic=False
    ),
    "noisy_quadratic": Case(
        lambda: registry.get_family("noisy_quadratic", dim=8), 5e-2, {"x": (8,)}
    ),
}


def adam_losses(task, learning_rate: float, key: jax.Array) -> jax.Array:
    """``[ADAM_STEPS]`` training losses of ``optax.adam`` on ``task`` in one ``lax.scan``."""
    adam = optax.adam(learning_rate)
    params = task.init(key)

    def step(carry, step_key):
        params, state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, step_key)
        updates, state = adam.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    keys = jax.random.split(key, ADAM_STEPS)
    return jax.lax.scan(step, (params, adam.init(params)), keys)[1]


def make_probe(learning_rate: float):
    """A jitted function of (family, key) exercising the whole family API at once, vmapped over
    ``NUM_PARTICLES`` sampled configurations as meta-training uses it."""

    def particle(family, key):
        sample_key, init_key, other_key, adam_key = jax.random.split(key, 4)
        config = family.sample(sample_key)
        task = family.task(config)
        params = task.init(init_key)
        other_seed = family.task(config._replace(data_seed=config.data_seed + 1))

        return {
            "config": config,
            "params": params,
            "params_other_key": task.init(other_key),
            "loss": task.loss(params, init_key),
            "loss_other_key": task.loss(params, other_key),
            "loss_other_data_seed": other_seed.loss(params, init_key),
            "eval_loss": task.eval_loss(params, init_key, "outer_valid"),
            "adam_losses": adam_losses(task, learning_rate, adam_key),
        }

    @jit_unoptimised
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
    case = FAMILY_CASES[request.param]
    family = case.build()
    probe = make_probe(case.learning_rate)
    key = jax.random.key(42)
    first = jax.device_get(probe(family, key))
    second = jax.device_get(probe(family, key))
    return family, case, first, second


def test_shapes_and_dtypes(probed):
    family, case, out, _ = probed
    params = jax.tree.map(lambda a: a[0], out["params"])
    assert jax.tree.map(lambda a: a.shape, params) == case.shapes
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    for name in ("loss", "loss_other_key", "eval_loss", "loss_other_data_seed"):
        assert out[name].shape == (NUM_PARTICLES,) and out[name].dtype == np.float32, name
        assert np.all(np.isfinite(out[name])), name
    assert out["unbatched_loss"].shape == () and out["adam_losses"].shape[1] == ADAM_STEPS
    assert family.name and isinstance(hash(jax.tree.structure(family)), int)


def test_determinism(probed):
    """Same key: same params and the same minibatch (same loss); another key or data seed: not."""
    _, case, first, second = probed
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert any(
        np.any(a != b)
        for a, b in zip(
            jax.tree.leaves(first["params"]),
            jax.tree.leaves(first["params_other_key"]),
            strict=True,
        )
    )
    if case.stochastic:
        assert np.all(first["loss"] != first["loss_other_key"])
        assert np.all(first["loss"] != first["loss_other_data_seed"])
    else:
        np.testing.assert_array_equal(first["loss"], first["loss_other_key"])


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


def test_gru_language_model_and_lm_evaluate():
    """The GRU cell (the LSTM runs through the full probe): shapes, Adam, and whole-split
    ``evaluate`` of a language model, which cuts the stream into disjoint windows."""
    family = registry.get_family("lm_markov", cell="gru", hidden=16, embed=8, seq_len=12)

    @jit_unoptimised
    def run(family, key):
        task = family.task(family.sample(key))
        params = task.init(key)
        stream = family.data.split("test")
        num_windows = (stream.shape[0] - 1) // family.seq_len
        inputs = stream[: num_windows * family.seq_len].reshape(num_windows, -1)
        targets = stream[1 : num_windows * family.seq_len + 1].reshape(num_windows, -1)
        logits = family.apply(params, inputs)
        direct = {
            "loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets)),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == targets),
        }
        return params, adam_losses(task, 3e-2, key), task.evaluate(params, "test"), direct

    params, losses, metrics, direct = run(family, jax.random.key(0))
    assert jax.tree.map(lambda a: a.shape, params) == lm_shapes(32, 8, 16, 3)
    assert losses[-5:].mean() < 0.85 * losses[:5].mean(), losses
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(metrics[name], direct[name], rtol=1e-5)


def test_conv_on_28x28_images():
    """The conv family on 28x28 inputs (the 8x8 one runs through the full probe): shapes of the
    three stride-2 layers' parameters and of the logits, and Adam lowers the training loss."""
    family = ImageConvFamily(
        data=upsampled_digits_28x28(), channels=(4, 8, 8), activation="tanh", batch_size=32
    )

    @jit_unoptimised
    def run(family, key):
        task = family.task(family.sample(key))
        params = task.init(key)
        logits = task.apply(params, family.data.test_x[:5])
        return params, logits, adam_losses(task, 3e-2, key)

    params, logits, losses = run(family, jax.random.key(0))
    expected = conv_shapes((1, 4, 8, 8))
    assert jax.tree.map(lambda a: a.shape, params) == expected
    assert logits.shape == (5, 10)
    assert losses[-5:].mean() < 0.85 * losses[:5].mean(), losses


def test_conv2d_same_matches_lax_conv():
    rng = np.random.default_rng(0)
    lax_conv = functools.partial(
        jax.lax.conv_general_dilated, padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # Even and odd sizes, strides 1 and 2, odd and even kernels (asymmetric 'SAME' padding).
    for shape, kernel_size, stride in [((2, 8, 8, 3), 3, 2), ((1, 7, 9, 2), 4, 1)]:
        inputs = rng.normal(size=shape).astype(np.float32)
        kernel = rng.normal(size=(kernel_size, kernel_size, shape[-1], 4)).astype(np.float32)
        np.testing.assert_allclose(
            image.conv2d_same(inputs, kernel, stride),
            lax_conv(inputs, kernel, (stride, stride)),
            rtol=1e-5,
            atol=1e-5,
        )


def test_quadratic_exact_gradient_and_minimiser():
    family = registry.get_family("quadratic", dim=8)

    @jit_unoptimised
    def check(family, key):
        sample_key, init_key, loss_key = jax.random.split(key, 3)
        task = family.task(family.sample(sample_key))
        params = task.init(init_key)
        optimum = task.minimiser()
        return {
            "exact": task.exact_grad(params)["x"],
            "grad_loss": jax.grad(task.loss)(params, loss_key)["x"],
            "grad_exact_loss": jax.grad(task.exact_loss)(params)["x"],
            "loss": task.loss(params, loss_key),
            "exact_loss": task.exact_loss(params),
            "grad_at_optimum": task.exact_grad(optimum)["x"],
            "loss_at_optimum": task.exact_loss(optimum),
            "minimum_loss": task.minimum_loss(),
        }

    out = check(family, jax.random.key(0))
    assert np.all(np.abs(out["exact"]) > 1e-4)
    np.testing.assert_allclose(out["grad_loss"], out["exact"], rtol=1e-5)
    np.testing.assert_allclose(out["grad_exact_loss"], out["exact"], rtol=1e-5)
    np.testing.assert_allclose(out["loss"], out["exact_loss"], rtol=1e-6)
    assert np.all(out["grad_at_optimum"] == 0.0)
    assert out["loss_at_optimum"] == out["minimum_loss"] == 0.0


def test_noisy_quadratic_gradient_is_unbiased():
    """Mean minibatch gradient and loss match ``exact_grad`` and ``exact_loss`` within 5 standard
    errors. The gradient noise of coordinate i is ``-exp(s_i) nu z_i / d``, so its standard error
    over M draws is ``exp(s_i) nu / (d sqrt(M))``; the loss's is its sample std over sqrt(M)."""
    family = registry.get_family("noisy_quadratic", dim=8)
    num_draws = 4000

    @jit_unoptimised
    def draws(family, key):
        sample_key, init_key, noise_key = jax.random.split(key, 3)
        task = family.task(family.sample(sample_key))
        params = task.init(init_key)
        losses, grads = jax.vmap(jax.value_and_grad(task.loss), in_axes=(None, 0))(
            params, jax.random.split(noise_key, num_draws)
        )
        return {
            "losses": losses,
            "grads": grads["x"],
            "exact_grad": task.exact_grad(params)["x"],
            "exact_loss": task.exact_loss(params),
            "grad_std": task.scales * task.config.noise_std / family.dim,
            "optimum_gap": task.exact_loss(task.minimiser()) - task.minimum_loss(),
        }

    out = draws(family, jax.random.key(0))
    z = (out["grads"].mean(0) - out["exact_grad"]) / (out["grad_std"] / math.sqrt(num_draws))
    assert np.all(np.abs(z) < 5.0), z
    loss_error = out["losses"].std() / math.sqrt(num_draws)
    assert abs(out["losses"].mean() - out["exact_loss"]) < 5.0 * loss_error
    assert abs(out["optimum_gap"]) < 1e-6


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

    num_test = family.data.test_y.shape[0]
    chunk_size = 100
    assert num_test % chunk_size != 0 and num_test < image.EVAL_CHUNK

    @jit_unoptimised
    def metrics(family, key):
        sample_key, init_key = jax.random.split(key)
        task = family.task(family.sample(sample_key))
        params = task.init(init_key)
        inputs, labels = family.data.split("test")
        labels = task.config.label_perm[labels]
        logits = task.apply(params, inputs)
        chunked = classification_metrics(
            functools.partial(task.apply, params), inputs, labels, chunk_size
        )
        whole = {
            "loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        }
        return chunked, whole, task.evaluate(params, "test")

    # Chunks of 100 pad the last chunk; ``evaluate`` uses one chunk of the whole split.
    chunked, whole, evaluated = metrics(family, jax.random.key(0))
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5)
        np.testing.assert_allclose(evaluated[name], whole[name], rtol=1e-5)


def test_label_permutation_is_applied():
    """Permuting the labels by p and the output units by p leaves the loss unchanged."""
    family = registry.get_family("mlp_digits", hidden=(8,))
    perm = jnp.array([3, 0, 1, 2, 9, 8, 7, 6, 5, 4], jnp.int32)

    @jit_unoptimised
    def losses(family, key):
        identity = family.default_config()
        permuted = family.task(identity._replace(label_perm=perm))
        params = family.task(identity).init(key)
        out = params["dense_1"]
        moved = {**params, "dense_1": {"w": out["w"].at[:, perm].set(out["w"]), "b": out["b"]}}
        plain = family.task(identity).loss(params, key)
        return plain, permuted.loss(moved, key), permuted.loss(params, key)

    plain, moved, mismatched = losses(family, jax.random.key(0))
    np.testing.assert_allclose(moved, plain, rtol=1e-5)
    assert abs(mismatched - plain) > 1e-3


def _static_group(family) -> object:
    """What makes a compiled task group: the family's class and static fields (the treedef)."""
    return jax.tree.structure(family)


@pytest.fixture(scope="module")
def suites():
    return {name: registry.get_suite(name) for name in registry.suite_names()}


def test_suites_are_held_out(suites):
    assert {"default", "tiny", "shifts"} <= set(suites)
    assert 3 <= len(suites["default"]) <= 5
    # The tiny suite is the quick one: each of its tasks is shorter than any default task.
    assert max(task.num_steps for task in suites["tiny"]) < min(
        task.num_steps for task in suites["default"]
    )
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
    configs = jit_unoptimised(jax.vmap(family.sample))(jax.random.split(jax.random.key(0), 4096))
    for seeds in (configs.init_seed, configs.data_seed):
        assert seeds.dtype == jnp.uint32 and int(seeds.max()) < SAMPLED_SEED_END
        # Uniform over [0, 2^31): the top half of the range is hit about half the time.
        assert 0.45 < float(jnp.mean(seeds >= SAMPLED_SEED_END // 2)) < 0.55


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
    assert language.CharLMFamily(data=data, seq_len=4).name.startswith("lm_tiny_shakespeare")
