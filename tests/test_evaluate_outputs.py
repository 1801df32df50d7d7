"""``lopt evaluate``'s output folder: checked before anything runs (rc 2, one line, nothing
touched), one default folder per export, beside it and never inside one."""

import os

import jax
import pytest

import lopt
from meta_train import cli
from meta_train.evaluation import out_folder


@pytest.fixture()
def export_dir(tmp_path):
    optimizer = lopt.LearnableSGDM()
    path = tmp_path / "run" / "export"
    lopt.save(path, optimizer, optimizer.init_meta_params(jax.random.key(0)), {"num_steps": 5})
    return path


def refused(argv, capsys) -> str:
    assert cli.main(["evaluate", *argv, "--suite", "tiny", "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("lopt evaluate: error: ") and "\n" not in err, err
    assert captured.out == ""  # refused before anything ran
    return err


def test_an_out_path_that_is_a_file_is_refused_before_running(export_dir, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    message = refused(["--optimizer", str(export_dir), "--out", str(target)], capsys)
    assert "is a file, not a folder" in message
    assert target.read_text() == "mine"


@pytest.mark.parametrize("inside", ["", "eval", "theta/eval"])
def test_an_out_folder_inside_an_export_is_refused(export_dir, capsys, inside):
    before = sorted(os.listdir(export_dir))
    message = refused(["--optimizer", "adam", "--out", str(export_dir / inside)], capsys)
    assert f"inside the export {export_dir}" in message
    assert sorted(os.listdir(export_dir)) == before


def test_a_folder_of_other_files_is_refused_untouched(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2")
    message = refused(["--optimizer", "adam", "--out", str(folder)], capsys)
    assert "holds files lopt evaluate did not write (data.csv)" in message
    assert os.listdir(folder) == ["data.csv"]


def test_a_folder_lopt_evaluate_wrote_may_be_written_again(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / out_folder.EVAL_MARKER_FILE).write_text("{}")
    (folder / "report.md").write_text("old")
    out_folder.check_out_folder(str(folder))


def test_default_out_folders_are_one_per_export_and_beside_it(tmp_path):
    first, second = tmp_path / "export", tmp_path / "export_v2"
    for path in (first, second):
        path.mkdir()
    a = out_folder.default_out_folder(str(first), "default")
    b = out_folder.default_out_folder(str(second), "default")
    assert a == f"{first}.eval_default" and b == f"{second}.eval_default"
    assert out_folder.default_out_folder(str(first), "tiny") != a
    assert out_folder.default_out_folder("untrained:mlp", "tiny") == os.path.join(
        "runs", "untrained_mlp.eval_tiny"
    )
