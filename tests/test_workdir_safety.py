"""Workdirs that are safe to point anywhere: refusals before anything is written or compiled (rc 2,
one line, the user's folder byte-identical), ``--overwrite`` removing only what lopt wrote, the
exclusive lock, and config files and values that cannot be used.

Refusals run ``lopt meta-train`` (``cli.main``) in-process on a config of tiny quadratic problems;
every one is decided before the data is loaded or anything is compiled, so none takes more than a
second or two.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from tiny_run import tiny_argv, tiny_config

from meta_train import checkpoint, cli, config_flags, layout

# Slow tier (the CLI in subprocesses); `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

TINY = tiny_argv()


def snapshot(folder) -> dict[str, str]:
    """Every file and folder under ``folder`` with a digest of its bytes."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(
                    f.read()
                ).hexdigest()
    return found


def refused(argv, capsys) -> str:
    """Run ``lopt meta-train argv``; assert rc 2 and a one-line error; return that line."""
    assert cli.main(["meta-train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lopt meta-train: error: ") and "\n" not in err, err
    return err


def user_folder(tmp_path):
    """The issue's folder: a user's model under checkpoints/ and export/."""
    folder = tmp_path / "U"
    (folder / "checkpoints" / "my_model_v1").mkdir(parents=True)
    (folder / "checkpoints" / "my_model_v1" / "w.bin").write_text("w")
    (folder / "export").mkdir()
    (folder / "export" / "model.onnx").write_text("e")
    return folder


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_lopt_did_not_start_is_refused_untouched(tmp_path, capsys, overwrite):
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    message = refused([*TINY, "--workdir", str(folder), *overwrite], capsys)
    assert "not a lopt workdir" in message and "checkpoints, export" in message
    assert "choose another --workdir" in message
    assert snapshot(folder) == before


def test_a_workdir_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    message = refused([*TINY, "--workdir", str(path)], capsys)
    assert "is a file, not a folder" in message
    assert path.read_text() == "x"


def test_an_export_entry_that_is_not_an_export_is_refused_before_compiling(tmp_path, capsys):
    workdir = tmp_path / "run"
    checkpoint.prepare_workdir(str(workdir), tiny_config())
    (workdir / "export").mkdir()
    (workdir / "export" / "model.onnx").write_text("e")
    before = snapshot(workdir)
    for overwrite in ([], ["--overwrite"]):
        message = refused([*TINY, "--workdir", str(workdir), *overwrite], capsys)
        assert "export is not an exported optimizer" in message
    assert snapshot(workdir) == before


@pytest.mark.parametrize("version", [0, 2, "1", True])
def test_a_marker_of_another_format_version_is_refused(tmp_path, capsys, version):
    workdir = tmp_path / "run"
    checkpoint.prepare_workdir(str(workdir), tiny_config())
    marker = workdir / layout.MARKER_FILE
    marker.write_text(json.dumps({"format": "lopt-workdir", "format_version": version}))
    message = refused([*TINY, "--workdir", str(workdir)], capsys)
    assert f"workdir format version {version!r}" in message


def test_a_workdir_of_an_earlier_lopt_is_adopted(tmp_path):
    """A workdir from before the marker (a lopt config.json) resumes; the marker is added."""
    workdir = tmp_path / "old"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config_flags.canonical(tiny_config())))
    (workdir / "metrics.jsonl").write_text("")
    assert checkpoint.prepare_workdir(str(workdir), tiny_config()) == []
    assert (workdir / layout.MARKER_FILE).exists() and (workdir / "metrics.jsonl").exists()


def test_overwrite_removes_only_what_lopt_wrote_and_says_so(tmp_path):
    workdir = tmp_path / "run"
    checkpoint.prepare_workdir(str(workdir), tiny_config())
    lopt_entries = [
        "metrics.jsonl",
        "curves.png",
        "parameter_overview.txt",
        "checkpoints/4/state/data",
        "checkpoints/6.orbax-checkpoint-tmp-123/x",
        "checkpoints/2.corrupt/x",
        "tensorboard/events.out.tfevents.1.host",
        "comparison/report.md",
        "comparison/summary.json",
        "comparison/mlp_1x.png",
        "export/optimizer.json",
        "export/theta/x",
        ".export.tmp-0123abcd/x",
    ]
    # lopt evaluate's results: kept, moved whole (with a file of the user's) under
    # previous_evaluations/<time>/.
    eval_entries = [
        "export.eval_default/report.json",
        "export.eval_default/lopt-eval.json",
        "export.eval_default/mine.txt",
        "eval_tiny/report.json",
    ]
    user_entries = [
        "notes.txt",
        "checkpoints/my_model_v1/w.bin",
        "tensorboard/my_notes.txt",
        "comparison/my_analysis.ipynb",
        "eval_mine/data.csv",  # an eval_* folder lopt evaluate did not write
    ]
    for entry in lopt_entries + user_entries + eval_entries:
        (workdir / entry).parent.mkdir(parents=True, exist_ok=True)
        (workdir / entry).write_text(entry)
    before = snapshot(workdir)

    removed = checkpoint.prepare_workdir(str(workdir), tiny_config({"seed": 1}), overwrite=True)

    assert "checkpoints/4" in removed and "export" in removed and "notes.txt" not in removed
    after = snapshot(workdir)
    for entry in user_entries:
        assert after[entry] == before[entry], entry
    (stamp,) = os.listdir(workdir / layout.PREVIOUS_EVALUATIONS_DIR)
    moved = {os.path.join(layout.PREVIOUS_EVALUATIONS_DIR, stamp, entry) for entry in eval_entries}
    for entry in eval_entries:
        assert after[os.path.join(layout.PREVIOUS_EVALUATIONS_DIR, stamp, entry)] == before[entry]
    assert f"eval_tiny (moved to previous_evaluations/{stamp}/eval_tiny)" in removed
    left = {path for path, digest in after.items() if digest != "dir"}
    assert left == {*user_entries, *moved, "config.json", layout.MARKER_FILE}
    assert json.loads((workdir / "config.json").read_text())["seed"] == 1
    assert not (workdir / "checkpoints" / "4").exists()


def test_overwrite_of_a_finished_run_with_the_same_config_starts_afresh(tmp_path):
    workdir = tmp_path / "run"
    checkpoint.prepare_workdir(str(workdir), tiny_config())
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text("{}\n")
    removed = checkpoint.prepare_workdir(str(workdir), tiny_config(), overwrite=True)
    assert sorted(removed) == ["checkpoints/2", "config.json", "metrics.jsonl"]
    assert sorted(os.listdir(workdir)) == ["config.json", layout.MARKER_FILE]


def test_help_says_what_overwrite_removes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["meta-train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for promise in ("config.json", "checkpoints/", "tensorboard/", "export/", "nothing else"):
        assert promise in text, promise


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from meta_train import checkpoint
                lock = checkpoint.WorkdirLock({str(workdir)!r})
                lock.acquire()
                print("locked", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = refused([*TINY, "--workdir", str(workdir)], capsys)
        assert f"pid {holder.pid} on host {os.uname().nodename}" in message
        assert "in use by another lopt process" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The holder exited: its lock file stays, stale, and does not block.
    with checkpoint.WorkdirLock(str(workdir)):
        record = json.loads((workdir / layout.LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()


def test_the_lock_is_exclusive_within_a_process_and_released(tmp_path):
    first = checkpoint.WorkdirLock(str(tmp_path))
    first.acquire()
    with pytest.raises(checkpoint.WorkdirLockedError, match=f"pid {os.getpid()}"):
        checkpoint.WorkdirLock(str(tmp_path)).acquire()
    first.release()
    with checkpoint.WorkdirLock(str(tmp_path)):
        pass


# --- Config files and values: refused with one line, before the workdir is created.


@pytest.mark.parametrize(
    "body, named",
    [
        ("def get_config(:\n", "syntax error at line 1"),
        ("def get_config():\n    raise KeyError('sigma')\n", "failed: KeyError: 'sigma'"),
        (
            "from meta_train.configs import default\ndef get_config():\n"
            "    config = default.get_config()\n"
            "    del config.estimator.sigma\n"
            "    return config\n",
            "leaves out estimator.sigma;",
        ),
    ],
)
def test_a_broken_config_file_is_a_named_error(tmp_path, capsys, body, named):
    path = tmp_path / "my_config.py"
    path.write_text(body)
    workdir = tmp_path / "run"
    message = refused(["--config", str(path), "--workdir", str(workdir)], capsys)
    assert named in message and str(path) in message
    assert not workdir.exists()


@pytest.mark.parametrize(
    "override, named",
    [
        ("--config.outer.learning_rate=inf", ["outer.learning_rate", "finite"]),
        ("--config.outer.learning_rate=nan", ["outer.learning_rate", "finite"]),
        ("--config.estimator.sigma=inf", ["estimator.sigma", "finite"]),
        ("--config.outer.clip_norm=-inf", ["outer.clip_norm", "finite"]),
        ("--config.groups.digits.weight=inf", ["groups.digits.weight", "finite"]),
        ("--config.estimator.horizon=2", ["shorter than 'estimator.window'", "allow_short"]),
        ("--config.estimator.min_horizon=2", ["shorter than 'estimator.window'"]),
        ("--config.comparison.adam_learning_rates=(1e-3,inf)", ["comparison.adam_learning"]),
    ],
)
def test_nonsensical_values_are_refused(tmp_path, capsys, override, named):
    workdir = tmp_path / "run"
    message = refused([*TINY, "--workdir", str(workdir), override], capsys)
    for word in named:
        assert word in message, (word, message)
    assert not workdir.exists()


def test_nonfinite_optimizer_hyperparameters_are_refused():
    config = tiny_config()
    name = next(k for k, v in config.optimizer.hyperparameters.items() if isinstance(v, float))
    config.optimizer.hyperparameters[name] = float("inf")
    with pytest.raises(config_flags.ConfigError, match=f"hyperparameters.{name}.*finite"):
        config_flags.validate(config)


def test_a_short_horizon_is_accepted_when_said_on_purpose():
    config = tiny_config()
    config.estimator.horizon = 2
    config.estimator.allow_short_horizon = True
    config_flags.validate(config)
    # It only relaxes validation: a workdir started without it resumes with it.
    stored = config_flags.canonical(tiny_config())
    assert config_flags.differences(stored, config_flags.canonical(config)) == [
        "estimator.horizon: 12 -> 2"
    ]
