"""The jitted trainer: every grid row and seed of one contender group on one task, one scan.

Tasks (``eval_tasks``) reach the compiled function as a static builder and traced arguments. One
compile per (group family, task shapes, segment length), reused across calls and horizons; the same
seeds give every contender the same initialisations and minibatches, so comparisons are paired.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from meta_train.evaluation import inner_training
from meta_train.evaluation.contenders import Group
from meta_train.evaluation.eval_tasks import EvalTask
from meta_train.evaluation.families import Family
from tasks.base import Task

EVAL_SPLITS = ("train", "inner_valid", "test")


class _Segment(NamedTuple):
    """One segment of every run; leading axes ``[grid rows, seeds]``."""

    carry: Any  # (params, optimizer state) to continue from
    losses: jax.Array  # [G, S, length] minibatch training loss before each update
    valid_losses: jax.Array  # [G, S, V] minibatch inner-valid loss at ``valid_curve_steps``
    params: Any  # the params to evaluate (schedule-free: its average), leaves [G, S, ...]


VALID_CURVE_POINTS = 20


def valid_curve_steps(num_steps: int, segment: int | None = None) -> np.ndarray:
    """``[V]``: after how many updates the inner-valid curve is measured: about 20 points per
    ``segment`` (default: the whole run) of ``num_steps``."""
    segment = segment or num_steps
    every = max(1, segment // VALID_CURVE_POINTS)
    within = every * np.arange(1, segment // every + 1)
    return np.concatenate([start + within for start in range(0, num_steps, segment)])


def segment_length(num_steps: int, base: int) -> int:
    """``base`` (a task's own horizon) where it divides ``num_steps``, so that every horizon that
    is a whole multiple of it reuses one compiled segment; else the whole run."""
    return base if num_steps % base == 0 else num_steps


Options = tuple[tuple[str, Any], ...]  # XLA compiler options, hashable


@functools.cache
def _jit(function: Callable, options: Options, *static_argnames: str) -> Callable:
    """``jax.jit(function)`` with XLA ``options``; one per (function, options), so caches hold."""
    return jax.jit(
        function, static_argnames=static_argnames, compiler_options=dict(options) or None
    )


def _grid(run: Callable, thetas: Any) -> Callable:
    """``run(row, theta, key, *per_run)`` vmapped over seeds, then over rows (and thetas)."""
    theta_axis = None if thetas is None else 0
    per_seed = jax.vmap(run, in_axes=(None, None, 0, 0))
    return jax.vmap(per_seed, in_axes=(0, theta_axis, None, 0))


def _init_grid(
    task_args: Any,
    thetas: Any,
    rows: jax.Array,
    keys: jax.Array,
    total: jax.Array,
    *,
    family: Family,
    build_task: Callable[[Any], Task],
) -> Any:
    """``(params, state)`` of every row and seed at initialisation, for a run of ``total``."""
    task = build_task(task_args)

    def run(row: jax.Array, theta: Any, key: jax.Array, _: Any) -> Any:
        tx, _ = family.build(row, theta, total)
        params = task.init(inner_training.split_seed(key)[0])
        return params, tx.init(params)

    return _grid(run, thetas)(rows, thetas, keys, jnp.zeros((rows.shape[0], keys.shape[0])))


def _train_segment(
    task_args: Any,
    thetas: Any,
    rows: jax.Array,
    keys: jax.Array,
    carry: Any,
    segment: jax.Array,
    total: jax.Array,
    *,
    family: Family,
    build_task: Callable[[Any], Task],
    length: int,
) -> _Segment:
    """Segment ``segment`` (``length`` steps) of a ``total``-step run, for every grid row
    ``rows[g]`` (with ``thetas[g]``, a learned rule's) and seed ``keys[s]``."""
    task = build_task(task_args)

    def run(row: jax.Array, theta: Any, key: jax.Array, carry: Any) -> _Segment:
        tx, eval_params = family.build(row, theta, total)
        data_key = jax.random.fold_in(inner_training.split_seed(key)[1], segment)

        # Chunks of training steps, each followed by one inner-valid minibatch: the curve costs
        # V forward passes, where a per-step lax.cond would run both branches under vmap.
        num_evals = len(valid_curve_steps(length))
        every = length // num_evals
        step_keys = jax.random.split(data_key, length)
        valid_keys = jax.random.split(jax.random.fold_in(data_key, 1), num_evals)

        def chunk(carry, keys):
            chunk_keys, valid_key = keys
            params, state, losses = inner_training.train(task, tx.update, *carry, chunk_keys)
            valid = task.eval_loss(eval_params(state, params), valid_key, "inner_valid")
            return (params, state), (losses, valid)

        head = num_evals * every
        chunks = (step_keys[:head].reshape(num_evals, every), valid_keys)
        carry, (losses, valid_losses) = jax.lax.scan(chunk, carry, chunks)
        params, state = carry
        losses = losses.reshape(head)
        if head < length:
            params, state, tail = inner_training.train(
                task, tx.update, params, state, step_keys[head:]
            )
            losses = jnp.concatenate([losses, tail])
        return _Segment((params, state), losses, valid_losses, eval_params(state, params))

    return _grid(run, thetas)(rows, thetas, keys, carry)


# Evaluation runs once per run, unbatched, in its own jitted function: compiled once per task and
# shared by every optimizer and horizon. (Vmapping it over runs made XLA's CPU compile several
# times slower than the evaluation itself.)


def initial_params(task_args: Any, key: jax.Array, *, build_task: Callable[[Any], Task]) -> Any:
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


def initial_train_loss(task: EvalTask, keys: jax.Array, options: Options) -> np.ndarray:
    """``[S]`` whole-train-split loss at each seed's initialisation."""
    init = _jit(initial_params, options, "build_task")
    metrics = _jit(_metrics, options, "build_task")
    losses = []
    for key in keys:
        params = init(task.args, key, build_task=task.build)
        losses.append(metrics(task.args, params, build_task=task.build)["train_loss"])
    return np.asarray(jax.device_get(losses), np.float64)


def _final_metrics(
    task: EvalTask, params: Any, shape: tuple[int, int], options: Options
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


class Outputs(NamedTuple):
    """Numpy results of one group on one task: leading axes ``[grid rows, seeds]``."""

    losses: np.ndarray
    valid_losses: np.ndarray
    metrics: dict[str, np.ndarray]
    compile_seconds: float  # wall
    run_seconds: float  # wall: the segments and the final evaluation
    compile_cpu_seconds: float  # CPU of this process (every thread) while compiling
    run_cpu_seconds: float


_COMPILED: dict[Any, Any] = {}


def _signature(tree: Any) -> Any:
    return jax.tree.structure(tree), tuple((x.shape, x.dtype) for x in jax.tree.leaves(tree))


def _compiled(function: Callable, args: tuple, options: Options, **static: Any) -> Any:
    """``function`` lowered and compiled for ``args``, kept for the process: one compile per
    (function, static arguments, argument shapes, options)."""
    key = (function, options, tuple(sorted(static.items())), _signature(args))
    if key not in _COMPILED:
        jitted = _jit(function, options, *static)
        _COMPILED[key] = jitted.lower(*args, **static).compile()
    return _COMPILED[key]


def run_group(
    group: Group,
    task: EvalTask,
    num_steps: int,
    keys: jax.Array,
    options: Options,
    segment: int | None = None,
) -> Outputs:
    """Train every row of ``group`` on ``task`` for ``num_steps`` for each seed, in segments of
    ``segment`` steps (default: one) that share one compiled function across horizons.
    The compile seconds are 0 where both compiled functions were already cached."""
    segment = segment or num_steps
    if num_steps % segment:
        raise ValueError(f"segment {segment} does not divide num_steps {num_steps}")
    rows, thetas = jnp.asarray(group.rows()), group.thetas()
    total = jnp.asarray(num_steps, jnp.int32)
    static = {"family": group.family, "build_task": task.build}
    start, cpu_start = time.perf_counter(), time.process_time()
    init = _compiled(_init_grid, (task.args, thetas, rows, keys, total), options, **static)
    carry = init(task.args, thetas, rows, keys, total)
    args = (task.args, thetas, rows, keys, carry, jnp.int32(0), total)
    train = _compiled(_train_segment, args, options, length=segment, **static)
    compiled_at, cpu_compiled_at = time.perf_counter(), time.process_time()
    losses, valid_losses = [], []
    for index in range(num_steps // segment):
        output = train(task.args, thetas, rows, keys, carry, jnp.int32(index), total)
        carry = output.carry
        losses.append(output.losses)
        valid_losses.append(output.valid_losses)
    losses, valid_losses = (
        np.concatenate(jax.device_get(x), axis=-1).astype(np.float64)
        for x in (losses, valid_losses)
    )
    metrics = _final_metrics(task, output.params, losses.shape[:2], options)
    seconds = (compiled_at - start, time.perf_counter() - compiled_at)
    cpu_seconds = (cpu_compiled_at - cpu_start, time.process_time() - cpu_compiled_at)
    return Outputs(losses, valid_losses, metrics, *seconds, *cpu_seconds)
