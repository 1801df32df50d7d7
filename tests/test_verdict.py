"""The end-of-run verdict: the meta-loss trend against its noise (a warning when it rose or stayed
within it), the held-out comparison in scientific notation, the paired meta-trained vs untrained
ratio, the smoothed curve of curves.png, and the comparison judged on the run's own suite."""

import numpy as np
import pytest
from tiny_run import tiny_argv, tiny_config

from meta_train import cli, config_flags, metrics, verdict
from meta_train.evaluation.results import GridPoint, Report, RunResult, Selection, TaskResult


def noisy(start: float, end: float, count: int = 100, noise: float = 0.01, seed: int = 0):
    rng = np.random.default_rng(seed)
    return list(np.linspace(start, end, count) + noise * rng.standard_normal(count))


def test_a_rising_meta_loss_is_called_so_and_warned_about():
    trend = verdict.meta_loss_trend(noisy(0.140, 0.175))  # the 100-step run
    assert trend.change == "rose"
    block = verdict.verdict(trend, None, None, 100)
    assert "1.4" in block and "WARNING: the meta-loss rose" in block


def test_a_flat_meta_loss_is_within_its_noise_and_warned_about():
    trend = verdict.meta_loss_trend(noisy(0.15, 0.15, noise=0.02))
    assert trend.change == "within noise"
    assert "WARNING: the meta-loss within its noise" in verdict.verdict(trend, None, None, 100)


def test_a_falling_meta_loss_gets_no_warning():
    trend = verdict.meta_loss_trend(noisy(0.5, 0.1))
    assert trend.change == "fell"
    assert "WARNING" not in verdict.verdict(trend, None, None, 100)
    assert verdict.meta_loss_trend([0.3, 0.2]).change == "unknown"  # too few rows for a noise


def selection(train, test, accuracy, lr=None):
    train = np.asarray(train)
    return Selection(
        lr,
        np.zeros((len(train), 2)),
        {"train_loss": train, "test_loss": np.asarray(test), "test_accuracy": np.asarray(accuracy)},
        np.zeros(len(train), bool),
    )


def run(label, train, test, accuracy, grid=()):
    chosen = selection(train, test, accuracy, grid[0].learning_rate if grid else None)
    return RunResult(label, label, np.ones(len(train)), {"train": chosen, "valid": chosen}, grid)


def fake_report(factor: float) -> Report:
    """Two tasks, three seeds: the meta-trained rule's losses are ``factor`` times the untrained
    one's (with a little per-seed jitter), Adam's in between."""
    tasks = []
    for index, name in enumerate(("mine_a", "mine_b")):
        base = np.array([2e-5, 3e-5, 2.5e-5]) * (index + 1)
        jitter = np.array([1.0, 1.02, 0.98])
        grid = (GridPoint(1e-3, 1.0, 1.0, 0), GridPoint(1e-2, 1.0, 1.0, 0))
        runs = {
            "meta-trained": run("meta-trained", base * factor * jitter, base * factor, [0.9] * 3),
            "untrained": run("untrained", base, base, [0.8] * 3),
            "adam": run("adam", base * 0.9, base, [0.85] * 3, grid),
        }
        tasks.append(TaskResult(name, 200, 1.0, runs, 10))
    return Report("meta-trained", "meta-trained", {}, tuple(tasks))


def test_the_verdict_names_the_suite_in_scientific_notation_and_pairs_the_runs():
    trend = verdict.meta_loss_trend(noisy(0.5, 0.1))
    block = verdict.verdict(trend, fake_report(0.5), "mine", 300)
    assert "held-out suite 'mine'" in block
    assert "0.0000" not in block and "2.500e-05" in block and "1.252e-05" in block
    assert "adam (best of lr 0.001, 0.01)" in block
    assert "train loss: meta-trained / untrained = 0.5" in block
    assert block.count(": helped") == 2  # train and test loss
    hurt = verdict.verdict(trend, fake_report(2.0), "mine", 300)
    assert ": hurt" in hurt
    assert "within noise" in verdict.verdict(trend, fake_report(1.0), "mine", 300)


def test_the_comparison_follows_eval_suite_unless_set():
    assert config_flags.comparison_suite(tiny_config({"eval.suite": "tiny"})) == "tiny"
    both = {"eval.suite": "tiny", "comparison.suite": "default"}
    assert config_flags.comparison_suite(tiny_config(both)) == "default"
    config = tiny_config({"eval.suite": "nope", "comparison.num_tasks": 1})
    with pytest.raises(config_flags.ConfigError, match=r"'eval\.suite'.*unknown suite 'nope'"):
        config_flags.validate(config)


def test_the_smoothed_curve_and_its_band():
    mean, spread = metrics.smooth(np.full(50, 0.3), 5)
    np.testing.assert_allclose(mean, 0.3)
    np.testing.assert_allclose(spread, 0.0, atol=1e-7)
    _, spread = metrics.smooth(np.tile([1.0, -1.0], 50), 7)
    assert 0.9 < np.median(spread) <= 1.0
    assert metrics.smoothing_window(30) == 5 and metrics.smoothing_window(1000) == 101


def test_every_run_ends_with_its_verdict(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert (
        cli.main(["meta-train", *tiny_argv({"num_outer_steps": 8}), "--workdir", str(workdir)]) == 0
    )
    err = capsys.readouterr().err
    assert "=== verdict after 8 outer steps ===" in err
    assert "held-out comparison: none (comparison.num_tasks = 0)" in err
    assert (workdir / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_a_run_on_your_suite_is_judged_on_it(tmp_path, capsys):
    changes = {"eval.suite": "tiny", "comparison.num_tasks": 1, "comparison.seeds": 2}
    argv = ["meta-train", *tiny_argv(changes), "--workdir", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    block = err[err.index("=== verdict") :]
    assert "held-out suite 'tiny'" in block
    assert "meta-trained" in block and "untrained" in block and "adam (best of lr" in block
    assert "e-0" in block or "e+0" in block
