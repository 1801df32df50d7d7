"""Ship a finished meta-training run as a pretrained optimizer (package data of ``lopt``).

    python -m meta_train.ship runs/pretrained --name normalized-v1 --command "lopt meta-train ..."

copies ``<workdir>/export`` to ``lopt/weights/<name>/export`` and writes ``training.json`` beside
it: the config the run used, its budget (outer steps, inner particle-steps, wall time when
logged), the commit and versions it was shipped from, the date, the command, and the meta-loss
curve with its noise band (``binned_curve``: at most ``MAX_CURVE_POINTS`` bins of consecutive
logged steps, each its mean and standard error). ``lopt.pretrained(name)`` loads it.

    python -m meta_train.ship --refingerprint normalized-v1

gives a shipped export written before fingerprints (see ``lopt.export``) its fingerprint, after its
theta checksum has verified it (``lopt.export.add_fingerprint``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import jax
import numpy as np

import lopt
from lopt import shipped
from meta_train import layout, metrics

MAX_CURVE_POINTS = 100


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def training_record(
    workdir: str, command: str, commit: str | None = None, code_changes: str = ""
) -> dict[str, Any]:
    """What ``training.json`` holds for the run in ``workdir``; ``commit`` is the code the run
    used (default: this checkout's HEAD), ``code_changes`` what it had beyond that commit."""
    with open(os.path.join(workdir, layout.CONFIG_FILE), encoding="utf-8") as f:
        config = json.load(f)
    rows = [
        row
        for row in metrics.read_jsonl(os.path.join(workdir, layout.METRICS_FILE))
        if "meta_loss" in row  # held-out evaluation rows have none
    ]
    if not rows:
        raise ValueError(f"{workdir} has no logged metrics: is it a finished lopt meta-train run?")
    steps = np.asarray([row["step"] for row in rows])
    losses = np.asarray([row["meta_loss"] for row in rows], np.float64)
    pairs = sum(group["num_pairs"] for group in config["groups"].values())
    outer_steps = int(steps[-1])
    wall = [row.get("wall_time") for row in rows if row.get("wall_time") is not None]
    _, _, metadata = lopt.load_optimizer(os.path.join(workdir, layout.EXPORT_DIR))
    return {
        "config": config,
        "budget": {
            "outer_steps": outer_steps,
            "inner_particle_steps": outer_steps * pairs * 2 * config["estimator"]["window"],
            "logged_wall_seconds": float(wall[-1] - wall[0]) if len(wall) > 1 else None,
        },
        "export_metadata": metadata,
        "commit": commit or _commit(),
        "code_changes": code_changes,
        "lopt_version": lopt.export.package_version(),
        "jax_version": jax.__version__,
        "shipped": datetime.datetime.now(datetime.UTC).isoformat(),
        "command": command,
        "meta_loss_curve": binned_curve(steps, losses),
    }


def binned_curve(
    steps: np.ndarray, losses: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> dict[str, list]:
    """The logged meta-loss in at most ``max_points`` bins of consecutive rows (sizes differ by
    at most one): per bin its last step, its mean and the mean's standard error
    ``std(ddof=1) / sqrt(n)`` (``None`` for a bin of one row). Single logged steps are mostly
    noise (one outer step's particles); the band says which moves of the curve are not."""
    bins = np.array_split(np.arange(len(steps)), min(len(steps), max_points))
    errors = [
        float(np.std(losses[b], ddof=1) / np.sqrt(len(b))) if len(b) > 1 else None for b in bins
    ]
    return {
        "step": [int(steps[b[-1]]) for b in bins],
        "meta_loss": [float(np.mean(losses[b])) for b in bins],
        "standard_error": errors,
        "rows_per_point": [len(b) for b in bins],
    }


def ship(
    workdir: str,
    name: str,
    command: str,
    weights_dir: str = shipped.WEIGHTS_DIR,
    commit: str | None = None,
    code_changes: str = "",
) -> str:
    """Copy the run's export into ``weights_dir`` (the package's) as ``name``; return the export's
    new path."""
    record = training_record(workdir, command, commit, code_changes)
    target = os.path.join(weights_dir, name)
    if os.path.exists(target):
        shutil.rmtree(target)
    destination = os.path.join(target, shipped.EXPORT_DIR)
    shutil.copytree(os.path.join(workdir, layout.EXPORT_DIR), destination)
    # A run's export from before fingerprints gets one here (its theta verified first).
    lopt.export.add_fingerprint(destination)
    with open(os.path.join(target, shipped.TRAINING_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return destination


def refingerprint(name: str, weights_dir: str = shipped.WEIGHTS_DIR) -> str:
    """Give the shipped export ``name`` a fingerprint (``lopt.export.add_fingerprint``, which
    verifies its theta first). Returns the export's path."""
    path = os.path.join(weights_dir, name, shipped.EXPORT_DIR)
    lopt.export.add_fingerprint(path)
    lopt.load_optimizer(path, require_fingerprint=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", nargs="?", help="a finished `lopt meta-train` workdir")
    parser.add_argument("--name", default=shipped.DEFAULT_PRETRAINED)
    parser.add_argument(
        "--refingerprint",
        metavar="NAME",
        help="instead of shipping a run: give the shipped export NAME a fingerprint",
    )
    parser.add_argument("--command", help="the command that produced the run (required)")
    parser.add_argument("--commit", default=None, help="the code the run used (default: HEAD)")
    parser.add_argument("--code-changes", default="", help="what the run's code had beyond it")
    args = parser.parse_args(argv)
    if args.refingerprint:
        print(f"fingerprinted {refingerprint(args.refingerprint)}", file=sys.stderr)
        return 0
    if not args.workdir or not args.command:
        parser.error("a workdir and --command are required to ship a run")
    path = ship(
        args.workdir, args.name, args.command, commit=args.commit, code_changes=args.code_changes
    )
    # Verifies the copy (fingerprint and theta checksum) before anyone ships it.
    lopt.load_optimizer(path, require_fingerprint=True)
    print(f"shipped {args.workdir} as {args.name!r} at {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
