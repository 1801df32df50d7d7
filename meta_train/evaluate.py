"""Held-out evaluation: train unseen tasks with an optimizer and with tuned Adam and SGD-M.

For every task and horizon, each optimizer trains ``seeds`` runs; the tuned baselines also sweep a
log-spaced learning-rate grid. All grid points and seeds of one optimizer on one task run in a
single jitted ``lax.scan`` (vmapped over ``[grid, seeds]``); the same seeds give every optimizer the
same initialisations and minibatches, so comparisons are paired. A baseline's learning rate is the
grid point with the lowest mean final *inner-valid* loss (the test split is never used to choose).

A run has diverged when a training loss is non-finite or its final training loss exceeds
``divergence_factor`` times its initial one; diverged runs stay in every mean and count.

The speed-up over tuned Adam follows the VeLO / learned_optimization reports: the number of steps
tuned Adam needs to reach its own final training loss divided by the number of steps the optimizer
needs to reach that loss, both on seed-mean training-loss curves smoothed by a trailing moving
average (``None`` when the optimizer never gets there).

Python: ``evaluate(optimizer, tasks, ...) -> Report`` (``meta_train.report``). CLI:
``lopt evaluate --optimizer <export dir | adam | sgdm | untrained:<arch>> --suite <name>``.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import functools
import operator
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.base import LearnedOptimizer
from meta_train.report import GridPoint, Report, RunResult, TaskResult, smooth
from tasks.base import Task

ADAM_GRID = tuple(float(lr) for lr in np.logspace(-4, -1, 7))
SGDM_GRID = tuple(float(lr) for lr in np.logspace(-3, 0, 7))
SGDM_MOMENTUM = 0.9
EVAL_SPLITS = ("train", "inner_valid", "test")
DEFAULT_DIVERGENCE_FACTOR = 2.0
BASELINES = ("adam", "sgdm")
# XLA:CPU spends most of a short evaluation compiling the vmapped training scan; backend
# optimisation level 0 compiles it about 4x faster and runs its steps several times slower.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


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

    def _one(self, kind: str, learning_rate: jax.Array) -> optax.GradientTransformation:
        if kind == "adam":
            return optax.adam(learning_rate)
        return optax.sgd(learning_rate, momentum=self.momentum)

    def transform(self, hyperparameters, theta, num_steps):
        member, learning_rate = hyperparameters[0].astype(jnp.int32), hyperparameters[1]
        transforms = [self._one(kind, learning_rate) for kind in self.kinds]

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
    optimizer: LearnedOptimizer

    def transform(self, hyperparameters, theta, num_steps):
        import lopt

        return lopt.to_optax(self.optimizer, theta, num_steps)


class _Member(NamedTuple):
    """One reported optimizer; ``grid`` is its learning-rate grid (``None``: one untuned run)."""

    label: str
    description: str
    grid: tuple[float, ...] | None = None


class _Contender(NamedTuple):
    """One compiled trainer: a candidate, the optimizers it reports and their grid rows."""

    candidate: _Candidate
    members: tuple[_Member, ...]
    theta: Any = None

    def rows(self) -> np.ndarray:
        """``[grid rows, 2]``: member index and learning rate (0 for untuned members)."""
        return np.array(
            [(m, lr) for m, member in enumerate(self.members) for lr in (member.grid or (0.0,))],
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
    params: Any  # final params, leaves [G, S, ...]


def _split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init key, data key)`` of a seed; shared by training and the initial-loss evaluation."""
    init_key, data_key = jax.random.split(key)
    return init_key, data_key


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
        init_key, data_key = _split_key(key)
        params = task.init(init_key)

        def step(carry, step_key):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, step_key)
            updates, state = tx.update(grads, state, params, value=loss)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(
            step, (params, tx.init(params)), jax.random.split(data_key, num_steps)
        )
        return _GridOutput(losses, params)

    return jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))(rows, keys)


# Evaluation runs once per run, unbatched, in its own jitted function: compiled once per task and
# shared by every optimizer and horizon. (Vmapping it over runs made XLA's CPU compile several
# times slower than the evaluation itself.)


def _initial_params(task_args: Any, key: jax.Array, *, build_task: Callable[[Any], Task]) -> Any:
    return build_task(task_args).init(_split_key(key)[0])


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
    losses = np.asarray(jax.device_get(output.losses), np.float64)
    return _Outputs(losses, metrics, compiled_at - start, time.perf_counter() - compiled_at)


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


def select_grid_point(valid_loss: np.ndarray, diverged: np.ndarray) -> int:
    """Index of the best grid point from ``[grid, seeds]`` final validation losses.

    Fewest diverged seeds first, then the lowest mean validation loss (a point with a diverged
    seed has mean ``inf``). Ties go to the earlier (smaller) grid point.
    """
    num_diverged = diverged.sum(axis=1)
    finite = np.where(np.isfinite(valid_loss) & ~diverged, valid_loss, np.inf)
    return int(np.lexsort((finite.mean(axis=1), num_diverged))[0])


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
    """Steps until ``curve`` (one loss per step) first is ``<= target``: index + 1, or ``None``."""
    reached = np.flatnonzero(np.asarray(curve) <= target)
    return int(reached[0]) + 1 if reached.size else None


def smoothing_window(num_steps: int) -> int:
    """Moving-average window for training-loss curves: 5% of the run, at least one step."""
    return max(1, num_steps // 20)


def _member_results(
    contender: _Contender, outputs: _Outputs, initial_loss: np.ndarray, divergence_factor: float
) -> list[RunResult]:
    """One ``RunResult`` per member: its grid rows summarised, its selected row's per-seed data."""
    diverged = diverged_runs(
        outputs.losses, initial_loss[None], outputs.metrics["train_loss"], divergence_factor
    )
    member_of_row = contender.rows()[:, 0].astype(int)
    results = []
    for index, member in enumerate(contender.members):
        rows = np.flatnonzero(member_of_row == index)
        valid = outputs.metrics["inner_valid_loss"][rows]
        best = rows[select_grid_point(valid, diverged[rows])]
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
                curves=outputs.losses[best],
                initial_loss=initial_loss,
                metrics={key: values[best] for key, values in outputs.metrics.items()},
                diverged=diverged[best],
                learning_rate=member.grid[best - rows[0]] if member.grid else None,
                grid=grid,
                compile_seconds=outputs.compile_seconds,
                run_seconds=outputs.run_seconds,
            )
        )
    return results


def _add_speedups(task: TaskResult) -> None:
    """Fill ``target_loss`` / ``target_steps`` and every run's speed-up from tuned Adam's curve."""
    adam = task.runs.get("adam")
    if adam is None:
        return
    window = task.smoothing_window
    adam_curve = smooth(adam.curves.mean(axis=0), window)
    target = float(adam_curve[-1])
    if not np.isfinite(target):
        return
    task.target_loss = target
    task.target_steps = steps_to_reach(adam_curve, target)
    for run in task.runs.values():
        run.steps_to_target = steps_to_reach(smooth(run.curves.mean(axis=0), window), target)
        if run.steps_to_target is not None:
            run.speedup = task.target_steps / run.steps_to_target


# --- The optimizer under evaluation.


def _baselines(
    kinds: Sequence[str], grids: Mapping[str, Sequence[float]], momentum: float
) -> _Contender:
    descriptions = {"adam": "Adam (tuned)", "sgdm": f"SGD-M {momentum:g} (tuned)"}
    members = tuple(_Member(kind, descriptions[kind], tuple(grids[kind])) for kind in kinds)
    return _Contender(_Baselines(tuple(kinds), momentum), members)


def _learned(label: str, optimizer: LearnedOptimizer, theta: Any, description: str) -> _Contender:
    return _Contender(_Learned(optimizer), (_Member(label, description),), theta)


def _untrained(optimizer: LearnedOptimizer, seed: int) -> _Contender:
    theta = optimizer.init_meta_params(jax.random.key(seed))
    return _learned("untrained", optimizer, theta, f"untrained {optimizer.architecture}")


def _architecture(optimizer: LearnedOptimizer) -> dict[str, Any]:
    return {"architecture": {"name": optimizer.architecture, **optimizer.hyperparameters()}}


def _resolve_subject(
    optimizer: Any, theta: Any, name: str | None, seed: int
) -> tuple[_Contender | str, LearnedOptimizer | None, dict[str, Any]]:
    """The evaluated optimizer (a contender or a baseline's name), the learned optimizer to take
    the untrained floor from (if any), and facts about its origin for the report."""
    if isinstance(optimizer, str):
        if optimizer in BASELINES:
            return optimizer, None, {}
        if optimizer.startswith("untrained:"):
            import lopt

            learned = lopt.get_optimizer(optimizer.removeprefix("untrained:"))
            return _untrained(learned, seed), None, _architecture(learned)
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
        return _learned(label, learned, theta, f"{label} {learned.architecture}"), learned, origin
    if isinstance(optimizer, LearnedOptimizer):
        if theta is None:
            raise ValueError(
                f"evaluating a {type(optimizer).__name__} needs its meta-parameters: pass "
                "theta=..., or optimizer='untrained:<architecture>' for the untrained floor"
            )
        label = name or "learned"
        contender = _learned(label, optimizer, theta, f"{label} {optimizer.architecture}")
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
    horizon at init. Baselines are re-tuned at every horizon. ``untrained_floor`` adds the learned
    architecture with fresh meta-parameters (seed ``seeds[0]``). ``compiler_options`` go to XLA
    for every compile (``FAST_COMPILE`` trades slower steps for faster compiles: for short runs).
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
    _check_grid("adam_grid", adam_grid)
    _check_grid("sgdm_grid", sgdm_grid)

    subject, learned, origin = _resolve_subject(optimizer, theta, name, seed_list[0])
    subject_label = subject if isinstance(subject, str) else subject.members[0].label
    kinds = [kind for kind in BASELINES if kind in baselines or kind == subject]
    contenders = [] if isinstance(subject, str) else [subject]
    if kinds:
        contenders.append(_baselines(kinds, {"adam": adam_grid, "sgdm": sgdm_grid}, sgdm_momentum))
    if untrained_floor and learned is not None:
        contenders.append(_untrained(learned, seed_list[0]))
    labels = [member.label for contender in contenders for member in contender.members]
    if len(set(labels)) != len(labels):
        raise ValueError(f"name {name!r} clashes with a baseline's label; choose another name")
    order = [subject_label, *(label for label in labels if label != subject_label)]
    options = tuple(sorted((compiler_options or {}).items()))

    results = []
    jobs = [(task, horizon) for task in eval_tasks for horizon in horizons]
    bar = _progress_bar(len(jobs), progress)
    for task, horizon in jobs:
        steps = max(1, round(horizon * (num_steps or task.num_steps)))
        bar.set_description(f"{task.name} ({steps} steps)")
        initial_loss = _initial_train_loss(task, keys, options)
        runs = {}
        for contender in contenders:
            outputs = _run_contender(contender, task, steps, keys, options)
            for run in _member_results(contender, outputs, initial_loss, divergence_factor):
                runs[run.label] = run
        runs = {label: runs[label] for label in order}
        result = TaskResult(task.name, steps, float(horizon), runs, smoothing_window(steps))
        _add_speedups(result)
        results.append(result)
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
        "selection": "lowest mean final inner_valid loss over seeds, fewest diverged seeds first",
        "divergence": f"non-finite loss, or final train loss > {divergence_factor:g} x initial",
        "speedup": "tuned Adam's steps to its final smoothed train loss / the optimizer's steps",
        "compiler_options": dict(compiler_options or {}),
        **origin,
        **(settings or {}),
    }
    description = subject_label if isinstance(subject, str) else subject.members[0].description
    return Report(subject_label, description, recorded, results)


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="task", file=sys.stderr)


# --- CLI.


def _positive_floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from error
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lopt evaluate",
        description="Train a held-out suite with an optimizer and with tuned Adam and SGD-M; "
        "write a table, report.md, report.json and loss-curve PNGs.",
    )
    parser.add_argument(
        "--optimizer",
        required=True,
        help="an export directory, 'adam', 'sgdm', or 'untrained:<architecture>'",
    )
    parser.add_argument("--suite", default="default", help="held-out suite (lopt tasks list)")
    parser.add_argument("--steps", type=int, default=None, help="override every task's horizon")
    parser.add_argument("--seeds", type=int, default=5, help="runs per task and optimizer")
    parser.add_argument(
        "--horizons",
        type=_positive_floats,
        default=[1.0, 2.0, 5.0],
        help="multiples of each task's horizon to evaluate at (default: 1,2,5)",
    )
    parser.add_argument(
        "--grid-points", type=int, default=7, help="log-spaced learning rates per baseline"
    )
    parser.add_argument(
        "--divergence-factor",
        type=float,
        default=DEFAULT_DIVERGENCE_FACTOR,
        help="a run whose final training loss exceeds this multiple of its initial one diverged",
    )
    parser.add_argument(
        "--untrained-floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate the untrained learned optimizer (for export directories)",
    )
    parser.add_argument(
        "--fast-compile",
        action="store_true",
        help="compile faster, run slower (XLA backend optimisation level 0): for short runs",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG curves")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default: eval_<suite> beside the export, e.g. "
        "runs/default/eval_default, or runs/eval_<suite>)",
    )
    return parser


def main(argv: list[str]) -> int:
    """``lopt evaluate``: print the table and summary line, write the report files."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.grid_points < 1:
        parser.error(f"--grid-points must be at least 1, got {args.grid_points}")
    if not args.divergence_factor > 1:
        parser.error(f"--divergence-factor must exceed 1, got {args.divergence_factor}")
    is_export = os.path.isdir(args.optimizer)
    if not (is_export or args.optimizer in BASELINES or args.optimizer.startswith("untrained:")):
        parser.error(
            f"--optimizer {args.optimizer!r} is not 'adam', 'sgdm', 'untrained:<architecture>' "
            "or an existing export directory"
        )
    from tasks import registry

    if args.suite not in registry.suite_names():
        parser.error(
            f"--suite {args.suite!r} is unknown; known suites: {', '.join(registry.suite_names())}"
        )
    # Beside the export, not in it: re-saving an export replaces its whole directory.
    beside = os.path.dirname(os.path.abspath(args.optimizer)) if is_export else "runs"
    out = args.out or os.path.join(beside, f"eval_{args.suite}")
    report = evaluate(
        args.optimizer,
        registry.get_suite(args.suite),
        num_steps=args.steps,
        horizons=args.horizons,
        seeds=args.seeds,
        adam_grid=tuple(float(lr) for lr in np.logspace(-4, -1, args.grid_points)),
        sgdm_grid=tuple(float(lr) for lr in np.logspace(-3, 0, args.grid_points)),
        untrained_floor=args.untrained_floor,
        divergence_factor=args.divergence_factor,
        progress=not args.no_progress,
        compiler_options=FAST_COMPILE if args.fast_compile else None,
        settings={"suite": args.suite, "command": "lopt evaluate " + shlex.join(argv)},
    )
    paths = report.save(out, plots=not args.no_plots)
    print(report.format_console())
    print(f"wrote {paths['markdown']}, {paths['json']} and {len(report.plots)} plots to {out}")
    return 0
