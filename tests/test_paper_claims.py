"""``docs/paper_results.md`` quotes the result JSONs: every table is the one
``benchmarks.paper.tables`` renders from them, and every TES or TBPTT result was made by an
engine with the corrected baselines (a commit at or after the fix), as its provenance says."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.paper import tables  # noqa: E402

DOC = ROOT / "docs" / "paper_results.md"
# The commit that made TES share the +eps twin's state and TBPTT see init_state at every reset.
BASELINES_FIXED = "2d2dee7"
BASELINE_ESTIMATORS = ("tes", "tbptt")


TABLES = tables.all_tables(str(ROOT))


@pytest.mark.parametrize("name", list(TABLES))
def test_document_table_is_the_jsons(name):
    table = TABLES[name]
    assert table in DOC.read_text(), (
        f"docs/paper_results.md's {name!r} table is not the one its JSON gives; paste the "
        "output of `python -m benchmarks.paper.tables` into the document"
    )


def test_passed_at_is_the_check_that_passed():
    """A length is passed at the check where its accuracy first reaches 95%, not the next one."""
    run = {"steps": [200, 400, 600, 800], "length": [1, 1, 2, 2], "accuracy": [0.5, 1.0, 0.7, 0.96]}
    assert [tables.passed_at(run, n) for n in (1, 2, 3)] == [400, 800, None]


def _descends_from_fix(commit: str) -> bool:
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", BASELINES_FIXED, commit],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _baseline_runs():
    """``(json name, label, provenance)`` of every TES/TBPTT result the document quotes."""
    for path, _ in {path: None for path, _ in tables.TABLES.values()}.items():
        with open(ROOT / path) as file:
            payload = json.load(file)
        provenance = payload.get("run_provenance", {})
        if "rows" in payload:  # benchmarks/variance.py: one entry per estimator
            for estimator in {row["estimator"] for row in payload["rows"]}:
                if estimator in BASELINE_ESTIMATORS:
                    yield path, estimator, provenance.get(estimator)
            continue
        for section in ("runs", "results", "meta_training"):
            for label, run in payload.get(section, {}).items():
                if run.get("estimator") in BASELINE_ESTIMATORS or label.startswith("TES"):
                    yield path, label, provenance.get(label)


def test_baseline_results_come_from_the_fixed_engine():
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    runs = list(_baseline_runs())
    assert runs
    for path, label, provenance in runs:
        assert provenance and provenance.get("commit"), (path, label, "no provenance")
        assert _descends_from_fix(provenance["commit"]), (path, label, provenance["commit"])
