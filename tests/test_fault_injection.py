"""Fault injection: ``lopt meta-train`` killed (SIGKILL) at random points, here mostly inside the
checkpoint and export written after every step, then resumed, ends with the theta of an
uninterrupted run, bit for bit, and one metrics row per step."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_run import tiny_argv, tiny_config

import lopt
from meta_train import layout, metrics, train

NUM_STEPS = 12
# Checkpoint and export after every step, so that most kills land in one of them.
CHANGES = {"num_outer_steps": NUM_STEPS, "checkpoint_every": 1, "export_every": 1}


def launch(workdir):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meta_train.cli",
            "meta-train",
            *tiny_argv(CHANGES),
            "--workdir",
            str(workdir),
        ],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(workdir) -> int:
    path = workdir / layout.METRICS_FILE
    return len(metrics.read_jsonl(str(path))) if path.exists() else 0


@pytest.mark.slow
def test_kills_at_random_points_resume_bit_exact(tmp_path):
    reference = train.meta_train(tiny_config(CHANGES), str(tmp_path / "reference"))["theta"]
    workdir = tmp_path / "run"
    for seed in (0, 1, 2):  # one kill per seed, each at a random point of a fresh process
        process = launch(workdir)
        start = logged_steps(workdir)
        while process.poll() is None and logged_steps(workdir) <= start:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it was killed; make it longer"
        time.sleep(np.random.default_rng(seed).uniform(0.0, 0.6))  # step, checkpoint or export
        process.send_signal(signal.SIGKILL)
        process.wait()
    process = launch(workdir)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err

    _, theta, metadata = lopt.load_optimizer(workdir / "export")
    assert metadata["meta_training_steps"] == NUM_STEPS
    for got, want in zip(jax.tree.leaves(theta), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    rows = metrics.read_jsonl(str(workdir / layout.METRICS_FILE))
    assert [row["step"] for row in rows] == list(range(1, NUM_STEPS + 1))
