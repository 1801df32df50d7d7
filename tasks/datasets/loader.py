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


def _validate_options(name: str, split_seed: int, image_size: int | None, grayscale: bool) -> None:
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
    """
    _validate_options(name, split_seed, image_size, grayscale)
    root = resolve_data_dir(data_dir)
    cache_key = (name, str(root), int(split_seed), image_size, grayscale)
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
    parts = {
        "train": (stored_x[indices.train], stored_y[indices.train]),
        "inner_valid": (stored_x[indices.inner_valid], stored_y[indices.inner_valid]),
        "outer_valid": (stored_x[indices.outer_valid], stored_y[indices.outer_valid]),
        "test": (test_x[indices.test], test_y[indices.test]),
    }
    transform = _image_transform(name, image_size, grayscale)
    inputs = {split: transform(x.astype(np.float32)) for split, (x, _) in parts.items()}
    mean, std = preprocessing.standardisation(inputs["train"], per_feature=name in TABULAR_DATASETS)

    arrays = {}
    for split, (_, labels) in parts.items():
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
