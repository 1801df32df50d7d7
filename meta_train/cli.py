"""The ``lopt`` command: one entry point, one subcommand per job.

Subcommands import their modules lazily so that ``lopt tasks list`` does not pay for the
meta-trainer's imports.
"""

from __future__ import annotations

import argparse
import os
import sys


def _import_user_modules(argv: list[str]) -> list[str]:
    """``argv`` without its ``--import MODULE`` items, after importing each module in order.

    A user's module registers its own task families and suites (``tasks.register_family``,
    ``tasks.register_suite``); ``MODULE`` is a module name importable from the current directory
    or ``sys.path``, or a path to a ``.py`` file (``tasks.import_tasks``).
    """
    rest, references = [], []
    items = list(argv)
    while items:
        item = items.pop(0)
        if item == "--import":
            if not items:
                raise ValueError("--import needs a module name or a path to a .py file")
            references.append(items.pop(0))
        elif item.startswith("--import="):
            references.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    if references:
        from tasks import registry

        for reference in references:
            registry.import_tasks(reference)
    return rest


def _tasks(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lopt tasks",
        description="Task families and suites (with --import MODULE: also those it registers).",
    )
    parser.add_argument("action", choices=["list"])
    parser.parse_args(_import_user_modules(argv))
    from tasks import registry

    print(registry.format_listing())
    return 0


def _data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lopt data", description="Prepare the built-in datasets offline (TFDS array_record)."
    )
    parser.add_argument("action", choices=["prepare"])
    parser.add_argument("names", nargs="*", help="datasets to prepare (default: all built-in)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS_DATA_DIR)")
    args = parser.parse_args(argv)
    from tasks import datasets

    for name in args.names or datasets.BUILTIN_DATASETS:
        path = datasets.prepare(name, data_dir=args.data_dir)
        print(f"{name}: ready at {path}")
    return 0


def _one_device_per_core() -> None:
    """Split the host CPU into one XLA device per core, before jax starts.

    The particles are sharded over devices, and on a CPU one single-threaded device per core
    running a pair at a time is about twice as fast as one device threading each vectorised op
    (``benchmarks/meta_train_throughput.py``). Accelerator platforms are unaffected; a count
    already set in ``XLA_FLAGS`` wins.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        count = f"--xla_force_host_platform_device_count={cores or 1}"
        os.environ["XLA_FLAGS"] = f"{flags} {count}".strip()


def _meta_train(argv: list[str]) -> int:
    _one_device_per_core()
    # After the device split: a user's module may start jax.
    argv = _import_user_modules(argv)
    from meta_train import train

    return train.main(argv)


def _evaluate(argv: list[str]) -> int:
    argv = _import_user_modules(argv)
    from meta_train.evaluation import evaluate

    return evaluate.main(argv)


COMMANDS = {
    "meta-train": (_meta_train, "meta-train a learned optimizer"),
    "evaluate": (_evaluate, "evaluate an optimizer on a held-out suite"),
    "tasks": (_tasks, "list task families and held-out suites"),
    "data": (_data, "prepare datasets offline"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12}{help_}" for name, (_, help_) in COMMANDS.items()]
        print(
            "usage: lopt <command> [options]\n\ncommands:\n"
            + "\n".join(lines)
            + "\n\nmeta-train, evaluate and tasks also take --import MODULE (repeatable): a module "
            "name or a .py path\nthat registers your own task families and suites"
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _ = COMMANDS[argv[0]]
    try:
        return command(argv[1:])
    except (ValueError, FileNotFoundError, ImportError) as error:
        # Bad input (config values, paths, datasets, exports) is the user's to fix: say what is
        # wrong without a traceback, unless asked for one.
        if os.environ.get("LOPT_DEBUG"):
            raise
        print(f"lopt {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
