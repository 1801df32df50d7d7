"""Contenders: the things an evaluation trains, each usable by name (``lopt evaluate --optimizer``).

A ``Contender`` is one reported optimizer: a label, a ``Family`` (``families``: how one grid row
becomes an optax transform inside the jitted trainer) and, for a tuned one, its learning-rate grid.
Contenders of one family form a ``Group`` that shares one compiled trainer, vmapped over their rows
and the seeds.

Names: ``TUNED`` and ``TUNING_FREE`` keys, ``untrained:<architecture>``, every shipped pretrained
version (``lopt.pretrained_names()``, discovered), or an export directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.base import LearnedOptimizer
from lopt.step_size import StepSize
from meta_train.evaluation.families import (
    ADAM_GRID,
    ADAMW_GRID,
    DEFAULT_OPTIONS,
    LEARNED_LR_MULTIPLIERS,
    OPTAX,
    SGDM_GRID,
    SGDM_MOMENTUM,
    TUNED,
    TUNING_FREE,
    BaselineOptions,
    Family,
    FixedFamily,
    LearnedFamily,
    OptaxFamily,
)

__all__ = [
    "ADAMW_GRID",
    "ADAM_GRID",
    "LEARNED_LR_MULTIPLIERS",
    "OPTAX",
    "SGDM_GRID",
    "SGDM_MOMENTUM",
    "TUNED",
    "TUNING_FREE",
    "BaselineOptions",
    "Contender",
    "FixedFamily",
    "Group",
    "LearnedFamily",
    "OptaxFamily",
]


class Contender(NamedTuple):
    """One reported optimizer. ``grid``: its tuned learning rates (``None``: one untuned run, at
    ``learning_rate`` when its family takes one); ``theta``: a learned rule's meta-parameters."""

    label: str
    description: str
    family: Family
    grid: tuple[float, ...] | None = None
    learning_rate: float | None = None
    theta: Any = None
    origin: Mapping[str, Any] = MappingProxyType({})  # facts for the report (read-only)

    def rows(self) -> list[float]:
        """The learning rate of each of its grid rows (0 where none applies)."""
        return list(self.grid or (self.learning_rate or 0.0,))


class Group(NamedTuple):
    """Contenders that share one compiled trainer: one family, rows ``[member, lr]``."""

    family: Family
    members: tuple[Contender, ...]

    def rows(self) -> np.ndarray:
        """``[R, 2]``: member index and learning rate of every row."""
        return np.array(
            [(m, lr) for m, member in enumerate(self.members) for lr in member.rows()], np.float32
        )

    def thetas(self) -> Any:
        """Each row's theta stacked along a leading ``[R]`` axis (``None`` without a learned
        rule)."""
        if self.members[0].theta is None:
            return None
        per_row = [m.theta for m in self.members for _ in m.rows()]
        return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *per_row)


def group(contenders: Sequence[Contender]) -> list[Group]:
    """Contenders grouped by family, in a canonical order: a contender's batch, and with it its
    floats, does not depend on the order it was listed in (which puts the subject first)."""
    by_family: dict[Family, list[Contender]] = {}
    for contender in sorted(contenders, key=lambda c: c.label):
        by_family.setdefault(contender.family, []).append(contender)
    return [
        Group(family, tuple(sorted(members, key=lambda c: family.member_rank(c.label))))
        for family, members in by_family.items()
    ]


def optax_contender(
    name: str,
    options: BaselineOptions = DEFAULT_OPTIONS,
    grid: Sequence[float] | None = None,
    group_names: Sequence[str] = (),
) -> Contender:
    """The named optax contender; ``group_names``: the names compiled with it (its group's)."""
    spec = OPTAX[name]
    names = tuple(group_names) or (name,)
    grid = tuple(grid) if grid is not None else spec.grid
    description = spec.description
    if grid is not None:
        description = baseline_description(
            f"{spec.description} {options.momentum:g}" if name == "sgdm" else spec.description,
            grid,
            options.schedule,
        )
    else:
        description += " (published defaults)"
    return Contender(name, description, OptaxFamily(names, options), grid)


def optax_contenders(
    names: Sequence[str],
    options: BaselineOptions = DEFAULT_OPTIONS,
    grids: dict[str, Sequence[float]] | None = None,
) -> list[Contender]:
    """The named optax contenders, those of one ``OptaxSpec.group`` sharing a trainer."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(OPTAX[name].group, []).append(name)
    return [
        optax_contender(name, options, (grids or {}).get(name), groups[OPTAX[name].group])
        for name in names
    ]


MIN_TUNED_POINTS = 7


def format_learning_rate(learning_rate: float) -> str:
    """``1e-3``, ``3.2e-4``: two significant digits, exponent without padding."""
    mantissa, exponent = f"{learning_rate:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def baseline_description(name: str, grid: Sequence[float], schedule: str = "constant") -> str:
    """``"Adam (tuned over 7 lrs)"`` for a real sweep, ``"Adam at 1e-3 / 1e-2"`` otherwise."""
    rates = "a cosine schedule" if schedule == "cosine" else ""
    if len(grid) >= MIN_TUNED_POINTS:
        return f"{name} (tuned over {len(grid)} lrs{', ' + rates if rates else ''})"
    lrs = " / ".join(format_learning_rate(lr) for lr in grid)
    return f"{name} at {lrs}{' with ' + rates if rates else ''}"


def learned_contenders(
    label: str,
    optimizer: LearnedOptimizer,
    theta: Any,
    description: str,
    multipliers: Sequence[float] = (),
    origin: Mapping[str, Any] | None = None,
    step_size: StepSize | None = None,
) -> list[Contender]:
    """The rule at its own step size and, for multipliers and a rule with the learning rate
    outside it, also over ``default * multipliers`` (``"<label> (tuned lr)"``) in the same
    trainer (a rule that learns its step size in theta is not swept)."""
    if not multipliers or step_size is None:
        family = LearnedFamily(optimizer, step_size)
        return [Contender(label, description, family, theta=theta, origin=origin or {})]
    default = float(step_size.learning_rate)
    family = LearnedFamily(optimizer, step_size, sweep=True)
    grid = tuple(default * m for m in multipliers)
    return [
        Contender(label, description, family, None, default, theta, origin or {}),
        Contender(
            f"{label} (tuned lr)",
            f"{description} (tuned over {len(grid)} lrs)",
            family,
            grid,
            theta=theta,
        ),
    ]


def untrained(
    optimizer: LearnedOptimizer,
    seed: int,
    label: str = "untrained",
    step_size: StepSize | None = None,
) -> Contender:
    """The rule at its initialisation ``init_meta_params(key(seed))`` (with ``step_size``, by
    default ``default_step_size``): what meta-training starts from, so the floor that
    meta-training must beat."""
    theta = optimizer.init_meta_params(jax.random.key(seed))
    family = LearnedFamily(optimizer, step_size or default_step_size(optimizer))
    return Contender(label, f"untrained {optimizer.architecture}", family, theta=theta)


def default_step_size(optimizer: LearnedOptimizer) -> StepSize | None:
    """``lopt.StepSize()`` for a rule with the learning rate outside it (an untrained one has no
    step size of its own), else ``None``."""
    import lopt

    return lopt.StepSize() if isinstance(optimizer, lopt.LearnedRule) else None


def architecture_facts(
    optimizer: LearnedOptimizer, step_size: StepSize | None = None
) -> dict[str, Any]:
    """The rule and its step size as the report records them."""
    facts = {"name": optimizer.architecture, **optimizer.hyperparameters()}
    return {"architecture": facts | ({} if step_size is None else step_size.to_json())}


def pretrained_names() -> list[str]:
    """The shipped pretrained versions (``lopt/weights/``), discovered, not listed here."""
    import lopt

    return lopt.pretrained_names()


def from_export(path: str, label: str, multipliers: Sequence[float] = ()) -> list[Contender]:
    """A learned rule from an export directory (what ``lopt.save`` / ``lopt meta-train`` wrote)."""
    import lopt

    learned, theta, metadata = lopt.load_optimizer(path)
    step_size = lopt.load_step_size(path)
    origin = {
        "export": os.path.abspath(path),
        **architecture_facts(learned, step_size),
        "meta_training_num_steps": metadata.get("num_steps"),
    }
    return learned_contenders(
        label, learned, theta, f"{label} {learned.architecture}", multipliers, origin, step_size
    )


def names() -> list[str]:
    """Every contender name ``resolve`` takes (besides export directories and
    ``untrained:<architecture>``)."""
    return [*OPTAX, *pretrained_names()]


def resolve(
    name: str,
    options: BaselineOptions = DEFAULT_OPTIONS,
    seed: int = 0,
    multipliers: Sequence[float] = (),
    label: str | None = None,
) -> list[Contender]:
    """The contender(s) called ``name``: an optax name, a pretrained version, an export directory
    or ``untrained:<architecture>`` (a learned rule with ``multipliers`` adds its tuned-lr twin)."""
    if name in OPTAX:
        return [optax_contender(name, options, group_names=(name,))]
    if name.startswith("untrained:"):
        import lopt

        learned = lopt.get_optimizer(name.removeprefix("untrained:"))
        theta = learned.init_meta_params(jax.random.key(seed))
        step_size = default_step_size(learned)
        return learned_contenders(
            label or "untrained",
            learned,
            theta,
            f"untrained {learned.architecture}",
            multipliers,
            architecture_facts(learned, step_size),
            step_size,
        )
    if name in pretrained_names():
        import lopt

        return from_export(lopt.pretrained_path(name), label or name, multipliers)
    if os.path.isdir(name):
        return from_export(name, label or "learned", multipliers)
    raise ValueError(
        f"optimizer {name!r} is not one of {', '.join(names())}, 'untrained:<architecture>' or "
        "an existing export directory (written by lopt.save or lopt meta-train)"
    )


def learned_rule(name: str) -> tuple[LearnedOptimizer, StepSize | None] | None:
    """The learned rule behind ``name`` and its step size (``None`` for an optax contender): for
    its untrained floor and the baselines' schedule and weight decay."""
    import lopt

    if name in OPTAX:
        return None
    if name.startswith("untrained:"):
        learned = lopt.get_optimizer(name.removeprefix("untrained:"))
        return learned, default_step_size(learned)
    path = lopt.pretrained_path(name) if name in pretrained_names() else name
    if not os.path.isdir(path):
        return None
    return lopt.load_optimizer(path)[0], lopt.load_step_size(path)
