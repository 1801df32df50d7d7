"""The release gate (meta_train.release_gate): which shipped version lopt.pretrained() loads."""

import json
import os

import pytest

import lopt
from meta_train import release_gate


def _row(contender, horizon, test, train, train_low, diverged=0):
    return {
        "contender": contender,
        "horizon": horizon,
        "win_rate_test_loss": {"value": test, "low": test - 0.2, "high": test + 0.2, "count": 10},
        "win_rate_train_loss": {"value": train, "low": train_low, "high": 1.0, "count": 10},
        "diverged_runs": f"{diverged}/30",
        "tasks_with_divergence": int(diverged > 0),
    }


def _benchmark(candidate_rows):
    return {"headline": [_row("old", "1x", 0.3, 0.8, 0.6), *candidate_rows]}


def _passed(benchmark):
    return [c.passed for c in release_gate.check(benchmark, "new", "old")]


def test_gate_passes_a_better_candidate_and_names_each_failed_check():
    assert _passed(_benchmark([_row("new", "1x", 0.5, 0.75, 0.5)])) == [True, True, True]
    # Test-loss win rate not up.
    assert _passed(_benchmark([_row("new", "1x", 0.3, 0.9, 0.7)])) == [False, True, True]
    # Train-loss win rate down by more than the incumbent's lower half-width (0.8 - 0.6).
    assert _passed(_benchmark([_row("new", "1x", 0.5, 0.59, 0.4)])) == [True, False, True]
    # A divergence at any horizon fails, not only at 1x.
    rows = [_row("new", "1x", 0.5, 0.8, 0.6), _row("new", "10x", 0.5, 0.8, 0.6, diverged=1)]
    assert _passed(_benchmark(rows)) == [True, True, False]


def test_gate_refuses_a_benchmark_without_the_contender():
    with pytest.raises(ValueError, match="no contender 'new'"):
        release_gate.check(_benchmark([]), "new", "old")


def test_promote_writes_the_default_only_when_the_gate_passes(tmp_path, monkeypatch):
    default_file = tmp_path / "default.json"
    default_file.write_text(json.dumps({"name": "old"}))
    monkeypatch.setattr(lopt.shipped, "DEFAULT_FILE", str(default_file))
    monkeypatch.setattr(lopt.shipped, "pretrained_path", lambda name: name)
    for rows, status, default in [
        ([_row("new", "1x", 0.3, 0.8, 0.6)], 3, "old"),
        ([_row("new", "1x", 0.5, 0.8, 0.6)], 0, "new"),
    ]:
        path = tmp_path / "generalization.json"
        path.write_text(json.dumps(_benchmark(rows)))
        argv = [str(path), "--candidate", "new", "--incumbent", "old", "--promote"]
        assert release_gate.main(argv) == status
        assert json.loads(default_file.read_text())["name"] == default


def _shipped_benchmark(name):
    path = os.path.join(lopt.shipped.WEIGHTS_DIR, name, lopt.shipped.BENCHMARK_FILE)
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def test_every_shipped_version_carries_the_benchmark_that_judged_it():
    for name in lopt.pretrained_names():
        benchmark = _shipped_benchmark(name)
        assert name in {row["contender"] for row in benchmark["headline"]}, name
        assert benchmark["provenance"]["commit"], name


def test_the_shipped_default_is_the_gates_choice():
    """No version shipped after the default passes the gate against it in its own benchmark (one
    that did would have been promoted by ``release_gate --promote``)."""
    default = lopt.shipped.DEFAULT_PRETRAINED
    names = lopt.pretrained_names()
    assert default in names
    for newer in (name for name in names if name > default):
        checks = release_gate.check(_shipped_benchmark(newer), newer, default)
        assert not all(c.passed for c in checks), f"{newer} passes the gate: promote it"
