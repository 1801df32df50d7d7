"""The exit-code contract under I/O faults: a workdir or ``--out`` that cannot be written is refused
before anything is claimed (rc 2, one line); a write that fails mid-run (disk full) ends with one
line naming the last saved checkpoint, exit status ``cli.WRITE_FAILED``, no traceback (also none
from tensorboardX's atexit hook), and the same command resumes once there is space; integers
beyond int32 are refused before the workdir is claimed; absurd horizons are warned about.

The faults are real: a small tmpfs (disk full) and a read-only bind mount, which need root and
``mount``; without them those tests skip, saying so.
"""

import errno
import os
import subprocess
import sys

import pytest
from tiny_run import tiny_argv, tiny_config

from meta_train import checkpoint, cli, config_flags, layout


def _mount(args: list[str], target) -> None:
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(args)}): {result.stderr.strip() or 'not root'}")


@pytest.fixture
def mounts():
    """``mount(args, target)``; every mount made is undone afterwards."""
    made = []

    def mount(args, target):
        os.makedirs(target, exist_ok=True)
        _mount(args, target)
        made.append(target)

    yield mount
    for target in reversed(made):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only(tmp_path, mounts):
    """A folder ``ro`` under ``tmp_path`` holding ``ro/existing/`` (empty), mounted read-only."""
    folder = tmp_path / "ro"
    (folder / "existing").mkdir(parents=True)
    mounts(["--bind", "-o", "ro", str(folder)], folder)
    # Some kernels ignore ro on the first bind; a remount applies it.
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    if os.access(folder, os.W_OK) and _writable(folder):
        pytest.skip("the read-only bind mount is writable here")
    return folder


def _writable(folder) -> bool:
    try:
        with open(os.path.join(folder, ".probe"), "w"):
            pass
    except OSError:
        return False
    os.remove(os.path.join(folder, ".probe"))
    return True


def one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(prefix) and "\n" not in err, err
    return err


@pytest.mark.parametrize("where", ["existing", "new/run"])
def test_a_read_only_workdir_is_refused_in_one_line(read_only, capsys, where):
    workdir = read_only / where
    assert cli.main(["meta-train", *tiny_argv(), "--workdir", str(workdir)]) == 2
    err = one_line_error(capsys, "lopt meta-train: error: ")
    assert f"--workdir {workdir} is not writable (Read-only file system)" in err


@pytest.mark.parametrize("where", ["existing", "new"])
def test_a_read_only_out_is_refused_in_one_line(read_only, capsys, where):
    out = read_only / where
    argv = ["evaluate", "--optimizer", "adam", "--suite", "tiny", "--out", str(out)]
    assert cli.main(argv) == 2
    err = one_line_error(capsys, "lopt evaluate: error: ")
    assert f"--out {out} is not writable (Read-only file system)" in err


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    """``lopt`` in a subprocess: what it prints at exit (atexit hooks, threads) counts too."""
    command = [
        sys.executable,
        "-c",
        "import sys; from meta_train.cli import main; sys.exit(main())",
    ]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=600, env=env)


def assert_stopped_in_one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == cli.WRITE_FAILED, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lopt meta-train: stopped: a write failed: "), last
    return last


@pytest.mark.slow
def test_disk_full_while_logging_ends_in_one_line_and_the_rerun_resumes(tmp_path, mounts):
    disk = tmp_path / "disk"
    mounts(["-t", "tmpfs", "-o", "size=60k", "tmpfs"], disk)
    argv = [
        "meta-train",
        *tiny_argv({"num_outer_steps": 400, "checkpoint_every": 1000, "export_every": 1000}),
        "--workdir",
        str(disk / "run"),
    ]
    last = assert_stopped_in_one_line(run_cli(argv))
    # Either log fills the disk first, depending on how much the run wrote before it.
    logs = [
        f"cannot append to {disk / 'run' / layout.METRICS_FILE}: No space left on device",
        f"cannot write the events in {disk / 'run' / layout.TENSORBOARD_DIR}: No space left on "
        "device",
    ]
    assert any(log in last for log in logs), last
    assert "no checkpoint was saved yet" in last
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    result = run_cli(argv)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_names_the_last_saved_step_and_resumes_from_it(tmp_path, mounts):
    disk = tmp_path / "disk"
    mounts(["-t", "tmpfs", "-o", "size=200k", "tmpfs"], disk)
    argv = [
        "meta-train",
        *tiny_argv({"num_outer_steps": 40, "checkpoint_every": 10}),
        "--workdir",
        str(disk / "run"),
    ]
    last = assert_stopped_in_one_line(run_cli(argv))
    assert "No space left on device" in last and "the checkpoint of step 20" in last
    assert "the last saved checkpoint is outer step 10" in last
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    result = run_cli(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at outer step 10" in result.stderr


def test_an_orbax_write_failure_becomes_one_os_error_and_other_errors_pass():
    message = "RESOURCE_EXHAUSTED: Error writing x: No space left on device [os_error_code='28']"
    with pytest.raises(OSError) as error, checkpoint.orbax_write("the checkpoint of step 3"):
        raise ValueError(message + "\nmore lines")
    assert error.value.errno == errno.ENOSPC
    assert "cannot write the checkpoint of step 3: No space left on device (ValueError: " in str(
        error.value
    )
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="a bug"), checkpoint.orbax_write("x"):
        raise ValueError("a bug")


def test_an_int32_overflow_is_refused_before_the_workdir_is_claimed(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["meta-train", *tiny_argv({"estimator.horizon": 2**31}), "--workdir", str(workdir)]
    assert cli.main(argv) == 2
    err = one_line_error(capsys, "lopt meta-train: error: ")
    assert "'estimator.horizon' is 2147483648, outside the int32 range" in err
    assert not workdir.exists()  # so the corrected rerun is not refused as another config
    config_flags.validate(tiny_config({"estimator.horizon": 2**31 - 1}))


def test_an_absurd_horizon_is_warned_about_before_anything_runs(tmp_path, capsys):
    huge = {"estimator.horizon": 10**9, "estimator.window": 10**9}
    warning = config_flags.cost_warning(tiny_config(huge))
    assert warning.startswith("warning: this run is 1.6e+10 inner training steps")
    assert "burn-in of up to 1.0e+09 sequential inner steps" in warning
    assert config_flags.cost_warning(tiny_config()) is None
    (tmp_path / "file").write_text("x")  # refused after the warning: nothing runs
    argv = ["meta-train", *tiny_argv(huge), "--workdir", str(tmp_path / "file")]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == warning and lines[1].startswith("lopt meta-train: error: ")
