"""The paper experiments' ``--quick`` modes run end to end and write sane JSON and PNG files."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys

import numpy as np
import pytest

# Slow tier (the paper scripts' quick modes); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

# The scripts live in ``benchmarks/paper`` (not an installed package) and import each other as
# ``benchmarks.paper.*``, so the repository root must be importable.
ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def run_quick(name: str, tmp_path) -> dict:
    """Run ``benchmarks/paper/<name>.py``'s ``main`` in ``--quick`` mode; return its JSON."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    module = importlib.import_module(f"benchmarks.paper.{name}")
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    assert os.path.getsize(tmp_path / f"{name}.png") > 0
    with open(tmp_path / f"{name}.json") as file:
        payload = json.load(file)
    assert payload["experiment"] == name
    assert payload["quick"] is True
    return payload


def test_influence_balancing_quick(tmp_path):
    payload = run_quick("influence_balancing", tmp_path)
    assert payload["optimum"] == pytest.approx(-1 / 6, rel=1e-5)
    for run in payload["runs"].values():
        theta = np.asarray(run["theta"])
        assert theta.shape == (payload["num_seeds"], payload["num_steps"] + 1)
        assert np.all(theta[:, 0] == 0.5)
        # Far from theta*, every estimator starts by moving theta down from 0.5.
        assert np.all(theta[:, -1] < 0.5)


def test_variance_vs_unrolls_quick(tmp_path):
    payload = run_quick("variance_vs_unrolls", tmp_path)
    for entry in payload["systems"].values():
        es_single = [row["normalised_variance"] for row in entry["es_single"]]
        # Lockstep ES-Single's whole-problem estimate does not depend on K at all.
        assert es_single == pytest.approx([es_single[0]] * len(es_single), rel=1e-4)
        for row in entry["es_single"] + entry["pes"]:
            assert np.isfinite(row["normalised_variance"])
            assert row["max_bias_z"] < 5.0  # unbiased: a z-score bound over a few coordinates


def test_lr_schedule_quick(tmp_path):
    payload = run_quick("lr_schedule", tmp_path)
    assert np.isfinite(payload["grid_best"]["objective"])
    for run in payload["runs"].values():
        assert np.all(np.isfinite(run["final_objective"]))
        assert len(run["trajectory_log_lr"][0]) == run["outer_steps"] + 1


def test_lstm_copy_quick(tmp_path):
    payload = run_quick("lstm_copy", tmp_path)
    for result in payload["results"].values():
        for run in result["runs"]:
            assert all(0.0 <= a <= 1.0 for a in run["accuracy"])
            assert run["length_reached"] <= max(run["length"])


def test_learned_optimizer_quick(tmp_path):
    payload = run_quick("learned_optimizer", tmp_path)
    for run in payload["meta_training"].values():
        losses = np.asarray(run["meta_loss"])
        assert losses.shape == (payload["seeds"], payload["outer_steps"])
        assert np.all(np.isfinite(losses))
    summary = payload["held_out_summary"]
    assert {"Adam (tuned)", "ES-Single"} <= set(summary)
    assert all(np.isfinite(figures["train_loss"]) for figures in summary.values())


def test_partial_rerun_keeps_other_runs_with_their_provenance(tmp_path):
    """``--estimators`` reruns a subset: the other runs stay, each run names the commit that
    made it, and a replaced run is kept under ``superseded``; other settings are refused."""
    first = run_quick("influence_balancing", tmp_path)
    assert set(first["run_provenance"]) == set(first["runs"]) == {"PES N=4", "ES-Single N=4"}
    assert first["provenance"]["argv"] is not None and "superseded" not in first
    module = importlib.import_module("benchmarks.paper.influence_balancing")
    assert module.main(["--quick", "--out", str(tmp_path), "--estimators", "es_single"]) == 0
    with open(tmp_path / "influence_balancing.json") as file:
        merged = json.load(file)
    assert merged["runs"]["PES N=4"] == first["runs"]["PES N=4"]
    assert merged["run_provenance"]["PES N=4"] == first["run_provenance"]["PES N=4"]
    assert merged["run_provenance"]["ES-Single N=4"] == merged["provenance"]
    assert merged["superseded"]["ES-Single N=4"]["runs"] == first["runs"]["ES-Single N=4"]
    with pytest.raises(SystemExit, match="other settings"):
        module.main(["--quick", "--out", str(tmp_path), "--estimators", "pes", "--lr", "0.1"])
