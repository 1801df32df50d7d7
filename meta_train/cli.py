"""The ``lopt`` command: one entry point, one subcommand per job.

Subcommands import their modules lazily so that ``lopt tasks list`` does not pay for the
meta-trainer's imports.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage block stays on ``--help``)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (usage: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# The exit status of a run that stopped because a write failed (disk full, permissions).
WRITE_FAILED = 4

IMPORT_HINT = "is it yours? pass --import MODULE (the module or .py file that registers it)"


def _with_hint(error: BaseException) -> str:
    """``error``'s message, with ``IMPORT_HINT`` when an unknown family or suite name caused it
    (a user's own, whose module was not imported, is the likely cause)."""
    from tasks import registry

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, registry.UnknownNameError):
            return f"{error}; {IMPORT_HINT}"
        cause = cause.__cause__ or cause.__context__
    return str(error)


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


def _add_import_flag(parser: argparse.ArgumentParser) -> None:
    """List ``--import`` in ``--help``; ``_import_user_modules`` consumes it before parsing."""
    parser.add_argument(
        "--import",
        metavar="MODULE",
        dest="imported_modules",
        action="append",
        help="a module name or a path to a .py file that registers your own task families and "
        "suites (tasks.register_family, tasks.register_suite); repeatable",
    )


def _tasks(argv: list[str]) -> int:
    parser = _Parser(
        prog="lopt tasks",
        description="Task families and suites (with --import MODULE: also those it registers).",
    )
    parser.add_argument("action", choices=["list"])
    _add_import_flag(parser)
    parser.parse_args(_import_user_modules(argv))
    from tasks import registry

    print(registry.format_listing())
    return 0


def _data(argv: list[str]) -> int:
    parser = _Parser(
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
    running a pair at a time is faster than one device threading each vectorised op (the ratio:
    ``benchmarks/results/meta_train_throughput.json``). Accelerator platforms are unaffected; a
    count already set in ``XLA_FLAGS`` wins.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        count = f"--xla_force_host_platform_device_count={cores or 1}"
        os.environ["XLA_FLAGS"] = f"{flags} {count}".strip()


def _meta_train(argv: list[str]) -> int:
    _one_device_per_core()
    # After the device split: a user's module may start jax.
    return _run_meta_train(_import_user_modules(argv))


def _meta_train_parser() -> argparse.ArgumentParser:
    from meta_train import config_flags, layout

    parser = _Parser(
        prog="lopt meta-train",
        description="Meta-train a learned optimizer. Override any config key with "
        "--config.<key>=<value>, e.g. --config.num_outer_steps=50 --config.estimator.sigma=0.03.",
    )
    parser.add_argument(
        "--config",
        default="default",
        help=f"a shipped config ({', '.join(config_flags.config_names())}) or a path to a "
        "Python file with get_config() (default: default)",
    )
    parser.add_argument(
        "--workdir",
        default=os.path.join("runs", "default"),
        help="run directory (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a lopt workdir: first delete what lopt wrote there "
        f"({', '.join(layout.RUN_FILES)}, {layout.EXPORT_DIR}/, the step folders in "
        f"{layout.CHECKPOINT_DIR}/, the event files in {layout.TENSORBOARD_DIR}/, the report "
        f"files in {layout.COMPARISON_DIR}/) and print it; lopt evaluate's eval_*/"
        f"{layout.EXPORT_DIR}.eval_* folders are kept, moved to "
        f"{layout.PREVIOUS_EVALUATIONS_DIR}/<time>/; nothing else is deleted. "
        "Without it, a run with the same config resumes and one with another config is refused. "
        f"A folder lopt did not start (no {layout.MARKER_FILE}) is refused either way",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-process runs; settings below, else "
        "detected from the cluster's environment, e.g. SLURM or Cloud TPU)",
    )
    parser.add_argument("--coordinator-address", help="with --distributed: host:port of process 0")
    parser.add_argument("--num-processes", type=int, help="with --distributed")
    parser.add_argument("--process-id", type=int, help="with --distributed")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    _add_import_flag(parser)
    return parser


def _run_meta_train(argv: list[str]) -> int:
    """``lopt meta-train``: exit status 0 when done, 2 for a bad config or a refused workdir
    (before anything is written or compiled) or unusable checkpoints, 3 when the run stopped
    because it cannot produce a usable optimizer (non-finite theta, no usable update, every
    particle diverged), 4 (``WRITE_FAILED``) when a write failed mid-run (disk full, permissions;
    one line names the last saved checkpoint, from which a rerun resumes), 128 + signal number
    when stopped by SIGINT/SIGTERM (after saving)."""
    import jax

    from meta_train import checkpoint, config_flags, health, train
    from tasks.datasets import DatasetNotFoundError

    parser = _meta_train_parser()
    try:
        rest, overrides = config_flags.split_overrides(argv)
    except config_flags.ConfigError as error:
        parser.error(str(error))
    args = parser.parse_args(rest)
    if args.distributed:
        # Cross-process collectives between CPU devices need gloo; accelerators ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    try:
        config = config_flags.load_config(args.config)
        for key, text in overrides:
            config_flags.apply_override(config, key, text)
        if args.print_config:
            print(config)
            return 0
        summary = train.meta_train(config, args.workdir, overwrite=args.overwrite)
    except (
        config_flags.ConfigError,
        checkpoint.WorkdirError,
        checkpoint.CheckpointError,
        DatasetNotFoundError,
    ) as error:
        print(f"lopt meta-train: error: {_with_hint(error)}", file=sys.stderr)
        return 2
    except health.RunHealthError as error:
        print(f"lopt meta-train: failed: {error}", file=sys.stderr)
        return 3
    except checkpoint.RunWriteError as error:
        print(f"lopt meta-train: stopped: {error}", file=sys.stderr)
        return WRITE_FAILED
    if summary["interrupted"]:
        return 128 + int(signal.Signals[summary["interrupted"]])
    return 0


def _evaluate(argv: list[str]) -> int:
    return _run_evaluate(_import_user_modules(argv))


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


def _evaluate_parser() -> argparse.ArgumentParser:
    from lopt import schedules
    from meta_train.evaluation.evaluate import DEFAULT_DIVERGENCE_FACTOR

    parser = _Parser(
        prog="lopt evaluate",
        description="Train a held-out suite with an optimizer and with tuned Adam and SGD-M; "
        "write a table, report.md, report.json and loss-curve PNGs.",
    )
    parser.add_argument(
        "--optimizer",
        required=True,
        help="a tuned baseline (adam, adamw, sgdm), a tuning-free optax.contrib optimizer "
        "(prodigy, schedule_free_adamw, dadapt_adamw, dog, dowg, mechanize, cocob, muon), a "
        "shipped pretrained version (lopt.pretrained_names()), 'untrained:<architecture>' or an "
        "export directory",
    )
    parser.add_argument(
        "--suite",
        default="default",
        help="held-out suite (lopt tasks list); your own with `lopt evaluate --import MODULE`, "
        "a module that calls tasks.register_suite",
    )
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
        "--baseline-schedule",
        choices=("auto", *schedules.available(horizon=True, decay=False)),
        default="auto",
        help="the baselines' learning-rate schedule; auto: the learned rule's own step size's "
        "schedule if it has one, else constant (default: auto)",
    )
    parser.add_argument(
        "--sweep-learned-lr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also tune the learned rule's learning rate over 7 points around its default, "
        "reported as '<name> (tuned lr)' (for rules with the learning rate outside them)",
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
        help="output folder: new, empty, or one lopt evaluate wrote before (its files are "
        "replaced); never inside an export (default: <export>.eval_<suite> beside the export, "
        "e.g. runs/default/export.eval_default, or runs/<optimizer>.eval_<suite>)",
    )
    _add_import_flag(parser)
    return parser


def _run_evaluate(argv: list[str]) -> int:
    """``lopt evaluate``: print the table and summary line, write the report files. Exit status 2
    for bad arguments or an output folder it must not (or cannot) write to, checked before
    anything runs; 4 (``WRITE_FAILED``) when writing the report failed (disk full)."""
    import numpy as np

    from meta_train.evaluation import contenders, evaluate, out_folder

    parser = _evaluate_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.grid_points < 1:
        parser.error(f"--grid-points must be at least 1, got {args.grid_points}")
    if not args.divergence_factor > 1:
        parser.error(f"--divergence-factor must exceed 1, got {args.divergence_factor}")
    names = contenders.names()
    known = os.path.isdir(args.optimizer) or args.optimizer in names
    if not (known or args.optimizer.startswith("untrained:")):
        parser.error(
            f"--optimizer {args.optimizer!r} is not one of {', '.join(names)}, "
            "'untrained:<architecture>' or an existing export directory"
        )
    from tasks import registry

    if args.suite not in registry.suite_names():
        parser.error(
            f"--suite {args.suite!r} is unknown; known suites: "
            f"{', '.join(registry.suite_names())}; {IMPORT_HINT}"
        )
    if os.path.isdir(args.optimizer):
        import lopt

        try:  # before the output folder is claimed: a workdir given for its export, say
            lopt.load_optimizer(args.optimizer)
        except lopt.ExportError as error:
            print(f"lopt evaluate: error: {error}", file=sys.stderr)
            return 2
    out = args.out or out_folder.default_out_folder(args.optimizer, args.suite)
    try:
        out_folder.check_out_folder(out)
    except ValueError as error:
        print(f"lopt evaluate: error: {error}", file=sys.stderr)
        return 2
    note = out_folder.claim_out_folder(out, args.optimizer, args.suite)
    if note:
        print(note, file=sys.stderr)
    report = evaluate.evaluate(
        args.optimizer,
        registry.get_suite(args.suite),
        num_steps=args.steps,
        horizons=args.horizons,
        seeds=args.seeds,
        adam_grid=tuple(float(lr) for lr in np.logspace(-4, -1, args.grid_points)),
        sgdm_grid=tuple(float(lr) for lr in np.logspace(-3, 0, args.grid_points)),
        baseline_schedule=evaluate.baseline_schedule(args.baseline_schedule, args.optimizer),
        learned_lr_multipliers=evaluate.LEARNED_LR_MULTIPLIERS if args.sweep_learned_lr else (),
        untrained_floor=args.untrained_floor,
        divergence_factor=args.divergence_factor,
        progress=not args.no_progress,
        compiler_options=evaluate.FAST_COMPILE if args.fast_compile else None,
        settings={"suite": args.suite, "command": "lopt evaluate " + shlex.join(argv)},
    )
    # Written aside and renamed into place: the folder never mixes two runs' files.
    staging = out_folder.staging_folder(out)
    try:
        written = report.save(staging, plots=not args.no_plots)
        out_folder.publish(staging, out)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"lopt evaluate: stopped: cannot write the report to {out}: {error}", file=sys.stderr)
        return WRITE_FAILED
    paths = {
        kind: os.path.join(out, os.path.relpath(path, staging)) for kind, path in written.items()
    }
    print(report.format_console())
    num_plots = sum(kind.startswith("plot:") for kind in paths)
    print(f"wrote {paths['markdown']}, {paths['json']} and {num_plots} plots to {out}")
    return 0


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
        print(f"lopt {argv[0]}: error: {_with_hint(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
