"""The figures behind the default config's choices, collected from finished ``lopt meta-train``
workdirs: each run's meta-loss (first and last tenth), its outer-step wall time, and its end-of-run
comparison with Adam on the held-out tasks (final train and test loss, mean over seeds).

    lopt meta-train --workdir runs/meta_loss_train --config.meta_loss=train
    lopt meta-train --workdir runs/meta_loss_outer_valid --config.meta_loss=outer_valid
    python -m benchmarks.default_config_runs --record --run-commit <commit the runs were made at> \
        runs/meta_loss_train runs/meta_loss_outer_valid

writes ``default_config_runs.json`` to a scratch folder, ``--out`` or, with ``--record``,
``benchmarks/results/`` (``benchmarks/output.py``).

The provenance is that of the collection; ``run_commit`` is the commit the runs were made at
(``lopt meta-train`` records its config, not its commit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from benchmarks import output
from benchmarks.provenance import provenance
from meta_train import layout

OUT = "default_config_runs.json"  # under benchmarks/results/ (with --record) or the scratch folder


def _tenths(rows: list[dict]) -> tuple[float, float]:
    losses = [row["meta_loss"] for row in rows if "meta_loss" in row]
    tenth = max(len(losses) // 10, 1)
    return sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth


def collect(workdir: str) -> dict:
    """One run's config choices, meta-loss, outer-step wall time and comparison figures."""
    with open(os.path.join(workdir, layout.CONFIG_FILE)) as file:
        config = json.load(file)
    with open(os.path.join(workdir, layout.METRICS_FILE)) as file:
        rows = [json.loads(line) for line in file]
    with open(os.path.join(workdir, layout.COMPARISON_DIR, "report.json")) as file:
        report = json.load(file)
    timed = [row for row in rows if "meta_loss" in row]
    first, last = _tenths(rows)
    tasks = {}
    for task in report["tasks"]:
        tasks[task["task"]] = {
            label: {
                "train_loss": run["by_criterion"]["train"]["metrics_mean"]["train_loss"],
                "test_loss": run["by_criterion"]["valid"]["metrics_mean"]["test_loss"],
            }
            for label, run in task["runs"].items()
        }
    return {
        "workdir": workdir,
        "meta_loss": config.get("meta_loss"),
        "architecture": config["optimizer"]["architecture"],
        "num_outer_steps": timed[-1]["step"],
        "outer_steps_wall_seconds": timed[-1]["wall_time"] - timed[0]["wall_time"],
        "meta_loss_first_tenth": first,
        "meta_loss_last_tenth": last,
        "summary_line": report["summary_line"],
        "tasks": tasks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--run-commit", required=True, help="the commit the runs were made at")
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    path = output.resolve(args, OUT)
    result = {
        "provenance": provenance(),
        "run_commit": args.run_commit,
        "runs": {os.path.basename(os.path.normpath(w)): collect(w) for w in args.workdirs},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(result, file, indent=2)
    for name, run in result["runs"].items():
        print(name, run["summary_line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
