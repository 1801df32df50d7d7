"""The generalization benchmark's runs, spread over worker processes, one task per unit.

A unit is every part (suite horizons, the long horizon, the wide task) of one task, so that its
horizons share one compiled segment inside one process. Units go to ``jobs`` spawned processes
(XLA compiles and small-model steps use about one core each), largest first by the plan's ETA,
and each comes back with its own wall and CPU seconds; the reports are merged per part in the
suite's task order, so the result does not depend on ``jobs``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from meta_train.evaluation import contenders as named
from meta_train.evaluation import eval_tasks, evaluate, trainer
from meta_train.evaluation import plan as planning
from meta_train.evaluation.results import Report
from tasks import registry


class Part(NamedTuple):
    """One part of the benchmark: its tasks, horizon multipliers and tuned baselines."""

    tasks: tuple[str, ...]
    horizons: tuple[float, ...]
    baselines: tuple[str, ...]


class Unit(NamedTuple):
    """Every part one task runs in: ``(part name, horizons, baselines)``."""

    task: str
    parts: tuple[tuple[str, tuple[float, ...], tuple[str, ...]], ...]


class UnitResult(NamedTuple):
    task: str
    reports: dict[str, Report]
    wall_seconds: float
    cpu_seconds: float  # of the process that ran it, every thread
    worker: int  # the id of that process
    eta_seconds: float = float("nan")  # the plan's, for one core


def units(parts: dict[str, Part]) -> list[Unit]:
    """One unit per task, its parts in the order of ``parts``."""
    by_task: dict[str, list] = {}
    for name, part in parts.items():
        for task in part.tasks:
            by_task.setdefault(task, []).append((name, part.horizons, part.baselines))
    return [Unit(task, tuple(task_parts)) for task, task_parts in by_task.items()]


def estimated_seconds(
    unit: Unit, groups: Sequence[named.Group], suite: str, config: evaluate.EvalConfig
) -> float:
    """The plan's rough ETA of ``unit``, trained by ``groups``."""
    (task,) = eval_tasks.resolve_tasks(_suite_tasks(suite, [unit.task]))
    jobs = []
    for _, horizons, _ in unit.parts:
        for horizon in horizons:
            steps = max(1, round(horizon * task.num_steps))
            segment = trainer.segment_length(steps, task.num_steps)
            jobs.append(planning.Job(task, horizon, steps, segment))
    options = tuple(sorted((config.compiler_options or {}).items()))
    return planning.plan(jobs, groups, config.seeds, options).eta_seconds


def run_unit(unit: Unit, subject: str, suite: str, config: evaluate.EvalConfig) -> UnitResult:
    """Every part of ``unit`` in this process (a worker's entry point)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    tasks = _suite_tasks(suite, [unit.task])
    reports = {
        part: evaluate.evaluate(
            subject,
            tasks,
            config,
            horizons=horizons,
            baselines=baselines,
            progress=False,
            settings={"part": part},
        )
        for part, horizons, baselines in unit.parts
    }
    seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return UnitResult(unit.task, reports, *seconds, os.getpid())


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """Worker initializer: end this worker once process ``parent`` is gone. A parent killed by a
    signal it cannot pass on (SIGTERM, SIGKILL) would otherwise leave its workers running their
    units to the end, holding the cores."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run(
    parts: dict[str, Part],
    subject: str,
    suite: str,
    config: evaluate.EvalConfig,
    jobs: int,
) -> tuple[dict[str, Report], list[UnitResult]]:
    """Every part's report (tasks in the order of ``parts``) and each unit's result, run in
    ``jobs`` worker processes (1: in this process)."""
    order = units(parts)
    groups = named.group(evaluate.contenders_of(subject, None, None, 0, config)[1])
    eta = {u.task: estimated_seconds(u, groups, suite, config) for u in order}
    todo = sorted(order, key=lambda u: -eta[u.task]) if jobs > 1 else list(order)
    done = []
    if jobs <= 1:
        for unit in todo:
            done.append(run_unit(unit, subject, suite, config))
            _say(done[-1], len(done), len(todo))
    else:
        context = multiprocessing.get_context("spawn")  # JAX's runtime does not survive a fork
        with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(run_unit, u, subject, suite, config) for u in todo]
            try:
                for future in concurrent.futures.as_completed(futures):
                    done.append(future.result())
                    _say(done[-1], len(done), len(todo))
            except BaseException:  # a failed unit (or ^C) fails the run now, not after the rest
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    done = [r._replace(eta_seconds=eta[r.task]) for r in done]
    done.sort(key=lambda result: [u.task for u in order].index(result.task))
    return merge(parts, done), done


def merge(parts: dict[str, Part], done: Sequence[UnitResult]) -> dict[str, Report]:
    """Per part, one report of its tasks in the part's order."""
    by_task = {result.task: result.reports for result in done}
    merged = {}
    for name, part in parts.items():
        pieces = [by_task[task][name] for task in part.tasks]
        first = pieces[0]
        tasks = tuple(t for piece in pieces for t in piece.tasks)
        merged[name] = Report(
            first.subject, first.description, first.settings, tasks, first.reference
        )
    return merged


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


SECONDS = ("compile_seconds", "run_seconds", "compile_cpu_seconds", "run_cpu_seconds")


def trainer_seconds(reports: dict[str, Report]) -> dict[str, float]:
    """``SECONDS`` of the compiled trainers (wall; CPU of their process), each trainer counted
    once per task and horizon (its contenders share the figures)."""
    seen = {
        (part, task.task, task.horizon, *(getattr(run, key) for key in SECONDS))
        for part, part_report in reports.items()
        for task in part_report.tasks
        for run in task.runs.values()
    }
    return {key: sum(s[3 + i] for s in seen) for i, key in enumerate(SECONDS)}


def timing(done: Sequence[UnitResult]) -> list[dict[str, Any]]:
    """Per task: its unit's wall and CPU seconds, the plan's ETA for it and its trainers' compile
    and run seconds."""
    return [
        {
            "task": result.task,
            "wall_seconds": result.wall_seconds,
            "cpu_seconds": result.cpu_seconds,
            "worker": result.worker,
            "plan_eta_seconds": result.eta_seconds,
            **trainer_seconds(result.reports),
        }
        for result in done
    ]


def use_compile_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory``, for this process and the workers it
    spawns (they read the environment)."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    jax.config.update("jax_compilation_cache_dir", directory)


def busiest_worker_cpu_seconds(done: Sequence[UnitResult]) -> float:
    """The most CPU seconds any one process spent on its units: about the wall time of the units
    on a quiet machine with a core per process (each process keeps to about one core)."""
    per_worker: dict[int, float] = {}
    for result in done:
        per_worker[result.worker] = per_worker.get(result.worker, 0.0) + result.cpu_seconds
    return max(per_worker.values(), default=0.0)


def _suite_tasks(suite: str, names: Sequence[str]) -> list:
    return [task for task in registry.get_suite(suite) if task.name in names]


def _say(result: UnitResult, count: int, total: int) -> None:
    print(
        f"[{count}/{total}] {result.task}: {result.wall_seconds:.0f} s wall, "
        f"{result.cpu_seconds:.0f} s CPU",
        file=sys.stderr,
    )
