"""The release gate: a shipped candidate becomes ``lopt.pretrained()``'s default only when the
generalization benchmark (``benchmarks/generalization.py``) shows it beating the current default.

The benchmark runs every shipped version as a contender, so one JSON holds both, measured alike
against per-task tuned AdamW. The candidate passes when, at horizon 1x,

- its test-loss win rate against tuned AdamW is higher than the incumbent's;
- its training-loss win rate is not lower than the incumbent's by more than the incumbent's
  95% interval reaches below it (the interval's lower half-width);

and none of its runs diverged at any horizon of the benchmark (1x, 2x, 10x, the wide task).

    python -m meta_train.release_gate lopt/weights/normalized-v2/generalization.json \\
        --candidate normalized-v2 [--promote]

``--promote`` writes the candidate's name into ``lopt/weights/default.json`` (what
``lopt.shipped`` reads) only when every check passes; exit status 0 when it passes, 3 when not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from lopt import shipped

GATE_HORIZON = "1x"


class Check(NamedTuple):
    """One criterion of the gate: its name, whether the candidate passed, and the figures."""

    name: str
    passed: bool
    detail: str


def _rows(benchmark: dict, contender: str) -> list[dict[str, Any]]:
    rows = [row for row in benchmark["headline"] if row["contender"] == contender]
    if not rows:
        known = sorted({row["contender"] for row in benchmark["headline"]})
        raise ValueError(f"the benchmark has no contender {contender!r}; it has {known}")
    return rows


def _at_gate_horizon(rows: list[dict[str, Any]], contender: str) -> dict[str, Any]:
    for row in rows:
        if row["horizon"] == GATE_HORIZON:
            return row
    raise ValueError(f"the benchmark has no {GATE_HORIZON} row for {contender!r}")


def check(benchmark: dict, candidate: str, incumbent: str) -> list[Check]:
    """The gate's checks of ``candidate`` against ``incumbent`` in one benchmark JSON."""
    candidate_rows = _rows(benchmark, candidate)
    ours = _at_gate_horizon(candidate_rows, candidate)
    theirs = _at_gate_horizon(_rows(benchmark, incumbent), incumbent)
    test_ours, test_theirs = ours["win_rate_test_loss"], theirs["win_rate_test_loss"]
    train_ours, train_theirs = ours["win_rate_train_loss"], theirs["win_rate_train_loss"]
    allowance = train_theirs["value"] - train_theirs["low"]
    diverged = [f"{row['horizon']}: {row['diverged_runs']}" for row in candidate_rows]
    return [
        Check(
            "test-loss win rate vs tuned AdamW up",
            test_ours["value"] > test_theirs["value"],
            f"{test_ours['value']:.3f} vs {test_theirs['value']:.3f}",
        ),
        Check(
            "train-loss win rate not down by more than its interval",
            train_ours["value"] >= train_theirs["value"] - allowance,
            f"{train_ours['value']:.3f} vs {train_theirs['value']:.3f} (allowed down to "
            f"{train_theirs['value'] - allowance:.3f})",
        ),
        Check(
            "no divergence",
            all(row["tasks_with_divergence"] == 0 for row in candidate_rows),
            "; ".join(diverged),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", help="a generalization.json with both versions as contenders")
    parser.add_argument("--candidate", required=True, help="the shipped version to judge")
    parser.add_argument(
        "--incumbent", default=None, help="the version to beat (default: the current default)"
    )
    parser.add_argument("--promote", action="store_true", help="make the candidate the default")
    args = parser.parse_args(argv)
    incumbent = args.incumbent or shipped.DEFAULT_PRETRAINED
    with open(args.benchmark, encoding="utf-8") as file:
        benchmark = json.load(file)
    try:
        checks = check(benchmark, args.candidate, incumbent)
    except ValueError as error:
        print(f"release gate: {error}", file=sys.stderr)
        return 2
    for item in checks:
        print(f"[{'pass' if item.passed else 'FAIL'}] {item.name}: {item.detail}")
    passed = all(item.passed for item in checks)
    print(f"{args.candidate} vs {incumbent}: {'passes' if passed else 'does not pass'} the gate")
    if passed and args.promote:
        shipped.set_default(args.candidate)
        print(f"lopt.pretrained() now loads {args.candidate}")
    return 0 if passed else 3


if __name__ == "__main__":
    sys.exit(main())
