"""Contenders: the things an evaluation trains, each usable by name (``lopt evaluate --optimizer``).

A ``Contender`` is one reported optimizer: a label, a ``Family`` (how one grid row becomes an optax
transform inside the jitted trainer) and, for a tuned one, its learning-rate grid. Contenders of
one family share one compiled trainer, vmapped over their rows and the seeds:

- ``OptaxFamily``: named optax transforms picked per row by ``lax.select_n`` (every member's state
  advances on every step: a few elementwise ops buy one compile for the whole family). The tuned
  baselines (``TUNED``) form one family, the tuning-free optimizers of ``optax.contrib`` at their
  published defaults another, and Muon (matrix products, costly to run for every row) its own.
- ``LearnedFamily``: one learned rule; its contenders (a pretrained version, the untrained
  initialisation) differ only in theta, stacked along the rows.

Names: ``TUNED`` and ``TUNING_FREE`` keys, ``untrained:<architecture>``, every shipped pretrained
version (``lopt.pretrained_names()``), or an export directory.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from lopt import schedules
from lopt.base import LearnedOptimizer

# Half-decade grids; wide enough that the chosen point is inside on the suites we run (a chosen
# point at an end is flagged, ``policy.at_grid_edge``).
ADAM_GRID = tuple(float(lr) for lr in np.logspace(-4, -1, 7))
ADAMW_GRID = tuple(float(lr) for lr in np.logspace(-4.5, -0.5, 9))
SGDM_GRID = tuple(float(lr) for lr in np.logspace(-3, 0, 7))
SGDM_MOMENTUM = 0.9
# A learned rule's swept learning rates: its default times half-decade steps over +-1.5 decades.
LEARNED_LR_MULTIPLIERS = tuple(float(m) for m in np.logspace(-1.5, 1.5, 7))
# Muon has no default learning rate in optax; these are the reference implementation's
# (Keller Jordan's ``MuonWithAuxAdam``): 0.02 for the matrices, 3e-4 for the AdamW-trained rest.
MUON_LEARNING_RATE, MUON_ADAM_LEARNING_RATE = 0.02, 3e-4


class BaselineOptions(NamedTuple):
    """What the tuned baselines share with the learned rule: its schedule and weight decay."""

    schedule: str = "constant"
    weight_decay: float = 0.0
    momentum: float = SGDM_MOMENTUM


DEFAULT_OPTIONS = BaselineOptions()


class Built(NamedTuple):
    """One row's transform and the params to evaluate (schedule-free evaluates its average)."""

    transform: optax.GradientTransformationExtraArgs
    eval_params: Callable[[Any, Any], Any]  # (state, params) -> params to evaluate


def _same_params(state: Any, params: Any) -> Any:
    return params


class Family(abc.ABC):
    """How a grid row ``[member index, learning rate]`` (traced) becomes a transform. Hashable:
    a static argument of the jitted trainer, so a family compiles once per task and horizon."""

    @abc.abstractmethod
    def build(self, row: jax.Array, theta: Any, num_steps: int) -> Built: ...


# --- Named optax transforms.


def _schedule(lr: Any, num_steps: int, options: BaselineOptions) -> optax.Schedule:
    return schedules.make_schedule(options.schedule, lr, num_steps)


def _sgdm(lr: Any, num_steps: int, options: BaselineOptions) -> optax.GradientTransformation:
    sgd = optax.sgd(_schedule(lr, num_steps, options), momentum=options.momentum)
    if not options.weight_decay:
        return sgd
    return optax.chain(optax.add_decayed_weights(options.weight_decay), sgd)


class OptaxSpec(NamedTuple):
    description: str
    make: Callable[[Any, int, BaselineOptions], optax.GradientTransformation]
    group: str  # contenders of one group share a compiled trainer
    grid: tuple[float, ...] | None = None  # tuned over it; None: one run at its defaults
    eval_params: Callable[[Any, Any], Any] | None = None


TUNED: dict[str, OptaxSpec] = {
    "adam": OptaxSpec("Adam", lambda lr, n, o: optax.adam(_schedule(lr, n, o)), "tuned", ADAM_GRID),
    "adamw": OptaxSpec(
        "AdamW",
        lambda lr, n, o: optax.adamw(_schedule(lr, n, o), weight_decay=o.weight_decay),
        "tuned",
        ADAMW_GRID,
    ),
    "sgdm": OptaxSpec("SGD-M", _sgdm, "tuned", SGDM_GRID),
}
TUNING_FREE: dict[str, OptaxSpec] = {
    "prodigy": OptaxSpec("Prodigy", lambda lr, n, o: contrib.prodigy(), "tuning_free"),
    "schedule_free_adamw": OptaxSpec(
        "Schedule-Free AdamW",
        lambda lr, n, o: contrib.schedule_free_adamw(),
        "tuning_free",
        eval_params=contrib.schedule_free_eval_params,
    ),
    "dadapt_adamw": OptaxSpec(
        "D-Adapt AdamW", lambda lr, n, o: contrib.dadapt_adamw(), "tuning_free"
    ),
    "dog": OptaxSpec("DoG", lambda lr, n, o: contrib.dog(), "tuning_free"),
    "dowg": OptaxSpec("DoWG", lambda lr, n, o: contrib.dowg(), "tuning_free"),
    # optax documents Mechanic around Adam at peak rate 1 with the run's warm-up-cosine schedule.
    "mechanize": OptaxSpec(
        "Mechanic (Adam)",
        lambda lr, n, o: contrib.mechanize(optax.adam(schedules.warmup_cosine(1.0, n))),
        "tuning_free",
    ),
    "cocob": OptaxSpec("COCOB", lambda lr, n, o: contrib.cocob(), "tuning_free"),
    "muon": OptaxSpec(
        "Muon (AdamW for non-matrices)",
        lambda lr, n, o: contrib.muon(
            MUON_LEARNING_RATE, adam_learning_rate=MUON_ADAM_LEARNING_RATE
        ),
        "muon",
    ),
}
OPTAX = {**TUNED, **TUNING_FREE}


@dataclasses.dataclass(frozen=True)
class OptaxFamily(Family):
    """The named optax transforms ``names``; a row's member index picks the update."""

    names: tuple[str, ...]
    options: BaselineOptions = DEFAULT_OPTIONS

    def build(self, row, theta, num_steps):
        member, learning_rate = row[0].astype(jnp.int32), row[1]
        specs = [OPTAX[name] for name in self.names]
        transforms = [spec.make(learning_rate, num_steps, self.options) for spec in specs]
        transforms = [optax.with_extra_args_support(tx) for tx in transforms]

        def init_fn(params):
            return tuple(tx.init(params) for tx in transforms)

        def update_fn(updates, state, params=None, **extra_args):
            outputs = [
                tx.update(updates, s, params, **extra_args)
                for tx, s in zip(transforms, state, strict=True)
            ]
            return _pick(member, [u for u, _ in outputs]), tuple(s for _, s in outputs)

        def eval_params(state, params):
            options = [
                spec.eval_params(s, params) if spec.eval_params else params
                for spec, s in zip(specs, state, strict=True)
            ]
            return _pick(member, options)

        return Built(optax.GradientTransformationExtraArgs(init_fn, update_fn), eval_params)


def _pick(member: jax.Array, options: Sequence[Any]) -> Any:
    if len(options) == 1:
        return options[0]
    return jax.tree.map(lambda *leaves: jax.lax.select_n(member, *leaves), *options)


@dataclasses.dataclass(frozen=True)
class FixedFamily(Family):
    """A user's optax transform, run as it is."""

    transformation: optax.GradientTransformation

    def build(self, row, theta, num_steps):
        return Built(optax.with_extra_args_support(self.transformation), _same_params)


@dataclasses.dataclass(frozen=True)
class LearnedFamily(Family):
    """A learned rule with each row's theta; with ``sweep``, its ``learning_rate`` field is the
    row's (traced) rate."""

    optimizer: LearnedOptimizer
    sweep: bool = False

    def build(self, row, theta, num_steps):
        import lopt

        optimizer = self.optimizer
        if self.sweep:
            # dataclasses.replace would rerun __post_init__, whose checks (lr > 0) cannot read a
            # traced value; the grid was checked positive before tracing.
            optimizer = copy.copy(optimizer)
            object.__setattr__(optimizer, "learning_rate", row[1])
        return Built(lopt.to_optax(optimizer, theta, num_steps), _same_params)


# --- Contenders.


class Contender(NamedTuple):
    """One reported optimizer. ``grid``: its tuned learning rates (``None``: one untuned run, at
    ``learning_rate`` when its family takes one); ``theta``: a learned rule's meta-parameters."""

    label: str
    description: str
    family: Family
    grid: tuple[float, ...] | None = None
    learning_rate: float | None = None
    theta: Any = None
    origin: dict[str, Any] = {}  # noqa: RUF012 (read-only facts for the report)

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
    """Contenders grouped by family, in order of first appearance."""
    by_family: dict[Family, list[Contender]] = {}
    for contender in contenders:
        by_family.setdefault(contender.family, []).append(contender)
    return [Group(family, tuple(members)) for family, members in by_family.items()]


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


def runtime_learning_rate(optimizer: LearnedOptimizer) -> float | None:
    """The rule's ``learning_rate`` field if it scales the updates at run time, else ``None``.

    A field that only seeds theta (``LearnableAdam``'s initial ``log_lr``) changes nothing once
    theta is meta-trained, so sweeping it would be a sham: such a field changes
    ``init_meta_params``, and is not swept.
    """
    names = {field.name for field in dataclasses.fields(optimizer)}
    if "learning_rate" not in names:
        return None
    learning_rate = float(optimizer.learning_rate)
    key = jax.random.key(0)
    doubled = dataclasses.replace(optimizer, learning_rate=2.0 * learning_rate)
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)),
        optimizer.init_meta_params(key),
        doubled.init_meta_params(key),
    )
    return learning_rate if all(jax.tree.leaves(same)) else None


def learned_contenders(
    label: str,
    optimizer: LearnedOptimizer,
    theta: Any,
    description: str,
    multipliers: Sequence[float] = (),
    origin: dict[str, Any] | None = None,
) -> list[Contender]:
    """The rule at its own learning rate and, for multipliers and a run-time ``learning_rate``
    field, also over ``default * multipliers`` (``"<label> (tuned lr)"``) in the same trainer."""
    default = runtime_learning_rate(optimizer) if multipliers else None
    if default is None:
        return [
            Contender(
                label, description, LearnedFamily(optimizer), theta=theta, origin=origin or {}
            )
        ]
    family = LearnedFamily(optimizer, sweep=True)
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


def untrained(optimizer: LearnedOptimizer, seed: int, label: str = "untrained") -> Contender:
    """The rule at its initialisation ``init_meta_params(key(seed))``: what meta-training starts
    from, so the floor that meta-training must beat."""
    theta = optimizer.init_meta_params(jax.random.key(seed))
    return Contender(
        label, f"untrained {optimizer.architecture}", LearnedFamily(optimizer), theta=theta
    )


def architecture_facts(optimizer: LearnedOptimizer) -> dict[str, Any]:
    return {"architecture": {"name": optimizer.architecture, **optimizer.hyperparameters()}}


def pretrained_names() -> list[str]:
    """The shipped pretrained versions (``lopt/weights/``), discovered, not listed here."""
    import lopt

    return lopt.pretrained_names()


def from_export(path: str, label: str, multipliers: Sequence[float] = ()) -> list[Contender]:
    """A learned rule from an export directory (what ``lopt.save`` / ``lopt meta-train`` wrote)."""
    import lopt

    learned, theta, metadata = lopt.load_optimizer(path)
    origin = {
        "export": os.path.abspath(path),
        **architecture_facts(learned),
        "meta_training_num_steps": metadata.get("num_steps"),
    }
    return learned_contenders(
        label, learned, theta, f"{label} {learned.architecture}", multipliers, origin
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
        return learned_contenders(
            label or "untrained",
            learned,
            theta,
            f"untrained {learned.architecture}",
            multipliers,
            architecture_facts(learned),
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


def learned_rule(name: str) -> LearnedOptimizer | None:
    """The learned rule behind ``name`` (``None`` for an optax contender): for its schedule."""
    import lopt

    if name in OPTAX:
        return None
    if name.startswith("untrained:"):
        return lopt.get_optimizer(name.removeprefix("untrained:"))
    path = lopt.pretrained_path(name) if name in pretrained_names() else name
    return lopt.load_optimizer(path)[0] if os.path.isdir(path) else None
