"""``lopt evaluate`` writes atomically: the report is staged beside ``--out``, then renamed into
place, so a rerun leaves no stale files of the run before (``*_1x.png`` beside ``*_2x.png``)
while the user's own files stay; a run killed midway leaves the previous report, marked
``running``, and the next run says so and clears what the killed one staged."""

import json
import os

import pytest

from meta_train import cli
from meta_train.evaluation import evaluate, out_folder


class FakeReport:
    """What the CLI needs of a report: ``save`` writes the files ``report.write`` would (one PNG
    per horizon) and ``format_console``."""

    def __init__(self, horizons):
        self.horizons = horizons

    def save(self, out, plots=True):
        os.makedirs(out, exist_ok=True)
        paths = {
            "json": os.path.join(out, "report.json"),
            "markdown": os.path.join(out, "report.md"),
        }
        for path in paths.values():
            with open(path, "w") as f:
                f.write(json.dumps({"horizons": self.horizons}))
        for horizon in self.horizons:
            paths[f"plot:{horizon}"] = os.path.join(out, f"bowl_{horizon:g}x.png")
            with open(paths[f"plot:{horizon}"], "w") as f:
                f.write("png")
        return paths

    def format_console(self):
        return "table"


@pytest.fixture
def fake_evaluate(monkeypatch):
    """``evaluate.evaluate`` returning a ``FakeReport``, or raising what ``fail`` holds."""
    fail = []

    def fake(optimizer, tasks, horizons, **kwargs):
        if fail:
            raise fail[0]
        return FakeReport(horizons)

    monkeypatch.setattr(evaluate, "evaluate", fake)
    return fail


def evaluate_into(out, horizons: str) -> int:
    argv = ["evaluate", "--optimizer", "adam", "--suite", "tiny", "--horizons", horizons]
    return cli.main([*argv, "--out", str(out), "--no-progress"])


def test_a_rerun_replaces_the_previous_files_and_keeps_the_users(tmp_path, fake_evaluate, capsys):
    out = tmp_path / "out"
    assert evaluate_into(out, "1") == 0
    (out / "my_notes.txt").write_text("mine")
    assert evaluate_into(out, "2") == 0
    assert sorted(os.listdir(out)) == [
        "bowl_2x.png",
        out_folder.EVAL_MARKER_FILE,
        "my_notes.txt",
        "report.json",
        "report.md",
    ]
    assert (out / "my_notes.txt").read_text() == "mine"
    assert out_folder.read_marker(out)["state"] == "complete"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging folder left
    assert f"to {out}" in capsys.readouterr().out


def test_a_killed_run_keeps_the_previous_report_and_the_next_run_says_so(
    tmp_path, fake_evaluate, capsys
):
    out = tmp_path / "out"
    assert evaluate_into(out, "1") == 0
    fake_evaluate.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        evaluate_into(out, "2")
    assert out_folder.read_marker(out)["state"] == "running"
    assert json.loads((out / "report.json").read_text()) == {"horizons": [1.0]}
    os.makedirs(out_folder._aside(str(out), "tmp", "0123456789ab"))  # what a kill mid-save leaves
    capsys.readouterr()
    fake_evaluate.clear()
    assert evaluate_into(out, "2") == 0
    assert f"note: the previous lopt evaluate into {out}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert "bowl_1x.png" not in os.listdir(out)
