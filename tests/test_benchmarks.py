"""The benchmarks' quick modes run and write their figures."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

# Slow tier (benchmark quick modes); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is not installed: the checkout's root makes it importable
    sys.path.insert(0, ROOT)


def test_meta_train_throughput_quick(tmp_path):
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


def test_weight_decay_sweep_quick(tmp_path):
    from benchmarks import weight_decay_sweep

    out = tmp_path / "sweep.json"
    assert weight_decay_sweep.main(["--quick", "--weight-decays", "0.5,1", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert {"commit", "argv", "date"} <= set(saved["provenance"])
    assert list(saved["results"]) == ["0.5"]  # --quick keeps the first decay
    tasks = saved["results"]["0.5"]["tasks"]
    assert set(tasks) == {"mlp_digits_tiny", "quadratic_d8"}
    losses = [t["test_loss"] for t in tasks.values()]
    assert all(loss > 0 for loss in losses)
    assert saved["results"]["0.5"]["mean_test_loss"] == pytest.approx(sum(losses) / len(losses))


def test_weight_decay_sweep_names_an_unknown_optimizer():
    from benchmarks import weight_decay_sweep

    with pytest.raises(SystemExit, match="is not shipped; shipped: normalized-v1"):
        weight_decay_sweep.main(["--quick", "--optimizer", "adamw"])
