"""All parameters as rows of one matrix.

The per-parameter networks are applied to every parameter at once: the leaves of a params pytree,
raveled in tree order, are the rows of a ``[num_params, num_features]`` matrix; the network's
``[num_params]`` output is split and cast back to the leaves' shapes and dtypes (``unflatten``).
The layout is static (shapes and dtypes are known at trace time), so the per-tensor loops below
unroll into a handful of slices inside one XLA graph; no Python runs per step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FlatLayout(NamedTuple):
    """Static description of a params pytree: where each leaf sits in the flat vector."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    @property
    def num_tensors(self) -> int:
        return len(self.sizes)


def layout_of(tree: Any) -> FlatLayout:
    """The layout of ``tree``; every leaf must be a floating-point array or scalar."""
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if not leaves_with_paths:
        raise ValueError("params has no array leaves: a learned optimizer needs something to train")
    shapes, dtypes = [], []
    for path, leaf in leaves_with_paths:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params leaf {jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}: learned "
                "optimizers train floating-point leaves only; keep integer state out of params"
            )
        shapes.append(tuple(np.shape(leaf)))
        dtypes.append(np.dtype(dtype))
    sizes = tuple(int(np.prod(shape, dtype=np.int64)) for shape in shapes)
    offsets = tuple(int(o) for o in np.cumsum((0, *sizes[:-1])))
    return FlatLayout(treedef, tuple(shapes), tuple(dtypes), sizes, offsets)


def check_same_structure(layout: FlatLayout, tree: Any, name: str) -> None:
    """Raise a clear error when ``tree`` (e.g. the gradients) does not match the params."""
    treedef = jax.tree.structure(tree)
    if treedef != layout.treedef:
        raise ValueError(f"{name} has structure {treedef}, but params have {layout.treedef}")
    shapes = tuple(tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree))
    if shapes != layout.shapes:
        raise ValueError(f"{name} has leaf shapes {shapes}, but params have {layout.shapes}")


def unflatten(layout: FlatLayout, flat: jax.Array) -> Any:
    """The params-shaped tree of ``flat[num_params]``: split, reshaped, cast to leaf dtypes."""
    leaves = [
        flat[offset : offset + size].reshape(shape).astype(dtype)
        for offset, size, shape, dtype in zip(
            layout.offsets, layout.sizes, layout.shapes, layout.dtypes, strict=True
        )
    ]
    return jax.tree.unflatten(layout.treedef, leaves)
