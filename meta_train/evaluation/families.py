"""Families: how a grid row ``[member index, learning rate]`` becomes an optax transform inside the
jitted trainer. A family is hashable (a static argument of the jit), so its contenders compile once
per task:

- ``OptaxFamily``: named optax transforms picked per row by ``lax.select_n`` (every member's state
  advances on every step: a few elementwise ops buy one compile for the whole family). The tuned
  baselines (``TUNED``) form one family, the tuning-free optimizers of ``optax.contrib`` at their
  published defaults another, and Muon (matrix products, costly to run for every row) its own.
- ``LearnedFamily``: one learned rule (and its step size); its contenders (a pretrained version,
  the untrained initialisation) differ only in theta, stacked along the rows.
- ``FixedFamily``: a user's optax transform.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from lopt import schedules
from lopt.base import LearnedOptimizer
from lopt.step_size import StepSize

# Half-decade grids; wide enough that the chosen point is inside on the suites we run (a chosen
# point at an end is flagged, ``policy.at_grid_edge``).
ADAM_GRID = tuple(float(lr) for lr in np.logspace(-4, -1, 7))
# AdamW and SGD-M with the warm-up-cosine schedule chose the top of narrower grids on the language
# models and the conv net (generalization benchmark, 1x): these reach 1 and 10.
ADAMW_GRID = tuple(float(lr) for lr in np.logspace(-4, 0, 9))
SGDM_GRID = tuple(float(lr) for lr in np.logspace(-2.5, 1, 8))
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

    def member_rank(self, label: str) -> tuple[int, str]:
        """Where the member ``label`` sits in its group's rows: by label, unless the family's
        member index means something (``OptaxFamily``)."""
        return 0, label


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

    def member_rank(self, label: str) -> tuple[int, str]:
        """A row's member index picks its transform from ``names``: members keep that order."""
        return self.names.index(label), ""

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
    """A learned rule with each row's theta and its ``step_size`` (``None`` for a rule that learns
    its own); with ``sweep``, the row's (traced) learning rate is the step size's peak."""

    optimizer: LearnedOptimizer
    step_size: StepSize | None = None
    sweep: bool = False

    def build(self, row, theta, num_steps):
        import lopt

        step_size = self.step_size
        if self.sweep:
            step_size = step_size._replace(learning_rate=row[1])
        return Built(lopt.to_optax(self.optimizer, theta, num_steps, step_size), _same_params)
