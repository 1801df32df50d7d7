"""The benchmarks' quick modes run and write their figures."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

# Slow tier (benchmark quick modes); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def test_meta_train_throughput_quick(tmp_path):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks import meta_train_throughput

    out = tmp_path / "throughput.json"
    argv = ["--quick", "--devices", "1,2", "--pairs-per-chunk", "1", "--no-evosax"]
    assert meta_train_throughput.main([*argv, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    wanted = {"commit", "lopt_version", "jax_version", "argv", "date", "platform", "load_average"}
    assert wanted <= set(saved["provenance"])
    assert len(saved["load_average_per_round"]) == 1
    results = saved["results"]
    expected = {
        "engine, chunks of 1 (1 dev)",
        "engine, chunks of 1 (2 dev)",
        "adam, no ES (1 dev)",
        "adam, no ES (2 dev)",
    }
    assert set(results) == expected
    for figures in results.values():
        assert figures["particle_steps_per_s"] > 0 and figures["compile_seconds"] > 0
        assert len(figures["per_round"]) == 1


@pytest.mark.slow
def test_generalization_quick(tmp_path):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks import generalization

    argv = ["--quick", "--optimizer", "untrained:normalized", "--out", str(tmp_path)]
    assert generalization.main(argv) == 0
    saved = json.loads((tmp_path / "generalization.json").read_text())
    assert (tmp_path / "generalization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"commit", "jax_version", "argv", "date", "load_average"} <= set(saved["provenance"])
    rows = {(row["contender"], row["horizon"]): row for row in saved["headline"]}
    assert set(rows) >= {
        ("untrained", "1x"),
        ("untrained (tuned lr)", "10x"),
        ("untrained", "16x width (quadratic_d8)"),
        ("sgdm", "1x"),
    }
    # The headline's normalized loss is the learned rule's final train loss over Adam's (one task).
    task = saved["reports"]["suite"]["tasks"][0]
    ours = task["runs"]["untrained"]["metrics_mean"]["train_loss"]
    adams = task["runs"]["adam"]["metrics_mean"]["train_loss"]
    normalized = rows[("untrained", "1x")]["normalized_train_loss_iqm"]
    assert normalized["count"] == 1 and normalized["value"] == pytest.approx(ours / adams)
    assert rows[("untrained", "1x")]["win_rate_train_loss"]["value"] == float(ours < adams)
    assert task["runs"]["untrained (tuned lr)"]["tuned"] and task["runs"]["adam"]["tuned"]
    per_task = {(row["task"], row["horizon"]): row for row in saved["per_task"]}
    assert set(per_task) == {
        ("mlp_digits_tiny", "1x"),
        ("mlp_digits_tiny", "10x"),
        ("quadratic_d8", "16x width"),
    }
    assert per_task[("mlp_digits_tiny", "1x")]["normalized_train_loss"] == normalized["value"]
