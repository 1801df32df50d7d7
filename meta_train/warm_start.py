"""``init_from``: start a meta-training run from the theta of an export or a shipped optimizer, so
each run's compute adds to the last one's instead of starting over.

The source's architecture must be the run's. Hyperparameters may differ where theta's layout
allows it: every entry of the source's theta must exist in the run's theta with the same shape,
and entries the run has and the source lacks (e.g. the normalized rule's ``gain_exponent`` when
``step_gain`` is turned on) keep their initial values, which leave the rule's function unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

import lopt


class WarmStartError(ValueError):
    """``init_from`` names nothing loadable, or a theta that does not fit the run's optimizer."""


def source_path(init_from: str) -> str:
    """The export directory of ``init_from``: an export directory, or a shipped pretrained name."""
    if os.path.isdir(init_from):
        return init_from
    if init_from in lopt.pretrained_names():
        return lopt.pretrained_path(init_from)
    raise WarmStartError(
        f"init_from={init_from!r} is neither an export directory nor a shipped pretrained "
        f"optimizer ({', '.join(lopt.pretrained_names()) or 'none ship'}); pass e.g. "
        "runs/x/export or normalized-v1"
    )


def _entries(theta: Any) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(path): np.shape(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(theta)
    }


def warm_start(init_from: str, optimizer: lopt.LearnedOptimizer, theta: Any) -> tuple[Any, list]:
    """``(theta, fresh)``: the run's initial ``theta`` with every entry of ``init_from``'s theta
    copied in; ``fresh`` lists the entries (key paths) that kept their initial values."""
    source_optimizer, source_theta, _ = lopt.load_optimizer(source_path(init_from))
    if source_optimizer.architecture != optimizer.architecture:
        raise WarmStartError(
            f"init_from={init_from!r} is a {source_optimizer.architecture!r} optimizer but the run "
            f"trains {optimizer.architecture!r}: set optimizer.architecture to match"
        )
    source, target = _entries(source_theta), _entries(theta)
    misfits = [
        f"{key} {shape} (run: {target.get(key, 'absent')})"
        for key, shape in source.items()
        if target.get(key) != shape
    ]
    if misfits:
        raise WarmStartError(
            f"init_from={init_from!r}: theta entries that do not fit the run's optimizer: "
            f"{'; '.join(misfits)}; use the source's optimizer.hyperparameters"
        )
    by_key = {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(source_theta)
    }
    merged = jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.asarray(by_key.get(jax.tree_util.keystr(path), leaf), leaf.dtype),
        theta,
    )
    return merged, sorted(set(target) - set(source))
