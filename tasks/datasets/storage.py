"""Where datasets live on disk and how they are read: preparing the built-ins, reading any dataset.

Nothing here touches the network. Built-in datasets are prepared into the TFDS data dir under a
file lock; other datasets must already be there, and a missing one raises
``DatasetNotFoundError`` at once with the commands that prepare it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from tasks.datasets.builders import BUILDERS

logger = logging.getLogger(__name__)

BUILTIN_DATASETS = tuple(BUILDERS)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not in the TFDS data dir; the message says how to prepare it."""


class RawSplits(NamedTuple):
    """A classification dataset as stored: inputs and integer labels of each stored split.

    ``splits`` maps a TFDS split name (``"train"``, ``"test"``, ...) to ``(x, y)`` with
    ``x: [n, *input_shape]`` in the stored dtype and ``y: [n]`` int.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``; made absolute."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser().absolute()


def how_to_prepare(name: str, data_dir: Path) -> str:
    """How to put a (non-built-in) dataset ``name`` into ``data_dir``, for error messages."""
    return (
        "lopt never downloads at run time. On a machine with network access, build it in the "
        "array_record format (readable here without TensorFlow):\n"
        f"    pip install 'lopt[tf]' && tfds build {name} --data_dir=/tmp/tfds "
        "--file_format=array_record\n"
        f"then copy /tmp/tfds/{name} to {data_dir}/{name} (or set TFDS_DATA_DIR to a data dir "
        "that holds it). The built-in datasets need no network: "
        f"lopt data prepare {' / '.join(BUILTIN_DATASETS)}."
    )


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # TFDS logs a warning when asked about a directory that does not exist; ask only if it does.
    return builder.data_path.exists() and builder.is_prepared()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An inter-process lock (``flock``) held while the block runs; released on any exit."""
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Builds built-in dataset ``name`` as TFDS array_record in the data dir if it is missing.

    Safe when several processes call it at once: the first builds under a lock file next to the
    data (``<data_dir>/.<name>.lock``), the others wait and then find it prepared. Returns the
    prepared dataset's directory (``<data_dir>/<name>/<version>``).
    """
    root = resolve_data_dir(data_dir)
    if name not in BUILDERS:
        raise ValueError(
            f"'{name}' is not a built-in dataset; lopt prepares only {BUILTIN_DATASETS} offline. "
            + how_to_prepare(name, root)
        )
    builder = BUILDERS[name](data_dir=str(root), file_format="array_record")
    if _is_prepared(builder):
        return str(builder.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{name}.lock"):
        # Another process may have finished the build while this one waited for the lock.
        if not _is_prepared(builder):
            logger.info("building dataset %s into %s", name, builder.data_dir)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return str(builder.data_dir)


def _user_builder(name: str, root: Path) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a dataset already prepared in ``root``; raises if it is not there."""
    try:
        builder = tfds.builder(name, data_dir=str(root))
    except tfds.core.DatasetNotFoundError as error:
        raise DatasetNotFoundError(
            f"Dataset '{name}' is neither a TFDS dataset nor found in the TFDS data dir {root}. "
            + how_to_prepare(name, root)
        ) from error
    if not _is_prepared(builder):
        dataset_dir = root / builder.name
        present = sorted(p.name for p in dataset_dir.iterdir()) if dataset_dir.is_dir() else []
        other_versions = ""
        if present:
            other_versions = (
                f" {dataset_dir} holds {present}: load one as '{builder.name}:<version>'."
            )
        raise DatasetNotFoundError(
            f"Dataset '{name}' is not prepared in the TFDS data dir {root} (looked for "
            f"{builder.data_path}).{other_versions} " + how_to_prepare(name, root)
        )
    return builder


def _read_random_access(
    builder: tfds.core.DatasetBuilder, split: str, keys: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Every example of ``split`` through ``tfds`` data sources (array_record, no TensorFlow)."""
    source = builder.as_data_source(split=split)
    examples = [source[index] for index in range(len(source))]
    inputs = np.stack([np.asarray(example[keys[0]]) for example in examples])
    labels = np.asarray([example[keys[1]] for example in examples])
    return inputs, labels


def _read_with_tensorflow(
    builder: tfds.core.DatasetBuilder, split: str, keys: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Every example of ``split`` through ``tf.data``: the only reader of TFRecord files."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            f"Dataset '{builder.name}' in {builder.data_dir} is stored as "
            f"{getattr(builder.info.file_format, 'value', 'tfrecord')}, which only TensorFlow "
            "reads. Install it with "
            "pip install 'lopt[tf]', or rebuild the dataset with --file_format=array_record, "
            "which needs no TensorFlow."
        )
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return np.asarray(batch[keys[0]]), np.asarray(batch[keys[1]])


def read_splits(name: str, data_dir: str | os.PathLike | None = None) -> RawSplits:
    """Reads every stored split of classification dataset ``name`` into host memory.

    Built-in datasets are prepared first if missing. Inputs and labels are the features named
    by the dataset's ``supervised_keys`` (``("image", "label")`` when it declares none); the
    label must be a ``ClassLabel``.
    """
    root = resolve_data_dir(data_dir)
    if name in BUILDERS:
        prepare(name, root)
        builder = BUILDERS[name](data_dir=str(root))
    else:
        builder = _user_builder(name, root)
    info = builder.info
    keys = tuple(info.supervised_keys or ("image", "label"))
    features = info.features
    missing = [key for key in keys if key not in features]
    if missing:
        raise ValueError(
            f"Dataset '{name}' has no feature {missing}; features are {list(features.keys())}. "
            "lopt reads image-classification datasets with (input, label) supervised keys."
        )
    label_feature = features[keys[1]]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise ValueError(
            f"Dataset '{name}': label feature '{keys[1]}' is {type(label_feature).__name__}, "
            "not ClassLabel; lopt reads classification datasets only."
        )
    if info.file_format in tfds.core.FileFormat.with_random_access():
        reader = _read_random_access
    else:
        reader = _read_with_tensorflow
    splits = {split: reader(builder, split, keys) for split in info.splits}
    return RawSplits(splits=splits, num_classes=label_feature.num_classes)
