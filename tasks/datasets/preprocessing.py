"""Pure NumPy preprocessing: the seeded train / inner-valid / outer-valid / test split, grayscale,
area-average downsampling and standardisation with train statistics."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Fractions of the dataset's own train split carved out for the two validation splits.
INNER_VALID_FRACTION = 0.1
OUTER_VALID_FRACTION = 0.1
# Fraction of all examples held out as the test split when a dataset has no test split of its
# own. The held-out set uses a fixed seed, not ``split_seed``, so no split seed ever trains on
# another seed's test examples.
HELD_OUT_TEST_FRACTION = 0.2
_HELD_OUT_TEST_SEED = 0

# ITU-R BT.601 luma weights for RGB -> grayscale.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class SplitIndices(NamedTuple):
    """Indices into the stored train split (and the stored test split, when there is one)."""

    train: np.ndarray
    inner_valid: np.ndarray
    outer_valid: np.ndarray
    test: np.ndarray


def _count(fraction: float, total: int) -> int:
    """``round(fraction * total)``, at least 1 so that tiny datasets keep every split."""
    return max(1, round(fraction * total))


def split_indices(num_train: int, num_test: int | None, split_seed: int) -> SplitIndices:
    """Seeded split of a dataset with ``num_train`` stored train and ``num_test`` test examples.

    With a stored test split (``num_test`` not None), ``test`` indexes it whole and the others
    index the stored train split. Without one, ``HELD_OUT_TEST_FRACTION`` of the train split
    (fixed seed) becomes ``test``. Of the remaining train examples, ``INNER_VALID_FRACTION``
    and ``OUTER_VALID_FRACTION`` of them, chosen by ``split_seed``, become ``inner_valid`` and
    ``outer_valid``; the rest is ``train``. All four index sets are disjoint and sorted.
    """
    if num_test is None:
        held_out = np.random.default_rng(_HELD_OUT_TEST_SEED).permutation(num_train)
        num_held_out = _count(HELD_OUT_TEST_FRACTION, num_train)
        test, remaining = held_out[:num_held_out], held_out[num_held_out:]
    else:
        test, remaining = np.arange(num_test), np.arange(num_train)
    num_inner = _count(INNER_VALID_FRACTION, remaining.size)
    num_outer = _count(OUTER_VALID_FRACTION, remaining.size)
    if remaining.size < num_inner + num_outer + 1 or test.size == 0:
        raise ValueError(
            f"A dataset with {num_train} train and {num_test or 0} test examples is too small "
            "to split into train / inner_valid / outer_valid / test."
        )
    shuffled = np.random.default_rng(split_seed).permutation(remaining)
    inner = shuffled[:num_inner]
    outer = shuffled[num_inner : num_inner + num_outer]
    train = shuffled[num_inner + num_outer :]
    return SplitIndices(*(np.sort(part) for part in (train, inner, outer, test)))


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """``[n, H, W, 3] -> [n, H, W, 1]`` by luma weights; one-channel images pass unchanged."""
    channels = images.shape[-1]
    if channels == 1:
        return images
    if channels != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels; these images have {channels}.")
    return np.tensordot(images, _LUMA_WEIGHTS, axes=([-1], [0]))[..., None].astype(np.float32)


def area_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` matrix of area averaging along one axis (rows sum to 1).

    Output pixel ``i`` covers ``[i, i + 1) * in_size / out_size`` in input pixel units; its
    weight on input pixel ``k`` is the overlap of that interval with ``[k, k + 1)``, normalised.
    For an integer ratio this is the plain block mean.
    """
    edges = np.arange(out_size + 1) * (in_size / out_size)
    pixels = np.arange(in_size)[None, :]
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    overlap = np.clip(overlap, 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """``[n, H, W, C] -> [n, size, size, C]`` by area averaging (what OpenCV calls INTER_AREA)."""
    rows = area_weights(images.shape[1], size)
    cols = area_weights(images.shape[2], size)
    return np.einsum("ih,nhwc,jw->nijc", rows, images.astype(np.float32), cols, optimize=True)


def standardisation(
    train_inputs: np.ndarray, per_feature: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the train inputs: per channel for images ``[n, H, W, C]``, per feature
    for ``per_feature`` vectors ``[n, d]`` (tabular data, whose features have unrelated units),
    else scalar (signals such as MNIST-1D, whose features share one unit)."""
    axes = tuple(range(train_inputs.ndim - 1)) if train_inputs.ndim == 4 or per_feature else None
    mean = train_inputs.mean(axis=axes, dtype=np.float64)
    std = train_inputs.std(axis=axes, dtype=np.float64)
    # A constant input carries no information; keep it finite rather than divide by zero.
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)
