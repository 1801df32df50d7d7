"""The tables of ``docs/paper_results.md``, generated from the result JSONs.

    python -m benchmarks.paper.tables                                # print every table
    python -m benchmarks.paper.tables --write docs/paper_results.md  # refresh them in place

``--write`` replaces what lies between ``<!-- table: NAME -->`` and ``<!-- /table -->``.

``tests/test_paper_claims.py`` checks that each table appears verbatim in the document, so a
number there is always one of the JSONs'. Runs that a rerun replaced (``superseded`` in a JSON)
are listed beside the new ones, marked "before".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

PAPER = os.path.join("benchmarks", "results", "paper")
VARIANCE = os.path.join("benchmarks", "results", "variance.json")
BEFORE = " (before)"
IDENTICAL = " (rerun: identical)"
MAX_LENGTH_SHOWN = 5


def fmt(value: float | None) -> str:
    """Four significant digits; ``-`` for a missing value."""
    if value is None or not np.isfinite(value):
        return "-" if value is None else str(value)
    return f"{value:.4g}"


def per_seed(values: Any) -> str:
    return ", ".join(fmt(v) for v in np.ravel(values))


def pm(value: float, se: float) -> str:
    """``value ± se``, the standard error to two significant digits."""
    return f"{fmt(value)} ± {se:.2g}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *map(_row, rows)])


def same_result(new: Any, old: Any) -> bool:
    """Whether two results agree in everything but wall times (keys naming seconds)."""
    if isinstance(new, dict) and isinstance(old, dict):
        keys = {k for k in new.keys() | old.keys() if "seconds" not in k}
        return all(same_result(new.get(k), old.get(k)) for k in keys)
    return new == old


def _with_superseded(payload: dict, section: str) -> list[tuple[str, dict]]:
    """``(label, run)`` for every run, each replaced run right after its replacement; a rerun
    that reproduced the replaced run is one row marked ``IDENTICAL``."""
    old = payload.get("superseded", {})
    items = []
    for label, run in payload[section].items():
        replaced = old.get(label, {}).get(section)
        if replaced is None:
            items.append((label, run))
        elif same_result(run, replaced):
            items.append((label + IDENTICAL, run))
        else:
            items.extend([(label, run), (label + BEFORE, replaced)])
    return items


def variance_vs_unrolls(payload: dict) -> str:
    """``tr Cov / ||g||^2 ± SE`` per W and the largest bias z over the row's coordinates."""
    windows = [row["num_windows"] for row in next(iter(payload["systems"].values()))["es_single"]]
    header = ["system", "estimator", *(f"W={w}" for w in windows), "max bias abs z (per W)"]
    rows = []
    for name, entry in payload["systems"].items():
        for estimator in ("es_single", "pes"):
            cells = [
                pm(r["normalised_variance"], r["normalised_variance_se"]) for r in entry[estimator]
            ]
            z = per_seed([r["max_bias_z"] for r in entry[estimator]])
            rows.append([f"{name} (P={entry['num_theta']})", estimator, *cells, z])
    return _table(header, rows)


def influence_balancing(payload: dict) -> str:
    header = ["run", "final theta per seed", "median", "median abs error"]
    rows = [
        [
            label,
            per_seed(run["final_theta"]),
            fmt(run["median_final_theta"]),
            fmt(run["median_abs_error"]),
        ]
        for label, run in _with_superseded(payload, "runs")
    ]
    return _table(header, rows)


def lr_schedule(payload: dict) -> str:
    header = [
        "run",
        "outer steps",
        "final lr per seed",
        "final power per seed",
        f"objective per seed (grid best {fmt(payload['grid_best']['objective'])})",
    ]
    rows = [
        [
            label,
            str(run["outer_steps"]),
            per_seed(np.exp(run["final_log_lr"])),
            per_seed(run["final_decay_power"]),
            per_seed(run["final_objective"]),
        ]
        for label, run in _with_superseded(payload, "runs")
    ]
    return _table(header, rows)


def passed_at(run: dict, length: int) -> int | None:
    """The outer step of the check at which ``length`` reached the accuracy to advance."""
    for step, current, accuracy in zip(run["steps"], run["length"], run["accuracy"], strict=True):
        if current == length and accuracy >= 0.95:
            return step
    return None


def lstm_copy(payload: dict) -> str:
    lengths = range(1, MAX_LENGTH_SHOWN + 1)
    header = [
        "estimator",
        "longest L passed per seed",
        *(f"L={n} passed at step (per seed)" for n in lengths),
    ]
    rows = []
    for label, result in _with_superseded(payload, "results"):
        steps = [
            ", ".join(str(passed_at(run, n) or "-") for run in result["runs"]) for n in lengths
        ]
        rows.append([label, per_seed(result["length_reached"]), *steps])
    return _table(header, rows)


def meta_loss_windows(meta_loss: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: mean meta-loss over the first 20 outer steps and over the last 10%."""
    losses = np.asarray(meta_loss, float)
    tail = max(1, losses.shape[1] // 10)
    return np.nanmean(losses[:, :20], axis=1), np.nanmean(losses[:, -tail:], axis=1)


def learned_optimizer(payload: dict) -> str:
    training = payload["meta_training"]
    reference = meta_loss_windows(training["ES-Single"]["meta_loss"])[1]
    header = [
        "estimator",
        "first 20 steps per seed",
        "last 10% per seed",
        "last 10% / ES-Single's, per seed",
    ]
    rows = []
    for label, run in _with_superseded(payload, "meta_training"):
        first, last = meta_loss_windows(run["meta_loss"])
        rows.append([label, per_seed(first), per_seed(last), per_seed(last / reference)])
    return _table(header, rows)


def learned_optimizer_held_out(payload: dict) -> str:
    header = ["optimizer", "train loss: mean (per meta-seed)", "test accuracy"]
    rows = []
    for label, figures in _with_superseded(payload, "held_out_summary"):
        seeds = figures.get("per_meta_seed_train_loss")
        loss = fmt(figures["train_loss"]) + (f" ({per_seed(seeds)})" if seeds else "")
        rows.append([label, loss, fmt(figures["test_accuracy"])])
    return _table(header, rows)


def variance(payload: dict) -> str:
    """One row per system, estimator and T/K; replaced estimators' rows marked "before"."""
    header = [
        "system",
        "estimator",
        "T/K",
        "window trVar/norm2 ± SE",
        "theory",
        "problem trVar/norm2 ± SE",
        "bias/norm ± SE",
    ]
    rows = []
    old = payload.get("superseded", {})
    for row in payload["rows"]:
        (replaced,) = [
            r
            for r in old.get(row["estimator"], {}).get("rows", [])
            if (r["system"], r["T_over_K"]) == (row["system"], row["T_over_K"])
        ] or [None]
        if replaced is None:
            rows.append(_variance_row(row, row["estimator"]))
        elif same_result(row, replaced):
            rows.append(_variance_row(row, row["estimator"] + IDENTICAL))
        else:
            rows.append(_variance_row(row, row["estimator"]))
            rows.append(_variance_row(replaced, replaced["estimator"] + BEFORE))
    return _table(header, rows)


def pes_seeds(payloads: list[dict]) -> str:
    """PES on the memoryless system per seed: window ratio ± SE, theory and the z-score."""
    header = ["seed", *(f"T/K={w}: ratio ± SE (z)" for w in (10, 100, 1000))]
    rows = []
    for payload in payloads:
        cells = []
        for windows in (10, 100, 1000):
            (row,) = [
                r
                for r in payload["rows"]
                if (r["system"], r["estimator"], r["T_over_K"]) == ("independent", "pes", windows)
            ]
            z = (row["variance_ratio"] - row["theory"]) / row["variance_ratio_se"]
            cells.append(f"{pm(row['variance_ratio'], row['variance_ratio_se'])} ({z:+.1f})")
        rows.append([str(payload["seed"]), *cells])
    return _table(header, rows)


def _variance_row(row: dict, estimator: str) -> list[str]:
    return [
        row["system"],
        estimator,
        str(row["T_over_K"]),
        pm(row["variance_ratio"], row["variance_ratio_se"]),
        fmt(row.get("theory")),
        pm(row["problem_variance_ratio"], row["problem_variance_ratio_se"]),
        pm(row["bias"], row["bias_se"]),
    ]


TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "variance vs unrolls": (os.path.join(PAPER, "variance_vs_unrolls.json"), variance_vs_unrolls),
    "influence balancing": (os.path.join(PAPER, "influence_balancing.json"), influence_balancing),
    "lr schedule": (os.path.join(PAPER, "lr_schedule.json"), lr_schedule),
    "LSTM copy": (os.path.join(PAPER, "lstm_copy.json"), lstm_copy),
    "learned optimizer": (os.path.join(PAPER, "learned_optimizer.json"), learned_optimizer),
    "learned optimizer, held out": (
        os.path.join(PAPER, "learned_optimizer.json"),
        learned_optimizer_held_out,
    ),
    "variance benchmark": (VARIANCE, variance),
}


# benchmarks/variance.py --skip-mlp --seed 1 and 2: the memoryless system's PES against theory.
SEED_RUNS = (
    VARIANCE,
    os.path.join(PAPER, "variance_independent_seed1.json"),
    os.path.join(PAPER, "variance_independent_seed2.json"),
)


def _load(root: str, path: str) -> dict:
    with open(os.path.join(root, path)) as file:
        return json.load(file)


def all_tables(root: str = ".") -> dict[str, str]:
    """``name -> markdown table`` from the JSONs under ``root`` (the repository)."""
    tables = {name: render(_load(root, path)) for name, (path, render) in TABLES.items()}
    tables["PES variance per seed"] = pes_seeds([_load(root, path) for path in SEED_RUNS])
    return tables


def refresh(text: str, tables: dict[str, str]) -> str:
    """``text`` with each marked table replaced by the current one (unknown names are errors)."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in tables:
            raise SystemExit(f"unknown table {name!r}; the tables are {sorted(tables)}")
        return f"<!-- table: {name} -->\n{tables[name]}\n<!-- /table -->"

    return re.sub(r"<!-- table: (.+?) -->\n.*?<!-- /table -->", replace, text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--write", help="a markdown file whose marked tables to refresh")
    args = parse.parse_args(argv)
    tables = all_tables()
    if args.write is None:
        for name, table in tables.items():
            print(f"<!-- table: {name} -->\n{table}\n<!-- /table -->\n")
        return 0
    with open(args.write) as file:
        text = file.read()
    with open(args.write, "w") as file:
        file.write(refresh(text, tables))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
