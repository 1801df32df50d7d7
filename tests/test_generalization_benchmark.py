"""``python -m benchmarks.generalization --quick``: each part once, tiny suite (slow tier: about a
minute, every shipped version a peer); the protocol's pure functions (fast tier)."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

import lopt
from meta_train.evaluation import contenders

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is not an installed package; python -m runs it from ROOT
    sys.path.insert(0, ROOT)

from benchmarks import generalization  # noqa: E402


@pytest.mark.slow
def test_generalization_quick(tmp_path):
    # Two worker processes: the path the full run takes; the units come back merged in order.
    assert generalization.main(["--quick", "--jobs", "2", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "generalization.json").read_text())
    assert (tmp_path / "generalization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"commit", "jax_version", "argv", "date", "load_average"} <= set(saved["provenance"])
    assert saved["seconds"] > 0 and saved["reference"] == "adamw"
    subject = saved["subject"]
    assert subject == lopt.shipped.DEFAULT_PRETRAINED
    rows = {(row["contender"], row["horizon"]): row for row in saved["headline"]}
    expected = {subject, "untrained", "sgdm", *contenders.TUNING_FREE, *lopt.pretrained_names()}
    assert {label for label, horizon in rows if horizon == "1x"} == expected
    assert {(subject, "10x"), (subject, "16x width (quadratic_d8)")} <= set(rows)
    assert ("sgdm", "16x width (quadratic_d8)") not in rows  # SGD-M not on the wide task

    # The headline's counts are the per-task outcomes against tuned AdamW (one task at 1x).
    task = saved["reports"]["suite"]["tasks"][0]
    ours = task["runs"][subject]["metrics_mean"]["train_loss"]
    adamw = task["runs"]["adamw"]["metrics_mean"]["train_loss"]
    counts = rows[(subject, "1x")]["vs_reference"]["train_loss"]
    assert counts["wins"] + counts["ties"] + counts["losses"] == 1
    if abs(ours - adamw) > 0.02 * max(ours, adamw):
        assert counts["wins"] == float(ours < adamw)
    normalized = rows[(subject, "1x")]["normalized_train_loss_iqm"]
    assert normalized["count"] == 1 and normalized["value"] == pytest.approx(ours / adamw)
    test_ours = task["runs"][subject]["metrics_mean"]["test_loss"]
    test_adamw = task["runs"]["adamw"]["metrics_mean"]["test_loss"]  # each at its valid-chosen lr
    test_normalized = rows[(subject, "1x")]["normalized_test_loss_iqm"]
    assert test_normalized["value"] == pytest.approx(test_ours / test_adamw)
    assert task["runs"]["adamw"]["tuned"] and len(task["runs"]["adamw"]["grid"]) >= 9
    assert set(rows[(subject, "1x")]["vs_best_tuning_free"]) == set(generalization.METRICS)

    per_task = {(row["task"], row["horizon"]): row for row in saved["per_task"]}
    assert set(per_task) == {
        ("mlp_digits_tiny", "1x"),
        ("mlp_digits_tiny", "10x"),
        ("quadratic_d8", "16x width (quadratic_d8)"),
    }
    row = per_task[("mlp_digits_tiny", "1x")]
    assert row["best_tuning_free"]["train_loss"] in contenders.TUNING_FREE
    assert row["vs_untrained"]["train_loss"]["ratio"] > 0
    assert isinstance(saved["grid_edges"], list)

    # The timing record: per task (unit), its process's CPU and its trainers' compile and run.
    assert saved["jobs"] == 2
    assert 0 < saved["busiest_worker_cpu_seconds"] <= saved["cpu_seconds"]
    timing = {row["task"]: row for row in saved["per_task_seconds"]}
    assert set(timing) == {"mlp_digits_tiny", "quadratic_d8"}
    assert all(row["cpu_seconds"] > 0 and row["compile_cpu_seconds"] > 0 for row in timing.values())
    assert rows[(subject, "1x")]["steps"] == "20 steps"


def test_steps_label_spans_the_tasks_of_a_horizon():
    assert generalization.steps_label([500, 200, 300]) == "200-500 steps"
    assert generalization.steps_label([500, 500]) == "500 steps"


def test_the_tuned_baselines_protocol_does_not_follow_the_subject():
    # Records with different subjects must share one reference, or the release gate compares a
    # candidate and an incumbent measured against different AdamWs.
    v1 = generalization.eval_config("normalized-v1", None, 3, False)
    v4 = generalization.eval_config("normalized-v4", None, 3, False)
    assert v1.options() == v4.options()
    assert (v1.weight_decay, v1.baseline_schedule) == (1e-4, "cosine")  # optax.adamw's default
    assert "normalized-v4" in v1.peers and "normalized-v4" not in v4.peers
