"""Architectures by name, so configs and exported optimizers can rebuild an optimizer from a string
and its hyperparameters."""

from __future__ import annotations

import dataclasses
from typing import Any

from lopt.base import LearnedOptimizer
from lopt.hand_designed import LearnableAdam, LearnableSGDM
from lopt.lstm import LSTMOptimizer
from lopt.mlp import MLPOptimizer
from lopt.normalized import NormalizedOptimizer

_ARCHITECTURES: dict[str, type[LearnedOptimizer]] = {}

# Named variants: an architecture with preset hyperparameters (which keyword arguments override).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp_small": ("mlp", {"hidden_sizes": (8, 8)}),
    "mlp_adam": ("mlp", {"base": "adam"}),
    "lstm_per_tensor": ("lstm", {"per_tensor": True}),
}


class UnknownArchitectureError(KeyError, ValueError):
    """An architecture name that is neither registered nor a preset.

    Shaped like ``tasks.UnknownNameError`` (a ``KeyError`` and a ``ValueError``), so one ``except``
    covers an unknown name in either registry. The two classes cannot share a base class: ``lopt``
    and ``tasks`` do not import each other (``tests/test_layering.py``).
    """

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError's own str() would quote the message


def register(cls: type[LearnedOptimizer]) -> type[LearnedOptimizer]:
    """Register ``cls`` under ``cls.architecture`` (usable as a class decorator)."""
    name = cls.architecture
    if name in _ARCHITECTURES and _ARCHITECTURES[name] is not cls:
        raise ValueError(f"architecture {name!r} is already registered to {_ARCHITECTURES[name]}")
    if name in PRESETS:
        raise ValueError(f"architecture {name!r} clashes with the preset of that name")
    _ARCHITECTURES[name] = cls
    return cls


for _cls in (MLPOptimizer, LSTMOptimizer, NormalizedOptimizer, LearnableAdam, LearnableSGDM):
    register(_cls)


def architecture_names() -> list[str]:
    """Registered architectures and presets, sorted."""
    return sorted([*_ARCHITECTURES, *PRESETS])


def architecture_class(name: str) -> type[LearnedOptimizer]:
    """The class registered as ``name`` (presets resolve to their architecture)."""
    name = PRESETS[name][0] if name in PRESETS else name
    if name not in _ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown optimizer architecture {name!r}; known: {', '.join(architecture_names())}"
        )
    return _ARCHITECTURES[name]


def get_optimizer(architecture: str, **hyperparameters: Any) -> LearnedOptimizer:
    """Build an optimizer by name, e.g. ``get_optimizer("mlp", hidden_sizes=(16, 16))``."""
    cls = architecture_class(architecture)
    if architecture in PRESETS:
        hyperparameters = {**PRESETS[architecture][1], **hyperparameters}
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(hyperparameters) - fields)
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {unknown} for architecture {architecture!r}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    return cls(**hyperparameters)
