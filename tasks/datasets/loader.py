"""``load_dataset``: a classification dataset split four ways, standardised, on the device."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tasks.base import split_index
from tasks.datasets import preprocessing
from tasks.datasets.builders import TABULAR_DATASETS
from tasks.datasets.storage import RawSplits, read_splits, resolve_data_dir


class Dataset(struct.PyTreeNode):
    """Device-resident splits of a classification dataset; a pytree whose leaves are the data.

    Inputs are float32 ``[n, *input_shape]`` (images ``[n, H, W, C]``), standardised with the
    train split's statistics; labels are int32 ``[n]`` in ``[0, num_classes)``. Passing a
    ``Dataset`` to a jitted function passes the arrays as buffers, not compile-time constants.
    """

    train_x: jax.Array
    train_y: jax.Array
    inner_valid_x: jax.Array
    inner_valid_y: jax.Array
    outer_valid_x: jax.Array
    outer_valid_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    name: str = struct.field(pytree_node=False)
    num_classes: int = struct.field(pytree_node=False)
    input_shape: tuple[int, ...] = struct.field(pytree_node=False)

    def split(self, name: str) -> tuple[jax.Array, jax.Array]:
        """``(inputs, labels)`` of split ``name``, one of ``tasks.SPLITS``."""
        split_index(name)
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


_CACHE: dict[tuple, Dataset] = {}
# The stored arrays per (name, data dir), shared by loads with different options.
_STORED_CACHE: dict[tuple[str, str], RawSplits] = {}


def _read_stored(name: str, root: Path) -> RawSplits:
    key = (name, str(root))
    if key not in _STORED_CACHE:
        _STORED_CACHE[key] = read_splits(name, root)
    return _STORED_CACHE[key]


def _validate_options(
    name: str,
    split_seed: int,
    image_size: int | None,
    grayscale: bool,
    train_size: int | None,
    label_noise: float,
) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"Dataset name must be a non-empty string, got {name!r}.")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int | np.integer):
        raise ValueError(f"split_seed must be an int, got {split_seed!r}.")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int | np.integer)
    ):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size}.")
    if not isinstance(grayscale, bool):
        raise ValueError(f"grayscale must be a bool, got {grayscale!r}.")
    if train_size is not None and (
        isinstance(train_size, bool)
        or not isinstance(train_size, int | np.integer)
        or train_size < 1
    ):
        raise ValueError(f"train_size must be a positive int or None, got {train_size!r}.")
    if isinstance(label_noise, bool) or not 0.0 <= float(label_noise) < 1.0:
        raise ValueError(f"label_noise must be a fraction in [0, 1), got {label_noise!r}.")


def _noisy_labels(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """``labels`` with each one, with probability ``fraction``, replaced by a uniformly drawn class
    (which may be the same one), from a fixed seed: the same noise in every load."""
    rng = np.random.default_rng(seed)
    flip = rng.random(labels.shape[0]) < fraction
    return np.where(flip, rng.integers(0, num_classes, labels.shape[0]), labels)


def _image_transform(
    name: str, image_size: int | None, grayscale: bool
) -> Callable[[np.ndarray], np.ndarray]:
    """The grayscale and resize options as one function of a float32 batch of inputs."""

    def transform(inputs: np.ndarray) -> np.ndarray:
        if (grayscale or image_size is not None) and inputs.ndim != 4:
            raise ValueError(
                f"Dataset '{name}' has inputs of shape {inputs.shape[1:]}, not images "
                "[H, W, C]; image_size and grayscale apply to images only."
            )
        if grayscale:
            inputs = preprocessing.to_grayscale(inputs)
        if image_size is not None:
            inputs = preprocessing.area_resize(inputs, image_size)
        return inputs

    return transform


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split_seed: int = 0,
    image_size: int | None = None,
    grayscale: bool = False,
    train_size: int | None = None,
    label_noise: float = 0.0,
) -> Dataset:
    """Loads classification dataset ``name`` from the TFDS data dir onto the default device.

    Built-in datasets (``BUILTIN_DATASETS``) are prepared on first use; any other dataset
    must already be in ``data_dir`` (default ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``)
    or ``DatasetNotFoundError`` is raised at once. Splits follow
    ``preprocessing.split_indices`` (test: the stored test split, else a fixed 20% held out;
    inner_valid and outer_valid: 10% each of the rest, chosen by ``split_seed``). Inputs are
    standardised with train statistics (per feature for the tabular built-ins). Images can be
    converted to ``grayscale`` and area-averaged to ``image_size x image_size``. Results are
    cached per (name, data dir, options), and the stored arrays per (name, data dir), for the
    life of the process.

    Two options make tasks whose training and test losses part ways: ``train_size`` keeps a
    random subset of ``train_size`` training examples (fixed by ``split_seed``), so a model can
    overfit it;
    ``label_noise`` replaces that fraction of the labels of every split by uniformly drawn classes
    (fixed by ``split_seed``), so the test loss has a floor no optimizer can pass and fitting the
    training labels exactly costs test loss. Standardisation uses the kept train inputs.
    """
    _validate_options(name, split_seed, image_size, grayscale, train_size, label_noise)
    root = resolve_data_dir(data_dir)
    label_noise = float(label_noise)
    cache_key = (name, str(root), int(split_seed), image_size, grayscale, train_size, label_noise)
    if cache_key in _CACHE:
        return _CACHE[cache_key]

    raw = _read_stored(name, root)
    if "train" not in raw.splits:
        raise ValueError(
            f"Dataset '{name}' has no 'train' split (it has {sorted(raw.splits)}); lopt needs "
            "one to carve train and validation splits from."
        )
    stored_x, stored_y = raw.splits["train"]
    stored_test = raw.splits.get("test")
    indices = preprocessing.split_indices(
        len(stored_y), None if stored_test is None else len(stored_test[1]), int(split_seed)
    )
    test_x, test_y = stored_test if stored_test is not None else (stored_x, stored_y)
    train_indices = indices.train
    if train_size is not None:
        if train_size > len(train_indices):
            raise ValueError(
                f"train_size={train_size} exceeds the {len(train_indices)} training examples of "
                f"'{name}'; use at most {len(train_indices)} (or None for all)."
            )
        # Stored datasets can be ordered by class: draw the subset (fixed by split_seed).
        subset = np.random.default_rng(int(split_seed)).permutation(len(train_indices))
        train_indices = np.sort(train_indices[subset[:train_size]])
    parts = {
        "train": (stored_x[train_indices], stored_y[train_indices]),
        "inner_valid": (stored_x[indices.inner_valid], stored_y[indices.inner_valid]),
        "outer_valid": (stored_x[indices.outer_valid], stored_y[indices.outer_valid]),
        "test": (test_x[indices.test], test_y[indices.test]),
    }
    transform = _image_transform(name, image_size, grayscale)
    inputs = {split: transform(x.astype(np.float32)) for split, (x, _) in parts.items()}
    mean, std = preprocessing.standardisation(inputs["train"], per_feature=name in TABULAR_DATASETS)

    arrays = {}
    for index, (split, (_, labels)) in enumerate(parts.items()):
        if label_noise:
            labels = _noisy_labels(
                labels, int(raw.num_classes), label_noise, seed=int(split_seed) * 4 + index
            )
        arrays[f"{split}_x"] = jnp.asarray((inputs[split] - mean) / std, dtype=jnp.float32)
        arrays[f"{split}_y"] = jnp.asarray(labels, dtype=jnp.int32)
    dataset = Dataset(
        **arrays,
        name=name,
        num_classes=int(raw.num_classes),
        input_shape=tuple(int(d) for d in inputs["train"].shape[1:]),
    )
    _CACHE[cache_key] = dataset
    return dataset
