"""Reports: speed-ups only where the reference's loss is reached and kept, every metric compared
under its own criterion, aggregates, and the files written (on hand-built results)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from meta_train.evaluation import contenders
from meta_train.evaluation import report as reporting
from meta_train.evaluation.report import RunResult, Selection, TaskResult, smooth


def test_smooth_is_a_trailing_mean():
    curve = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    expected = [np.mean(curve[max(0, i - 2) : i + 1]) for i in range(len(curve))]
    np.testing.assert_allclose(smooth(curve, 3), expected)


def _selection(curve: np.ndarray, learning_rate=None, **metrics: float) -> Selection:
    finals = {"train_loss": curve[-1:], **{key: np.array([v]) for key, v in metrics.items()}}
    return Selection(learning_rate, curve[None], finals, np.zeros(1, bool))


def _run(label: str, curve: np.ndarray, valid: Selection | None = None, **metrics) -> RunResult:
    """A one-seed run; ``valid``: a different selection by inner-valid loss (a tuned baseline)."""
    train = _selection(curve, 0.01 if valid else None, **metrics)
    return RunResult(label, label, curve[:1], {"train": train, "valid": valid or train})


def _lines_task(**runs: RunResult) -> TaskResult:
    return TaskResult("lines", 100, 1.0, runs, smoothing_window=1)


STEPS = np.arange(100, dtype=np.float64)


def test_speedup_is_adam_steps_over_steps_to_adam_final_loss():
    task = _lines_task(
        learned=_run("learned", 1.0 - 0.01 * STEPS),  # reaches 0.505 after 51 steps
        adam=_run("adam", 1.0 - 0.005 * STEPS),  # ends at 0.505 after 100
        slow=_run("slow", 1.0 - 0.001 * STEPS),  # never reaches it
        nan=_run("nan", np.full(100, np.nan)),
    )
    learned = reporting.speedup(task, "learned")
    assert learned.target_loss == pytest.approx(0.505) and learned.target_steps == 100
    assert reporting.speedup(task, "adam").value == 1.0
    assert learned.steps == 51 and learned.value == pytest.approx(100 / 51)
    assert reporting.speedup(task, "slow").value is None
    assert reporting.speedup(task, "nan").value is None


def test_velo_speedup_is_the_reference_steps_to_the_runs_final_loss():
    from meta_train.evaluation import comparison

    task = _lines_task(
        adam=_run("adam", 1.0 - 0.005 * STEPS),  # 0.505 after 100 steps
        slow=_run("slow", 1.0 - 0.001 * STEPS),  # ends at 0.901: Adam is there after 21 steps
        fast=_run("fast", 1.0 - 0.01 * STEPS),  # ends at 0.01: Adam never gets there
        nan=_run("nan", np.full(100, np.nan)),
    )
    slow = comparison.velo_speedup(task, "slow", "adam")
    assert slow.target_loss == pytest.approx(0.901) and slow.reference_steps == 21
    assert slow.value == pytest.approx(0.21) and not slow.censored
    fast = comparison.velo_speedup(task, "fast", "adam")
    assert fast.censored and fast.value == 1.0 and fast.format() == ">= 1.00x"
    assert comparison.velo_speedup(task, "adam", "adam").value == 1.0
    diverged = comparison.velo_speedup(task, "nan", "adam")
    assert diverged.value == 0.0 and not diverged.censored


def test_speedup_needs_the_loss_reached_and_kept():
    rises = np.concatenate([1.0 - 0.02 * STEPS[:30], 0.42 + 0.01 * STEPS[:70]])
    task = _lines_task(
        learned=_run("learned", 1.0 - 0.001 * STEPS),  # ends at 0.901: never at Adam's 0.505
        adam=_run("adam", 1.0 - 0.005 * STEPS),
        spiky=_run("spiky", rises),  # below 0.505 at step 26, ends at 1.11
    )
    assert reporting.speedup(task, "learned").format() == "not reached"
    assert reporting.speedup(task, "spiky").steps == 26
    assert reporting.speedup(task, "spiky").format() == "lost by the end"
    report = reporting.Report("learned", "learned rule", {}, (task,))
    rows = {row.split("|")[3].strip(): row for row in report.format_table(1.0).splitlines()[2:]}
    assert "not reached" in rows["learned"] and "x |" not in rows["learned"]
    assert "lost by the end" in rows["spiky"]
    summary = reporting.summarize(report)["1x"]
    assert summary["learned"].speedup_iqm.count == 0 and summary["spiky"].speedup_iqm.count == 0
    assert "no speed-up, reached and kept its final loss on 0/1" in report.summary_line()


def test_better_train_loss_but_worse_test_is_reported_as_both():
    adam_valid = _selection(1.0 - 0.004 * STEPS, 0.001, test_loss=0.3, test_accuracy=0.9)
    task = _lines_task(
        learned=_run("learned", 1.0 - 0.009 * STEPS, test_loss=0.8, test_accuracy=0.7),
        adam=_run("adam", 1.0 - 0.005 * STEPS, valid=adam_valid, test_loss=0.6, test_accuracy=0.8),
    )
    report = reporting.Report("learned", "learned rule", {}, (task,))
    line = report.summary_line()
    assert "final train loss on 1/1 (its lr chosen by train loss)" in line
    assert "test loss on 0/1, test accuracy on 0/1 (its lr chosen by inner-valid loss)" in line
    # Adam's test figures are those of the learning rate chosen on inner-valid loss (0.3, 0.9),
    # not of the one chosen on train loss (0.6, 0.8).
    rows = {row.split("|")[3].strip(): row for row in report.format_table(1.0).splitlines()[2:]}
    assert "0.3 ± 0" in rows["adam"] and "0.9 ± 0" in rows["adam"] and "0.6 ±" not in rows["adam"]
    assert "1e-2 / 1e-3" in rows["adam"]  # lr by train / by valid
    assert rows["learned"].split("|")[10].strip() == "+/-/-"  # vs adam: train/test/acc
    summary = reporting.summarize(report)["1x"]["learned"]
    assert summary.better == {"train_loss": 1, "test_loss": 0, "test_accuracy": 0}
    assert summary.normalized_iqm["test_loss"].value == pytest.approx(0.8 / 0.3)
    saved = json.loads(report.to_json())["tasks"][0]["runs"]
    assert saved["adam"]["metrics_mean"]["test_loss"] == pytest.approx(0.3)
    assert saved["learned"]["vs_reference"]["wins"] == {
        "train_loss": 1.0,
        "test_loss": 0.0,
        "test_accuracy": 0.0,
    }


def test_learning_rates_and_baselines_are_named_plainly():
    assert contenders.format_learning_rate(1e-3) == "1e-3"
    assert contenders.format_learning_rate(0.0031622776) == "3.2e-3"
    assert contenders.baseline_description("Adam", (1e-3, 1e-2)) == "Adam at 1e-3 / 1e-2"
    grid = tuple(np.logspace(-4, -1, 7))
    assert contenders.baseline_description("Adam", grid, "cosine") == (
        "Adam (tuned over 7 lrs, a cosine schedule)"
    )


def test_aggregates_over_tasks_and_files(tmp_path):
    # Three tasks: the learned rule wins the first two on train loss, diverges on the third.
    tasks = []
    for index, (ours, theirs) in enumerate([(0.2, 0.4), (0.3, 0.6), (math.inf, 0.5)]):
        learned = _run("learned", np.linspace(1.0, ours if math.isfinite(ours) else 2.0, 100))
        if not math.isfinite(ours):
            learned = RunResult(
                "learned",
                "learned",
                np.ones(1),
                dict.fromkeys(
                    reporting.CRITERIA,
                    Selection(
                        None,
                        np.full((1, 100), np.inf),
                        {"train_loss": np.array([ours])},
                        np.ones(1, bool),
                    ),
                ),
            )
        adam = _run("adam", np.linspace(1.0, theirs, 100))
        tasks.append(TaskResult(f"task{index}", 100, 1.0, {"learned": learned, "adam": adam}, 1))
    report = reporting.Report("learned", "learned rule", {"command": "lopt evaluate"}, tuple(tasks))
    summary = reporting.summarize(report)["1x"]["learned"]
    assert summary.better["train_loss"] == 2 and summary.win_rate["train_loss"].value == 2 / 3
    # Normalized losses 0.5, 0.5, inf: the IQM of three drops nothing, so it is inf; the median
    # task is still better than Adam, which the interval's lower end shows.
    assert summary.normalized_iqm["train_loss"].value == math.inf
    assert summary.normalized_iqm["train_loss"].low == 0.5
    assert summary.speedup_iqm.count == 2  # both finite runs end below Adam's loss
    assert summary.diverged_runs == 1 and summary.tasks_with_divergence == 1
    paths = reporting.write(report, tmp_path, plots=True)
    saved = json.loads((tmp_path / "report.json").read_text())  # strict JSON: inf became null
    assert saved["summary"]["1x"]["learned"]["normalized_iqm"]["train_loss"]["value"] is None
    markdown = (tmp_path / "report.md").read_text()
    assert "| 1x      | learned   | 3     | 0.667 [" in markdown
    assert f"]({tmp_path.name}" not in markdown and "(curves_task0_1x.png)" in markdown
    assert len([kind for kind in paths if kind.startswith("plot:")]) == 3


def test_a_rate_chosen_at_the_end_of_the_grid_is_marked():
    grid = tuple(reporting.GridPoint(lr, 1.0, 1.0, 0) for lr in (1e-3, 1e-2, 1e-1))
    selection = _selection(np.ones(3), 1e-1)
    run = RunResult("adam", "adam", np.ones(1), {"train": selection, "valid": selection}, grid)
    assert reporting._learning_rates(run) == "1e-1 (edge)"
    inside = dataclasses.replace(
        run, selected={"train": _selection(np.ones(3), 1e-2)} | {"valid": selection}
    )
    assert reporting._learning_rates(inside) == "1e-2 / 1e-1 (edge)"
