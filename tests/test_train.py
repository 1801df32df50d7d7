"""The meta-trainer: device-count invariance, exact resume, group weighting, workdir guard, config
errors before any compile, and SIGTERM handling (a subprocess).

Everything runs the learnable-Adam (hyperparameter optimisation) config on tiny quadratic families
so that compiles are short; what is tested (sharding, checkpoints, the CLI) does not depend on the
inner problem.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

import lopt
from meta_train import checkpoint, cli, config_flags, metrics, outer, train
from meta_train.configs import default

# Slow tier (multi-device and multi-process meta-training runs); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

NUM_STEPS = 4
# The tiny config on four pairs per group and every device, with a faster outer learning rate.
TINY_OVERRIDES = {
    "num_devices": "0",
    "groups.digits.num_pairs": "4",
    "estimator.sigma": "0.05",
    "outer.learning_rate": "0.05",
    "num_outer_steps": str(NUM_STEPS),
}


def tiny_config(**changes) -> ml_collections.ConfigDict:
    """The tiny run on two groups of the same quadratic family (weights 1 and 3; the same static
    config, so one burn-in compile serves both), 4 pairs each, T = 12, K = 3."""
    config = config_flags.load_config("tiny")
    for key, text in TINY_OVERRIDES.items():
        config_flags.apply_override(config, key, text)
    config.groups.second = default.task_group("quadratic", 4, weight=3.0, overrides={"dim": 4})
    for key, value in changes.items():
        config_flags.apply_override(config, key, str(value))
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run on 1, 2 and 4 devices: ``{num_devices: (summary, workdir)}``."""
    results = {}
    for num_devices in (1, 2, 4):
        workdir = str(tmp_path_factory.mktemp(f"devices{num_devices}"))
        summary = train.meta_train(tiny_config(num_devices=num_devices), workdir)
        results[num_devices] = (summary, workdir)
    return results


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_theta_moves_and_outputs_exist(runs):
    summary, workdir = runs[4]
    assert summary["step"] == NUM_STEPS and summary["interrupted"] is None
    assert all(0 < steps < 12 for steps in summary["burn_in_steps"])  # staggered within T = 12
    theta_key = jax.random.split(jax.random.key(0))[0]  # as meta_train derives it from the seed
    start = config_flags.validate(tiny_config()).optimizer.init_meta_params(theta_key)
    moved = max(
        np.max(np.abs(a - b))
        for a, b in zip(_leaves(summary["theta"]), _leaves(start), strict=True)
    )
    assert moved > 1e-3  # four Adam steps of lr 0.05 must move theta
    for name in ("config.json", "metrics.jsonl", "curves.png", "parameter_overview.txt"):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    _, exported, metadata = lopt.load_optimizer(os.path.join(workdir, "export"))
    for got, want in zip(_leaves(exported), _leaves(summary["theta"]), strict=True):
        np.testing.assert_array_equal(got, want)
    assert metadata["meta_training_steps"] == NUM_STEPS and metadata["estimator"] == "es_single"
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    assert all(np.isfinite(r["meta_loss"]) and r["particle_steps_per_s"] > 0 for r in rows)


def test_same_theta_on_1_2_and_4_devices(runs):
    reference = _leaves(runs[1][0]["theta"])
    for num_devices in (2, 4):
        for got, want in zip(_leaves(runs[num_devices][0]["theta"]), reference, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_meta_loss_is_the_weighted_average_of_the_groups(runs):
    _, workdir = runs[4]
    for row in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        expected = (row["group/digits/meta_loss"] + 3 * row["group/second/meta_loss"]) / 4
        np.testing.assert_allclose(row["meta_loss"], expected, rtol=1e-5)


def test_interrupted_then_resumed_run_ends_with_the_same_theta(runs, tmp_path):
    workdir = str(tmp_path)
    first = train.meta_train(tiny_config(num_devices=4, num_outer_steps=NUM_STEPS // 2), workdir)
    assert first["step"] == NUM_STEPS // 2
    resumed = train.meta_train(tiny_config(num_devices=4), workdir)
    assert resumed["step"] == NUM_STEPS
    for got, want in zip(_leaves(resumed["theta"]), _leaves(runs[4][0]["theta"]), strict=True):
        np.testing.assert_array_equal(got, want)
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))


def test_theta_average_is_exported_and_resumes_bit_for_bit(runs, tmp_path):
    """With ``outer.average_decay`` the export (and the summary) is the average of the iterates,
    whose trajectory is the plain run's; an interrupted and resumed run ends with the same
    average, which lives in the checkpointed outer state."""
    averaged = tiny_config(num_devices=4, **{"outer.average_decay": 0.5})
    whole = train.meta_train(averaged, str(tmp_path / "whole"))
    _, exported, _ = lopt.load_optimizer(str(tmp_path / "whole" / "export"))
    for got, want in zip(_leaves(exported), _leaves(whole["theta"]), strict=True):
        np.testing.assert_array_equal(got, want)
    plain = _leaves(runs[4][0]["theta"])
    assert max(np.max(np.abs(a - b)) for a, b in zip(_leaves(exported), plain, strict=True)) > 1e-4
    workdir = str(tmp_path / "resumed")
    half = tiny_config(num_devices=4, num_outer_steps=NUM_STEPS // 2)
    half.outer.average_decay = 0.5
    train.meta_train(half, workdir)
    resumed = train.meta_train(averaged, workdir)
    for got, want in zip(_leaves(resumed["theta"]), _leaves(whole["theta"]), strict=True):
        np.testing.assert_array_equal(got, want)


def test_workdir_with_another_config_is_refused_unless_overwrite(runs, tmp_path, capsys):
    _, workdir = runs[4]
    argv = ["--config", "tiny", "--workdir", workdir]
    argv += [f"--config.{key}={value}" for key, value in TINY_OVERRIDES.items()]
    assert cli.main(["meta-train", *argv, "--config.estimator.sigma=0.2"]) == 2
    message = capsys.readouterr().err
    assert "different config" in message and "estimator.sigma" in message
    assert "--overwrite" in message

    # Overwrite deletes the old run's outputs (and nothing else) and records the new config.
    other = tmp_path / "other"
    checkpoint.prepare_workdir(str(other), tiny_config())
    (other / "notes.txt").write_text("mine")  # a user's file in a lopt workdir
    (other / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(checkpoint.WorkdirConfigMismatchError):
        checkpoint.prepare_workdir(str(other), tiny_config(seed=1))
    checkpoint.prepare_workdir(str(other), tiny_config(seed=1), overwrite=True)
    assert sorted(os.listdir(other)) == ["config.json", "lopt-workdir.json", "notes.txt"]
    assert json.loads((other / "config.json").read_text())["seed"] == 1
    # A longer run of the same config is a resume, not a different config.
    checkpoint.prepare_workdir(str(other), tiny_config(seed=1, num_outer_steps=99))


@pytest.mark.parametrize(
    "override, named",
    [
        ("--config.estimator.windw=3", ["estimator.windw", "window"]),
        ("--config.estimator.window=ten", ["estimator.window", "integer"]),
        ("--config.estimator.name=es_singel", ["estimator.name", "es_single", "pes"]),
        ("--config.groups.digits.family=mlp_digit", ["groups.digits.family", "mlp_digits"]),
        ("--config.optimizer.architecture=mpl", ["optimizer.architecture", "mlp"]),
        ("--config.groups.digits.num_pairs=3", ["groups.digits.num_pairs", "multiple"]),
        ("--config.groups.digits.overrides.widht=3", ["groups.digits.overrides", "widht"]),
        ("--config.progress=maybe", ["progress", "boolean"]),
        ("--config.estimator=3", ["estimator", "group"]),
        ("--config.pairs_per_chunk=-2", ["pairs_per_chunk", "at least -1"]),
    ],
)
def test_bad_config_fails_before_anything_runs(override, named, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["meta-train", "--workdir", str(workdir), "--config.num_devices=2", override]
    assert cli.main(argv) == 2
    message = capsys.readouterr().err
    for word in named:
        assert word in message, (word, message)
    assert not workdir.exists()  # refused before the workdir, the data or any compile


def test_automatic_device_count_and_chunking():
    config = tiny_config(num_devices=0)
    config.groups.second.num_pairs = 6
    # The most devices of the 4 that split both groups' pairs (4 and 6) evenly.
    assert config_flags.num_devices_to_use(config, 4) == 2
    assert config_flags.num_devices_to_use(tiny_config(num_devices=0), 4) == 4
    assert config_flags.num_devices_to_use(tiny_config(num_devices=1), 4) == 1
    config_flags.validate(config, num_available_devices=4)
    chunks = {
        (setting, platform): config_flags.pairs_per_chunk(
            tiny_config(pairs_per_chunk=setting), platform
        )
        for setting in (0, -1, 3)
        for platform in ("cpu", "gpu")
    }
    assert chunks == {
        (0, "cpu"): 1,
        (0, "gpu"): None,
        (-1, "cpu"): None,
        (-1, "gpu"): None,
        (3, "cpu"): 3,
        (3, "gpu"): 3,
    }


def test_override_parsing_keeps_types():
    config = config_flags.load_config("default")
    config_flags.apply_override(config, "optimizer.hyperparameters.hidden_sizes", "(16, 8)")
    config_flags.apply_override(config, "estimator.sigma", "1e-3")
    config_flags.apply_override(config, "outer.learning_rate", "3")
    config_flags.apply_override(config, "estimator.stagger", "False")
    assert config.optimizer.hyperparameters.hidden_sizes == (16, 8)
    assert config.estimator.sigma == 1e-3 and config.outer.learning_rate == 3.0
    assert isinstance(config.outer.learning_rate, float) and config.estimator.stagger is False
    assert config_flags.split_overrides(["--workdir", "w", "--config.seed", "3"]) == (
        ["--workdir", "w"],
        [("seed", "3")],
    )
    for name in config_flags.config_names():
        config_flags.validate(config_flags.load_config(name), num_available_devices=1)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    workdir = tmp_path / "run"
    argv = ["--config", "tiny", "--workdir", str(workdir)]
    argv += [f"--config.{key}={value}" for key, value in TINY_OVERRIDES.items()]
    argv += ["--config.num_outer_steps=100000", "--config.checkpoint_every=100000"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    process = subprocess.Popen(
        [sys.executable, "-m", "meta_train.cli", "meta-train", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    jsonl = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if jsonl.exists() and jsonl.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM" in output
    steps = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    assert steps and max(steps) >= 2
    assert (workdir / "export" / "optimizer.json").exists()
    exported = json.loads((workdir / "export" / "optimizer.json").read_text())
    assert exported["metadata"]["meta_training_steps"] == max(steps)


def test_two_processes_match_two_devices(runs, tmp_path):
    """`lopt meta-train --distributed` in two local CPU processes (one device each, gloo
    collectives) ends with the theta of one process with two devices, and process 0 exports it."""
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_train import tiny_config\n\n"
        "def get_config():\n    return tiny_config(num_devices=2)\n"
    )
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "meta_train.cli", "meta-train", "--config", str(config_file)]
    command += ["--workdir", str(workdir), "--distributed", "--num-processes=2"]
    command += [f"--coordinator-address=localhost:{port}"]
    processes = [
        subprocess.Popen(
            [*command, f"--process-id={index}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    _, exported, _ = lopt.load_optimizer(workdir / "export")
    for got, want in zip(_leaves(exported), _leaves(runs[2][0]["theta"]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_outer_step_has_one_collective():
    """All groups' sums cross devices in one all-reduce (one rendezvous per outer step)."""
    config = tiny_config(num_devices=4)
    validated = config_flags.validate(config)
    optimizer, groups = validated.optimizer, train.build_groups(validated)
    mesh = outer.make_mesh(4)
    settings = outer.OuterSettings(optimizer="adam", learning_rate=0.05)
    theta = optimizer.init_meta_params(jax.random.key(0))
    state = outer.abstract_meta_state(groups, theta, settings, mesh)
    outer_step = outer.OuterStep(groups, settings, mesh)
    outer_step.compile(state)
    hlo = outer_step.compiled.as_text()
    assert hlo.count(" all-reduce(") == 1, [line for line in hlo.splitlines() if "all-" in line]
