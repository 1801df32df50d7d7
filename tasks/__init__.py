"""Training problems for learned optimizers: tasks, task families, datasets and held-out suites."""

from tasks.base import SPLITS, DynamicConfig, Params, Task, TaskFamily

__all__ = ["SPLITS", "DynamicConfig", "Params", "Task", "TaskFamily"]
