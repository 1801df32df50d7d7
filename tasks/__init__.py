"""Training problems for learned optimizers: tasks, task families, datasets and held-out suites."""

from tasks.base import (
    SAMPLED_SEED_END,
    SPLITS,
    DynamicConfig,
    Params,
    Task,
    TaskFamily,
    sample_seed,
)

__all__ = [
    "SAMPLED_SEED_END",
    "SPLITS",
    "DynamicConfig",
    "Params",
    "Task",
    "TaskFamily",
    "sample_seed",
]
