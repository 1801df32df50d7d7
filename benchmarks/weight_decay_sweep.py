"""A shipped optimizer's held-out losses against its decoupled weight decay: how a recipe's decay is
chosen without looking at the generalization suite.

Trains every task of a meta-training evaluation suite (``default``: the held-out tasks
``lopt meta-train`` evaluates during a run, never the generalization benchmark's) with the shipped
theta, learning rate and schedule, at each weight decay, one seed each. Reports each task's final
test loss and training loss (the mean of the last tenth of the steps), and each decay's mean test
loss over the tasks. Writes ``benchmarks/results/weight_decay_sweep/<optimizer>.json`` with
``--record``::

    python -m benchmarks.weight_decay_sweep --optimizer normalized-v7 --record   # ~2 min
    python -m benchmarks.weight_decay_sweep --quick                              # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence

import lopt
from benchmarks import output
from benchmarks.provenance import provenance
from lopt import export, shipped
from meta_train.evaluation import held_out
from tasks import registry

WEIGHT_DECAYS = (1e-4, 0.03, 0.1, 0.3, 1.0)
QUICK_SUITE, QUICK_STEPS = "tiny", 10


def sweep(optimizer_name: str, weight_decays: Sequence[float], suite: str, num_steps: int) -> dict:
    """``{weight_decay: {"tasks": {task: {"test_loss", "train_loss"}}, "mean_test_loss"}}``."""
    path = lopt.pretrained_path(optimizer_name)
    optimizer, theta, _ = export.load_optimizer(path, require_fingerprint=True)
    step_size = export.load_step_size(path)
    results = {}
    for weight_decay in weight_decays:
        evals = held_out.make_held_out_evals(
            optimizer,
            suite,
            num_tasks=len(registry.suite_entries(suite)),
            num_steps=num_steps,
            step_size=step_size._replace(weight_decay=weight_decay),
        )
        scalars = held_out.run_held_out_evals(evals, theta)
        tasks = {
            e.name: {k: scalars[f"eval/{e.name}/{k}"] for k in ("test_loss", "train_loss")}
            for e in evals
        }
        mean = statistics.fmean(t["test_loss"] for t in tasks.values())
        results[str(weight_decay)] = {"tasks": tasks, "mean_test_loss": mean}
        print(f"weight decay {weight_decay:g}: mean test loss {mean:.4f}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default=shipped.DEFAULT_PRETRAINED, help="a shipped name")
    parser.add_argument(
        "--weight-decays",
        default=",".join(f"{w:g}" for w in WEIGHT_DECAYS),
        help="comma-separated decoupled weight decays (multiplied by the learning rate)",
    )
    parser.add_argument("--suite", default="default", help="a held-out suite (lopt tasks list)")
    parser.add_argument("--quick", action="store_true", help=f"suite {QUICK_SUITE!r}, one decay")
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.optimizer not in lopt.pretrained_names():
        raise SystemExit(
            f"--optimizer {args.optimizer!r} is not shipped; shipped: "
            + ", ".join(lopt.pretrained_names())
        )
    decays = [float(w) for w in args.weight_decays.split(",")]
    suite, num_steps = (QUICK_SUITE, QUICK_STEPS) if args.quick else (args.suite, 0)
    if args.quick:
        decays = decays[:1]
    path = output.resolve(args, os.path.join("weight_decay_sweep", f"{args.optimizer}.json"))
    start = time.perf_counter()
    results = sweep(args.optimizer, decays, suite, num_steps)
    record = {
        "benchmark": "weight_decay_sweep",
        "provenance": provenance(),
        "optimizer": args.optimizer,
        "suite": suite,
        "num_steps": num_steps or "each task's own",
        "seconds": time.perf_counter() - start,
        "results": results,
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(record, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
