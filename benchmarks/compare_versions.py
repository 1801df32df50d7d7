"""Two contenders of a recorded generalization benchmark, paired by task and seed: did a
meta-training run help over its starting point (``normalized-v2`` against ``normalized-v1``, the
theta it started from) or over the untrained rule?

Per task at one horizon, each seed's final loss ratio (train loss at the rate chosen by train
loss, test loss by inner-valid loss, as the benchmark selects), its mean log with a 95% t-interval
over seeds: "lower" or "higher" when the interval excludes 1, else "unclear"; over tasks, the
IQM of the ratios with its bootstrap interval. Reads the JSON; trains nothing::

    python -m benchmarks.compare_versions normalized-v2 normalized-v1
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from benchmarks.generalization import paired_log_ratio
from meta_train.evaluation import aggregate

RECORD = os.path.join("benchmarks", "results", "generalization", "generalization.json")
CRITERION = {"train_loss": "train", "test_loss": "valid"}


def compare(record: dict, ours: str, theirs: str, metric: str, horizon: float = 1.0) -> dict:
    """``{"lower", "higher", "unclear", "ratio_iqm"}`` of ``ours`` over ``theirs`` on ``metric``."""
    counts = {"lower": 0, "higher": 0, "unclear": 0}
    ratios = []
    for task in record["reports"]["suite"]["tasks"]:
        if task["horizon"] != horizon:
            continue
        paired = paired_log_ratio(
            *(
                task["runs"][name]["by_criterion"][CRITERION[metric]]["metrics"][metric]
                for name in (ours, theirs)
            )
        )
        if paired is None:
            continue
        ratios.append(paired["ratio"])
        side = "lower" if paired["high"] < 1 else "higher" if paired["low"] > 1 else "unclear"
        counts[side] += 1
    return {**counts, "ratio_iqm": aggregate.estimate(ratios)._asdict()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ours")
    parser.add_argument("theirs")
    parser.add_argument("--record", default=RECORD, help="a generalization.json")
    args = parser.parse_args(argv)
    with open(args.record, encoding="utf-8") as file:
        record: dict[str, Any] = json.load(file)
    for metric in CRITERION:
        result = compare(record, args.ours, args.theirs, metric)
        iqm = aggregate.Estimate(**result["ratio_iqm"])
        print(
            f"{args.ours} / {args.theirs}, {metric} at 1x: lower on {result['lower']} tasks, "
            f"higher on {result['higher']}, unclear on {result['unclear']}; ratio IQM "
            f"{iqm.format()}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
