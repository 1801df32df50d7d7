"""Health verdicts: a run that cannot produce a usable optimizer ends with rc 3 and one line saying
why (non-finite theta never saved or exported; no usable update; every particle diverged); warnings
when the skipped or masked fraction crosses its threshold; the summary states both."""

import math

import jax
import jax.numpy as jnp
import pytest
from tiny_run import tiny_argv

from meta_train import cli, health, outer


def interval(skipped=0.0, masked=0.0, norm=1.0):
    return {"skipped_update": skipped, "masked_fraction": masked, "estimate_norm": norm}


def test_a_healthy_run_passes_and_its_summary_states_skips_and_masking():
    lines = []
    monitor = health.HealthMonitor(lines.append)
    assert monitor.observe(10, interval(skipped=0.1, masked=0.02), 10) is None
    assert monitor.observe(20, interval(), 10) is None
    assert monitor.final_verdict(20) is None
    assert monitor.summary() == "skipped updates 1 of 20, masked fraction 0.010"
    assert lines == []


def test_a_run_whose_problems_keep_diverging_says_so_in_its_summary():
    # A user's task whose loss turns NaN after ~20 of 200 steps: a few percent of steps masked
    # (the diverged problem restarts), far below the interval warning's threshold.
    monitor = health.HealthMonitor([].append)
    for step in range(10, 110, 10):
        monitor.observe(step, interval(masked=0.046), 10)
    summary = monitor.summary()
    assert summary.startswith("skipped updates 0 of 100, masked fraction 0.046 (WARNING: 4.6%")
    assert "lower the inner learning rate" in summary


@pytest.mark.parametrize(
    "bad",
    [interval(skipped=1.0), interval(norm=math.nan), interval(norm=math.inf), interval(norm=0)],
)
def test_no_usable_update_for_max_stalled_steps_fails_the_run(bad):
    monitor = health.HealthMonitor(lambda line: None)
    steps = health.MAX_STALLED_STEPS // 2
    assert monitor.observe(steps, bad, steps) is None
    assert monitor.observe(2 * steps, interval(), steps) is None  # a usable interval resets
    assert monitor.observe(3 * steps, bad, steps) is None
    reason = monitor.observe(4 * steps, bad, steps)
    assert reason.startswith(f"no usable update in the {2 * steps} outer steps to step {4 * steps}")
    assert "lower estimator.sigma" in reason


def test_every_particle_diverging_fails_the_run():
    monitor = health.HealthMonitor(lambda line: None)
    reason = monitor.observe(20, interval(masked=1.0), health.MAX_STALLED_STEPS)
    assert reason.startswith("every particle diverged in the 20 outer steps to step 20")


def test_a_short_run_fails_only_when_it_never_made_a_usable_update():
    monitor = health.HealthMonitor(lambda line: None)
    for step in (1, 2, 3):
        assert monitor.observe(step, interval(skipped=1.0), 1) is None
    assert monitor.final_verdict(3).startswith("no usable update in the 3 outer steps to step 3")
    monitor.observe(4, interval(), 1)
    assert monitor.final_verdict(4) is None


def test_warnings_come_once_per_crossing():
    lines = []
    monitor = health.HealthMonitor(lines.append)
    for step, skipped in enumerate([0.0, 0.5, 0.6, 0.0, 0.3], start=1):
        monitor.observe(step, interval(skipped=skipped), 1)
    assert [line.split(" at outer step ")[1][:1] for line in lines] == ["2", "5"]
    assert all(line.startswith("warning: skipped fraction") for line in lines)
    monitor.observe(6, interval(masked=0.9), 1)
    assert lines[-1].startswith("warning: masked fraction 0.90 above 0.5 at outer step 6")


def run_failing(argv, capsys) -> str:
    assert cli.main(["meta-train", *argv]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lopt meta-train: failed: ")
    return err[-1]


@pytest.mark.slow
def test_a_run_whose_estimates_are_all_zero_fails_without_exporting(tmp_path, capsys):
    """sigma = 1e30: 2 sigma^2 overflows, so every estimate is exactly zero and theta never
    moves; the run used to end rc 0 with a normal summary."""
    workdir = tmp_path / "run"
    line = run_failing([*tiny_argv({"estimator.sigma": 1e30}), "--workdir", str(workdir)], capsys)
    assert "no usable update in the 4 outer steps to step 4" in line
    assert "skipped updates 0 of 4" in line
    assert not (workdir / "export").exists()


@pytest.mark.slow
def test_nonfinite_theta_is_never_saved_or_exported(tmp_path, capsys, monkeypatch):
    real_step = outer.OuterStep.__call__

    def poisoned_at_step_3(self, state):
        state, step_metrics, group_losses = real_step(self, state)
        poison = jnp.where(state.step >= 3, jnp.nan, 0.0)
        theta = jax.tree.map(lambda x: x + poison, state.theta)
        return state._replace(theta=theta), step_metrics, group_losses

    monkeypatch.setattr(outer.OuterStep, "__call__", poisoned_at_step_3)
    workdir = tmp_path / "run"
    line = run_failing([*tiny_argv(), "--workdir", str(workdir)], capsys)
    assert "theta is not finite after outer step 3 (not saved or exported)" in line
    assert not (workdir / "export").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
