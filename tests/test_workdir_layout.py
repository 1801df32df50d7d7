"""Every file and folder lopt writes in a workdir is named in ``meta_train.layout``: a finished run
with every output on (checkpoints, export, held-out comparison, curves, ``lopt evaluate`` beside
the export) leaves nothing the layout does not declare, every name it declares is written, and
``--overwrite`` then leaves only the marker, the lock, the new config and the evaluations it moved.
"""

import os
import shutil

import pytest
from tiny_run import tiny_argv, tiny_config

from meta_train import checkpoint, cli, layout

pytestmark = pytest.mark.slow

# The tiny run with a checkpoint, an export, a held-out comparison and the end-of-run outputs.
CHANGES = {
    "export_every": "2",
    "eval.suite": "tiny",
    "comparison.num_tasks": "1",
    "comparison.seeds": "2",
    "comparison.num_steps": "10",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    """A finished tiny run and one ``lopt evaluate`` of its export, in its default folder."""
    path = str(tmp_path_factory.mktemp("layout") / "run")
    assert cli.main(["meta-train", *tiny_argv(CHANGES), "--workdir", path]) == 0
    export = os.path.join(path, layout.EXPORT_DIR)
    evaluate = ["evaluate", "--optimizer", export, "--suite", "tiny", "--steps", "5"]
    evaluate += ["--seeds", "1", "--grid-points", "1", "--horizons", "1", "--no-progress"]
    evaluate += ["--no-sweep-learned-lr", "--no-untrained-floor", "--fast-compile"]
    assert cli.main(evaluate) == 0
    return path


def entries(path: str) -> set[str]:
    """The top-level entries of ``path``, with each of ``layout.RUN_FOLDERS`` as its entries."""
    found = set()
    for name in os.listdir(path):
        if name in layout.RUN_FOLDERS and os.path.isdir(os.path.join(path, name)):
            found |= {os.path.join(name, entry) for entry in os.listdir(os.path.join(path, name))}
        else:
            found.add(name)
    return found


def test_every_entry_a_run_writes_is_declared(workdir):
    declared = {*layout.run_entries(workdir), layout.MARKER_FILE, layout.LOCK_FILE}
    declared |= set(checkpoint.evaluation_folders(workdir))
    assert entries(workdir) - declared == set()


def test_every_declared_name_is_written(workdir):
    names = set(os.listdir(workdir))
    fixed = {layout.MARKER_FILE, layout.LOCK_FILE, layout.EXPORT_DIR, *layout.RUN_FILES}
    assert fixed | set(layout.RUN_FOLDERS) <= names
    comparison = os.listdir(os.path.join(workdir, layout.COMPARISON_DIR))
    assert {layout.COMPARISON_SUMMARY_FILE, "report.json", "report.md"} <= set(comparison)
    assert any(name.endswith(".png") for name in comparison)
    assert [name for name in names if layout.EVAL_FOLDER.fullmatch(name)] == ["export.eval_tiny"]


def test_a_file_of_the_users_is_not_declared(workdir, tmp_path):
    """Positive control: the user's files, beside and inside lopt's folders, are not a run's."""
    run = set(layout.run_entries(workdir))
    for name in ("notes.txt", os.path.join(layout.CHECKPOINT_DIR, "my_model")):
        assert name not in run
        path = os.path.join(workdir, name)
        with open(path, "w") as f:
            f.write("mine")
        try:
            assert name in entries(workdir) - set(layout.run_entries(workdir))
        finally:
            os.remove(path)


def test_overwrite_leaves_only_the_marker_the_lock_and_moved_evaluations(workdir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    workdir = copy
    removed = checkpoint.prepare_workdir(workdir, tiny_config({"seed": 1}), overwrite=True)
    assert layout.EXPORT_DIR in removed and layout.METRICS_FILE in removed
    assert sorted(os.listdir(workdir)) == sorted(
        [layout.CONFIG_FILE, layout.LOCK_FILE, layout.MARKER_FILE, layout.PREVIOUS_EVALUATIONS_DIR]
    )
    (stamp,) = os.listdir(os.path.join(workdir, layout.PREVIOUS_EVALUATIONS_DIR))
    moved = os.listdir(os.path.join(workdir, layout.PREVIOUS_EVALUATIONS_DIR, stamp))
    assert moved == ["export.eval_tiny"]
