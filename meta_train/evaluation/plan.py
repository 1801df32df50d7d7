"""The plan of an evaluation and a rough ETA, printed before anything compiles."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import jax

from meta_train.es.compile_options import FAST_COMPILE
from meta_train.evaluation.contenders import Group
from meta_train.evaluation.eval_tasks import EvalTask
from meta_train.evaluation.trainer import Options, initial_params

# CPU seconds of one core, fit to the trainers' compile and run CPU seconds of the generalization
# benchmark (``per_task_seconds`` in benchmarks/results/generalization/generalization.json): a
# compile grows with the number of parameter tensors (every contender's update is traced per
# tensor), a step with the parameters.
COMPILE_SECONDS = {False: 1.5, True: 0.6}  # per compiled function, by FAST_COMPILE
COMPILE_SECONDS_PER_TENSOR = {False: 0.25, True: 0.1}  # per compiled function and tensor
SECONDS_PER_PARAMETER_STEP = 2.7e-8  # per run (grid point x seed), per parameter and step
SECONDS_PER_STEP = 2.0e-5  # per run and step, whatever the size (the loop's own overhead)


class Job(NamedTuple):
    """One task at one horizon, trained in segments of ``segment`` steps."""

    task: EvalTask
    horizon: float
    num_steps: int
    segment: int


class Plan(NamedTuple):
    """What an evaluation will train, and a rough ETA (one core's CPU seconds) from the compile
    and step costs."""

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
            f"{self.num_compiles} compiles; rough ETA {_duration(self.eta_seconds)} (one CPU "
            "core's costs; the progress bar refines it)"
        )
        load, cores = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0, os.cpu_count()
        if cores and load > cores:
            text += f"; the machine is busy (load {load:.1f} on {cores} cores): expect longer"
        return text


def plan(
    jobs: Sequence[Job],
    groups: Sequence[Group],
    num_seeds: int,
    options: Options = (),
) -> Plan:
    """The plan of the jobs: counts, compiles and a rough ETA.

    Compiles: per task and segment length, each group's
    initialisation and segment (shared by every horizon that is a multiple of the segment), and
    per task one initialisation and one evaluation function. Parameter counts come from
    ``jax.eval_shape`` (nothing is compiled).
    """
    rows = [len(group.rows()) for group in groups]
    sizes = {job.task.name: _sizes(job.task) for job in jobs}
    per_step = {
        name: SECONDS_PER_STEP + SECONDS_PER_PARAMETER_STEP * params
        for name, (params, _) in sizes.items()
    }
    step_seconds = sum(
        sum(rows) * num_seeds * job.num_steps * per_step[job.task.name] for job in jobs
    )
    segments = {(job.task.name, job.segment) for job in jobs}
    compiles = {
        name: 2 * len(groups) * sum(task == name for task, _ in segments) + 2 for name in sizes
    }
    fast = FAST_COMPILE.items() <= dict(options).items()
    compile_seconds = sum(
        n * (COMPILE_SECONDS[fast] + COMPILE_SECONDS_PER_TENSOR[fast] * sizes[name][1])
        for name, n in compiles.items()
    )
    return Plan(
        num_tasks=len(sizes),
        horizons=tuple(dict.fromkeys(job.horizon for job in jobs)),
        trainers=tuple(
            ("+".join(m.label for m in g.members), n) for g, n in zip(groups, rows, strict=True)
        ),
        num_seeds=num_seeds,
        num_runs=len(jobs) * sum(rows) * num_seeds,
        num_compiles=sum(compiles.values()),
        eta_seconds=compile_seconds + step_seconds,
    )


def _sizes(task: EvalTask) -> tuple[int, int]:
    """The task's number of parameters and of parameter tensors."""
    shapes = jax.eval_shape(
        functools.partial(initial_params, build_task=task.build), task.args, jax.random.key(0)
    )
    leaves = jax.tree.leaves(shapes)
    return sum(math.prod(leaf.shape) for leaf in leaves), len(leaves)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="task", file=sys.stderr)
