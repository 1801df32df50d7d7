"""Held-out evaluation: train unseen tasks with an optimizer, its peers and the tuned baselines.

For every task and horizon, each contender (``meta_train.evaluation.contenders``) trains ``seeds``
runs; the tuned baselines also sweep a log-spaced learning-rate grid, with a constant learning
rate or the cosine schedule the learned rules use. All grid rows and seeds of one contender group
run in a single jitted ``lax.scan`` (``meta_train.evaluation.trainer``); the same seeds give every
contender the same initialisations and minibatches, so comparisons are paired. The rules
(divergence, per-criterion selection, grid edges, ties) are ``meta_train.evaluation.policy``; the
speed-ups and the comparisons ``meta_train.evaluation.comparison``. A task's horizons that are
whole multiples of its own horizon share one compiled segment.

Python: ``evaluate(optimizer, tasks, config) -> Report``. CLI: ``lopt evaluate --optimizer NAME``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import schedules
from lopt.base import LearnedOptimizer, LearnedRule
from lopt.step_size import StepSize
from meta_train.es.compile_options import FAST_COMPILE
from meta_train.evaluation import contenders as named
from meta_train.evaluation import eval_tasks, policy, results, trainer
from meta_train.evaluation import plan as planning
from meta_train.evaluation.contenders import (
    ADAM_GRID,
    ADAMW_GRID,
    LEARNED_LR_MULTIPLIERS,
    SGDM_GRID,
    SGDM_MOMENTUM,
    BaselineOptions,
    Contender,
)
from meta_train.evaluation.policy import DEFAULT_DIVERGENCE_FACTOR
from meta_train.evaluation.results import REFERENCE, Report, TaskResult

BASELINES = tuple(named.TUNED)
__all__ = [
    "ADAMW_GRID",
    "ADAM_GRID",
    "BASELINES",
    "DEFAULT_DIVERGENCE_FACTOR",
    "FAST_COMPILE",
    "LEARNED_LR_MULTIPLIERS",
    "SGDM_GRID",
    "EvalConfig",
    "evaluate",
]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What an evaluation trains and how it judges; ``evaluate(..., **overrides)`` replaces
    fields.

    ``num_steps`` overrides every task's horizon (required for plain ``Task`` objects); each
    horizon multiplier ``h`` trains ``round(h * num_steps)`` steps. ``baselines``: tuned optax
    contenders (``contenders.TUNED``), re-tuned at every horizon with ``baseline_schedule`` and
    ``weight_decay``; ``reference``: the one every comparison is against. ``peers``: further
    contenders by name (tuning-free optimizers, pretrained versions). ``learned_lr_multipliers``
    add a learned rule with a run-time ``learning_rate`` tuned over ``default * multipliers``.
    ``untrained_floor`` adds the learned rule's initialisation (seed ``seeds[0]``).
    ``compiler_options`` go to XLA (``FAST_COMPILE``: faster compiles, slower steps).
    """

    num_steps: int | None = None
    horizons: Sequence[float] = (1,)
    seeds: int | Sequence[int] = 5
    baselines: Sequence[str] = ("adam", "sgdm")
    adam_grid: Sequence[float] = ADAM_GRID
    adamw_grid: Sequence[float] = ADAMW_GRID
    sgdm_grid: Sequence[float] = SGDM_GRID
    sgdm_momentum: float = SGDM_MOMENTUM
    baseline_schedule: str = "constant"
    weight_decay: float = 0.0
    reference: str = REFERENCE
    peers: Sequence[str] = ()
    learned_lr_multipliers: Sequence[float] = ()
    untrained_floor: bool = True
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR
    compiler_options: Mapping[str, Any] | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if not self.horizons or any(not h > 0 for h in self.horizons):
            raise ValueError(
                f"horizons must be positive multipliers of the task horizon, got {self.horizons}"
            )
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must exceed 1, got {self.divergence_factor}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
        choices = schedules.available(horizon=True, decay=False)
        if self.baseline_schedule not in choices:
            raise ValueError(
                f"unknown baseline_schedule {self.baseline_schedule!r}; choose from {choices}"
            )
        for name in ("adam_grid", "adamw_grid", "sgdm_grid"):
            _check_grid(name, getattr(self, name))
        if self.learned_lr_multipliers:
            _check_grid("learned_lr_multipliers", self.learned_lr_multipliers)

    def options(self) -> BaselineOptions:
        return BaselineOptions(self.baseline_schedule, self.weight_decay, self.sgdm_momentum)

    def grids(self) -> dict[str, Sequence[float]]:
        return {"adam": self.adam_grid, "adamw": self.adamw_grid, "sgdm": self.sgdm_grid}

    def record(self, seeds: list[int]) -> dict[str, Any]:
        """The settings as the report records them."""
        return {
            "seeds": seeds,
            "horizons": [float(h) for h in self.horizons],
            "num_steps_override": self.num_steps,
            "baselines": list(self.baselines),
            **{name: [float(lr) for lr in grid] for name, grid in self.grids().items()},
            "sgdm_momentum": self.sgdm_momentum,
            "baseline_schedule": self.baseline_schedule,
            "weight_decay": self.weight_decay,
            "reference": self.reference,
            "peers": list(self.peers),
            "learned_lr_multipliers": [float(m) for m in self.learned_lr_multipliers],
            "selection": "per criterion, fewest diverged seeds first: lowest mean final train "
            "loss for train-loss figures, lowest mean final inner_valid loss for valid/test "
            "figures",
            "divergence": f"non-finite loss, or final train loss > {self.divergence_factor:g} x "
            "initial",
            "tie": policy.tie_rule(),
            "speedup": f"{self.reference}'s steps to its own final smoothed train loss / the "
            "optimizer's steps, where reached and kept",
            "compiler_options": dict(self.compiler_options or {}),
        }


def _check_grid(name: str, grid: Sequence[float]) -> None:
    if not grid or not all(np.isfinite(lr) and lr > 0 for lr in grid):
        raise ValueError(f"{name} must be a non-empty list of positive learning rates, got {grid}")


def _seed_keys(seeds: int | Sequence[int]) -> tuple[list[int], jax.Array]:
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must be a positive count or a non-empty list of ints")
    return seeds, jnp.stack([jax.random.key(seed) for seed in seeds])


def _subject(
    optimizer: Any,
    theta: Any,
    name: str | None,
    seed: int,
    config: EvalConfig,
    step_size: StepSize | None = None,
) -> tuple[list[Contender], tuple[LearnedOptimizer, StepSize | None] | None]:
    """The evaluated optimizer's contenders (none for a tuned baseline: it is one of the
    baselines) and the learned rule and step size whose untrained floor to add (if any)."""
    multipliers = config.learned_lr_multipliers
    if isinstance(optimizer, str):
        if optimizer in named.TUNED:
            return [], None
        found = named.resolve(optimizer, config.options(), seed, multipliers, label=name)
        floor = None if optimizer.startswith("untrained:") else named.learned_rule(optimizer)
        return found, floor
    if isinstance(optimizer, LearnedOptimizer):
        if theta is None:
            raise ValueError(
                f"evaluating a {type(optimizer).__name__} needs its meta-parameters: pass "
                "theta=..., or optimizer='untrained:<architecture>' for the untrained floor"
            )
        if isinstance(optimizer, LearnedRule) and step_size is None:
            raise ValueError(
                f"a {type(optimizer).__name__} has the learning rate outside it: pass "
                "step_size=lopt.StepSize(learning_rate, schedule, warmup_fraction, weight_decay)"
            )
        label = name or "learned"
        description = f"{label} {optimizer.architecture}"
        facts = named.architecture_facts(optimizer, step_size)
        return named.learned_contenders(
            label, optimizer, theta, description, multipliers, facts, step_size
        ), (optimizer, step_size)
    if isinstance(optimizer, optax.GradientTransformation):
        label = name or "optax"
        return [Contender(label, label, named.FixedFamily(optimizer))], None
    raise TypeError(
        f"cannot evaluate a {type(optimizer).__name__}: pass an optax.GradientTransformation, a "
        "lopt LearnedOptimizer with theta, a contender name (lopt evaluate --help), an export "
        "directory or 'untrained:<architecture>'"
    )


def contenders_of(
    optimizer: Any,
    theta: Any,
    name: str | None,
    seed: int,
    config: EvalConfig,
    step_size: StepSize | None = None,
) -> tuple[str, list[Contender]]:
    """The subject's label and every contender, the subject's first."""
    subject, floor = _subject(optimizer, theta, name, seed, config, step_size)
    optax_names = [n for n in BASELINES if n in config.baselines or n == optimizer]
    optax_names += [n for n in config.peers if n in named.OPTAX and n not in optax_names]
    found = [*subject, *named.optax_contenders(optax_names, config.options(), config.grids())]
    for peer in config.peers:
        if peer not in named.OPTAX:
            found += named.resolve(peer, config.options(), seed)
    if config.untrained_floor and floor is not None:
        found.append(named.untrained(floor[0], seed, step_size=floor[1]))
    labels = [c.label for c in found]
    if len(set(labels)) != len(labels):
        raise ValueError(f"name {name!r} clashes with another contender's label; choose another")
    subject_label = subject[0].label if subject else optimizer
    return subject_label, [c for c in found if c.label == subject_label] + [
        c for c in found if c.label != subject_label
    ]


def evaluate(
    optimizer: Any,
    tasks: Any = "default",
    config: EvalConfig | None = None,
    *,
    theta: Any = None,
    step_size: StepSize | None = None,
    name: str | None = None,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Report:
    """Train held-out ``tasks`` with ``optimizer`` and every contender of ``config``; the
    ``Report``.

    ``optimizer``: an ``optax.GradientTransformation``; a ``lopt`` ``LearnedOptimizer`` with
    ``theta`` (and ``step_size``, a ``lopt.StepSize``, for a rule with the learning rate outside
    it); a contender name (``contenders.names()``: a tuned baseline, a tuning-free
    optimizer, a pretrained version), an export directory or ``"untrained:<architecture>"``.
    ``tasks``: a suite name, a list of ``HeldOutTask`` / ``Task`` / ``(name, Task)``, or a
    ``{name: Task}`` mapping (a ``Task`` that is a pytree reaches the compiled code as an
    argument; any other is baked in as constants, fine for small data). ``overrides``: fields of
    ``EvalConfig``. ``settings`` are recorded in the report as given. With ``progress``, the plan
    and a rough ETA go to stderr before compiling.
    """
    config = dataclasses.replace(config or EvalConfig(), **overrides)
    config.check()
    seed_list, keys = _seed_keys(config.seeds)
    resolved = eval_tasks.resolve_tasks(tasks)
    missing = [t.name for t in resolved if t.num_steps is None and config.num_steps is None]
    if missing:
        raise ValueError(f"tasks {missing} have no horizon: pass num_steps=...")
    subject, found = contenders_of(optimizer, theta, name, seed_list[0], config, step_size)
    groups = named.group(found)
    options = tuple(sorted((config.compiler_options or {}).items()))
    jobs = []
    for task in resolved:
        base = config.num_steps or task.num_steps
        for horizon in config.horizons:
            steps = max(1, round(horizon * base))
            jobs.append(planning.Job(task, horizon, steps, trainer.segment_length(steps, base)))
    if progress:
        print(
            planning.plan(jobs, groups, len(seed_list), options).format(),
            file=sys.stderr,
        )
    task_results = []
    bar = planning.progress_bar(len(jobs), progress)
    for task, horizon, steps, segment in jobs:
        bar.set_description(f"{task.name} ({steps} steps)")
        initial_loss = trainer.initial_train_loss(task, keys, options)
        runs = {}
        for group in groups:
            outputs = trainer.run_group(group, task, steps, keys, options, segment)
            valid_steps = trainer.valid_curve_steps(steps, segment)
            factor = config.divergence_factor
            for run in results.member_results(group, outputs, initial_loss, factor, valid_steps):
                runs[run.label] = run
        runs = {c.label: runs[c.label] for c in found}
        window = policy.smoothing_window(steps)
        task_results.append(TaskResult(task.name, steps, float(horizon), runs, window))
        bar.update()
    bar.close()
    origin = {k: v for c in found if c.label == subject for k, v in c.origin.items()}
    recorded = {**config.record(seed_list), **origin, **(settings or {})}
    description = next((c.description for c in found if c.label == subject), subject)
    return Report(subject, description, recorded, tuple(task_results), config.reference)


# --- CLI helpers.


def baseline_schedule(choice: str, optimizer: str) -> str:
    """``auto``: the learned rule's own schedule (the same schedule for every contender)."""
    if choice != "auto":
        return choice
    return schedule_of(_step_size_of(optimizer))


def baseline_weight_decay(optimizer: str) -> float:
    """The learned rule's own weight decay (0 for optax contenders and rules without one)."""
    step_size = _step_size_of(optimizer)
    return 0.0 if step_size is None else float(step_size.weight_decay)


def _step_size_of(optimizer: str) -> StepSize | None:
    rule = named.learned_rule(optimizer)
    return None if rule is None else rule[1]


def schedule_of(step_size: StepSize | None) -> str:
    """A learned rule's own schedule name (its step size's), else ``"constant"``."""
    return "constant" if step_size is None else step_size.schedule
