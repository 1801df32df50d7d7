"""Datasets through tensorflow-datasets, offline: builders, splits, preprocessing, errors."""

import importlib.util
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from tasks import SPLITS
from tasks.datasets import (
    Dataset,
    DatasetNotFoundError,
    load_dataset,
    prepare,
    preprocessing,
    storage,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_dataset("mnist1d")


def _sizes(dataset: Dataset) -> dict[str, int]:
    return {split: int(dataset.split(split)[1].shape[0]) for split in SPLITS}


def _write_metadata(name: str, data_dir: Path, file_format: str, num_examples: int) -> None:
    """Metadata of a prepared ``name`` with train and test splits, without any data files."""
    builder = tfds.builder(name, data_dir=str(data_dir), file_format=file_format)
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0)
                for split in ("train", "test")
            ]
        )
    )
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)


# Built-in builders round-trip.


def test_digits_round_trip(digits, tfds_data_dir):
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (8, 8, 1)
    assert sum(_sizes(digits).values()) == 1797
    for split in SPLITS:
        x, y = digits.split(split)
        assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
        assert int(y.min()) >= 0 and int(y.max()) < 10
    stored = list((tfds_data_dir / "digits" / "1.0.0").iterdir())
    assert any(".array_record" in path.name for path in stored)

    from sklearn.datasets import load_digits

    reference = load_digits()
    raw = storage.read_splits("digits")
    images, labels = raw.splits["train"]
    np.testing.assert_array_equal(images[..., 0], reference.images.astype(np.uint8))
    np.testing.assert_array_equal(labels, reference.target)


def test_mnist1d_round_trip(mnist1d):
    assert mnist1d.num_classes == 10 and mnist1d.input_shape == (40,)
    sizes = _sizes(mnist1d)
    assert sizes["test"] == 1000, "the package's own test split"
    assert sizes["train"] + sizes["inner_valid"] + sizes["outer_valid"] == 4000
    for split in SPLITS:
        x, y = mnist1d.split(split)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert int(y.min()) >= 0 and int(y.max()) < 10
        assert np.isfinite(np.asarray(x)).all()


def test_prepare_returns_the_prepared_directory_and_cli_prepares(tfds_data_dir, capsys):
    assert Path(prepare("digits")) == tfds_data_dir / "digits" / "1.0.0"
    from meta_train import cli

    assert cli.main(["data", "prepare", "digits"]) == 0
    assert "digits: ready at" in capsys.readouterr().out


def test_dataset_is_a_pytree_passed_to_jit(digits):
    leaves, treedef = jax.tree.flatten(digits)
    assert len(leaves) == 8
    l1_norm, label_sum = jax.jit(lambda data: (abs(data.train_x).sum(), data.test_y.sum()))(digits)
    np.testing.assert_allclose(l1_norm, np.abs(np.asarray(digits.train_x)).sum(), rtol=1e-4)
    assert int(label_sum) == int(np.asarray(digits.test_y).sum())
    assert jax.tree.unflatten(treedef, leaves).input_shape == (8, 8, 1)


def test_load_is_cached_per_options(digits):
    assert load_dataset("digits") is digits
    assert load_dataset("digits", split_seed=1) is not digits


# Splits.


@pytest.mark.parametrize("num_test", [None, 50])
def test_split_indices_disjoint_cover_and_deterministic(num_test):
    num_train = 500
    first = preprocessing.split_indices(num_train, num_test, split_seed=3)
    again = preprocessing.split_indices(num_train, num_test, split_seed=3)
    other = preprocessing.split_indices(num_train, num_test, split_seed=4)
    for part, part_again in zip(first, again, strict=True):
        np.testing.assert_array_equal(part, part_again)
    assert not np.array_equal(first.inner_valid, other.inner_valid)
    train_side = np.concatenate([first.train, first.inner_valid, first.outer_valid])
    if num_test is None:
        np.testing.assert_array_equal(first.test, other.test)  # Held out with a fixed seed.
        assert first.test.size == round(preprocessing.HELD_OUT_TEST_FRACTION * num_train)
        train_side = np.concatenate([train_side, first.test])
    else:
        np.testing.assert_array_equal(first.test, np.arange(num_test))
    assert np.unique(train_side).size == train_side.size == num_train
    num_carved_from = num_train - (first.test.size if num_test is None else 0)
    expected_valid_size = round(preprocessing.INNER_VALID_FRACTION * num_carved_from)
    assert first.inner_valid.size == first.outer_valid.size == expected_valid_size


def test_split_seed_changes_train_and_valid_but_not_test(digits):
    other = load_dataset("digits", split_seed=1)
    # Same test images; only the standardisation (train statistics) differs, an affine map.
    np.testing.assert_array_equal(other.test_y, digits.test_y)
    flat = [np.asarray(data.test_x, np.float64).ravel() for data in (other, digits)]
    assert np.corrcoef(*flat)[0, 1] > 1 - 1e-9
    assert _sizes(other) == _sizes(digits)
    assert not np.array_equal(other.inner_valid_x, digits.inner_valid_x)


def test_inputs_standardised_with_train_statistics(digits, mnist1d):
    for dataset in (digits, mnist1d):
        train = np.asarray(dataset.train_x, dtype=np.float64)
        assert abs(train.mean()) < 1e-5 and abs(train.std() - 1.0) < 1e-5


def test_split_rejects_unknown_name(digits):
    with pytest.raises(ValueError, match="inner_valid"):
        digits.split("validation")


def test_too_small_dataset_is_refused():
    with pytest.raises(ValueError, match="too small"):
        preprocessing.split_indices(3, None, split_seed=0)


# Downsampling and grayscale.


def test_area_resize_integer_ratio_is_block_mean():
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype(np.float32)
    block_mean = images.reshape(3, 4, 2, 4, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(preprocessing.area_resize(images, 4), block_mean, atol=1e-6)


def test_area_resize_28_to_8_keeps_each_image_mean():
    images = np.random.default_rng(1).uniform(0, 255, size=(2, 28, 28, 1)).astype(np.float32)
    small = preprocessing.area_resize(images, 8)
    assert small.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(small.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), rtol=1e-5)


def test_grayscale_uses_luma_weights():
    rgb = np.zeros((1, 2, 2, 3), np.float32)
    rgb[..., 1] = 1.0
    gray = preprocessing.to_grayscale(rgb)
    assert gray.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(gray, 0.587)
    with pytest.raises(ValueError, match="channels"):
        preprocessing.to_grayscale(np.zeros((1, 2, 2, 4), np.float32))


def test_load_with_downsampling_and_grayscale(digits):
    small = load_dataset("digits", image_size=4, grayscale=True)
    assert small.input_shape == (4, 4, 1)
    assert small.train_x.shape == (digits.train_x.shape[0], 4, 4, 1)


def test_image_options_refused_for_vector_inputs(mnist1d):
    with pytest.raises(ValueError, match="images only"):
        load_dataset("mnist1d", image_size=8)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"split_seed": "0"}, "split_seed"),
        ({"grayscale": 1}, "grayscale"),
        ({"train_size": 0}, "train_size"),
        ({"train_size": 10**6}, "train_size"),
        ({"label_noise": 1.0}, "label_noise"),
        ({"label_noise": -0.1}, "label_noise"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", **options)


def test_train_size_keeps_a_seeded_subset_of_train_and_leaves_other_splits(digits):
    small = load_dataset("digits", train_size=100)
    assert small.train_y.shape == (100,)
    # The held-out splits are the same examples whatever train_size is.
    for split in ("inner_valid", "outer_valid", "test"):
        np.testing.assert_array_equal(small.split(split)[1], digits.split(split)[1])
    # Drawn at random, not the first rows of a class-ordered store: every digit appears.
    assert np.unique(np.asarray(small.train_y)).size == 10
    again = load_dataset("digits", train_size=100, split_seed=0)
    np.testing.assert_array_equal(small.train_y, again.train_y)


def test_label_noise_flips_the_stated_fraction_in_every_split(digits):
    noisy = load_dataset("digits", label_noise=0.3)
    for split in SPLITS:
        clean, flipped = np.asarray(digits.split(split)[1]), np.asarray(noisy.split(split)[1])
        np.testing.assert_array_equal(noisy.split(split)[0], digits.split(split)[0])
        # A replaced label lands on a different class with probability 9/10: 0.27 expected.
        rate, n = np.mean(clean != flipped), clean.size
        assert abs(rate - 0.27) < 4 * np.sqrt(0.27 * 0.73 / n), (split, rate, n)
        assert flipped.min() >= 0 and flipped.max() < 10


# Missing datasets fail at once, never touching the network.


@pytest.mark.parametrize("name", ["fashion_mnist", "no_such_dataset"])
def test_missing_dataset_errors_offline_with_the_prepare_command(name, tmp_path, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network or download in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, data_dir=tmp_path)
    assert attempts == [], "a missing dataset must not be looked up or downloaded"
    assert list(tmp_path.iterdir()) == []
    message = str(error.value)
    assert f"tfds build {name}" in message and "--file_format=array_record" in message
    assert "lopt data prepare" in message and str(tmp_path) in message
    assert isinstance(error.value, FileNotFoundError)


def test_prepare_refuses_datasets_it_cannot_build(tmp_path):
    with pytest.raises(ValueError, match="tfds build mnist"):
        prepare("mnist", data_dir=tmp_path)


# Concurrent preparation.

_PREPARE_AFTER_BARRIER = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO)
    import sklearn.datasets  # Imported before the barrier: only the build runs after it.
    from tasks.datasets import prepare
    data_dir, ready, go = sys.argv[1:]
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)
    print(prepare("digits", data_dir=data_dir))
    """
)


@pytest.mark.slow
def test_concurrent_prepare_from_two_processes_builds_once(tmp_path):
    data_dir, go = tmp_path / "data", tmp_path / "go"
    readies = [tmp_path / f"ready{index}" for index in range(2)]
    # Output goes to files, not pipes: a child blocked on a full pipe while holding the lock
    # would stall the other.
    logs = [(tmp_path / f"out{index}", tmp_path / f"err{index}") for index in range(2)]
    processes = []
    for ready, (out, err) in zip(readies, logs, strict=True):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            command = [sys.executable, "-c", _PREPARE_AFTER_BARRIER, str(data_dir), str(ready)]
            processes.append(subprocess.Popen([*command, str(go)], stdout=stdout, stderr=stderr))
    # Release both only once both have imported everything, so their prepare calls overlap.
    deadline = time.monotonic() + 120
    while not all(ready.exists() for ready in readies):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    go.touch()
    for process, (_, err) in zip(processes, logs, strict=True):
        assert process.wait(timeout=120) == 0, err.read_text()
    paths = {out.read_text().strip().splitlines()[-1] for out, _ in logs}
    assert paths == {str(data_dir / "digits" / "1.0.0")}
    assert sum(err.read_text().count("building dataset digits") for _, err in logs) == 1
    assert sorted(path.name for path in (data_dir / "digits").iterdir()) == ["1.0.0"]
    assert sum(_sizes(load_dataset("digits", data_dir=data_dir)).values()) == 1797


# User image datasets (mnist, cifar10, ...) that cannot be on this machine.


@pytest.mark.parametrize(
    "name, grayscale, image_size, input_shape",
    [("mnist", False, None, (28, 28, 1)), ("cifar10", True, 8, (8, 8, 1))],
)
def test_user_dataset_through_tfds_mock_data(name, grayscale, image_size, input_shape, tmp_path):
    _write_metadata(name, tmp_path, "array_record", num_examples=20)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=20, policy=policy, data_dir=str(tmp_path)):
        dataset = load_dataset(name, data_dir=tmp_path, image_size=image_size, grayscale=grayscale)
    assert dataset.input_shape == input_shape and dataset.num_classes == 10
    sizes = _sizes(dataset)
    assert (
        sizes["test"] == 20 and sizes["train"] + sizes["inner_valid"] + sizes["outer_valid"] == 20
    )
    assert dataset.train_x.dtype == np.float32 and int(dataset.test_y.max()) < 10


class _TinyMnist(tfds_mnist.MNIST, skip_registration=True):
    """The real MNIST builder's features and name with 30 + 10 random images, written offline."""

    name = "mnist"

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(30, seed=0),
            "test": self._generate_examples(10, 1),
        }

    def _generate_examples(self, num_examples, seed):
        rng = np.random.default_rng(seed)
        for index in range(num_examples):
            pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
            yield index, {"image": Image.fromarray(pixels), "label": int(rng.integers(10))}


def test_user_array_record_image_dataset_reads_without_tensorflow(tmp_path):
    builder = _TinyMnist(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    raw = storage.read_splits("mnist", tmp_path)
    images, labels = raw.splits["test"]
    generated = builder._generate_examples(10, seed=1)
    # TFDS shuffles MNIST on write, so compare the examples as a multiset.
    written = sorted((e["label"], np.asarray(e["image"]).tobytes()) for _, e in generated)
    read = sorted(
        (int(label), image[..., 0].tobytes()) for image, label in zip(images, labels, strict=True)
    )
    assert read == written
    dataset = load_dataset("mnist", data_dir=tmp_path, image_size=8)
    assert dataset.input_shape == (8, 8, 1) and _sizes(dataset)["test"] == 10


def test_tfrecord_dataset_without_tensorflow_says_to_install_it(tmp_path):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed, so TFRecord datasets are readable.")
    _write_metadata("mnist", tmp_path, "tfrecord", num_examples=5)
    with pytest.raises(ImportError, match=r"pip install 'lopt\[tf\]'"):
        load_dataset("mnist", data_dir=tmp_path)
