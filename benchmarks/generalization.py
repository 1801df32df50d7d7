"""The shipped learned optimizer against what a user would pick instead, on held-out tasks.

Contenders (``meta_train.evaluation.contenders``), on the suite ``generalization``:

- the shipped pretrained version (default ``lopt.pretrained``'s; every other shipped version,
  discovered from ``lopt/weights/``, runs beside it) at its one default learning rate;
- its untrained initialisation (does meta-training help?);
- AdamW and SGD-M, each tuned per task over a half-decade learning-rate grid, with a warm-up-cosine
  schedule and weight decay 1e-4 (``optax.adamw``'s default) whatever the subject; the reference
  is tuned AdamW;
- the tuning-free optimizers of ``optax.contrib`` at their published defaults.

Protocol: horizons 1x and 2x of every task's horizon, 10x on a subset and the 16x-wide task at 1x
(SGD-M not on the wide task); 3 seeds, paired. A tuned contender's rate is chosen per criterion
(train loss by final train loss, test loss and accuracy by inner-valid loss) and flagged when at a
grid end. Per contender and horizon, separately for train loss, test loss and test accuracy: wins /
ties / losses (``policy.outcome``: ties are not wins) and the win rate with a 95% bootstrap
interval over tasks, against tuned AdamW and against the best tuning-free peer of each task; the
IQM of the final train loss over AdamW's with a stratified-bootstrap interval (seeds resampled
within tasks); the VeLO speed-up (the steps tuned AdamW needs to reach the contender's final loss
over the contender's; a lower bound of 1 where AdamW never gets there). The shipped rule against
its untrained init: per task, the ratio of final losses with a paired 95% t-interval over seeds.

Writes ``generalization.json`` (every report, the aggregates, provenance, wall time) and
``generalization.png`` (win rates against tuned AdamW with intervals). Scratch output unless
``--record`` (``benchmarks/output.py``)::

    python -m benchmarks.generalization --record          # the full run, for the README
    python -m benchmarks.generalization --quick           # a smoke run of seconds
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

from benchmarks import generalization_runs as runs
from benchmarks import output
from benchmarks.provenance import provenance
from meta_train.evaluation import aggregate, comparison, contenders, evaluate, policy, report
from tasks import registry

NAME = "generalization"
FORMAT_VERSION = 2
SUITE = "generalization"
REFERENCE = "adamw"
# The tuned baselines' protocol is fixed apart from the subject, so records made with different
# subjects share one reference and the release gate compares like with like (when it followed the
# subject, re-recording with normalized-v4 instead of v1 moved 17 of 55 win/tie/loss rows).
BASELINE_SCHEDULE = "cosine"
BASELINE_WEIGHT_DECAY = 1e-4
LONG_HORIZON = 10.0
# The 10x subset: cheap tasks of different kinds (activation, noisy mixture, noisy labels, small
# batch); the residual LayerNorm net would cost about as much at 10x as the rest of the benchmark.
LONG_TASKS = ("mlp_mnist1d_tanh", "mlp_gmm_d32_c8", "mlp_mnist1d_gelu_noise30", "mlp_mnist1d_b32")
WIDE_TASK = "mlp_mnist1d_w512"
METRICS = ("train_loss", "test_loss", "test_accuracy")
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
        help="a pretrained name, an export directory or 'untrained:<architecture>' (default: "
        "the shipped default pretrained version)",
    )
    parser.add_argument("--suite", default=SUITE, help="held-out suite (default: %(default)s)")
    parser.add_argument("--tasks", default="", help="only these tasks of the suite (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per task and contender")
    parser.add_argument("--horizons", default="1,2", help="multiples of every task's horizon")
    parser.add_argument("--long-horizon", type=float, default=LONG_HORIZON)
    parser.add_argument(
        "--long-tasks", default=",".join(LONG_TASKS), help="tasks run at --long-horizon ('': none)"
    )
    parser.add_argument("--wide-task", default=WIDE_TASK, help="the 16x-width task ('': none)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes, one task each at a time (default: the CPU count; 1 with --quick)",
    )
    parser.add_argument("--fast-compile", action="store_true", help="XLA optimisation level 0")
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="JAX's persistent compilation cache: a rerun with the same code and shapes (a new "
        "theta of the same rule included) loads its compiled trainers from DIR (default: none, "
        "every trainer compiles; the JSON records which)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny suite)")
    output.add_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    out = output.resolve(args, NAME)
    import lopt

    subject = args.optimizer or lopt.shipped.DEFAULT_PRETRAINED
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
        raise SystemExit(f"tasks {unknown} are not in suite {settings['suite']!r}: {list(by_name)}")
    config = eval_config(
        subject,
        settings["num_steps"],
        1 if args.quick else args.seeds,
        args.fast_compile or args.quick,
    )
    only = _names(args.tasks) or tuple(by_name)
    baselines = tuple(config.baselines)
    parts = {
        "suite": runs.Part(
            tuple(t.name for t in tasks if t.name != settings["wide_task"] and t.name in only),
            tuple(settings["horizons"]),
            baselines,
        )
    }
    if settings["long_tasks"]:
        # SGD-M too: the suite's compiled segments then serve the long runs (no recompile).
        parts["long"] = runs.Part(settings["long_tasks"], (args.long_horizon,), baselines)
    if settings["wide_task"]:
        parts["wide"] = runs.Part((settings["wide_task"],), (1.0,), ("adamw",))
    jobs = 1 if args.jobs is None and args.quick else args.jobs or os.cpu_count() or 1
    if args.compile_cache:
        runs.use_compile_cache(args.compile_cache)

    start, cpu_start = time.perf_counter(), time.process_time()
    for part, (part_tasks, horizons, _) in parts.items():
        print(f"--- {part}: {len(part_tasks)} tasks at {list(horizons)}", file=sys.stderr)
    reports, done = runs.run(parts, subject, settings["suite"], config, jobs)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start + runs.children_cpu_seconds()

    subject_label = reports["suite"].subject
    rows = headline_rows(reports)
    per_task = per_task_rows(reports, subject_label)
    edges = grid_edges(reports)
    print(format_per_task(per_task, subject_label))
    print(format_headline(rows))
    print(f"grid edges: {len(edges)} chosen rates at an end of their grid")
    split = runs.trainer_seconds(reports)
    busiest = runs.busiest_worker_cpu_seconds(done)
    print(
        f"({seconds / 60:.1f} min wall, {cpu_seconds / 60:.1f} min CPU on {os.cpu_count()} cores, "
        f"{jobs} processes, the busiest {busiest / 60:.1f} min CPU; "
        f"trainers' CPU: {split['compile_cpu_seconds'] / 60:.1f} min compiling, "
        f"{split['run_cpu_seconds'] / 60:.1f} min running)"
    )
    os.makedirs(out, exist_ok=True)
    payload = {
        "benchmark": NAME,
        "format_version": FORMAT_VERSION,
        "provenance": provenance(["python -m benchmarks.generalization", *argv]),
        "subject": subject_label,
        "reference": REFERENCE,
        "tie_rule": policy.tie_rule(),
        "settings": {
            **settings,
            "long_horizon": args.long_horizon,
            "seeds": config.seeds,
            "quick": args.quick,
            "compile_cache": args.compile_cache,
        },
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "jobs": jobs,
        "trainer_seconds": split,
        "busiest_worker_cpu_seconds": busiest,
        "per_task_seconds": runs.timing(done),
        "headline": rows,
        "per_task": per_task,
        "meta_training_effect": meta_training_effect(per_task),
        "grid_edges": edges,
        "reports": {part: report.to_dict(r) for part, r in reports.items()},
    }
    path = os.path.join(out, f"{NAME}.json")
    with open(path, "w") as file:
        file.write(json.dumps(report.finite_or_none(payload), indent=1, allow_nan=False))
    figure = plot(rows, subject_label, os.path.join(out, f"{NAME}.png"))
    print(f"wrote {path} and {figure}")
    return 0


def eval_config(
    subject: str, num_steps: int | None, seeds: int, fast_compile: bool
) -> evaluate.EvalConfig:
    """The contenders and protocol around ``subject``: every other shipped version and the
    tuning-free optimizers as peers; the tuned baselines' protocol is the benchmark's own."""
    return evaluate.EvalConfig(
        num_steps=num_steps,
        seeds=seeds,
        baselines=("adamw", "sgdm"),
        reference=REFERENCE,
        baseline_schedule=BASELINE_SCHEDULE,
        weight_decay=BASELINE_WEIGHT_DECAY,
        peers=(
            *contenders.TUNING_FREE,
            *(n for n in contenders.pretrained_names() if n != subject),
        ),
        compiler_options=evaluate.FAST_COMPILE if fast_compile else None,
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _horizon(part: str, part_report: report.Report, task: report.TaskResult) -> str:
    return f"16x width ({task.task})" if part == "wide" else report.horizon_label(task.horizon)


def steps_label(steps: Sequence[int]) -> str:
    """The training steps of a horizon's tasks: ``"500 steps"`` or ``"200-500 steps"``."""
    low, high = min(steps), max(steps)
    return f"{low} steps" if low == high else f"{low}-{high} steps"


def _mean(task: report.TaskResult, label: str, metric: str) -> float:
    return task.runs[label].for_metric(metric).mean(metric)


def _tuning_free(task: report.TaskResult) -> list[str]:
    return [label for label in task.runs if label in contenders.TUNING_FREE]


def best_peer(task: report.TaskResult, metric: str) -> str | None:
    """The tuning-free contender with the best mean ``metric`` on ``task`` (``None``: none)."""
    peers = [p for p in _tuning_free(task) if math.isfinite(_mean(task, p, metric))]
    if not peers:
        return None
    sign = -1.0 if report.higher_is_better(metric) else 1.0
    return min(peers, key=lambda p: sign * _mean(task, p, metric))


def _counts(outcomes: list[float]) -> dict[str, Any]:
    return {
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
        "win_rate": aggregate.estimate(outcomes, aggregate.mean)._asdict() if outcomes else None,
    }


def _outcome(task: report.TaskResult, label: str, other: str, metric: str) -> float | None:
    if metric not in task.runs[label].for_metric(metric).metrics:
        return None
    ours, theirs = _mean(task, label, metric), _mean(task, other, metric)
    return float(policy.outcome([ours], [theirs], report.higher_is_better(metric))[0])


def _normalized_scores(
    task: report.TaskResult, label: str, reference: str, metric: str
) -> np.ndarray | None:
    """``[seeds]``: each seed's final loss ``metric`` over the reference's seed mean, each at the
    rate its criterion chose (``None`` when the reference's mean is not positive and finite)."""
    theirs = task.runs[reference].for_metric(metric).mean(metric)
    if not (math.isfinite(theirs) and theirs > 0):
        return None
    ours = np.asarray(task.runs[label].for_metric(metric).metrics[metric], np.float64)
    return np.where(np.isfinite(ours), ours / theirs, np.inf)


def headline_rows(reports: dict[str, report.Report]) -> list[dict[str, Any]]:
    """Per (contender, part, horizon): against each report's reference (tuned AdamW here) and the
    best tuning-free peer."""
    rows = []
    for part, part_report in reports.items():
        reference = part_report.reference
        for horizon in part_report.horizons:
            results = [t for t in part_report.tasks if t.horizon == horizon]
            name = _horizon(part, part_report, results[0])
            for label in (lbl for lbl in results[0].runs if lbl != reference):
                rows.append(_headline_row(results, label, name, reference))
    return [report.plain(row) for row in rows]


def _headline_row(
    results: list[report.TaskResult], label: str, horizon: str, reference: str
) -> dict[str, Any]:
    vs_reference, vs_peer = {}, {}
    for metric in METRICS:
        outcomes = [_outcome(t, label, reference, metric) for t in results]
        vs_reference[metric] = _counts([o for o in outcomes if o is not None])
        if label not in contenders.TUNING_FREE and _tuning_free(results[0]):
            peers = [(t, best_peer(t, metric)) for t in results]
            outcomes = [_outcome(t, label, p, metric) for t, p in peers if p]
            vs_peer[metric] = _counts([o for o in outcomes if o is not None])
    speedups = [comparison.velo_speedup(t, label, reference) for t in results]
    normalized = {
        metric: aggregate.stratified_estimate(
            [
                s
                for t in results
                if (s := _normalized_scores(t, label, reference, metric)) is not None
            ]
        )
        for metric in ("train_loss", "test_loss")
    }
    selections = [t.runs[label].train for t in results]
    return {
        "contender": label,
        "horizon": horizon,
        "steps": steps_label([t.num_steps for t in results]),
        "tasks": len(results),
        "vs_reference": vs_reference,
        "vs_best_tuning_free": vs_peer or None,
        "win_rate_train_loss": vs_reference["train_loss"]["win_rate"],
        "win_rate_test_loss": vs_reference["test_loss"]["win_rate"],
        "speedup_iqm": aggregate.estimate([s.value for s in speedups]),
        "speedup_censored": sum(s.censored for s in speedups),
        "normalized_train_loss_iqm": normalized["train_loss"],
        "normalized_test_loss_iqm": normalized["test_loss"],
        "diverged_runs": f"{sum(s.num_diverged for s in selections)}/"
        f"{sum(s.num_seeds for s in selections)}",
        "tasks_with_divergence": sum(s.num_diverged > 0 for s in selections),
    }


def paired_ratio(task: report.TaskResult, label: str, other: str, metric: str) -> dict | None:
    """``label``'s final ``metric`` over ``other``'s on ``task``, paired by seed
    (``paired_log_ratio``)."""
    ours = task.runs[label].for_metric(metric).metrics.get(metric, [])
    theirs = task.runs[other].for_metric(metric).metrics.get(metric, [])
    return paired_log_ratio(ours, theirs)


def paired_log_ratio(ours: Sequence[float], theirs: Sequence[float]) -> dict | None:
    """``exp(mean log ratio)`` of two losses paired by seed and its 95% t-interval over seeds
    (``None`` when a loss is not positive and finite)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    values = np.concatenate([ours, theirs])
    if not values.size or not np.all(np.isfinite(values) & (values > 0)):
        return None
    logs = np.log(ours) - np.log(theirs)
    if logs.size < 2:  # one seed: no interval
        half = math.nan
    else:
        from scipy import stats  # a dependency of jax

        half = stats.t.ppf(0.975, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
    mean = float(logs.mean())
    return {"ratio": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half)}


def per_task_rows(reports: dict[str, report.Report], subject: str) -> list[dict[str, Any]]:
    """Per task and horizon: the subject against tuned AdamW, the best tuning-free peer and its
    own untrained init."""
    rows = []
    for part, part_report in reports.items():
        for task in part_report.tasks:
            reference = part_report.reference
            versus = report.compare(task, subject, reference)
            tuned = task.runs[reference]
            rows.append(
                {
                    "task": task.task,
                    "horizon": _horizon(part, part_report, task),
                    "steps": task.num_steps,
                    "normalized_train_loss": versus.normalized.get("train_loss"),
                    "normalized_test_loss": versus.normalized.get("test_loss"),
                    "vs_reference": {m: _outcome(task, subject, reference, m) for m in METRICS},
                    "best_tuning_free": {m: best_peer(task, m) for m in METRICS},
                    "vs_best_tuning_free": {
                        m: _outcome(task, subject, p, m) if (p := best_peer(task, m)) else None
                        for m in METRICS
                    },
                    "vs_untrained": {
                        m: paired_ratio(task, subject, "untrained", m)
                        for m in ("train_loss", "test_loss")
                    }
                    if "untrained" in task.runs
                    else None,
                    "speedup": comparison.velo_speedup(task, subject, reference).format(),
                    "reference_learning_rate": {
                        c: s.learning_rate for c, s in tuned.selected.items()
                    },
                    "diverged_runs": task.runs[subject].train.num_diverged,
                }
            )
    return rows


def meta_training_effect(per_task: list[dict[str, Any]]) -> dict[str, Any]:
    """Does meta-training help? Per horizon and loss, over the tasks: how many paired intervals
    of the rule's final loss over its untrained init's lie wholly below 1 (helps), wholly above
    (hurts) or straddle it, and the IQM of the ratios with a 95% bootstrap interval over tasks."""
    effect: dict[str, Any] = {}
    for horizon in dict.fromkeys(row["horizon"] for row in per_task):
        rows = [r for r in per_task if r["horizon"] == horizon and r["vs_untrained"]]
        for metric in ("train_loss", "test_loss"):
            ratios = [r["vs_untrained"][metric] for r in rows if r["vs_untrained"][metric]]
            effect.setdefault(horizon, {})[metric] = {
                "helps": sum(r["high"] < 1 for r in ratios),
                "hurts": sum(r["low"] > 1 for r in ratios),
                "unclear": sum(not (r["high"] < 1 or r["low"] > 1) for r in ratios),
                "ratio_iqm": aggregate.estimate([r["ratio"] for r in ratios])._asdict(),
            }
    return effect


def grid_edges(reports: dict[str, report.Report]) -> list[dict[str, Any]]:
    """Every tuned contender's rate chosen at an end of its grid (the best may lie beyond)."""
    edges = []
    for part_report in reports.values():
        for task in part_report.tasks:
            for label, run in task.runs.items():
                for criterion, selection in run.selected.items():
                    if run.grid and run.at_grid_edge(criterion):
                        edges.append(
                            {
                                "task": task.task,
                                "horizon": report.horizon_label(task.horizon),
                                "contender": label,
                                "criterion": criterion,
                                "learning_rate": selection.learning_rate,
                            }
                        )
    return edges


# --- Console tables.

_MARK = {1.0: "+", 0.5: "=", 0.0: "-", None: "."}


def format_per_task(rows: list[dict[str, Any]], subject: str) -> str:
    header = [
        "task",
        "horizon",
        f"{subject} / AdamW train loss",
        "test loss",
        "vs AdamW (train/test/acc)",
        "vs best tuning-free",
        "train loss / untrained [95% CI]",
        "speed-up",
    ]
    table = []
    for row in rows:
        untrained = (row["vs_untrained"] or {}).get("train_loss")
        table.append(
            [
                row["task"],
                row["horizon"],
                _num(row["normalized_train_loss"]),
                _num(row["normalized_test_loss"]),
                "/".join(_MARK[row["vs_reference"][m]] for m in METRICS),
                "/".join(_MARK[row["vs_best_tuning_free"][m]] for m in METRICS),
                "-"
                if untrained is None
                else f"{untrained['ratio']:.3g} [{untrained['low']:.3g}, {untrained['high']:.3g}]",
                row["speedup"] or "-",
            ]
        )
    return report.markdown_table(header, table)


def format_headline(rows: list[dict[str, Any]]) -> str:
    """Wins/ties/losses against tuned AdamW per metric; intervals 95% bootstrap over tasks."""
    header = ["contender", "horizon", "tasks", *(f"vs AdamW {m} W/T/L" for m in METRICS)]
    header += ["train loss / AdamW IQM", "test loss / AdamW IQM", "speed-up IQM", "diverged"]

    def wtl(counts: dict) -> str:
        return f"{counts['wins']}/{counts['ties']}/{counts['losses']}"

    table = [
        [
            row["contender"],
            f"{row['horizon']} ({row['steps']})",
            str(row["tasks"]),
            *(wtl(row["vs_reference"][m]) for m in METRICS),
            aggregate.Estimate(**row["normalized_train_loss_iqm"]).format(),
            aggregate.Estimate(**row["normalized_test_loss_iqm"]).format(),
            aggregate.Estimate(**row["speedup_iqm"]).format(suffix="x"),
            row["diverged_runs"],
        ]
        for row in rows
    ]
    return report.markdown_table(header, table)


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


# --- The figure.


def plot(rows: list[dict[str, Any]], subject: str, path: str) -> str:
    """Win rate against tuned AdamW (ties count half) with its 95% interval over tasks, per
    contender, for each metric, at the first horizon of the suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = rows[0]["horizon"]
    shown = [row for row in rows if row["horizon"] == horizon]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 0.35 * len(shown) + 1.8), sharey=True)
    for axis, metric in zip(axes, METRICS, strict=True):
        for y, row in enumerate(shown):
            rate = row["vs_reference"][metric]["win_rate"]
            if rate is None:
                continue
            color = "C3" if row["contender"] == subject else "C0"
            error = [[rate["value"] - rate["low"]], [rate["high"] - rate["value"]]]
            axis.errorbar(rate["value"], y, xerr=error, fmt="o", color=color, capsize=3)
        axis.axvline(0.5, color="gray", linewidth=0.8, linestyle=":")
        axis.set_xlim(-0.05, 1.05)
        axis.set_title(metric.replace("_", " "), fontsize=9)
        axis.set_xlabel("win rate vs tuned AdamW (tie = 0.5)", fontsize=8)
    axes[0].set_yticks(range(len(shown)), [row["contender"] for row in shown], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{horizon}: {shown[0]['tasks']} tasks, 95% bootstrap intervals over tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
