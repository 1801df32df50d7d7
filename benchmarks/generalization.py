"""Generalization of a learned optimizer to held-out tasks, longer runs and a 16x wider network.

The protocol (issue 11), on the suite ``generalization`` (tasks that no meta-training family covers
exactly; ``lopt tasks list``):

- the learned rule at its ONE default learning rate (no per-task tuning), and, as a second
  contender, with its learning rate swept over 7 points (x 10^-1.5 ... 10^1.5) per task;
- Adam and SGD-M, each tuned per task over 7 log-spaced learning rates, with the rule's own
  schedule (``lopt.schedules.warmup_cosine`` over the run for a ``cosine`` rule);
- horizons 1x and 2x of every task's horizon, 10x on a named subset, and the 16x-wide task
  (``mlp_digits_w512``) at 1x; the long and wide runs, the expensive ones, against Adam only
  (the headline's reference; SGD-M is reported at 1x and 2x);
- per horizon, against per-task tuned Adam: win rate in final training loss and in test loss,
  speed-up IQM (only where Adam's final loss is reached and kept), normalized final training loss
  IQM (learned / Adam), each with a 95% bootstrap interval over tasks, and divergences
  (``meta_train.evaluation.report.summarize``, ``meta_train.evaluation.aggregate``).

Writes ``generalization.json`` (every report, the aggregates, provenance) and one figure,
``generalization.png``: per task and horizon, the learned rule's final training loss over tuned
Adam's (log scale; 1 marked). ``--quick`` is a smoke run of seconds on the ``tiny`` suite.

    python benchmarks/generalization.py                      # the shipped lopt.pretrained_path()
    python benchmarks/generalization.py --optimizer runs/default/export
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.provenance import provenance
from meta_train.evaluation import aggregate, evaluate, report
from tasks import registry

NAME = "generalization"
DEFAULT_OUT = os.path.join("benchmarks", "results", NAME)
SUITE = "generalization"
LONG_HORIZON = 10.0
# The 10x subset: cheap tasks of different kinds (activation, tabular data, mixture, quadratic).
LONG_TASKS = ("mlp_digits_tanh", "mlp_wine", "mlp_gmm_d32_c8", "noisy_quadratic")
WIDE_TASK = "mlp_digits_w512"
# --quick: every part once, on the tiny suite's two tasks (the "wide" one is only a stand-in).
QUICK = {
    "suite": "tiny",
    "num_steps": 20,
    "horizons": [1.0],
    "long_tasks": ("mlp_digits_tiny",),
    "wide_task": "quadratic_d8",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--optimizer",
        default=None,
        help="an export directory or 'untrained:<architecture>' (default: the shipped pretrained "
        "optimizer)",
    )
    parser.add_argument("--suite", default=SUITE, help="held-out suite (default: %(default)s)")
    parser.add_argument(
        "--tasks", default="", help="only these tasks of the suite at --horizons (default: all)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs per task and optimizer")
    parser.add_argument(
        "--horizons", default="1,2", help="multiples of every task's horizon (default: 1,2)"
    )
    parser.add_argument(
        "--long-horizon", type=float, default=LONG_HORIZON, help="the subset's horizon multiple"
    )
    parser.add_argument(
        "--long-tasks",
        default=",".join(LONG_TASKS),
        help="tasks run at --long-horizon (comma-separated; empty: none)",
    )
    parser.add_argument(
        "--wide-task",
        default=WIDE_TASK,
        help="the 16x-width task, run at 1x only against Adam ('' : none)",
    )
    parser.add_argument("--fast-compile", action="store_true", help="XLA optimisation level 0")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny suite)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for the JSON and the PNG")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    optimizer = args.optimizer or _pretrained_export()
    settings = {
        "suite": args.suite,
        "num_steps": None,
        "horizons": [float(h) for h in args.horizons.split(",") if h.strip()],
        "long_tasks": _names(args.long_tasks),
        "wide_task": args.wide_task or None,
    }
    if args.quick:
        settings.update(QUICK)
    tasks = registry.get_suite(settings["suite"])
    by_name = {task.name: task for task in tasks}
    named = [*settings["long_tasks"], settings["wide_task"], *_names(args.tasks)]
    unknown = [name for name in named if name and name not in by_name]
    if unknown:
        raise SystemExit(
            f"tasks {unknown} are not in suite {settings['suite']!r}; its tasks: {list(by_name)}"
        )
    common = dict(
        num_steps=settings["num_steps"],
        seeds=1 if args.quick else args.seeds,
        baseline_schedule=evaluate.schedule_of(_learned_rule(optimizer)),
        learned_lr_multipliers=evaluate.LEARNED_LR_MULTIPLIERS,
        untrained_floor=False,
        compiler_options=evaluate.FAST_COMPILE if args.fast_compile or args.quick else None,
    )
    only = _names(args.tasks) or tuple(by_name)
    suite_tasks = [t for t in tasks if t.name != settings["wide_task"] and t.name in only]
    parts = {"suite": (suite_tasks, settings["horizons"], {})}
    if settings["long_tasks"]:
        long_tasks = [by_name[name] for name in settings["long_tasks"]]
        parts["long"] = (long_tasks, [args.long_horizon], {"baselines": ("adam",)})
    if settings["wide_task"]:
        parts["wide"] = ([by_name[settings["wide_task"]]], [1.0], {"baselines": ("adam",)})

    start = time.perf_counter()
    reports = {}
    for part, (part_tasks, part_horizons, options) in parts.items():
        print(f"--- {part}: {len(part_tasks)} tasks at {part_horizons}", file=sys.stderr)
        reports[part] = evaluate.evaluate(
            optimizer,
            part_tasks,
            horizons=part_horizons,
            progress=not args.quick,
            settings={"part": part},
            **common,
            **options,
        )
    seconds = time.perf_counter() - start

    rows = headline_rows(reports)
    subject = reports["suite"].subject
    per_task = per_task_rows(reports, subject)
    print(format_per_task(per_task, subject))
    print(format_headline(rows, reports["suite"].description, subject))
    print(f"({seconds / 60:.1f} min on {os.cpu_count()} CPU cores)")
    os.makedirs(args.out, exist_ok=True)
    payload = {
        "benchmark": NAME,
        "provenance": provenance(["benchmarks/generalization.py", *argv]),
        "optimizer": optimizer,
        "settings": {
            **settings,
            "long_horizon": args.long_horizon,
            "seeds": common["seeds"],
            "quick": args.quick,
        },
        "seconds": seconds,
        "headline": rows,
        "per_task": per_task,
        "reports": {part: report.to_dict(r) for part, r in reports.items()},
    }
    path = os.path.join(args.out, f"{NAME}.json")
    with open(path, "w") as file:
        file.write(json.dumps(report.finite_or_none(payload), indent=1, allow_nan=False))
    figure = plot(reports, subject, os.path.join(args.out, f"{NAME}.png"))
    print(f"wrote {path} and {figure}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _pretrained_export() -> str:
    """The shipped pretrained optimizer's export directory (package data)."""
    import lopt

    try:
        return lopt.pretrained_path()
    except lopt.ExportError as error:
        raise SystemExit(
            f"{error}: pass --optimizer <export directory> (e.g. runs/default/export from "
            "`lopt meta-train`) or untrained:<architecture>"
        ) from error


def _learned_rule(optimizer: str) -> Any:
    import lopt

    if optimizer.startswith("untrained:"):
        return lopt.get_optimizer(optimizer.removeprefix("untrained:"))
    return lopt.load_optimizer(optimizer)[0]


# --- The headline: one row per (contender, part, horizon).


def headline_rows(reports: dict[str, report.Report]) -> list[dict[str, Any]]:
    """Aggregates against tuned Adam per contender and horizon; the wide task is its own row."""
    rows = []
    for part, part_report in reports.items():
        for horizon, by_label in report.summarize(part_report).items():
            for label, s in by_label.items():
                name = f"16x width ({part_report.tasks[0].task})" if part == "wide" else horizon
                rows.append(
                    {
                        "contender": label,
                        "horizon": name,
                        "tasks": s.compared,
                        "win_rate_train_loss": s.win_rate.get("train_loss"),
                        "win_rate_test_loss": s.win_rate.get("test_loss"),
                        "speedup_iqm": s.speedup_iqm,
                        "normalized_train_loss_iqm": s.normalized_iqm.get("train_loss"),
                        "diverged_runs": f"{s.diverged_runs}/{s.total_runs}",
                        "tasks_with_divergence": s.tasks_with_divergence,
                    }
                )
    order = {label: i for i, label in enumerate(dict.fromkeys(r["contender"] for r in rows))}
    rows.sort(key=lambda r: order[r["contender"]])
    return [{k: report.plain(v) for k, v in row.items()} for row in rows]


def per_task_rows(reports: dict[str, report.Report], subject: str) -> list[dict[str, Any]]:
    """Per task and horizon: the subject's (and its tuned-lr variant's) final train loss over tuned
    Adam's, its speed-up and its diverged runs."""
    rows = []
    for part, part_report in reports.items():
        for task in part_report.tasks:
            comparison = report.compare(task, subject)
            speed = comparison.speedup if comparison else None
            rows.append(
                {
                    "task": task.task,
                    "horizon": "16x width"
                    if part == "wide"
                    else report.horizon_label(task.horizon),
                    "steps": task.num_steps,
                    "normalized_train_loss": _ratio(task, subject),
                    "normalized_train_loss_tuned_lr": _ratio(task, f"{subject} (tuned lr)"),
                    "speedup": None if speed is None else speed.format(),
                    "diverged_runs": task.runs[subject].train.num_diverged,
                }
            )
    return rows


def format_per_task(rows: list[dict[str, Any]], subject: str) -> str:
    header = [
        "task",
        "horizon",
        "steps",
        f"{subject} / Adam train loss",
        "with its lr tuned",
        "speed-up",
        "diverged",
    ]
    table = [
        [
            row["task"],
            row["horizon"],
            str(row["steps"]),
            _ratio_cell(row["normalized_train_loss"]),
            _ratio_cell(row["normalized_train_loss_tuned_lr"]),
            row["speedup"] or "-",
            str(row["diverged_runs"]),
        ]
        for row in rows
    ]
    return report.markdown_table(header, table)


def _ratio_cell(ratio: float) -> str:
    if np.isnan(ratio):
        return "n/a (Adam at 0)"
    return "diverged" if ratio == np.inf else f"{ratio:.3g}"


def format_headline(rows: list[dict[str, Any]], description: str, subject: str) -> str:
    """A Markdown table of the headline rows; intervals are 95% bootstrap over tasks."""
    header = [
        "optimizer",
        "horizon",
        "tasks",
        "win rate, train loss",
        "win rate, test loss",
        "speed-up IQM",
        "normalized train loss IQM",
        "diverged runs",
    ]

    def cell(estimate: dict | None, suffix: str = "") -> str:
        if estimate is None:
            return "-"
        return aggregate.Estimate(**estimate).format(suffix=suffix)

    table = [
        [
            row["contender"] + (" (default lr)" if row["contender"] == subject else ""),
            row["horizon"],
            str(row["tasks"]),
            cell(row["win_rate_train_loss"]),
            cell(row["win_rate_test_loss"]),
            cell(row["speedup_iqm"], "x"),
            cell(row["normalized_train_loss_iqm"]),
            row["diverged_runs"],
        ]
        for row in rows
    ]
    return (
        f"{description} against per-task tuned Adam (value [95% bootstrap interval over tasks] "
        "(n tasks); speed-up only over tasks where Adam's final loss was reached and kept)\n"
        + report.markdown_table(header, table)
    )


# --- The figure.


def plot(reports: dict[str, report.Report], subject: str, path: str) -> str:
    """Per task and horizon, the subject's final training loss over tuned Adam's: a bar from 1 (at
    its default learning rate) and a dot (with its swept learning rate), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuned = f"{subject} (tuned lr)"
    groups: dict[str, dict[str, tuple[float, float]]] = {}  # horizon -> task -> (default, tuned)
    for part, part_report in reports.items():
        for task in part_report.tasks:
            horizon = "16x width" if part == "wide" else report.horizon_label(task.horizon)
            ratios = tuple(_ratio(task, label) for label in (subject, tuned))
            groups.setdefault(horizon, {})[task.task] = ratios
    names = list(dict.fromkeys(name for by_task in groups.values() for name in by_task))
    finite = [r for g in groups.values() for pair in g.values() for r in pair if np.isfinite(r)]
    ceiling = max([10.0, *finite]) * 2
    floor = 1e-3  # a learned loss of exactly 0 (a memorised training set) is drawn here
    fig, axes = plt.subplots(figsize=(7.5, 0.4 * len(names) + 2.0))
    height = 0.8 / len(groups)
    for i, (horizon, by_task) in enumerate(groups.items()):
        y = [names.index(name) + (i - (len(groups) - 1) / 2) * height for name in by_task]
        default, swept = (np.array(values) for values in zip(*by_task.values(), strict=True))
        shown = np.clip(np.nan_to_num(default, nan=1.0, posinf=ceiling), floor, ceiling)
        container = axes.barh(y, shown - 1.0, left=1.0, height=height, label=horizon)
        axes.plot(np.clip(swept, floor, ceiling), y, "k.", markersize=4)
        for bar, ratio in zip(container, default, strict=True):
            if ratio == np.inf:
                bar.set_hatch("//")
            if _note(ratio, floor):
                middle = bar.get_y() + bar.get_height() / 2
                box = {"facecolor": "white", "alpha": 0.7, "linewidth": 0}
                axes.text(1.0, middle, _note(ratio, floor), fontsize=6, va="center", bbox=box)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(
        f"{subject} final train loss / per-task tuned Adam's (< 1: better); "
        "bars: its default lr, dots: its lr tuned per task",
        fontsize=8,
    )
    lines = []
    for part, part_report in reports.items():
        for horizon, by_label in report.summarize(part_report).items():
            s = by_label.get(subject)
            if s and s.compared:
                name = "16x width" if part == "wide" else horizon
                speed = s.speedup_iqm
                speed = f"{speed.value:.2g}x (n={speed.count})" if speed.count else "n/a"
                lines.append(
                    f"{name}: better than tuned Adam on {s.better.get('train_loss', 0)}/"
                    f"{s.compared} tasks, normalized IQM {s.normalized_iqm['train_loss'].value:.2g}"
                    f", speed-up IQM {speed}, {s.diverged_runs} runs diverged"
                )
    axes.set_title("\n".join(lines), fontsize=7)
    axes.legend(fontsize=7, title="horizon", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _note(ratio: float, floor: float) -> str:
    """What a bar cannot show: no ratio (Adam's loss is 0), divergence, or a ratio below floor."""
    if np.isnan(ratio):
        return " n/a (Adam's loss is 0)"
    if ratio == np.inf:
        return " diverged"
    return f" < {floor:g}" if ratio < floor else ""


def _ratio(task: report.TaskResult, label: str) -> float:
    """``label``'s final train loss over the reference's (``nan`` when undefined or absent)."""
    comparison = report.compare(task, label) if label in task.runs else None
    return comparison.normalized.get("train_loss", math.nan) if comparison else math.nan


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
