"""Held-out evaluation: train unseen tasks with an optimizer and with tuned Adam and SGD-M.

For every task and horizon, each optimizer trains ``seeds`` runs; the tuned baselines also sweep a
log-spaced learning-rate grid, with a constant learning rate or the cosine schedule the learned
rules use (``lopt.schedules.warmup_cosine`` over the run). A learned rule with a run-time
``learning_rate`` field runs at its own default and, as a second contender, over a grid around it
(``"<label> (tuned lr)"``). All grid points and seeds of one trainer on one task run in a single
jitted ``lax.scan`` (vmapped over ``[grid, seeds]``); the same seeds give every optimizer the same
initialisations and minibatches, so comparisons are paired. A tuned optimizer's learning rate is
chosen twice (``meta_train.evaluation.report``): by mean final training loss for the training-loss
comparison, by mean final *inner-valid* loss for every held-out figure (the test split is never
used to choose).

A run has diverged when a training loss is non-finite or its final training loss exceeds
``divergence_factor`` times its initial one; diverged runs stay in every mean and count.

The speed-up over tuned Adam follows the VeLO / learned_optimization reports (``report.speedup``):
the steps tuned Adam needs to reach its own final training loss over the steps the optimizer needs
to reach that loss, on seed-mean curves smoothed by a trailing moving average; only where the
optimizer reaches that loss and keeps it.

Python: ``evaluate(optimizer, tasks, ...) -> Report`` (``meta_train.evaluation.report``). CLI:
``lopt evaluate --optimizer <export dir | adam | sgdm | untrained:<arch>> --suite <name>``.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import functools
import math
import operator
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import schedules
from lopt.base import LearnedOptimizer
from meta_train.es.compile_options import FAST_COMPILE
from meta_train.evaluation import inner_training
from meta_train.evaluation.report import (
    CRITERIA,
    GridPoint,
    Report,
    RunResult,
    Selection,
    TaskResult,
    baseline_description,
)
from tasks.base import Task

ADAM_GRID = tuple(float(lr) for lr in np.logspace(-4, -1, 7))
SGDM_GRID = tuple(float(lr) for lr in np.logspace(-3, 0, 7))
SGDM_MOMENTUM = 0.9
EVAL_SPLITS = ("train", "inner_valid", "test")
DEFAULT_DIVERGENCE_FACTOR = 2.0
BASELINES = ("adam", "sgdm")
# A learned rule's swept learning rates: its default times half-decade steps over +-1.5 decades.
LEARNED_LR_MULTIPLIERS = tuple(float(m) for m in np.logspace(-1.5, 1.5, 7))


# --- How each optimizer becomes an optax transform inside the jitted scan.
# These are hashable, static arguments of the jitted trainer: one compile per (optimizer kind, task
# shapes, number of steps), reused across calls. Grid values and theta are traced arguments.


class _Candidate(abc.ABC):
    @abc.abstractmethod
    def transform(
        self, hyperparameters: jax.Array, theta: Any, num_steps: int
    ) -> optax.GradientTransformationExtraArgs:
        """The transform of one grid row ``[member index, learning rate]`` (traced)."""


@dataclasses.dataclass(frozen=True)
class _Baselines(_Candidate):
    """Adam and/or SGD-M as one transform whose row's member index picks the update.

    Every state is advanced on every step (the unused ones cost a few elementwise ops), so both
    baselines' grids share one compile and one vmapped scan.
    """

    kinds: tuple[str, ...]
    momentum: float = SGDM_MOMENTUM
    schedule: str = "constant"

    def _one(self, kind: str, learning_rate: optax.Schedule) -> optax.GradientTransformation:
        if kind == "adam":
            return optax.adam(learning_rate)
        return optax.sgd(learning_rate, momentum=self.momentum)

    def transform(self, hyperparameters, theta, num_steps):
        member, learning_rate = hyperparameters[0].astype(jnp.int32), hyperparameters[1]
        schedule = schedules.make_schedule(self.schedule, learning_rate, num_steps)
        transforms = [self._one(kind, schedule) for kind in self.kinds]

        def init_fn(params):
            return tuple(tx.init(params) for tx in transforms)

        def update_fn(updates, state, params=None, **extra_args):
            outputs = [
                tx.update(updates, s, params) for tx, s in zip(transforms, state, strict=True)
            ]
            chosen = jax.tree.map(
                lambda *options: jax.lax.select_n(member, *options), *[u for u, _ in outputs]
            )
            return chosen, tuple(s for _, s in outputs)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class _Fixed(_Candidate):
    transformation: optax.GradientTransformation

    def transform(self, hyperparameters, theta, num_steps):
        return optax.with_extra_args_support(self.transformation)


@dataclasses.dataclass(frozen=True)
class _Learned(_Candidate):
    """A learned rule; with ``sweep``, its ``learning_rate`` field is the row's (traced) rate."""

    optimizer: LearnedOptimizer
    sweep: bool = False

    def transform(self, hyperparameters, theta, num_steps):
        import lopt

        optimizer = self.optimizer
        if self.sweep:
            # dataclasses.replace would rerun __post_init__, whose checks (lr > 0) cannot read a
            # traced value; the grid was checked positive before tracing.
            optimizer = copy.copy(optimizer)
            object.__setattr__(optimizer, "learning_rate", hyperparameters[1])
        return lopt.to_optax(optimizer, theta, num_steps)


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


class _Member(NamedTuple):
    """One reported optimizer; ``grid`` is its learning-rate grid (``None``: one untuned run,
    at ``learning_rate`` when its candidate takes one)."""

    label: str
    description: str
    grid: tuple[float, ...] | None = None
    learning_rate: float | None = None


class _Contender(NamedTuple):
    """One compiled trainer: a candidate, the optimizers it reports and their grid rows."""

    candidate: _Candidate
    members: tuple[_Member, ...]
    theta: Any = None

    def rows(self) -> np.ndarray:
        """``[grid rows, 2]``: member index and learning rate (0 where none applies)."""
        return np.array(
            [
                (m, lr)
                for m, member in enumerate(self.members)
                for lr in (member.grid or (member.learning_rate or 0.0,))
            ],
            np.float32,
        )


# --- Tasks: a static builder (hashable) and traced arguments (device data are not constants).


def _task_from_family(args: tuple[Any, Any]) -> Task:
    family, config = args
    return family.task(config)


def _task_itself(task: Task) -> Task:
    return task


@dataclasses.dataclass(frozen=True, eq=False)
class _ClosedTask:
    """A user's task that is not a pytree: baked into the compiled function (hashed by identity)."""

    task: Task

    def __call__(self, args: None) -> Task:
        return self.task


class _EvalTask(NamedTuple):
    name: str
    num_steps: int | None
    build: Callable[[Any], Task]
    args: Any


def _is_held_out_task(item: Any) -> bool:
    return isinstance(item, tuple) and all(
        hasattr(item, field) for field in ("name", "family", "config", "num_steps")
    )


def _as_eval_task(item: Any, index: int) -> _EvalTask:
    if _is_held_out_task(item):
        return _EvalTask(
            item.name, int(item.num_steps), _task_from_family, (item.family, item.config)
        )
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Task):
        return _as_named_task(str(item[0]), item[1])
    if isinstance(item, Task):
        return _as_named_task(f"{type(item).__name__}_{index}", item)
    raise TypeError(
        f"tasks[{index}] is a {type(item).__name__}: pass tasks.base.Task objects, (name, Task) "
        "pairs, tasks.registry.HeldOutTask tuples, or a suite name"
    )


def _as_named_task(name: str, task: Task) -> _EvalTask:
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(task)):
        return _EvalTask(name, None, _ClosedTask(task), None)
    return _EvalTask(name, None, _task_itself, task)


def _resolve_tasks(tasks: Any) -> list[_EvalTask]:
    if isinstance(tasks, str):
        from tasks import registry

        tasks = registry.get_suite(tasks)
    if isinstance(tasks, Mapping):
        tasks = list(tasks.items())
    if isinstance(tasks, Task) or _is_held_out_task(tasks):
        tasks = [tasks]
    resolved = [_as_eval_task(item, i) for i, item in enumerate(tasks)]
    if not resolved:
        raise ValueError("no tasks to evaluate: pass a suite name or a non-empty list of tasks")
    names = [task.name for task in resolved]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"task names must be unique; repeated: {duplicates}")
    return resolved


# --- The jitted trainer.


class _GridOutput(NamedTuple):
    """Leading axes ``[grid rows, seeds]``."""

    losses: jax.Array  # [G, S, num_steps] minibatch training loss before each update
    valid_losses: jax.Array  # [G, S, V] minibatch inner-valid loss at ``valid_curve_steps``
    params: Any  # final params, leaves [G, S, ...]


VALID_CURVE_POINTS = 20


def valid_curve_steps(num_steps: int) -> np.ndarray:
    """``[V]``: after how many updates the inner-valid curve is measured (about 20 points)."""
    every = max(1, num_steps // VALID_CURVE_POINTS)
    return every * np.arange(1, num_steps // every + 1)


Options = tuple[tuple[str, Any], ...]  # XLA compiler options, hashable


@functools.cache
def _jit(function: Callable, options: Options, *static_argnames: str) -> Callable:
    """``jax.jit(function)`` with XLA ``options``; one per (function, options), so caches hold."""
    return jax.jit(
        function, static_argnames=static_argnames, compiler_options=dict(options) or None
    )


def _train_grid(
    task_args: Any,
    theta: Any,
    rows: jax.Array,
    keys: jax.Array,
    *,
    candidate: _Candidate,
    build_task: Callable[[Any], Task],
    num_steps: int,
) -> _GridOutput:
    """Train one task ``num_steps`` steps for every grid row ``rows[g]`` and seed ``keys[s]``."""
    task = build_task(task_args)

    def run(row: jax.Array, key: jax.Array) -> _GridOutput:
        tx = candidate.transform(row, theta, num_steps)
        init_key, data_key = inner_training.split_seed(key)
        params = task.init(init_key)

        # Chunks of training steps, each followed by one inner-valid minibatch: the curve costs
        # V forward passes, where a per-step lax.cond would run both branches under vmap.
        num_evals = len(valid_curve_steps(num_steps))
        every = num_steps // num_evals
        step_keys = jax.random.split(data_key, num_steps)
        valid_keys = jax.random.split(jax.random.fold_in(data_key, 1), num_evals)

        def chunk(carry, keys):
            chunk_keys, valid_key = keys
            params, state, losses = inner_training.train(task, tx.update, *carry, chunk_keys)
            return (params, state), (losses, task.eval_loss(params, valid_key, "inner_valid"))

        head = num_evals * every
        chunks = (step_keys[:head].reshape(num_evals, every), valid_keys)
        carry, (losses, valid_losses) = jax.lax.scan(chunk, (params, tx.init(params)), chunks)
        params, state = carry
        losses = losses.reshape(head)
        if head < num_steps:
            params, state, tail = inner_training.train(
                task, tx.update, params, state, step_keys[head:]
            )
            losses = jnp.concatenate([losses, tail])
        return _GridOutput(losses, valid_losses, params)

    return jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))(rows, keys)


# Evaluation runs once per run, unbatched, in its own jitted function: compiled once per task and
# shared by every optimizer and horizon. (Vmapping it over runs made XLA's CPU compile several
# times slower than the evaluation itself.)


def _initial_params(task_args: Any, key: jax.Array, *, build_task: Callable[[Any], Task]) -> Any:
    return build_task(task_args).init(inner_training.split_seed(key)[0])


def _metrics(
    task_args: Any, params: Any, *, build_task: Callable[[Any], Task]
) -> dict[str, jax.Array]:
    """``{"<split>_<metric>": scalar}`` on every example of each of ``EVAL_SPLITS``."""
    task = build_task(task_args)
    return {
        f"{split}_{name}": value
        for split in EVAL_SPLITS
        for name, value in task.evaluate(params, split).items()
    }


def _initial_train_loss(task: _EvalTask, keys: jax.Array, options: Options) -> np.ndarray:
    """``[S]`` whole-train-split loss at each seed's initialisation."""
    init = _jit(_initial_params, options, "build_task")
    metrics = _jit(_metrics, options, "build_task")
    losses = []
    for key in keys:
        params = init(task.args, key, build_task=task.build)
        losses.append(metrics(task.args, params, build_task=task.build)["train_loss"])
    return np.asarray(jax.device_get(losses), np.float64)


def _final_metrics(
    task: _EvalTask, params: Any, shape: tuple[int, int], options: Options
) -> dict[str, np.ndarray]:
    """``{"<split>_<metric>": [G, S]}`` of the stacked final ``params`` (leaves ``[G, S, ...]``)."""
    metrics = _jit(_metrics, options, "build_task")
    per_run = [
        metrics(task.args, jax.tree.map(operator.itemgetter((g, s)), params), build_task=task.build)
        for g in range(shape[0])
        for s in range(shape[1])
    ]
    per_run = jax.device_get(per_run)
    return {
        key: np.array([run[key] for run in per_run], np.float64).reshape(shape)
        for key in per_run[0]
    }


class _Outputs(NamedTuple):
    """Numpy results of one contender on one task: leading axes ``[grid rows, seeds]``."""

    losses: np.ndarray
    valid_losses: np.ndarray
    metrics: dict[str, np.ndarray]
    compile_seconds: float
    run_seconds: float


def _run_contender(
    contender: _Contender,
    task: _EvalTask,
    num_steps: int,
    keys: jax.Array,
    options: Options,
) -> _Outputs:
    rows = jnp.asarray(contender.rows())
    start = time.perf_counter()
    train_grid = _jit(_train_grid, options, "candidate", "build_task", "num_steps")
    compiled = train_grid.lower(
        task.args,
        contender.theta,
        rows,
        keys,
        candidate=contender.candidate,
        build_task=task.build,
        num_steps=num_steps,
    ).compile()
    compiled_at = time.perf_counter()
    output = compiled(task.args, contender.theta, rows, keys)
    metrics = _final_metrics(task, output.params, output.losses.shape[:2], options)
    losses, valid_losses = (
        np.asarray(jax.device_get(x), np.float64) for x in (output.losses, output.valid_losses)
    )
    seconds = (compiled_at - start, time.perf_counter() - compiled_at)
    return _Outputs(losses, valid_losses, metrics, *seconds)


# --- Divergence, grid selection, speed-up (plain numpy on the outputs).


def diverged_runs(
    losses: np.ndarray, initial_loss: np.ndarray, final_loss: np.ndarray, factor: float
) -> np.ndarray:
    """Boolean ``[...]``: a non-finite step loss, or a final loss above ``factor`` x the initial.

    ``losses`` is ``[..., steps]``; the rest are ``[...]``. For losses that can be negative, the
    bound is ``initial + (factor - 1) * |initial|``.
    """
    bound = initial_loss + (factor - 1.0) * np.abs(initial_loss)
    return (
        ~np.all(np.isfinite(losses), axis=-1)
        | ~np.isfinite(final_loss)
        | ~np.isfinite(initial_loss)
        | (final_loss > bound)
    )


def select_grid_point(loss: np.ndarray, diverged: np.ndarray) -> int:
    """Index of the best grid point from ``[grid, seeds]`` final losses of one criterion.

    Fewest diverged seeds first, then the lowest mean loss (a point with a diverged seed has mean
    ``inf``). Ties go to the earlier (smaller) grid point.
    """
    num_diverged = diverged.sum(axis=1)
    finite = np.where(np.isfinite(loss) & ~diverged, loss, np.inf)
    return int(np.lexsort((finite.mean(axis=1), num_diverged))[0])


def smoothing_window(num_steps: int) -> int:
    """Moving-average window for training-loss curves: 5% of the run, at least one step."""
    return max(1, num_steps // 20)


def _member_results(
    contender: _Contender, outputs: _Outputs, initial_loss: np.ndarray, divergence_factor: float
) -> list[RunResult]:
    """One ``RunResult`` per member: its grid rows summarised, its selected row per criterion."""
    diverged = diverged_runs(
        outputs.losses, initial_loss[None], outputs.metrics["train_loss"], divergence_factor
    )
    member_of_row = contender.rows()[:, 0].astype(int)

    valid_steps = valid_curve_steps(outputs.losses.shape[-1])

    def selection(row: int, learning_rate: float | None) -> Selection:
        metrics = {key: values[row] for key, values in outputs.metrics.items()}
        valid = (valid_steps, outputs.valid_losses[row])
        return Selection(learning_rate, outputs.losses[row], metrics, diverged[row], *valid)

    results = []
    for index, member in enumerate(contender.members):
        rows = np.flatnonzero(member_of_row == index)
        if member.grid:
            chosen = {
                criterion: rows[select_grid_point(outputs.metrics[metric][rows], diverged[rows])]
                for criterion, metric in CRITERIA.items()
            }
            by_row = {
                row: selection(row, member.grid[row - rows[0]]) for row in set(chosen.values())
            }
            selected = {criterion: by_row[row] for criterion, row in chosen.items()}
        else:
            only = selection(rows[0], member.learning_rate)
            selected = dict.fromkeys(CRITERIA, only)
        grid = tuple(
            GridPoint(
                learning_rate=lr,
                valid_loss=float(np.mean(outputs.metrics["inner_valid_loss"][row])),
                train_loss=float(np.mean(outputs.metrics["train_loss"][row])),
                num_diverged=int(diverged[row].sum()),
            )
            for row, lr in zip(rows, member.grid or (), strict=bool(member.grid))
        )
        results.append(
            RunResult(
                label=member.label,
                description=member.description,
                initial_loss=initial_loss,
                selected=selected,
                grid=grid,
                compile_seconds=outputs.compile_seconds,
                run_seconds=outputs.run_seconds,
            )
        )
    return results


# --- The optimizer under evaluation.


def _baselines(
    kinds: Sequence[str], grids: Mapping[str, Sequence[float]], momentum: float, schedule: str
) -> _Contender:
    names = {"adam": "Adam", "sgdm": f"SGD-M {momentum:g}"}
    members = tuple(
        _Member(kind, baseline_description(names[kind], grids[kind], schedule), tuple(grids[kind]))
        for kind in kinds
    )
    return _Contender(_Baselines(tuple(kinds), momentum, schedule), members)


def _learned(
    label: str,
    optimizer: LearnedOptimizer,
    theta: Any,
    description: str,
    multipliers: Sequence[float] = (),
) -> _Contender:
    """The rule at its own learning rate and, for multipliers and a run-time ``learning_rate``
    field, also over ``default * multipliers`` in the same compiled trainer."""
    default = runtime_learning_rate(optimizer) if multipliers else None
    if default is None:
        return _Contender(_Learned(optimizer), (_Member(label, description),), theta)
    grid = tuple(default * m for m in multipliers)
    members = (
        _Member(label, description, learning_rate=default),
        _Member(f"{label} (tuned lr)", f"{description} (tuned over {len(grid)} lrs)", grid),
    )
    return _Contender(_Learned(optimizer, sweep=True), members, theta)


def _untrained(
    optimizer: LearnedOptimizer, seed: int, multipliers: Sequence[float] = ()
) -> _Contender:
    theta = optimizer.init_meta_params(jax.random.key(seed))
    description = f"untrained {optimizer.architecture}"
    return _learned("untrained", optimizer, theta, description, multipliers)


def _architecture(optimizer: LearnedOptimizer) -> dict[str, Any]:
    return {"architecture": {"name": optimizer.architecture, **optimizer.hyperparameters()}}


def _resolve_subject(
    optimizer: Any, theta: Any, name: str | None, seed: int, multipliers: Sequence[float]
) -> tuple[_Contender | str, LearnedOptimizer | None, dict[str, Any]]:
    """The evaluated optimizer (a contender or a baseline's name), the learned optimizer to take
    the untrained floor from (if any), and facts about its origin for the report."""
    if isinstance(optimizer, str):
        if optimizer in BASELINES:
            return optimizer, None, {}
        if optimizer.startswith("untrained:"):
            import lopt

            learned = lopt.get_optimizer(optimizer.removeprefix("untrained:"))
            return _untrained(learned, seed, multipliers), None, _architecture(learned)
        if not os.path.isdir(optimizer):
            raise ValueError(
                f"optimizer {optimizer!r} is not 'adam', 'sgdm', 'untrained:<architecture>' or an "
                "existing export directory (written by lopt.save or lopt meta-train)"
            )
        import lopt

        learned, theta, metadata = lopt.load_optimizer(optimizer)
        label = name or "learned"
        origin = {
            "export": os.path.abspath(optimizer),
            **_architecture(learned),
            "meta_training_num_steps": metadata.get("num_steps"),
        }
        description = f"{label} {learned.architecture}"
        return _learned(label, learned, theta, description, multipliers), learned, origin
    if isinstance(optimizer, LearnedOptimizer):
        if theta is None:
            raise ValueError(
                f"evaluating a {type(optimizer).__name__} needs its meta-parameters: pass "
                "theta=..., or optimizer='untrained:<architecture>' for the untrained floor"
            )
        label = name or "learned"
        description = f"{label} {optimizer.architecture}"
        contender = _learned(label, optimizer, theta, description, multipliers)
        return contender, optimizer, _architecture(optimizer)
    if isinstance(optimizer, optax.GradientTransformation):
        label = name or "optax"
        return _Contender(_Fixed(optimizer), (_Member(label, label),)), None, {}
    raise TypeError(
        f"cannot evaluate a {type(optimizer).__name__}: pass an optax.GradientTransformation, a "
        "lopt LearnedOptimizer with theta, an export directory, 'adam', 'sgdm' or "
        "'untrained:<architecture>'"
    )


def _seed_keys(seeds: int | Sequence[int]) -> tuple[list[int], jax.Array]:
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must be a positive count or a non-empty list of ints")
    return seeds, jnp.stack([jax.random.key(seed) for seed in seeds])


def _check_grid(name: str, grid: Sequence[float]) -> None:
    if not grid or not all(np.isfinite(lr) and lr > 0 for lr in grid):
        raise ValueError(f"{name} must be a non-empty list of positive learning rates, got {grid}")


def evaluate(
    optimizer: Any,
    tasks: Any = "default",
    *,
    theta: Any = None,
    num_steps: int | None = None,
    horizons: Sequence[float] = (1,),
    seeds: int | Sequence[int] = 5,
    baselines: Sequence[str] = BASELINES,
    adam_grid: Sequence[float] = ADAM_GRID,
    sgdm_grid: Sequence[float] = SGDM_GRID,
    sgdm_momentum: float = SGDM_MOMENTUM,
    baseline_schedule: str = "constant",
    learned_lr_multipliers: Sequence[float] = (),
    untrained_floor: bool = True,
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
    name: str | None = None,
    progress: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Report:
    """Train held-out ``tasks`` with ``optimizer`` and the tuned baselines; return the ``Report``.

    ``optimizer``: an ``optax.GradientTransformation``; a ``lopt`` ``LearnedOptimizer`` with
    ``theta``; an export directory; ``"adam"`` / ``"sgdm"`` (the tuned baseline itself); or
    ``"untrained:<architecture>"``. ``tasks``: a suite name, a list of ``HeldOutTask`` /
    ``Task`` / ``(name, Task)``, or a ``{name: Task}`` mapping (a ``Task`` that is a pytree, e.g. a
    ``flax.struct.PyTreeNode``, reaches the compiled code as an argument; any other is baked in as
    constants, fine for small data).

    ``num_steps`` overrides every task's horizon (required for plain ``Task`` objects); each
    horizon multiplier ``h`` trains ``round(h * num_steps)`` steps, and learned optimizers get that
    horizon at init. Baselines are re-tuned at every horizon, with ``baseline_schedule``
    (``"constant"`` or ``"cosine"``: ``lopt.schedules.warmup_cosine`` over the run, the learned
    rules' schedule). ``learned_lr_multipliers`` (e.g. ``LEARNED_LR_MULTIPLIERS``) add the learned
    rule tuned over ``its learning_rate * multipliers`` as ``"<name> (tuned lr)"``, for rules whose
    ``learning_rate`` field acts at run time (``runtime_learning_rate``). ``untrained_floor`` adds
    the learned architecture with fresh meta-parameters (seed ``seeds[0]``). ``compiler_options``
    go to XLA for every compile (``FAST_COMPILE`` trades slower steps for faster compiles: for
    short runs). With ``progress``, the plan and a rough ETA go to stderr before compiling.
    ``settings`` are recorded in the report as given.
    """
    seed_list, keys = _seed_keys(seeds)
    eval_tasks = _resolve_tasks(tasks)
    if not horizons or any(not h > 0 for h in horizons):
        raise ValueError(
            f"horizons must be positive multipliers of the task horizon, got {horizons}"
        )
    if not divergence_factor > 1:
        raise ValueError(f"divergence_factor must exceed 1, got {divergence_factor}")
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    missing = [task.name for task in eval_tasks if task.num_steps is None and num_steps is None]
    if missing:
        raise ValueError(f"tasks {missing} have no horizon: pass num_steps=...")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    if baseline_schedule not in schedules.SCHEDULES:
        raise ValueError(
            f"unknown baseline_schedule {baseline_schedule!r}; choose from {schedules.SCHEDULES}"
        )
    _check_grid("adam_grid", adam_grid)
    _check_grid("sgdm_grid", sgdm_grid)
    if learned_lr_multipliers:
        _check_grid("learned_lr_multipliers", learned_lr_multipliers)

    subject, learned, origin = _resolve_subject(
        optimizer, theta, name, seed_list[0], learned_lr_multipliers
    )
    subject_label = subject if isinstance(subject, str) else subject.members[0].label
    kinds = [kind for kind in BASELINES if kind in baselines or kind == subject]
    contenders = [] if isinstance(subject, str) else [subject]
    if kinds:
        grids = {"adam": adam_grid, "sgdm": sgdm_grid}
        contenders.append(_baselines(kinds, grids, sgdm_momentum, baseline_schedule))
    if untrained_floor and learned is not None:
        contenders.append(_untrained(learned, seed_list[0]))
    labels = [member.label for contender in contenders for member in contender.members]
    if len(set(labels)) != len(labels):
        raise ValueError(f"name {name!r} clashes with a baseline's label; choose another name")
    order = [subject_label, *(label for label in labels if label != subject_label)]
    options = tuple(sorted((compiler_options or {}).items()))

    jobs = [
        (task, horizon, max(1, round(horizon * (num_steps or task.num_steps))))
        for task in eval_tasks
        for horizon in horizons
    ]
    if progress:
        print(plan(jobs, contenders, len(seed_list), options).format(), file=sys.stderr)
    results = []
    bar = _progress_bar(len(jobs), progress)
    for task, horizon, steps in jobs:
        bar.set_description(f"{task.name} ({steps} steps)")
        initial_loss = _initial_train_loss(task, keys, options)
        runs = {}
        for contender in contenders:
            outputs = _run_contender(contender, task, steps, keys, options)
            for run in _member_results(contender, outputs, initial_loss, divergence_factor):
                runs[run.label] = run
        runs = {label: runs[label] for label in order}
        results.append(TaskResult(task.name, steps, float(horizon), runs, smoothing_window(steps)))
        bar.update()
    bar.close()

    recorded = {
        "seeds": seed_list,
        "horizons": [float(h) for h in horizons],
        "num_steps_override": num_steps,
        "baselines": list(baselines),
        "adam_grid": [float(lr) for lr in adam_grid],
        "sgdm_grid": [float(lr) for lr in sgdm_grid],
        "sgdm_momentum": sgdm_momentum,
        "baseline_schedule": baseline_schedule,
        "learned_lr_multipliers": [float(m) for m in learned_lr_multipliers],
        "selection": "per criterion, fewest diverged seeds first: lowest mean final train loss "
        "for train-loss figures, lowest mean final inner_valid loss for valid/test figures",
        "divergence": f"non-finite loss, or final train loss > {divergence_factor:g} x initial",
        "speedup": "Adam's steps to its own final smoothed train loss / the optimizer's steps, "
        "where reached and kept",
        "compiler_options": dict(compiler_options or {}),
        **origin,
        **(settings or {}),
    }
    description = subject_label if isinstance(subject, str) else subject.members[0].description
    return Report(subject_label, description, recorded, tuple(results))


# --- The plan and a rough ETA, printed before anything compiles.

# Rough costs on a loaded 2-core CPU (meta-training in the background), from the compile and run
# seconds of `lopt evaluate --optimizer untrained:mlp --suite default --steps 200 --seeds 2`
# (5-16 s per compile; 1e-4 s per run and step for the 3k-parameter MLPs, 3.4e-4 for 9k).
COMPILE_SECONDS = {False: 8.0, True: 3.0}  # per compiled function, by FAST_COMPILE
SECONDS_PER_PARAMETER_STEP = 3.5e-8  # per run (grid point x seed), per parameter and step
SECONDS_PER_STEP = 2.0e-5  # per run and step, whatever the size (the loop's own overhead)


class Plan(NamedTuple):
    """What an evaluation will train, and a rough ETA from ``COMPILE_SECONDS`` and step costs."""

    num_tasks: int
    horizons: tuple[float, ...]
    trainers: tuple[tuple[str, int], ...]  # (its optimizers' labels, grid rows)
    num_seeds: int
    num_runs: int
    num_compiles: int
    eta_seconds: float

    def format(self) -> str:
        trainers = " + ".join(f"{labels} ({rows} lr)" for labels, rows in self.trainers)
        horizons = ",".join(f"{h:g}x" for h in self.horizons)
        text = (
            f"plan: {self.num_tasks} tasks x {len(self.horizons)} horizons ({horizons}) x "
            f"[{trainers}] x {self.num_seeds} seeds = {self.num_runs} training runs; "
            f"{self.num_compiles} compiles; rough ETA {_duration(self.eta_seconds)} (a 2-core "
            "CPU's costs; the progress bar refines it)"
        )
        load, cores = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0, os.cpu_count()
        if cores and load > cores:
            text += f"; the machine is busy (load {load:.1f} on {cores} cores): expect longer"
        return text


def plan(
    jobs: Sequence[tuple[_EvalTask, float, int]],
    contenders: Sequence[_Contender],
    num_seeds: int,
    options: Options = (),
) -> Plan:
    """The plan of ``(task, horizon, steps)`` jobs: counts, compiles and a rough ETA.

    Compiles: one trainer per contender per job, and per task one initialisation and one
    evaluation function. Parameter counts come from ``jax.eval_shape`` (nothing is compiled).
    """
    rows = [len(contender.rows()) for contender in contenders]
    sizes = {task.name: _num_params(task) for task, _, _ in jobs}
    per_step = {
        name: SECONDS_PER_STEP + SECONDS_PER_PARAMETER_STEP * n for name, n in sizes.items()
    }
    step_seconds = sum(sum(rows) * num_seeds * steps * per_step[t.name] for t, _, steps in jobs)
    num_compiles = len(jobs) * len(contenders) + 2 * len(sizes)
    fast = FAST_COMPILE.items() <= dict(options).items()
    return Plan(
        num_tasks=len(sizes),
        horizons=tuple(dict.fromkeys(horizon for _, horizon, _ in jobs)),
        trainers=tuple(
            ("+".join(m.label for m in c.members), n) for c, n in zip(contenders, rows, strict=True)
        ),
        num_seeds=num_seeds,
        num_runs=len(jobs) * sum(rows) * num_seeds,
        num_compiles=num_compiles,
        eta_seconds=num_compiles * COMPILE_SECONDS[fast] + step_seconds,
    )


def _num_params(task: _EvalTask) -> int:
    shapes = jax.eval_shape(
        functools.partial(_initial_params, build_task=task.build), task.args, jax.random.key(0)
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="task", file=sys.stderr)


def baseline_schedule(choice: str, optimizer: str) -> str:
    """``auto``: the export's rule's ``schedule`` field (the same schedule for every contender)."""
    if choice != "auto":
        return choice
    if not os.path.isdir(optimizer):
        return "constant"
    import lopt

    learned, _, _ = lopt.load_optimizer(optimizer)
    return schedule_of(learned)


def schedule_of(optimizer: Any) -> str:
    """A learned rule's own schedule name (its ``schedule`` field), else ``"constant"``."""
    schedule = getattr(optimizer, "schedule", "constant")
    return schedule if schedule in schedules.SCHEDULES else "constant"
