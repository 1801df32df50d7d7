"""Which element of the pretrained recipe buys how much: each ablation (``meta_train/configs/
ablation_<name>.py``, one element changed, equal reduced budget) is meta-trained, then evaluated on
a cheaper slice of the generalization suite (the tasks in ``TASKS`` at 1x, 2 seeds) against the
same per-task tuned Adam (7 learning rates, warm-up-cosine schedule) for every ablation, with the
aggregates of ``benchmarks/generalization.py``.

    for n in reference mlp no_augmentation one_family fixed_horizon; do
      lopt meta-train --config ablation_$n --workdir runs/ablation_$n; done
    python -m benchmarks.ablations --record       # evaluates runs/ablation_<name>/export

Writes ``ablations.json`` (with provenance) to a scratch folder, ``--out`` or, with ``--record``,
``benchmarks/results/ablations/`` (``benchmarks/output.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from benchmarks import generalization, output
from benchmarks.provenance import provenance
from meta_train.configs import _ablation
from meta_train.evaluation import evaluate
from tasks import registry

# Cheap to compile and run on a CPU: activation, depth, batch size, label noise, a new mixture.
TASKS = (
    "mlp_mnist1d_tanh",
    "mlp_mnist1d_gelu_deep4",
    "mlp_mnist1d_b32",
    "mlp_mnist1d_gelu_noise30",
    "mlp_gmm_d32_c8",
)
SEEDS = 2
OUT = "ablations"  # under benchmarks/results/ (with --record) or the scratch folder
COLUMNS = (
    "win_rate_train_loss",
    "win_rate_test_loss",
    "normalized_train_loss_iqm",
    "normalized_test_loss_iqm",
    "speedup_iqm",
    "diverged_runs",
)


def evaluate_ablation(export: str, seeds: int) -> list[dict]:
    """The learned optimizer at ``export`` at its own learning rate on ``TASKS`` at 1x, against
    tuned Adam with the cosine schedule; the headline rows of ``generalization``."""
    by_name = {task.name: task for task in registry.get_suite(generalization.SUITE)}
    result = evaluate.evaluate(
        export,
        [by_name[name] for name in TASKS],
        seeds=seeds,
        baselines=("adam",),
        baseline_schedule="cosine",
        untrained_floor=False,
        progress=False,
    )
    return generalization.headline_rows({"suite": result})


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):  # an aggregate with its interval
        value = value.get("value", value.get("iqm"))
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_table(results: dict[str, list[dict]]) -> str:
    lines = ["ablation          contender                      " + "  ".join(COLUMNS)]
    for name, rows in results.items():
        for row in rows:
            cells = "  ".join(_cell(row.get(column)).rjust(len(column)) for column in COLUMNS)
            lines.append(f"{name:<17} {row['contender'][:30]:<30} {cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs", help="folder holding runs/ablation_<name>/")
    parser.add_argument("--ablations", default=",".join(_ablation.ABLATIONS))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    out = output.resolve(args, OUT)
    results = {}
    for name in [n.strip() for n in args.ablations.split(",") if n.strip()]:
        export = os.path.join(args.runs, f"ablation_{name}", "export")
        if not os.path.isdir(export):
            raise SystemExit(
                f"{export} is missing: run `lopt meta-train --config ablation_{name} "
                f"--workdir {os.path.join(args.runs, f'ablation_{name}')}` first"
            )
        results[name] = evaluate_ablation(export, args.seeds)
        print(format_table({name: results[name]}), flush=True)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "ablations.json")
    # Ablations evaluated by earlier invocations are kept; each result keeps its own provenance.
    stored = {}
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)["results"]
    run_provenance = provenance(["benchmarks/ablations.py", *(argv or sys.argv[1:])])
    for name, rows in results.items():
        stored[name] = {"headline": rows, "provenance": run_provenance, "seeds": args.seeds}
    print(format_table({name: entry["headline"] for name, entry in stored.items()}))
    with open(path, "w") as f:
        json.dump({"tasks": list(TASKS), "results": stored}, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
