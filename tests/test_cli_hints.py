"""Hints where the cause is likely: an unknown family or suite name suggests --import, a workdir
given for its export suggests ``<workdir>/export``, and CLI errors are one line (the usage block
stays on --help)."""

import jax
import pytest

import lopt
from meta_train import cli


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not err.startswith("usage:"), err
    return err


def test_an_unknown_family_suggests_import_before_the_workdir_is_claimed(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["meta-train", "--config.groups.digits.family=sine", "--workdir", str(workdir)]
    assert cli.main(argv) == 2
    err = one_line(capsys)
    assert "unknown task family 'sine'" in err
    assert "is it yours? pass --import MODULE" in err
    assert not workdir.exists()


def test_an_unknown_suite_suggests_import_in_one_line(tmp_path, capsys):
    argv = ["evaluate", "--optimizer", "adam", "--suite", "mine", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = one_line(capsys)
    assert "--suite 'mine' is unknown" in err and "pass --import MODULE" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["evaluate", "--optimizer", "adam", "--seeds", "0"], "--seeds must be at least 1"),
        (["evaluate", "--suite", "default"], "the following arguments are required: --optimizer"),
        (["evaluate", "--optimizer", "adam", "--horizons", "x"], "argument --horizons"),
        (["meta-train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["tasks", "show"], "invalid choice: 'show'"),
    ],
)
def test_cli_errors_are_one_line_without_the_usage_block(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = one_line(capsys)
    assert named in err and f"(usage: lopt {argv[0]} --help)" in err


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: lopt evaluate")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """``runs/x`` under a fresh working directory, holding an export as meta-train leaves it."""
    monkeypatch.chdir(tmp_path)
    optimizer = lopt.get_optimizer("adam")
    lopt.save("runs/x/export", optimizer, optimizer.init_meta_params(jax.random.key(0)))
    return tmp_path / "runs" / "x"


def test_loading_a_workdir_suggests_its_export(workdir, monkeypatch):
    with pytest.raises(lopt.NotAnExportError, match="did you mean runs/x/export\\?"):
        lopt.load("runs/x")
    (workdir.parent / "elsewhere").mkdir()
    monkeypatch.chdir(workdir.parent / "elsewhere")  # not under the working directory: absolute
    with pytest.raises(lopt.NotAnExportError, match=f"did you mean {workdir}/export\\?"):
        lopt.load(workdir)


def test_evaluate_of_a_workdir_suggests_its_export_before_claiming_an_output(workdir, capsys):
    assert cli.main(["evaluate", "--optimizer", "runs/x", "--suite", "default"]) == 2
    err = one_line(capsys)
    assert "did you mean runs/x/export?" in err
    assert sorted(p.name for p in workdir.parent.iterdir()) == ["x"]
