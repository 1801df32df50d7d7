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

import lopt
from meta_train import metrics, train

NUM_STEPS = 12
ARGV = [
    "--config",
    "hpo_adam",
    "--config.groups.digits.family=quadratic",
    "--config.groups.digits.overrides.dim=4",
    "--config.groups.digits.num_pairs=2",
    "--config.estimator.horizon=12",
    "--config.estimator.window=3",
    "--config.estimator.sigma=0.05",
    "--config.outer.learning_rate=0.05",
    f"--config.num_outer_steps={NUM_STEPS}",
    "--config.num_devices=1",
    "--config.log_every=1",
    "--config.checkpoint_every=1",
    "--config.export_every=1",
    "--config.eval.num_tasks=0",
    "--config.comparison.num_tasks=0",
    "--config.progress=false",
]


def launch(workdir):
    return subprocess.Popen(
        [sys.executable, "-m", "meta_train.cli", "meta-train", *ARGV, "--workdir", str(workdir)],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(workdir) -> int:
    path = workdir / metrics.JSONL_FILE
    return len(metrics.read_jsonl(str(path))) if path.exists() else 0


def _config():
    config = train.config_flags.load_config("hpo_adam")
    _, overrides = train.config_flags.split_overrides(ARGV[2:])
    for key, text in overrides:
        train.config_flags.apply_override(config, key, text)
    return config


@pytest.mark.slow
def test_kills_at_random_points_resume_bit_exact(tmp_path):
    reference = train.meta_train(_config(), str(tmp_path / "reference"))["theta"]
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
    rows = metrics.read_jsonl(str(workdir / metrics.JSONL_FILE))
    assert [row["step"] for row in rows] == list(range(1, NUM_STEPS + 1))
