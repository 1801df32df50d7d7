"""The Gaussian-mixture family (tasks.synthetic) and the tabular built-in datasets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import SAMPLED_SEED_END, SPLITS, registry, synthetic
from tasks.datasets import load_dataset, storage
from tasks.image import ClassifierConfig


@pytest.fixture(scope="module")
def gmm():
    return registry.get_family("mlp_gmm", hidden=(16,), batch_size=64)


def config_with(family, data_seed: int, init_seed: int = 0) -> ClassifierConfig:
    return family.default_config()._replace(
        init_seed=jnp.uint32(init_seed), data_seed=jnp.uint32(data_seed)
    )


def test_gmm_shapes_name_and_config(gmm):
    assert gmm.name == "mlp_gmm_d16_c4_k2_s3_16_relu_b64"
    config = gmm.default_config()
    assert isinstance(config, ClassifierConfig) and config.label_perm.shape == (4,)
    params = gmm.task(config).init(jax.random.key(0))
    assert jax.tree.map(jnp.shape, params) == {
        "dense_0": {"w": (16, 16), "b": (16,)},
        "dense_1": {"w": (16, 4), "b": (4,)},
    }
    held_out = registry.held_out_config(gmm, 2)
    assert int(held_out.data_seed) == int(held_out.init_seed) == SAMPLED_SEED_END + 2


def test_gmm_mixture_follows_the_data_seed(gmm):
    spec = gmm.data
    means = spec.means(jnp.uint32(0))
    assert means.shape == (4, 2, 16)
    np.testing.assert_array_equal(means, spec.means(jnp.uint32(0)))
    assert not np.allclose(means, spec.means(jnp.uint32(1)))
    # Mean norms are about ``separation`` (3): sqrt(chi^2_16 / 16) * 3 over 8 means.
    norms = np.linalg.norm(np.asarray(means), axis=-1)
    assert 2.0 < norms.mean() < 4.0
    inputs, labels = spec.draw(means, jax.random.key(0), 4000)
    assert inputs.shape == (4000, 16) and labels.dtype == jnp.int32
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    # Given its component the noise is unit-variance: distance to the nearest own-class mean.
    residual = np.asarray(inputs)[:, None, :] - np.asarray(means)[np.asarray(labels)]
    nearest = np.min(np.sum(residual**2, axis=-1), axis=-1)
    assert 13.0 < nearest.mean() < 16.5  # E[chi^2_16] = 16, the min over 2 components a bit less


def test_gmm_losses_splits_and_evaluate(gmm):
    task, other = gmm.task(config_with(gmm, 0)), gmm.task(config_with(gmm, 1))
    params = task.init(jax.random.key(0))
    key = jax.random.key(3)
    assert float(task.loss(params, key)) == float(task.loss(params, key))
    assert float(task.loss(params, key)) == float(task.eval_loss(params, key, "train"))
    losses = {split: float(task.eval_loss(params, key, split)) for split in SPLITS}
    assert len(set(losses.values())) == len(SPLITS), "each split draws its own stream"
    assert float(other.loss(params, key)) != float(task.loss(params, key))
    first, again = task.evaluate(params), task.evaluate(params)
    assert float(first["loss"]) == float(again["loss"]), "a fixed evaluation set"
    assert float(task.evaluate(params, "outer_valid")["loss"]) != float(first["loss"])
    with pytest.raises(ValueError, match="split"):
        task.eval_loss(params, key, "validation")


@pytest.mark.slow
def test_gmm_vmapped_sample_and_adam_learns(gmm):
    configs = jax.jit(jax.vmap(gmm.sample))(jax.random.split(jax.random.key(0), 3))
    assert len(np.unique(configs.data_seed)) == 3
    optimizer = optax.adam(1e-2)

    def train(config, key):
        task = gmm.task(config)
        params = task.init(key)

        def step(carry, step_key):
            params, state = carry
            grads = jax.grad(task.loss)(params, step_key)
            updates, state = optimizer.update(grads, state)
            return (optax.apply_updates(params, updates), state), None

        keys = jax.random.split(key, 200)
        (trained, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        return task.evaluate(params), task.evaluate(trained)

    before, after = jax.jit(jax.vmap(train))(configs, jax.random.split(jax.random.key(1), 3))
    # Chance is 25% accuracy and loss >= log 4; with separation 3 the mixtures are learnable.
    assert np.all(after["accuracy"] > 0.75) and np.all(after["loss"] < 0.6 * before["loss"])


def test_gmm_refuses_bad_options():
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.gmm_family(num_classes=1)
    with pytest.raises(ValueError, match="separation"):
        synthetic.gmm_family(separation=0.0)
    with pytest.raises(ValueError, match="dim"):
        synthetic.gmm_family(dim=0)


@pytest.mark.parametrize(
    ("name", "loader", "num_features", "num_classes"),
    [("breast_cancer", "load_breast_cancer", 30, 2), ("wine", "load_wine", 13, 3)],
)
def test_tabular_dataset_offline(name, loader, num_features, num_classes, tfds_data_dir):
    dataset = load_dataset(name)
    assert dataset.input_shape == (num_features,) and dataset.num_classes == num_classes
    assert (tfds_data_dir / name / "1.0.0").is_dir()
    import sklearn.datasets

    reference = getattr(sklearn.datasets, loader)()
    raw_x, raw_y = storage.read_splits(name).splits["train"]
    np.testing.assert_allclose(raw_x, reference.data.astype(np.float32))
    np.testing.assert_array_equal(raw_y, reference.target)
    assert sum(int(dataset.split(split)[1].shape[0]) for split in SPLITS) == len(reference.target)
    for split in SPLITS:
        x, y = dataset.split(split)
        assert x.shape[1:] == (num_features,) and x.dtype == jnp.float32
        assert set(np.unique(y).tolist()) <= set(range(num_classes))
    # Standardised per feature with the train split's statistics (the raw units differ by 1e4).
    train = np.asarray(dataset.train_x, np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)


def test_mlp_tabular_family():
    family = registry.get_family("mlp_tabular", dataset="wine", hidden=(8,))
    assert family.name == "mlp_wine_8_relu_b128"
    task = family.task(registry.held_out_config(family, 0))
    params = task.init(jax.random.key(0))
    assert params["dense_0"]["w"].shape == (13, 8) and params["dense_1"]["w"].shape == (8, 3)
    metrics = task.evaluate(params)
    assert np.isfinite(float(metrics["loss"])) and 0.0 <= float(metrics["accuracy"]) <= 1.0
