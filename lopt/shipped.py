"""Pretrained learned optimizers shipped as package data: no download.

Each lives in ``lopt/weights/<name>/``: ``export/`` (what ``lopt.save`` wrote at the end of its
meta-training run) and ``training.json`` (the config that produced it, the meta-training budget,
the commit, the date and the meta-loss curve). ``python -m meta_train.ship`` writes both from a
finished ``lopt meta-train`` workdir. Which version ``lopt.pretrained()`` loads is named in
``weights/default.json``; only ``python -m meta_train.release_gate --promote`` changes it, when the
generalization benchmark committed beside the candidate's weights shows it beating the default.
"""

from __future__ import annotations

import json
import os
from typing import Any

import optax

from lopt import export
from lopt.step_size import StepSize

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
DEFAULT_FILE = os.path.join(WEIGHTS_DIR, "default.json")
EXPORT_DIR = "export"
TRAINING_FILE = "training.json"
BENCHMARK_FILE = "generalization.json"


def _read_default() -> str:
    with open(DEFAULT_FILE, encoding="utf-8") as file:
        return json.load(file)["name"]


DEFAULT_PRETRAINED = _read_default()


def set_default(name: str) -> None:
    """Make ``name`` the version ``lopt.pretrained()`` loads (from the next import of lopt on)."""
    pretrained_path(name)
    with open(DEFAULT_FILE, "w", encoding="utf-8") as file:
        json.dump({"name": name}, file)
        file.write("\n")


def pretrained_names() -> list[str]:
    """Names of the shipped pretrained optimizers, sorted."""
    if not os.path.isdir(WEIGHTS_DIR):
        return []
    return sorted(
        name
        for name in os.listdir(WEIGHTS_DIR)
        if os.path.isdir(os.path.join(WEIGHTS_DIR, name, EXPORT_DIR))
    )


def pretrained_path(name: str = DEFAULT_PRETRAINED) -> str:
    """The export directory of the shipped optimizer ``name``."""
    path = os.path.join(WEIGHTS_DIR, name, EXPORT_DIR)
    if not os.path.isdir(path):
        known = ", ".join(pretrained_names()) or "none"
        raise export.NotAnExportError(
            f"no pretrained optimizer named {name!r} ships with this lopt; shipped: {known}"
        )
    return path


def pretrained_info(name: str = DEFAULT_PRETRAINED) -> dict[str, Any]:
    """How ``name`` was made: config, budget, commit, date and meta-loss curve."""
    pretrained_path(name)
    with open(os.path.join(WEIGHTS_DIR, name, TRAINING_FILE), encoding="utf-8") as f:
        return json.load(f)


def pretrained(
    name: str = DEFAULT_PRETRAINED,
    num_steps: int | None = None,
    learning_rate: float | optax.Schedule | StepSize | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The shipped optimizer ``name`` as a full optax transform: the learned rule with the step
    size it was meta-trained with (its learning rate, warm-up-cosine schedule over ``num_steps``,
    the length of your run, and weight decay; ``lopt.load`` explains ``learning_rate``)::

        tx = lopt.pretrained(num_steps=1000)
        updates, state = tx.update(grads, state, params)

    The schedule's learning rate is 0 from step ``num_steps`` on, so a longer run stops there;
    the transform warns once when that happens (eager or under jit).
    """
    return export.load(
        pretrained_path(name),
        num_steps=num_steps,
        learning_rate=learning_rate,
        require_fingerprint=True,
    )
