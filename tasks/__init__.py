"""Training problems for learned optimizers: tasks, task families, datasets and held-out suites.

A user's own task: ``from_flax`` turns a flax model and arrays into a family;
``register_family`` / ``register_suite`` make it and its held-out tasks known by name (to the
config, ``lopt evaluate --suite`` and ``lopt tasks list``, with ``lopt ... --import my_tasks``);
``held_out_tasks`` gives held-out tasks of any family.
"""

from tasks.base import (
    SAMPLED_SEED_END,
    SPLITS,
    DynamicConfig,
    Params,
    Task,
    TaskFamily,
    sample_seed,
)
from tasks.custom import FlaxConfig, FlaxTaskFamily, from_flax
from tasks.registry import (
    HeldOutTask,
    SuiteEntry,
    UnknownNameError,
    UserModuleError,
    family_names,
    get_family,
    get_suite,
    held_out_tasks,
    import_tasks,
    register_family,
    register_suite,
    suite_entry,
    suite_names,
)

__all__ = [
    "SAMPLED_SEED_END",
    "SPLITS",
    "DynamicConfig",
    "FlaxConfig",
    "FlaxTaskFamily",
    "HeldOutTask",
    "Params",
    "SuiteEntry",
    "Task",
    "TaskFamily",
    "UnknownNameError",
    "UserModuleError",
    "family_names",
    "from_flax",
    "get_family",
    "get_suite",
    "held_out_tasks",
    "import_tasks",
    "register_family",
    "register_suite",
    "sample_seed",
    "suite_entry",
    "suite_names",
]
