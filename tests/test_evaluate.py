"""Held-out evaluation: grid selection per criterion, divergence, horizons, schedules, the learned
rule's swept learning rate, honest reports (per-criterion comparisons, speed-ups only where
reached, "tuned" only for a sweep), the plan, CLI."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

import lopt
from lopt import schedules
from lopt.base import LearnedOptimizer, LearnedRule
from meta_train import cli
from meta_train.evaluation import contenders, policy, trainer
from meta_train.evaluation import evaluate as evaluation
from meta_train.evaluation import report as reporting
from tasks.base import Task

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


class ShiftedQuadratic(Task):
    """Scalar ``w`` from 0: train loss ``(w - 1)^2``; the splits want other values of ``w``.

    Deterministic (no minibatches), so a numpy simulation of Adam gives the exact final losses. With
    10 steps, the inner-valid optimum (0.3) and the train/test optima pick different learning rates.
    """

    targets: ClassVar[dict[str, float]] = {
        "train": 1.0,
        "inner_valid": 0.3,
        "outer_valid": 0.3,
        "test": 0.9,
    }

    def init(self, key):
        return jnp.zeros(())

    def loss(self, params, key):
        return (params - self.targets["train"]) ** 2

    def eval_loss(self, params, key, split="outer_valid"):
        return (params - self.targets[split]) ** 2

    def evaluate(self, params, split="test"):
        return {"loss": self.eval_loss(params, None, split)}


class StiffQuadratic(struct.PyTreeNode, Task):
    """``0.5 * curvature * ||w||^2`` from ``w ~ 1 + 0.1 N(0, I)``; SGD diverges at lr > 2/curvature.

    A pytree task, so it reaches the jitted trainer as an argument rather than a constant.
    """

    curvature: jax.Array

    def init(self, key):
        return 1.0 + 0.1 * jax.random.normal(key, (2,))

    def loss(self, params, key):
        return 0.5 * self.curvature * jnp.sum(params**2)

    def eval_loss(self, params, key, split="outer_valid"):
        return self.loss(params, key)

    def evaluate(self, params, split="test"):
        loss = self.loss(params, None)
        return {"loss": loss, "accuracy": (loss < 1.0).astype(jnp.float32)}


class Bowl(Task):
    """``0.5 * ||w||^2`` from ``w = 1``: the gradient is ``w``."""

    def init(self, key):
        return {"w": jnp.ones(3)}

    def loss(self, params, key):
        return 0.5 * jnp.sum(params["w"] ** 2)

    def eval_loss(self, params, key, split="outer_valid"):
        return self.loss(params, key)

    def evaluate(self, params, split="test"):
        return {"loss": self.loss(params, None)}


@dataclasses.dataclass(frozen=True)
class DecayingSGD(LearnedOptimizer):
    """``-exp(log_lr) * (1 - t / num_steps) * grad``: the updates depend on the horizon at init."""

    architecture = "decaying_sgd_for_tests"

    def init_meta_params(self, key):
        return {"log_lr": jnp.log(jnp.float32(0.1))}

    def init(self, theta, params, num_steps):
        return jnp.zeros((), jnp.int32), jnp.asarray(num_steps, jnp.float32)

    def update(self, theta, state, grads, params, loss=None):
        step, num_steps = state
        scale = -jnp.exp(theta["log_lr"]) * (1.0 - step / num_steps)
        return jax.tree.map(lambda g: scale * g, grads), (step + 1, num_steps)


@dataclasses.dataclass(frozen=True)
class ScaledSGD(LearnedRule):
    """The direction ``exp(log_scale) * grad``, with the learning rate outside it, as in the
    normalized rule: ``-learning_rate * exp(log_scale) * grad`` at a constant ``lopt.StepSize``."""

    architecture = "scaled_sgd_for_tests"

    def init_meta_params(self, key):
        return {"log_scale": jnp.zeros(())}

    def init(self, theta, params, num_steps=None):
        return ()

    def update(self, theta, state, grads, params, loss=None):
        return jax.tree.map(lambda g: jnp.exp(theta["log_scale"]) * g, grads), state


def numpy_adam_final_w(learning_rate: float, num_steps: int, schedule: str = "constant") -> float:
    """optax.adam on ShiftedQuadratic's training loss, in float64; ``cosine`` is warmup_cosine."""
    w = m = v = 0.0
    warmup = max(schedules.DEFAULT_WARMUP_FRACTION * num_steps, 1.0)
    for t in range(1, num_steps + 1):
        g = 2.0 * (w - ShiftedQuadratic.targets["train"])
        m = ADAM_B1 * m + (1 - ADAM_B1) * g
        v = ADAM_B2 * v + (1 - ADAM_B2) * g * g
        m_hat, v_hat = m / (1 - ADAM_B1**t), v / (1 - ADAM_B2**t)
        lr = learning_rate
        if schedule == "cosine":  # optax's count is t - 1 at the t-th update
            lr *= min(1.0, t / warmup) * 0.5 * (1 + np.cos(np.pi * (t - 1) / num_steps))
        w -= lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS)
    return w


def decaying_sgd_bowl_loss(learning_rate: float, num_steps: int) -> float:
    """Bowl's final loss under DecayingSGD: ``w_T = prod_t (1 - lr (1 - t/T))`` per coordinate."""
    factors = 1.0 - learning_rate * (1.0 - np.arange(num_steps) / num_steps)
    return 0.5 * 3 * np.prod(factors) ** 2


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_grid_selects_per_criterion_never_on_test(schedule):
    grid = evaluation.ADAM_GRID
    report = evaluation.evaluate(
        "adam",
        [("shifted", ShiftedQuadratic())],
        num_steps=10,
        seeds=2,
        baselines=("adam",),
        baseline_schedule=schedule,
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    run = report.tasks[0].runs["adam"]
    final_w = np.array([numpy_adam_final_w(lr, 10, schedule) for lr in grid])
    losses = {split: (final_w - target) ** 2 for split, target in ShiftedQuadratic.targets.items()}
    # The construction: train and test agree on one learning rate, inner-valid wants another.
    by_train, by_valid = np.argmin(losses["train"]), np.argmin(losses["inner_valid"])
    assert by_train == np.argmin(losses["test"]) != by_valid
    assert run.train.learning_rate == grid[by_train]
    assert run.valid.learning_rate == grid[by_valid]
    assert run.for_metric("test_loss") is run.valid and run.tuned
    reported = [point.valid_loss for point in run.grid]
    np.testing.assert_allclose(reported, losses["inner_valid"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(
        run.train.metrics["train_loss"], losses["train"][by_train], rtol=1e-3
    )
    np.testing.assert_allclose(run.valid.metrics["test_loss"], losses["test"][by_valid], rtol=1e-3)
    assert len(run.grid) >= 7 and run.train.num_diverged == 0
    assert report.settings["baseline_schedule"] == schedule
    assert ("cosine" in run.description) == (schedule == "cosine")


def test_cosine_schedule_changes_the_baseline():
    constant, cosine = (numpy_adam_final_w(0.1, 10, s) for s in ("constant", "cosine"))
    assert abs(constant - cosine) > 1e-3  # the test above tells the schedules apart


def test_diverging_runs_are_reported_not_dropped():
    task = ("stiff", StiffQuadratic(curvature=jnp.float32(10.0)))
    # lr 0.05 converges; 0.21 grows the loss 1.21x per step but stays finite; 1.0 overflows to inf.
    grid = (0.05, 0.21, 1.0)
    report = evaluation.evaluate(
        optax.sgd(1.0),
        [task],
        num_steps=40,
        seeds=3,
        baselines=("sgdm",),
        sgdm_grid=grid,
        sgdm_momentum=0.0,
        name="sgd_lr1",
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    result = report.tasks[0]
    subject, tuned = result.runs["sgd_lr1"], result.runs["sgdm"]
    assert subject.train.num_diverged == 3
    assert not np.isfinite(subject.train.metrics["train_loss"]).any()
    assert [point.num_diverged for point in tuned.grid] == [0, 3, 3]
    assert np.isfinite(tuned.grid[1].train_loss)  # exploded, finite, still counted as diverged
    for selection in tuned.selected.values():
        assert selection.learning_rate == 0.05 and selection.num_diverged == 0
    assert "3/3 runs diverged" in report.summary_line()
    table_row = next(line for line in report.format_table(1.0).splitlines() if "sgd_lr1" in line)
    assert "3/3" in table_row
    saved = json.loads(report.to_json())
    runs = saved["tasks"][0]["runs"]
    for selection in runs["sgd_lr1"]["by_criterion"].values():
        assert selection["num_diverged"] == 3 and selection["diverged"] == [True] * 3
        assert selection["metrics"]["train_loss"] == [None] * 3


def test_diverged_runs_rule():
    losses = np.array([[1.0, 0.5], [1.0, np.nan], [1.0, 3.0], [-1.0, -0.5]])
    initial = np.array([1.0, 1.0, 1.0, -1.0])
    final = np.array([0.4, 0.4, 2.5, -0.5])
    diverged = policy.diverged_runs(losses, initial, final, factor=2.0)
    np.testing.assert_array_equal(diverged, [False, True, True, False])


def test_select_grid_point_prefers_fewer_diverged_then_lower_valid_loss():
    valid = np.array([[0.5, 0.6], [0.1, np.inf], [0.3, 0.3], [0.2, 0.9]])
    diverged = np.array([[False, False], [False, True], [False, False], [False, False]])
    assert policy.select_grid_point(valid, diverged) == 2
    all_diverged = np.ones_like(diverged)
    all_diverged[0, 0] = False
    assert policy.select_grid_point(valid, all_diverged) == 0


def test_a_two_point_grid_is_not_called_tuned():
    report = evaluation.evaluate(
        optax.sgd(0.1),
        {"bowl": Bowl()},
        num_steps=10,
        seeds=1,
        baselines=("adam",),
        adam_grid=(1e-3, 1e-2),
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    adam = report.tasks[0].runs["adam"]
    assert not adam.tuned and adam.description == "Adam at 1e-3 / 1e-2"
    line = report.summary_line()
    assert "better than Adam at 1e-3 / 1e-2 in" in line and "tuned" not in line
    assert "tuned" not in report.format_console()
    saved = json.loads(report.to_json())
    assert "tuned" not in saved["summary_line"] and not saved["tasks"][0]["runs"]["adam"]["tuned"]
    described = contenders.baseline_description("Adam", contenders.ADAM_GRID)
    assert described == "Adam (tuned over 7 lrs)"


def test_learned_rule_runs_at_its_default_and_over_a_swept_learning_rate():
    default = 0.1
    report = evaluation.evaluate(
        ScaledSGD(),
        {"bowl": Bowl()},
        theta={"log_scale": jnp.zeros(())},
        # The swept learning rate reaches the rule's step size traced (a vmapped grid row).
        step_size=lopt.StepSize(default, "constant"),
        num_steps=10,
        seeds=1,
        baselines=("adam",),
        learned_lr_multipliers=evaluation.LEARNED_LR_MULTIPLIERS,
        untrained_floor=False,
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    runs = report.tasks[0].runs
    assert list(runs) == ["learned", "learned (tuned lr)", "adam"]
    # Bowl under SGD: 0.5 * 3 * (1 - lr)^(2 T); lr = 1 reaches 0, 3.16 diverges.
    bowl = {lr: 1.5 * (1 - lr) ** 20 for lr in (default, 1.0)}
    np.testing.assert_allclose(runs["learned"].train.metrics["train_loss"], bowl[default], 1e-4)
    assert runs["learned"].train.learning_rate == default and not runs["learned"].grid
    swept = runs["learned (tuned lr)"]
    np.testing.assert_allclose(
        [p.learning_rate for p in swept.grid],
        [default * m for m in evaluation.LEARNED_LR_MULTIPLIERS],
    )
    assert swept.tuned and swept.train.learning_rate == pytest.approx(1.0)
    assert swept.train.metrics["train_loss"] == pytest.approx(0.0, abs=1e-12)
    assert swept.grid[-1].num_diverged == 1
    assert "learned (tuned lr)" in reporting.summarize(report)["1x"]


def test_valid_curve_steps_cover_the_run():
    np.testing.assert_array_equal(trainer.valid_curve_steps(10), np.arange(1, 11))
    steps = trainer.valid_curve_steps(1010)  # every 50 steps; the last 10 steps unmeasured
    assert len(steps) == 20 and steps[0] == 50 and steps[-1] == 1000


def test_only_a_step_size_outside_the_rule_is_swept():
    def swept(optimizer, step_size=None):
        theta = optimizer.init_meta_params(jax.random.key(0))
        found = contenders.learned_contenders("x", optimizer, theta, "x", (0.5, 2.0), {}, step_size)
        return [c.grid for c in found]

    assert swept(ScaledSGD(), lopt.StepSize(0.3, "constant")) == [None, (0.15, 0.6)]
    assert swept(lopt.LearnableSGDM()) == [None]  # initial_learning_rate only seeds theta
    assert swept(DecayingSGD()) == [None]  # learns its step size


def test_plan_counts_runs_and_compiles(capsys):
    report = evaluation.evaluate(
        "adam",
        {"bowl": Bowl(), "bowl2": Bowl()},
        num_steps=5,
        horizons=(1, 2),
        seeds=3,
        baselines=("adam", "sgdm"),
        adam_grid=(0.1, 0.2),
        sgdm_grid=(0.1, 0.2, 0.3),
        progress=True,
        compiler_options=evaluation.FAST_COMPILE,
    )
    printed = capsys.readouterr().err
    # 2 tasks x 2 horizons x one trainer of 5 rows x 3 seeds; 4 trainers + 2 x 2 per-task ones.
    assert "plan: 2 tasks x 2 horizons (1x,2x) x [adam+sgdm (5 lr)] x 3 seeds" in printed
    assert "= 60 training runs; 8 compiles; rough ETA" in printed
    assert len(report.tasks) == 4


def test_learned_optimizer_gets_each_horizon_and_report_files_parse(tmp_path):
    trained_lr, horizons = 0.5, (1, 2)
    report = evaluation.evaluate(
        DecayingSGD(),
        {"bowl": Bowl()},
        theta={"log_lr": jnp.log(jnp.float32(trained_lr))},
        num_steps=10,
        horizons=horizons,
        seeds=2,
        baselines=("adam",),
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    assert [(t.task, t.num_steps, t.horizon) for t in report.tasks] == [
        ("bowl", 10, 1.0),
        ("bowl", 20, 2.0),
    ]
    for result in report.tasks:
        assert list(result.runs) == ["learned", "adam", "untrained"]
        for label, lr in (("learned", trained_lr), ("untrained", 0.1)):
            expected = decaying_sgd_bowl_loss(lr, result.num_steps)
            np.testing.assert_allclose(
                result.runs[label].train.metrics["train_loss"], expected, rtol=1e-4
            )
        assert reporting.speedup(result, "adam").value == 1.0
        # Bowl's inner-valid loss is its training loss: after k updates, the loss before update k+1.
        learned = result.runs["learned"].valid
        np.testing.assert_array_equal(learned.valid_steps, np.arange(1, result.num_steps + 1))
        np.testing.assert_allclose(learned.valid_curves[:, :-1], learned.curves[:, 1:], rtol=1e-6)

    paths = report.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["subject"] == "learned" and saved["settings"]["horizons"] == [1.0, 2.0]
    assert set(saved["summary"]) == {"1x", "2x"}
    assert saved["summary"]["1x"]["learned"]["num_tasks"] == 1
    assert set(saved["summary"]["1x"]) == {"learned", "untrained"}
    assert saved["summary"]["2x"]["learned"]["speedup_iqm"]["count"] in (0, 1)
    for saved_task, task in zip(saved["tasks"], report.tasks, strict=True):
        for label, run in task.runs.items():
            saved_run = saved_task["runs"][label]
            assert saved_run["metrics_mean"]["train_loss"] == pytest.approx(
                float(np.mean(run.train.metrics["train_loss"]))
            )
            assert len(saved_run["by_criterion"]["train"]["curve"]["mean"]) == task.num_steps
    assert len(saved["tasks"][0]["runs"]["adam"]["grid"]) == len(evaluation.ADAM_GRID)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert report.summary_line() in markdown and "## Horizon 2x" in markdown
    plots = [path for kind, path in paths.items() if kind.startswith("plot:")]
    assert len(plots) == 2
    for path in plots:
        with open(path, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"]({path.rsplit('/', 1)[1]})" in markdown


def test_bad_inputs_fail_with_clear_messages(capsys):
    with pytest.raises(ValueError, match="theta="):
        evaluation.evaluate(DecayingSGD(), [Bowl()], num_steps=5)
    with pytest.raises(ValueError, match="export directory"):
        evaluation.evaluate("/no/such/export", [Bowl()], num_steps=5)
    with pytest.raises(ValueError, match="num_steps"):
        evaluation.evaluate(optax.sgd(0.1), [Bowl()])
    with pytest.raises(TypeError, match=r"optax\.GradientTransformation"):
        evaluation.evaluate(42, [Bowl()], num_steps=5)
    with pytest.raises(ValueError, match="no tasks"):
        evaluation.evaluate("adam", [], num_steps=5)
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluation.evaluate("adam", [Bowl()], num_steps=5, baselines=("rmsprop",))
    with pytest.raises(ValueError, match="learning rates"):
        evaluation.evaluate("adam", [Bowl()], num_steps=5, adam_grid=(0.1, -1.0))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--optimizer", "no-such-optimizer", "--suite", "tiny"])
    assert exit_info.value.code == 2
    assert "untrained:<architecture>" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_suite_runs_from_an_export_through_the_cli(tmp_path, capsys):
    import lopt
    from tasks import registry

    optimizer = lopt.LearnableSGDM(initial_learning_rate=0.05)
    export = tmp_path / "export"
    lopt.save(export, optimizer, optimizer.init_meta_params(jax.random.key(0)), {"num_steps": 30})
    argv = ["--optimizer", str(export), "--suite", "tiny", "--seeds", "2", "--horizons", "1"]
    assert cli.main(["evaluate", *argv, "--fast-compile", "--no-progress", "--no-plots"]) == 0

    out_dir = export.parent / "export.eval_tiny"  # the default: beside the export, not in it
    saved = json.loads((out_dir / "report.json").read_text())
    assert [task["task"] for task in saved["tasks"]] == [
        entry.name for entry in registry.suite_entries("tiny")
    ]
    assert saved["settings"]["meta_training_num_steps"] == 30
    for task in saved["tasks"]:
        runs = task["runs"]
        assert list(runs) == ["learned", "adam", "sgdm", "untrained"]
        assert len(runs["adam"]["grid"]) == len(runs["sgdm"]["grid"]) == 7
        assert runs["adam"]["tuned"] and runs["learned"]["speedup_over_reference"] != 0
        # The export holds the architecture's initial theta, so the untrained floor is identical.
        assert runs["learned"]["by_criterion"] == runs["untrained"]["by_criterion"]
    assert (out_dir / "report.md").exists() and not list(out_dir.glob("*.png"))
    printed = capsys.readouterr().out
    assert saved["summary_line"] in printed and "| mlp_digits_tiny" in printed
