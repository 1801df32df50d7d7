"""Held-out evaluation reports: the public names of the modules that hold, judge and render them,
and ``write`` (the report files).

``results`` holds the frozen data (``Report``); ``comparison`` the speed-up, the per-task outcomes
and the aggregates; ``policy`` the rules on plain numbers (divergence, selection, grid edges,
ties, smoothing); ``render_markdown``, ``render_json`` and ``render_plots`` the renderings.
"""

from __future__ import annotations

import os

from meta_train.evaluation.comparison import (
    Comparison,
    LabelSummary,
    SpeedUp,
    compare,
    speedup,
    summarize,
)
from meta_train.evaluation.policy import smooth, steps_to_reach
from meta_train.evaluation.render_json import finite_or_none, plain, to_dict, to_json
from meta_train.evaluation.render_markdown import (
    _learning_rates,
    format_console,
    format_table,
    markdown_table,
    summary_line,
    to_markdown,
)
from meta_train.evaluation.render_plots import plot_curves, plot_name
from meta_train.evaluation.results import (
    COLUMNS,
    CRITERIA,
    HEADLINE_METRICS,
    REFERENCE,
    GridPoint,
    Report,
    RunResult,
    Selection,
    TaskResult,
    criterion_of,
    higher_is_better,
    horizon_label,
)

__all__ = [
    "COLUMNS",
    "CRITERIA",
    "HEADLINE_METRICS",
    "REFERENCE",
    "Comparison",
    "GridPoint",
    "LabelSummary",
    "Report",
    "RunResult",
    "Selection",
    "SpeedUp",
    "TaskResult",
    "_learning_rates",
    "compare",
    "criterion_of",
    "finite_or_none",
    "format_console",
    "format_table",
    "higher_is_better",
    "horizon_label",
    "markdown_table",
    "plain",
    "plot_curves",
    "plot_name",
    "smooth",
    "speedup",
    "steps_to_reach",
    "summarize",
    "summary_line",
    "to_dict",
    "to_json",
    "to_markdown",
    "write",
]


def write(report: Report, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and (with ``plots``) one PNG per task and horizon.

    Returns the paths written, by kind (``json``, ``markdown``, ``plot:<plot name>``).
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    links = {}
    if plots:
        links = {
            plot_name(task): os.path.basename(
                plot_curves(task, out_dir, report.subject, report.reference)
            )
            for task in report.tasks
        }
    paths = {
        "json": os.path.join(out_dir, "report.json"),
        "markdown": os.path.join(out_dir, "report.md"),
    }
    with open(paths["json"], "w") as file:
        file.write(to_json(report, links))
    with open(paths["markdown"], "w") as file:
        file.write(to_markdown(report, links))
    paths.update({f"plot:{key}": os.path.join(out_dir, path) for key, path in links.items()})
    return paths
