"""The tasks an evaluation trains, as the jitted trainer takes them: a static builder (hashable)
and traced arguments (device data are not constants). A suite name, ``HeldOutTask`` tuples,
``Task`` objects or ``(name, Task)`` pairs all become ``EvalTask``s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from tasks.base import Task


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


class EvalTask(NamedTuple):
    name: str
    num_steps: int | None
    build: Callable[[Any], Task]
    args: Any


def _is_held_out_task(item: Any) -> bool:
    return isinstance(item, tuple) and all(
        hasattr(item, field) for field in ("name", "family", "config", "num_steps")
    )


def _as_eval_task(item: Any, index: int) -> EvalTask:
    if _is_held_out_task(item):
        return EvalTask(
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


def _as_named_task(name: str, task: Task) -> EvalTask:
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(task)):
        return EvalTask(name, None, _ClosedTask(task), None)
    return EvalTask(name, None, _task_itself, task)


def resolve_tasks(tasks: Any) -> list[EvalTask]:
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
