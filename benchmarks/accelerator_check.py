"""Everything worth running while an accelerator is lent, in one command that fits a short lease.

Stages, each a subprocess with its own time limit (a failing or slow stage is recorded and the next
one still runs):

1. ``tests``: the test tier that exercises sharding and the engine (``tests/test_engine.py``,
   ``test_estimators.py``, ``test_checkpoint_recovery.py``), on the accelerator;
2. ``throughput``: ``benchmarks/meta_train_throughput.py --accelerator`` (2048 pairs, 4096
   trainings, all pairs vectorised, one device): inner particle-steps/s and peak device memory;
3. ``optimizer_step``: ``benchmarks/optimizer_step.py`` (the 1.07M-parameter train step);
4. ``meta_train``: a short ``lopt meta-train`` of the default shipped optimizer's recipe (the
   config its training record names, e.g. ``pretrained_v8``; 50 outer steps, no held-out
   evaluation); ``--quick`` runs the ``tiny`` config (compiles in seconds).

It writes one JSON (provenance, each stage's command, exit status, seconds, its results and the
tail of its output) under the scratch folder, or ``--out``/``--record`` (``benchmarks/output.py``).

    python -m benchmarks.accelerator_check            # on a GPU / TPU
    python -m benchmarks.accelerator_check --quick    # every stage in miniature, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

from benchmarks import output
from benchmarks.provenance import ROOT, provenance
from lopt import shipped
from meta_train import config_flags

TAIL_CHARS = 3000


class Stage(NamedTuple):
    name: str
    argv: list[str]  # after the Python interpreter
    timeout_s: int
    result_file: str | None  # a JSON the stage writes into the work folder, read into the record


def _pytest(*args: str) -> list[str]:
    """pytest's arguments (after the interpreter): quiet, no cache written into the checkout."""
    return ["-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def recipe_config(name: str = shipped.DEFAULT_PRETRAINED) -> str:
    """The shipped config that meta-trained the shipped optimizer ``name``: the ``--config`` of
    the command in its training record."""
    command = shipped.pretrained_info(name)["command"]
    found = re.search(r"--config[ =](\S+)", command)
    if not found or found.group(1) not in config_flags.config_names():
        raise ValueError(f"{name}'s training record names no shipped config: {command!r}")
    return found.group(1)


def stages(quick: bool, work: str) -> list[Stage]:
    """The stages for a full (accelerator) or ``quick`` (CPU smoke) check, writing into ``work``."""
    throughput = os.path.join(work, "throughput.json")
    optimizer_step = os.path.join(work, "optimizer_step.json")
    meta_train = [
        "-m",
        "meta_train.cli",
        "meta-train",
        "--config",
        recipe_config(),
        "--workdir",
        os.path.join(work, "meta_train"),
        "--config.progress=false",
        "--config.eval.num_tasks=0",
        "--config.comparison.num_tasks=0",
        "--config.num_devices=1",
    ]
    if quick:
        return [
            Stage(
                "tests",
                _pytest(
                    "-x", "tests/test_engine.py", "-k", "shard_map_matches_one_device and es_single"
                ),
                300,
                None,
            ),
            Stage(
                "throughput",
                [
                    "-m",
                    "benchmarks.meta_train_throughput",
                    "--quick",
                    "--devices",
                    "1",
                    "--pairs-per-chunk",
                    "all",
                    "--no-evosax",
                    "--out",
                    throughput,
                ],
                300,
                throughput,
            ),
            Stage(
                "optimizer_step",
                [
                    "-m",
                    "benchmarks.optimizer_step",
                    "--quick",
                    "--rounds",
                    "1",
                    "--optimizers",
                    "normalized",
                    "--no-toy",
                    "--out",
                    optimizer_step,
                ],
                300,
                optimizer_step,
            ),
            Stage(
                "meta_train",
                [
                    "-m",
                    "meta_train.cli",
                    "meta-train",
                    "--config",
                    "tiny",
                    "--workdir",
                    os.path.join(work, "meta_train"),
                ],
                300,
                None,
            ),
        ]
    return [
        Stage(
            "tests",
            _pytest(
                "tests/test_engine.py",
                "tests/test_estimators.py",
                "tests/test_checkpoint_recovery.py",
            ),
            180,
            None,
        ),
        Stage(
            "throughput",
            [
                "-m",
                "benchmarks.meta_train_throughput",
                "--accelerator",
                "--devices",
                "1",
                "--pairs-per-chunk",
                "all",
                "--no-evosax",
                "--out",
                throughput,
            ],
            150,
            throughput,
        ),
        Stage(
            "optimizer_step",
            ["-m", "benchmarks.optimizer_step", "--rounds", "5", "--out", optimizer_step],
            60,
            optimizer_step,
        ),
        Stage(
            "meta_train",
            [
                *meta_train,
                "--config.num_outer_steps=50",
                "--config.checkpoint_every=50",
                "--config.export_every=1000",
            ],
            90,
            None,
        ),
    ]


def run_stage(stage: Stage) -> dict[str, Any]:
    """Run one stage: its command, exit status (``None`` when it ran out of time), seconds, the
    JSON it wrote (if any) and the tail of its output."""
    command = [sys.executable, *stage.argv]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=stage.timeout_s
        )
        returncode, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        returncode = None
        text = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else error.stdout
        text = (text or "") + f"\n[timed out after {stage.timeout_s} s]"
    record: dict[str, Any] = {
        "command": " ".join(["python", *stage.argv]),
        "returncode": returncode,
        "seconds": time.perf_counter() - start,
        "timeout_s": stage.timeout_s,
        "output_tail": text[-TAIL_CHARS:],
    }
    if stage.result_file and os.path.exists(stage.result_file):
        with open(stage.result_file) as f:
            record["results"] = json.load(f)
    print(
        f"{stage.name:<16} rc={returncode} {record['seconds']:.0f}s (limit {stage.timeout_s}s)",
        flush=True,
    )
    return record


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: throughput and memory of the vectorised engine against Adam, the
    optimizer-step ratios, and whether every stage passed."""
    out: dict[str, Any] = {
        "all_passed": all(s["returncode"] == 0 for s in record["stages"].values())
    }
    throughput = record["stages"].get("throughput", {}).get("results")
    if throughput:
        out["throughput"] = {
            name: {
                "particle_steps_per_s": r["particle_steps_per_s"],
                "device_peak_mb": r.get("device_peak_mb"),
                "rss_peak_mb": r.get("rss_peak_mb"),
            }
            for name, r in throughput["results"].items()
        }
    step = record["stages"].get("optimizer_step", {}).get("results")
    if step:
        out["optimizer_step_ratios"] = step["ratios"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every stage in miniature (CPU)")
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    path = output.resolve(args, "accelerator_check.json")
    record: dict[str, Any] = {"provenance": provenance(argv), "quick": args.quick, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as work:
        for stage in stages(args.quick, work):
            record["stages"][stage.name] = run_stage(stage)
    record["load_average_after"] = list(os.getloadavg())
    record["summary"] = summary(record)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=str)
    print(json.dumps(record["summary"], indent=2, default=str))
    print(f"wrote {path}")
    return 0 if record["summary"]["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
