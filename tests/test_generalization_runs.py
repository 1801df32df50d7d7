"""The generalization benchmark's units of work: one per task, every part of a task together, and
merged per part in the suite's order whatever order the workers finish in."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import generalization_runs as runs
from meta_train.evaluation.results import Report, RunResult, Selection, TaskResult

PARTS = {
    "suite": runs.Part(("a", "b", "c"), (1.0, 2.0), ("adamw", "sgdm")),
    "long": runs.Part(("b",), (10.0,), ("adamw", "sgdm")),
    "wide": runs.Part(("w",), (1.0,), ("adamw",)),
}


def test_units_keep_every_part_of_a_task_together():
    units = {unit.task: unit.parts for unit in runs.units(PARTS)}
    assert list(units) == ["a", "b", "c", "w"]
    assert [name for name, _, _ in units["b"]] == ["suite", "long"]
    assert units["w"] == (("wide", (1.0,), ("adamw",)),)


def _run(seconds: float) -> RunResult:
    selection = Selection(None, np.zeros((1, 2)), {}, np.zeros(1, bool))
    return RunResult(
        "x",
        "x",
        np.ones(1),
        dict.fromkeys(("train", "valid"), selection),
        compile_seconds=seconds,
        run_seconds=1.0,
        compile_cpu_seconds=seconds,
        run_cpu_seconds=2.0,
    )


def _result(task: str, worker: int = 7) -> runs.UnitResult:
    reports = {}
    for name, horizons, _ in next(u for u in runs.units(PARTS) if u.task == task).parts:
        results = tuple(TaskResult(task, 10, h, {"x": _run(h), "y": _run(h)}, 1) for h in horizons)
        reports[name] = Report("x", "x", {"part": name}, results, "y")
    return runs.UnitResult(task, reports, 3.0, 4.0, worker)


def test_merge_orders_tasks_by_part_not_by_completion():
    done = [_result(task) for task in ("w", "c", "b", "a")]
    merged = runs.merge(PARTS, done)
    assert [(t.task, t.horizon) for t in merged["suite"].tasks] == [
        ("a", 1.0),
        ("a", 2.0),
        ("b", 1.0),
        ("b", 2.0),
        ("c", 1.0),
        ("c", 2.0),
    ]
    assert [t.task for t in merged["long"].tasks] == ["b"]
    assert merged["wide"].settings == {"part": "wide"}


def test_timing_counts_each_trainer_once_per_task_and_horizon():
    (row,) = runs.timing([_result("b")])
    # Two contenders share each trainer: suite 1x and 2x, long 10x.
    assert row["compile_seconds"] == row["compile_cpu_seconds"] == 1.0 + 2.0 + 10.0
    assert row["run_seconds"] == 3.0 and row["run_cpu_seconds"] == 6.0
    assert (row["wall_seconds"], row["cpu_seconds"], row["worker"]) == (3.0, 4.0, 7)


def test_busiest_worker_sums_the_cpu_of_its_units():
    done = [_result("a", 1), _result("b", 2), _result("c", 1)]
    assert runs.busiest_worker_cpu_seconds(done) == 8.0


def test_compile_cache_reaches_this_process_and_the_workers(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    try:
        runs.use_compile_cache(str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
        # Spawned workers start from the environment.
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_workers_end_when_the_benchmark_process_is_killed(tmp_path):
    """SIGKILL cannot be passed on to the workers: they notice their parent is gone and exit."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import concurrent.futures, multiprocessing, os, sys, time\n"
        "from benchmarks import generalization_runs\n"
        "if __name__ == '__main__':\n"
        "    pool = concurrent.futures.ProcessPoolExecutor(\n"
        "        1, mp_context=multiprocessing.get_context('spawn'),\n"
        "        initializer=generalization_runs.exit_with_parent,\n"
        "        initargs=(os.getpid(), 0.1))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived its killed parent"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by init soon, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
